"""Per-dimension z-score normalizer for transition vectors, with a record of which data its statistics came from.

The terminal dimension is left unnormalized (mean 0, std 1) and thresholded at 0.5 after sampling (SynthER).
Statistics come from PUBLIC data by default; `dp_estimate` spends privacy budget to estimate them from sensitive
data with the Gaussian mechanism, and the caller must add its `accounting_entry` to the privacy history.
"""
from typing import Any

import numpy as np
import torch
from torch import nn

from synther.data.dataset import TransitionLayout

# numpy's Generator.normal (ziggurat) draws its tail as r − ln(1 − U)/r with a 53-bit U, so |z| reaches ≈ 13.7;
# the ledger charges the tail with this smaller, safe cap.
NUMPY_NORMAL_Z_MAX = 8.5


class Normalizer(nn.Module):
    def __init__(self, mean: np.ndarray, std: np.ndarray, source: dict[str, Any]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(np.asarray(mean), dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(np.asarray(std), dtype=torch.float32))
        self.source = source  # JSON description: {"kind": "public"|"dp"|"identity", ...}

    @classmethod
    def identity(cls, dim: int) -> "Normalizer":
        return cls(np.zeros(dim), np.ones(dim), {"kind": "identity"})

    @classmethod
    def from_public(cls, x: np.ndarray, layout: TransitionLayout, names: list[str]) -> "Normalizer":
        """Statistics of PUBLIC vectors `x` (never pass sensitive data here)."""
        mean, std = x.mean(axis=0), x.std(axis=0)
        return cls(*_finish(mean, std, layout), {"kind": "public", "datasets": names, "rows": int(len(x))})

    @classmethod
    def dp_estimate(cls, x: np.ndarray, layout: TransitionLayout, lower: np.ndarray, upper: np.ndarray,
                    noise_multiplier: float, rng: np.random.Generator) -> "Normalizer":
        """Gaussian-mechanism estimate of mean/std of sensitive vectors `x`.

        Each record is clipped to the box [lower, upper] (which must NOT come from the sensitive data: use public
        data or the env spec) and mapped to y ∈ [-1, 1]^d; the vector (y, y², 1) then has L2 norm ≤ √(2d+1), so
        releasing Σ(y, y², 1) + N(0, σ²(2d+1)) is one Gaussian mechanism with noise multiplier σ on the add/remove
        neighbouring relation: accountant entry (σ, 1.0, 1). `rng` must be seeded from OS entropy
        (synther.privacy.randomness.secret_numpy_rng): noise that can be replayed can be subtracted.
        """
        d = x.shape[1]
        centre, half = (upper + lower) / 2, np.maximum((upper - lower) / 2, 1e-6)
        y = np.clip((x - centre) / half, -1.0, 1.0)
        stats = np.concatenate([y.sum(0), (y**2).sum(0), [len(y)]])
        noisy = stats + rng.normal(0.0, noise_multiplier * np.sqrt(2 * d + 1), size=stats.shape)
        count = max(noisy[-1], 1.0)
        mean_y = np.clip(noisy[:d] / count, -1.0, 1.0)
        var_y = np.clip(noisy[d : 2 * d] / count - mean_y**2, 1e-6, 1.0)
        mean, std = centre + half * mean_y, half * np.sqrt(var_y)
        source = {"kind": "dp", "mechanism": "gaussian", "noise_multiplier": noise_multiplier,
                  "l2_sensitivity": float(np.sqrt(2 * d + 1)), "accountant_entry": [noise_multiplier, 1.0, 1],
                  "z_max": NUMPY_NORMAL_Z_MAX, "clip_box_from": "public data", "noise": "numpy, OS entropy"}
        return cls(*_finish(mean, std, layout), source)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std + self.mean


def _finish(mean: np.ndarray, std: np.ndarray, layout: TransitionLayout) -> tuple[np.ndarray, np.ndarray]:
    mean, std = mean.astype(np.float32).copy(), np.maximum(std.astype(np.float32), 1e-3)
    mean[layout.terminal], std[layout.terminal] = 0.0, 1.0  # terminal stays 0/1, rounded at 0.5 after sampling
    return mean, std
