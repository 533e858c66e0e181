"""EDM diffusion over flat transition vectors: model, one trainer, DP fine-tuning, sampling."""
from synther.diffusion.synthesizer import Synthesizer

__all__ = ["Synthesizer"]
