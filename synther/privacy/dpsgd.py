"""DP-SGD engine pieces: Poisson subsampling, clipped-sum backends, Gaussian noise.

One DP step (as opacus does it with Poisson sampling):
    batch  = each training record independently with probability q           (PoissonSampler)
    grad   = Σ_{i∈batch} clip(∇ℓ_i, C)                                       (ClippedGradient backends)
    grad   = (grad + N(0, σ²C²·I)) / (q·N)                                   (add_noise)
The division by the *expected* batch size q·N (not the realized one) keeps the sensitivity at C.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from synther.errors import UserError
from synther.privacy.clipping import LinearGhostClipper

CLIPPING_MODES = ("ghost", "opacus_hooks", "opacus_ghost")


class PoissonSampler:
    """Indices of a Poisson-subsampled batch: every record is included independently with probability q."""

    def __init__(self, num_records: int, sample_rate: float, generator: torch.Generator) -> None:
        if not 0 < sample_rate <= 1:
            raise UserError(f"sample rate must be in (0, 1], got {sample_rate}")
        self.num_records = num_records
        self.sample_rate = sample_rate
        self.generator = generator

    def sample(self) -> torch.Tensor:
        mask = torch.rand(self.num_records, generator=self.generator) < self.sample_rate
        return mask.nonzero().squeeze(1)


def add_noise(params: list[nn.Parameter], noise_multiplier: float, clip_norm: float, expected_batch_size: float,
              generator: torch.Generator | None = None) -> None:
    """grad ← (grad + N(0, (σC)²)) / expected_batch_size for every parameter (noise drawn on the grad's device)."""
    std = noise_multiplier * clip_norm
    for p in params:
        if std > 0:
            p.grad.add_(torch.randn(p.shape, generator=generator, device=p.device, dtype=p.dtype), alpha=std)
        p.grad.div_(expected_batch_size)


class ClippedGradient:
    """Σ_i clip(∇ℓ_i, C) into p.grad, by one of three backends.

    ghost:         ours (LinearGhostClipper): norms from activations × output-gradients, one product per layer.
    opacus_hooks:  opacus GradSampleModule: materializes per-sample gradients, then clips (the reference).
    opacus_ghost:  opacus' fast gradient clipping: norms by ghost clipping, then a second, reweighted backward.
    `loss_fn()` runs the forward pass of `model` and returns per-sample losses (B,); the opacus backends hook the
    model's layers, so calling the model's own methods is fine.
    """

    def __init__(self, model: nn.Module, clip_norm: float, mode: str = "ghost") -> None:
        if mode not in CLIPPING_MODES:
            raise UserError(f"unknown clipping mode '{mode}' (choose from: {', '.join(CLIPPING_MODES)})")
        self.model, self.clip_norm, self.mode = model, float(clip_norm), mode
        self.params = [p for p in model.parameters() if p.requires_grad]
        if mode == "ghost":
            self._ghost = LinearGhostClipper(model, clip_norm)
        elif mode == "opacus_hooks":
            from opacus import GradSampleModule

            self._wrapped = GradSampleModule(model, loss_reduction="sum")
        else:
            from opacus.grad_sample import GradSampleModuleFastGradientClipping

            self._wrapped = GradSampleModuleFastGradientClipping(
                model, max_grad_norm=clip_norm, use_ghost_clipping=True, loss_reduction="sum"
            )

    def __call__(self, loss_fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Run forward + clipped backward; returns (per-sample losses, per-sample gradient norms before clipping)."""
        if self.mode == "ghost":
            with self._ghost.capture():
                losses = loss_fn()
            return losses.detach(), self._ghost.backward(losses)
        if self.mode == "opacus_hooks":
            for p in self.params:
                p.grad_sample = None
            losses = loss_fn()
            losses.sum().backward()
            per_sample = [p.grad_sample.reshape(len(losses), -1) for p in self.params]
            norms = torch.cat(per_sample, dim=1).norm(dim=1)
            coef = (self.clip_norm / (norms + 1e-6)).clamp(max=1.0)
            for p, g in zip(self.params, per_sample):
                p.grad = (coef @ g).view_as(p)
                p.grad_sample = None
            return losses.detach(), norms.detach()
        wrapped = self._wrapped
        wrapped.enable_hooks()
        losses = loss_fn()
        losses.sum().backward(retain_graph=True)
        norms = wrapped.get_norm_sample()
        coef = wrapped.get_clipping_coef()
        wrapped.disable_hooks()
        for p in self.params:
            p.grad = None
        (losses * coef).sum().backward()
        wrapped.enable_hooks()
        return losses.detach(), norms.detach()
