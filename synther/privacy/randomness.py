"""The one source of randomness inside DP mechanisms: OS entropy, never a seed, never saved.

Noise that can be replayed can be subtracted, and Poisson batches or diffusion draws that can be replayed let one
record's presence shift the others' gradients. Every mechanism (DP-SGD's sampler, noise and in-step draws, the DP
normalizer, the baselines' fits) takes its randomness from here; `--seed` only ever seeds public work.
"""
from __future__ import annotations

import secrets

import numpy as np
import torch


def secret_seed(bits: int = 63) -> int:
    """A fresh seed from the OS's entropy pool (63 bits fit torch's signed 64-bit seeds)."""
    return secrets.randbits(bits)


def secret_torch_generator(device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(secret_seed())


def secret_numpy_rng() -> np.random.Generator:
    return np.random.default_rng(secrets.randbits(128))


def reseed_torch_globally() -> None:
    """torch's global CPU and CUDA generators from OS entropy: draws made with them inside a mechanism (e.g. the
    diffusion σ and noise of each per-sample loss) are then as secret as the mechanism's own noise."""
    torch.manual_seed(secret_seed())
