"""Per-dimension z-score normalizer for transition vectors, with a record of which data its statistics came from.

The terminal dimension is left unnormalized (mean 0, std 1) and thresholded at 0.5 after sampling (SynthER).
Actions of a tanh-squashed policy can be modelled as u = atanh of their position within their bounds
(`squash_low`/`squash_high`): the model works on u, and samples map back with tanh, strictly inside the bounds
(why and when: synther.diffusion.saturation.choose_action_space). The statistics are then those of u.
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


# |position within the bounds| is capped here before atanh: float32 tanh outputs reach 1 - 6e-8, and an entry on a
# bound (absent from the data this is chosen for) lands at ±7.25 rather than at infinity
SQUASH_LIMIT = 1 - 1e-6
SQUASH_U = float(np.arctanh(SQUASH_LIMIT))


class Normalizer(nn.Module):
    def __init__(self, mean: np.ndarray, std: np.ndarray, source: dict[str, Any],
                 squash: tuple[slice, np.ndarray, np.ndarray] | None = None) -> None:
        """`squash`: (columns, low, high): those columns are modelled as atanh of their position within [low, high]
        (mean and std are then statistics of that atanh)."""
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(np.asarray(mean), dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(np.asarray(std), dtype=torch.float32))
        self.source = source  # JSON description: {"kind": "public"|"dp"|"identity", ...}
        self.squashed = squash[0] if squash else None
        if squash:  # not persistent: a checkpoint's metadata says how to rebuild them, so older checkpoints load
            self.register_buffer("squash_low", torch.as_tensor(np.asarray(squash[1]), dtype=torch.float64),
                                 persistent=False)
            self.register_buffer("squash_high", torch.as_tensor(np.asarray(squash[2]), dtype=torch.float64),
                                 persistent=False)

    @classmethod
    def identity(cls, dim: int, squash: tuple[slice, np.ndarray, np.ndarray] | None = None) -> "Normalizer":
        return cls(np.zeros(dim), np.ones(dim), {"kind": "identity"}, squash)

    @classmethod
    def from_public(cls, x: np.ndarray, layout: TransitionLayout, names: list[str],
                    squash: tuple[slice, np.ndarray, np.ndarray] | None = None) -> "Normalizer":
        """Statistics of PUBLIC vectors `x` (never pass sensitive data here), in the model's space."""
        u = cls.identity(x.shape[1], squash).to_model_space(torch.as_tensor(x)).numpy()
        mean, std = u.mean(axis=0), u.std(axis=0)
        return cls(*_finish(mean, std, layout), {"kind": "public", "datasets": names, "rows": int(len(x))}, squash)

    @property
    def squash(self) -> tuple[slice, np.ndarray, np.ndarray] | None:
        """(columns, low, high) of the squashed columns, as the constructor takes them; None without."""
        if self.squashed is None:
            return None
        return self.squashed, self.squash_low.cpu().numpy(), self.squash_high.cpu().numpy()

    def to_model_space(self, x: torch.Tensor) -> torch.Tensor:
        """Raw vectors -> the space the statistics describe (squashed columns -> atanh of their position)."""
        if self.squashed is None:
            return x
        centre, half = self._centre_half(x.dtype)
        y = (x[:, self.squashed] - centre) / half
        x = x.clone()
        x[:, self.squashed] = torch.atanh(y.clamp(-SQUASH_LIMIT, SQUASH_LIMIT))
        return x

    def from_model_space(self, u: torch.Tensor) -> torch.Tensor:
        """The inverse of to_model_space (squashed columns land strictly inside their bounds)."""
        if self.squashed is None:
            return u
        u = u.clone()
        position = torch.tanh(u[:, self.squashed].clamp(-SQUASH_U, SQUASH_U))  # float32 tanh(9) is exactly 1
        centre, half = self._centre_half(u.dtype)
        u[:, self.squashed] = centre + half * position
        return u

    def _centre_half(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        low, high = self.squash_low, self.squash_high
        return ((high + low) / 2).to(dtype), ((high - low) / 2).to(dtype)

    @classmethod
    def dp_estimate(cls, x: np.ndarray, layout: TransitionLayout, lower: np.ndarray, upper: np.ndarray,
                    noise_multiplier: float, rng: np.random.Generator,
                    squash: tuple[slice, np.ndarray, np.ndarray] | None = None) -> "Normalizer":
        """Gaussian-mechanism estimate of mean/std of sensitive vectors `x` (in the model's space: with `squash`,
        `x` and the box are mapped there first).

        Each record is clipped to the box [lower, upper] (which must NOT come from the sensitive data: use public
        data or the env spec) and mapped to y ∈ [-1, 1]^d; the vector (y, y², 1) then has L2 norm ≤ √(2d+1), so
        releasing Σ(y, y², 1) + N(0, σ²(2d+1)) is one Gaussian mechanism with noise multiplier σ on the add/remove
        neighbouring relation: accountant entry (σ, 1.0, 1). `rng` must be seeded from OS entropy
        (synther.privacy.randomness.secret_numpy_rng): noise that can be replayed can be subtracted.
        """
        to_model = cls.identity(x.shape[1], squash).to_model_space
        x, lower, upper = (to_model(torch.as_tensor(np.atleast_2d(v), dtype=torch.float64)).numpy()
                           for v in (x, lower, upper))
        lower, upper = lower[0], upper[0]
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
        return cls(*_finish(mean, std, layout), source, squash)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (self.to_model_space(x) - self.mean) / self.std

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        return self.from_model_space(x * self.std + self.mean)


def _finish(mean: np.ndarray, std: np.ndarray, layout: TransitionLayout) -> tuple[np.ndarray, np.ndarray]:
    mean, std = mean.astype(np.float32).copy(), np.maximum(std.astype(np.float32), 1e-3)
    mean[layout.terminal], std[layout.terminal] = 0.0, 1.0  # terminal stays 0/1, rounded at 0.5 after sampling
    return mean, std
