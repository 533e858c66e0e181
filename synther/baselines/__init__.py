"""DP tabular-synthesis baselines: smartnoise-synth's MST, AIM, DP-CTGAN and PATE-CTGAN, fitted on the flat
transition table in their own virtualenv and written as samples.npz + samples.json like the diffusion path."""
from synther.baselines.synthesize import (METHODS, TARGET_ALIASES, BaselineConfig, GANConfig, MarginalConfig,
                                          PrivacyTarget, run_dir, synthesize)

__all__ = ["METHODS", "TARGET_ALIASES", "BaselineConfig", "GANConfig", "MarginalConfig", "PrivacyTarget", "run_dir",
           "synthesize"]
