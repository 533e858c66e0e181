"""Where the sensitive states lie: a DP histogram released with the model, and the sampling filter it enables.

A DP-fitted diffusion model puts more of its mass off the data's support than a non-private one (on the umaze proxy,
~37 % of the ε = 10 rows lie > 0.1 standard deviations from every real state). TD3+BC's critic trusts those rows and
its value ranking bends toward cells the data never reaches (README, issue 14). The samples alone cannot tell such
rows apart (`drop_sparse` tries), so this asks the sensitive data, through the Gaussian mechanism:

    grid     cells of user-chosen widths over the observation dimensions (width 0 leaves a dimension out), spanning
             the PUBLIC data's range; a state outside that range counts in the nearest edge cell
    release  the count of training records per cell + N(0, σ²) on every cell (numpy, OS entropy, never saved)

One record adds 1 to one cell: L2 sensitivity 1 under add/remove neighbours, one accountant entry (σ, 1.0, 1) composed
with DP-SGD, so the fine-tune's total stays at its target ε. Sampling then keeps a row when both s and s′ lie in cells
whose noisy count reaches a threshold: post-processing of the release.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from synther.errors import UserError
from synther.utils.options import comma_list

MAX_CELLS = 4_000_000  # 16 MB of float32 counts, twice in a checkpoint (model and EMA)
MAX_DRAWS_PER_ROW = 20  # sampling gives up when fewer than 1 in 20 rows lie in the support


def check_threshold(threshold: float) -> None:
    if not (math.isfinite(threshold) and threshold >= 0):
        raise UserError(f"support_threshold must be ≥ 0 noise standard deviations (0: no filter), got {threshold}")


def parse_widths(spec: str, obs_dim: int) -> np.ndarray:
    """`--dp.support_cells` as one non-negative cell width per observation dimension."""
    try:
        widths = np.array([float(w) for w in comma_list(spec)])
    except ValueError:
        raise UserError(f"dp.support_cells must be comma-separated numbers, got '{spec}'") from None
    if len(widths) != obs_dim:
        raise UserError(f"dp.support_cells needs one cell width per observation dimension ({obs_dim}), got "
                        f"{len(widths)} in '{spec}'")
    if not (np.isfinite(widths).all() and (widths >= 0).all() and (widths > 0).any()):
        raise UserError(f"dp.support_cells must be finite widths ≥ 0 (0 leaves a dimension out), at least one "
                        f"positive; got '{spec}'")
    return widths


class StateSupport(nn.Module):
    """A grid over observation space and one (noisy) count per cell, kept as buffers so that checkpoints, the EMA
    copy and resumed runs carry the very release the ledger accounts for."""

    def __init__(self, low: np.ndarray, widths: np.ndarray, shape: Sequence[int]) -> None:
        super().__init__()
        self.register_buffer("low", torch.as_tensor(np.asarray(low), dtype=torch.float64))
        self.register_buffer("widths", torch.as_tensor(np.asarray(widths), dtype=torch.float64))
        self.register_buffer("shape", torch.as_tensor([int(s) for s in shape], dtype=torch.int64))
        # zeros until `release` (or a checkpoint's state) fills them
        self.register_buffer("counts", torch.zeros(math.prod(int(s) for s in shape), dtype=torch.float32))

    @classmethod
    def grid(cls, widths: np.ndarray, public_low: np.ndarray, public_high: np.ndarray) -> "StateSupport":
        """An empty grid of `widths` spanning the public range [public_low, public_high] (never sensitive data)."""
        span = np.asarray(public_high, dtype=np.float64) - np.asarray(public_low, dtype=np.float64)
        shape = [max(1, math.ceil(s / w - 1e-9)) if w > 0 else 1 for s, w in zip(span, widths)]
        size = math.prod(shape)
        if size > MAX_CELLS:
            raise UserError(f"dp.support_cells {widths.tolist()} make {size:,} cells over the public range (at most "
                            f"{MAX_CELLS:,}): widen the cells or leave dimensions out (width 0)")
        return cls(public_low, widths, shape)

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "StateSupport":
        """The empty module a checkpoint's `state_support` metadata describes (its counts come from the state)."""
        return cls(np.asarray(spec["low"]), np.asarray(spec["widths"]), spec["shape"])

    def spec(self) -> dict[str, Any]:
        return {"low": self.low.tolist(), "widths": self.widths.tolist(), "shape": self.shape.tolist(),
                "cells": int(self.counts.numel())}

    def cells(self, obs: np.ndarray) -> np.ndarray:
        """Each state's cell index (states outside the grid go to the nearest edge cell)."""
        low, widths, shape = self.low.cpu().numpy(), self.widths.cpu().numpy(), self.shape.cpu().numpy()
        used = widths > 0
        index = np.zeros((len(obs), len(shape)), dtype=np.int64)
        scaled = (np.asarray(obs, dtype=np.float64)[:, used] - low[used]) / widths[used]
        index[:, used] = np.clip(np.floor(np.nan_to_num(scaled, nan=0.0, posinf=1e18, neginf=-1e18)),
                                 0, shape[used] - 1).astype(np.int64)
        return np.ravel_multi_index(index.T, tuple(shape))

    def release(self, obs: np.ndarray, noise_multiplier: float, rng: np.random.Generator) -> None:
        """Set the counts to the Gaussian mechanism's output on the sensitive states `obs`: per-cell record counts
        plus N(0, σ²) on every cell. `rng` must come from OS entropy (synther.privacy.randomness.secret_numpy_rng):
        noise that can be replayed can be subtracted."""
        if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
            raise UserError(f"dp.support_noise_multiplier must be a positive number, got {noise_multiplier}")
        size = self.counts.numel()
        counts = np.bincount(self.cells(obs), minlength=size).astype(np.float64)
        noisy = counts + rng.normal(0.0, noise_multiplier, size=size)
        self.counts.copy_(torch.as_tensor(noisy, dtype=torch.float32))

    def keep(self, obs: np.ndarray, next_obs: np.ndarray, min_count: float) -> np.ndarray:
        """Rows whose state and next state both lie in cells with a noisy count ≥ `min_count`."""
        supported = self.counts.cpu().numpy() >= min_count
        return supported[self.cells(obs)] & supported[self.cells(next_obs)]
