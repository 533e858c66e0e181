"""Offline-RL data: the TransitionDataset type, on-disk formats, the registry, and offline generators."""
from synther.data.dataset import (TransitionDataset, TransitionLayout, check_compatible, public_action_bounds,
                                  validate_arrays)
from synther.data.registry import dataset_info, load_dataset

__all__ = [
    "TransitionDataset",
    "TransitionLayout",
    "check_compatible",
    "public_action_bounds",
    "dataset_info",
    "load_dataset",
    "validate_arrays",
]
