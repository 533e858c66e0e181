"""The transitions an agent trains on: the real dataset, or ONLY synthetic ones (a samples.npz, or transitions
generated from a diffusion checkpoint through the generator API, synther.diffusion.Synthesizer).

When the data is synthetic the real dataset is never opened: the agent's statistics come from the samples.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from synther.data import TransitionDataset, load_dataset
from synther.data.formats import load_npz, read_sidecar
from synther.errors import DatasetError, UserError

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")


@dataclass
class TrainingData:
    """The transitions an agent trains on, and a description of them for the run's summary."""

    dataset: TransitionDataset
    kind: str  # 'real' or 'synthetic'
    description: dict[str, Any]

    @property
    def synthetic(self) -> bool:
        return self.kind == "synthetic"


def load_training_data(
    dataset: str,
    diffusion_path: str = "",
    sample_limit: int = -1,
    num_samples: int = 100_000,
    num_steps: int = 32,
    seed: int = 0,
    device: str = "auto",
) -> TrainingData:
    """The real dataset `dataset`, or, when `diffusion_path` is given, ONLY synthetic transitions.

    diffusion_path: a samples .npz (D4RL keys) to train on, or a diffusion checkpoint (.pt) to generate
    `num_samples` transitions from (as SynthER does). The real dataset is then never opened. sample_limit > 0 keeps
    the first `sample_limit` synthetic rows (and is the number generated from a checkpoint).
    """
    if sample_limit == 0 or sample_limit < -1:
        raise UserError(f"--diffusion.sample_limit must be a positive number of rows or -1 (all), got {sample_limit}")
    if not diffusion_path:
        ds = load_dataset(dataset)
        return TrainingData(ds, "real", {"kind": "real", "dataset": dataset, "source": ds.source, "rows": ds.size})
    path = Path(diffusion_path).expanduser()
    suffix = path.suffix.lower()
    if suffix == ".npz":
        ds = load_npz(path)
        side = read_sidecar(path)
        desc = {"kind": "synthetic", "path": str(path), "format": "samples.npz", "rows_in_file": ds.size}
        if side.get("privacy_ledger"):
            desc["privacy_ledger"] = side["privacy_ledger"]
    elif suffix in CHECKPOINT_SUFFIXES:
        n = sample_limit if sample_limit > 0 else num_samples
        ds = generate_from_checkpoint(path, n, num_steps=num_steps, seed=seed, device=device)
        desc = {"kind": "synthetic", "path": str(path), "format": "diffusion checkpoint, sampled on the fly",
                "generated": ds.size, "sampler_steps": num_steps, "sampling_seed": seed}
        ledger = ds.provenance.get("privacy_ledger")
        if ledger:
            desc["privacy_ledger"] = ledger
    else:
        raise UserError(
            f"{path}: --diffusion.path must be a samples .npz or a diffusion checkpoint "
            f"({', '.join(CHECKPOINT_SUFFIXES)}), got '{suffix or 'no suffix'}'"
        )
    ds = _limit(ds, sample_limit)
    desc["rows"] = ds.size
    return TrainingData(ds, "synthetic", desc)


def generate_from_checkpoint(path: Path, n: int, num_steps: int, seed: int, device: str) -> TransitionDataset:
    """Sample `n` transitions from a PrivTranR diffusion checkpoint through the generator API."""
    if not path.exists():
        raise UserError(f"{path}: diffusion checkpoint not found")
    from synther.diffusion import Synthesizer  # here: agents trained on a samples.npz never import it (2 s)
    from synther.diffusion.edm import SamplerConfig

    syn = Synthesizer.load(path, device)
    ds = syn.sample(n, SamplerConfig(steps=num_steps), seed=seed)
    ds.provenance["privacy_ledger"] = syn.ledger.to_dict()
    return ds


def _limit(ds: TransitionDataset, limit: int) -> TransitionDataset:
    if limit < 0 or limit >= ds.size:
        return ds
    return ds.subset(np.arange(limit), note=f"first {limit} rows (--diffusion.sample_limit)")


def check_dimensions(ds: TransitionDataset, obs_dim: int, action_dim: int, env_name: str) -> None:
    """Training data must fit the evaluation env (e.g. a samples.npz generated for another task)."""
    for what, have, want in (("obs_dim", ds.obs_dim, obs_dim), ("action_dim", ds.action_dim, action_dim)):
        if have != want:
            raise DatasetError(
                f"dimension mismatch: {ds.source} has {what}={have} but the evaluation env of {env_name} has "
                f"{what}={want}"
            )
