"""Fresh public batches for DP-SGD's side information (synther.privacy.projection, synther.privacy.preconditioning).

Both refit something on PUBLIC rows (the pre-training datasets) at the current weights every few steps. The rows
and their diffusion draws come from a generator seeded by the public --seed, and the weights are DP outputs, so
what is fitted is a function of public information only: using it inside later private steps costs no privacy.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable

import torch

from synther.errors import UserError


class PublicBatchRefit(ABC):
    """Every `every` steps (and at the first step of a run or a resumed run) draw `rows` public rows with their
    diffusion σ and noise and call `self.refit(per_row_loss)`, where `per_row_loss()` runs the model's forward
    pass on them (`per_row_loss(x, sigma, noise)`: the model's loss, one per row). Subclasses define `refit`."""

    def __init__(self, public_rows: torch.Tensor, rows: int, every: int, seed: int,
                 per_row_loss: Callable[..., torch.Tensor],
                 draw_sigma: Callable[[int, torch.Generator], torch.Tensor], what: str) -> None:
        if rows < 1:
            raise UserError(f"the {what} needs at least one public row per fit, got {rows}")
        if every < 1:
            raise UserError(f"the {what} must be refreshed every ≥ 1 steps, got {every}")
        self.public_rows, self.rows, self.every = public_rows, min(rows, len(public_rows)), every
        self.per_row_loss, self.draw_sigma = per_row_loss, draw_sigma
        self.generator = torch.Generator().manual_seed(seed)
        self.fitted_at: int | None = None

    @abstractmethod
    def refit(self, per_row_loss: Callable[[], torch.Tensor]) -> None:
        """Fit whatever the subclass keeps on the public rows whose losses `per_row_loss()` returns."""

    def before_step(self, step: int) -> None:
        """Refit on fresh public rows when due."""
        if self.fitted_at is not None and step - self.fitted_at < self.every:
            return
        idx = torch.randperm(len(self.public_rows), generator=self.generator)[: self.rows]
        x = self.public_rows[idx.to(self.public_rows.device)]
        sigma = self.draw_sigma(len(x), self.generator).to(x.device)
        noise = torch.randn(x.shape, generator=self.generator).to(x.device)
        self.refit(lambda: self.per_row_loss(x, sigma, noise))
        self.fitted_at = step
