"""The DP-SGD engine: one object owns the whole private step, for any model with per-record losses.

opacus' split, here: this engine (sampling, clipping, noise, normalisation, the step count) + the accountant
(synther.privacy.accounting) + the per-sample gradient backends (synther.privacy.dpsgd.clipping_backend over
synther.privacy.clipping) + the optimizer (any torch optimizer). One step:

    batch  = each record independently with probability q                    (PoissonSampler, secret coins)
    grad   = (Σ_{i∈batch} clip(D ∇ℓ_i, C) + N(0, σ²C²·I)) / (q·N)             (clipping backend + GaussianNoise)
    grad   = project(grad)                          (optional post-processing, e.g. synther.privacy.projection)
    optimizer.step()

D = 1 unless `precondition` supplies a diagonal preconditioner fitted on public data (e.g.
synther.privacy.preconditioning), applied before clipping so each record's contribution still has norm ≤ C.
Dividing by the *expected* batch size q·N keeps the sensitivity at C; an empty batch is a noise-only step. With
`draws_per_record` K each record's loss is the mean of K rows (e.g. K diffusion draws), clipped as one record.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import nn

from synther.errors import UserError
from synther.privacy.clipping import LayerScales
from synther.privacy.dpsgd import GaussianNoise, PoissonSampler, clipping_backend
from synther.privacy.randomness import secret_torch_generator


@dataclass
class DPSettings:
    """Resolved DP-SGD parameters for one run (σ already calibrated by the accountant)."""

    noise_multiplier: float
    clip_norm: float
    sample_rate: float
    clipping_mode: str = "ghost"
    noise_generator: str = "auto"  # GaussianNoise's: auto | philox | torch (same distribution, different speed)
    draws_per_record: int = 1  # noise multiplicity: rows averaged in each record's loss before clipping
    subspace_rank: int = 0  # > 0: project each noisy gradient onto this many top directions of public gradients
    subspace_rows: int = 512  # public rows per subspace fit
    subspace_every: int = 100  # steps between subspace fits
    precondition: bool = False  # scale each per-sample gradient by a public diagonal preconditioner before clipping
    precondition_floor: float = 0.01  # floor of the factored second moments, relative to their layer's mean
    precondition_rows: int = 512  # public rows per preconditioner fit
    precondition_every: int = 100  # steps between preconditioner fits


class DPSGD:
    """DP-SGD on `model`'s trainable parameters over `num_records` records.

    `optimizer` (None: leave the noisy gradient in p.grad, as an audit that observes it wants). `project` (if
    given) rewrites p.grad after the noise is in it and before the optimizer reads it; it must use nothing but that
    noisy gradient, the current weights and public data, so that it is post-processing. `precondition` (if given,
    clipping 'ghost' only) returns the per-layer preconditioner for the next step; it must be a function of public
    data and earlier DP outputs only. Randomness comes from OS entropy; `seed` exists for audits and tests only (a
    released model must never be trained with one).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None, num_records: int,
                 settings: DPSettings, seed: int | None = None, project: Callable[[], None] | None = None,
                 precondition: Callable[[], Mapping[nn.Linear, LayerScales]] | None = None) -> None:
        if precondition is not None and settings.clipping_mode != "ghost":
            raise UserError(f"a gradient preconditioner needs clipping 'ghost', not '{settings.clipping_mode}'")
        self.model, self.optimizer, self.settings, self.project = model, optimizer, settings, project
        self.precondition = precondition
        self.clipped = clipping_backend(model, settings.clip_norm, settings.clipping_mode, settings.draws_per_record)
        self.noise = GaussianNoise(self.clipped.params, generator=settings.noise_generator, seed=seed,
                                   workers=1 if seed is not None else None)
        coins = secret_torch_generator() if seed is None else torch.Generator().manual_seed(seed)
        self.sampler = PoissonSampler(num_records, settings.sample_rate, coins)
        self.expected_batch = settings.sample_rate * num_records
        self.noise_std = settings.noise_multiplier * settings.clip_norm / self.expected_batch
        self.steps_taken = 0

    def sample(self) -> torch.Tensor:
        """Indices of the next Poisson batch."""
        return self.sampler.sample()

    def step(self, batch: torch.Tensor, per_row_loss: Callable[[torch.Tensor], torch.Tensor]
             ) -> dict[str, torch.Tensor]:
        """One private step on `batch` (the rows of this step's Poisson sample); `per_row_loss(rows)` runs the
        model's forward pass and returns one loss per row. Returns detached statistics of the private batch (not
        DP: for diagnostics only)."""
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
        k = self.settings.draws_per_record
        if len(batch) == 0:  # an empty Poisson batch: the update is pure noise
            self.noise.fill_(self.noise_std)
            stats = {"loss": torch.tensor(float("nan")), "batch": 0, "grad_norm": torch.tensor(float("nan")),
                     "clipped_fraction": torch.tensor(0.0)}
        else:
            rows = batch if k == 1 else batch.repeat_interleave(k, dim=0)  # a record's rows stay together
            scales = {} if self.precondition is None else {"layer_scales": self.precondition()}
            losses, norms = self.clipped(lambda: per_row_loss(rows) / k, scale=1.0 / self.expected_batch,
                                         noise=self.noise, noise_std=self.noise_std, **scales)
            stats = {"loss": losses.mean() * k, "batch": len(batch), "grad_norm": norms.mean(),
                     "clipped_fraction": (norms > self.settings.clip_norm).float().mean()}
        if self.project is not None:
            self.project()
        if self.optimizer is not None:
            self.optimizer.step()
        self.steps_taken += 1
        return stats

    @property
    def generator_name(self) -> str:
        return self.noise.generator_name

    @property
    def z_max(self) -> float:
        """A lower bound of the largest |z| the noise generator can draw (the ledger charges the tail beyond)."""
        return self.noise.z_max
