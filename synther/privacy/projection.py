"""Projecting DP-SGD's noisy gradient onto the subspace where public per-sample gradients lie (PDP-SGD, Zhou, Wu
and Banerjee, ICLR 2021).

DP-SGD adds N(0, σ²C²) to every one of the model's d coordinates while the clipped signal is concentrated in a few
directions: on the maze proxy (cpu-small, d = 254k) the top 128 directions of 1,024 public rows' per-sample
gradients hold 85 % of the sensitive data's mean clipped gradient, and the projected noise keeps √(k/d) = 2 % of its
norm. The projection is applied to the gradient AFTER the Gaussian noise is added, and the subspace is computed
from public rows and the current weights (themselves DP outputs): post-processing, no privacy cost, no change to
the accountant.

The subspace never materializes a per-sample gradient. For an MLP, public row i's gradient of a Linear layer is
(g_i x_iᵀ, g_i), so the Gram matrix of the m public gradients is K = Σ_layers (G Gᵀ) ⊙ (X Xᵀ + 1); with K's top-k
eigenpairs (U, Λ) the projection of a gradient v is P v = Aᵀ U Λ⁻¹ Uᵀ (A v), A the m × d matrix of public
gradients, and A v and Aᵀ w are one matrix product per layer (like ghost clipping's).

Measured (session 37, results/issue14-session37-subspace.md): on the maze proxy the projection's bias costs more
than the noise it removes — even without noise it keeps only a third to a half of what fine-tuning learns at
mid noise levels — so `--dp.public_subspace` is off by default.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from synther.errors import UserError
from synther.privacy.clipping import LinearCapture
from synther.privacy.public_batches import PublicBatchRefit


class PublicGradientSubspace:
    """The top-`rank` subspace of public rows' per-sample gradients of `model` (Linear layers only); `fit` it on a
    public batch, then `project_()` replaces every trainable parameter's .grad by its projection."""

    def __init__(self, model: nn.Module, rank: int) -> None:
        if rank < 1:
            raise UserError(f"the public gradient subspace needs rank ≥ 1, got {rank}")
        self.rank = rank
        self.capture = LinearCapture(model)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self._layers: list[tuple[nn.Linear, torch.Tensor, torch.Tensor]] = []
        self._mix: torch.Tensor | None = None  # U Λ⁻¹ Uᵀ (m × m)
        self._unreached: list[nn.Parameter] = []  # parameters of layers the public rows' loss does not reach

    def fit(self, per_row_loss: Callable[[], torch.Tensor]) -> float:
        """Compute the subspace from the public rows whose losses `per_row_loss()` returns (a forward pass of the
        model; one loss per row, each depending on its own row only). Returns the share of the public gradients'
        squared norm the subspace holds."""
        with self.capture.capture():
            losses = per_row_loss()
        layers = self.capture.layer_grads(losses)
        gram = None
        for layer, x, g in layers:
            xx = x @ x.T
            if layer.bias is not None:
                xx += 1.0
            term = (g @ g.T).mul_(xx)
            gram = term if gram is None else gram.add_(term)
        if gram is None:
            raise RuntimeError("the public rows' loss reached no trainable Linear layer")
        evals, evecs = torch.linalg.eigh(gram.double())  # ascending
        total = float(evals.clamp(min=0).sum())
        keep = (evals > evals[-1] * 1e-9).nonzero().squeeze(1)[-self.rank:]  # a rank-deficient batch keeps fewer
        u, lam = evecs[:, keep], evals[keep]
        self._mix = ((u / lam) @ u.T).to(gram.dtype)
        self._layers = [(layer, x, g.detach()) for layer, x, g in layers]
        reached = {id(p) for layer, _, _ in layers for p in layer.parameters(recurse=False)}
        self._unreached = [p for p in self.params if id(p) not in reached]
        return float(lam.sum()) / total if total > 0 else 0.0

    @torch.no_grad()
    def project_(self) -> None:
        """p.grad ← P p.grad for every trainable parameter (P the orthogonal projection onto the subspace)."""
        if self._mix is None:
            raise RuntimeError("fit the subspace on public rows before projecting")
        coords = None  # A v: the inner product of v with every public row's gradient
        for layer, x, g in self._layers:
            c = ((g @ layer.weight.grad) * x).sum(1)
            if layer.bias is not None:
                c += g @ layer.bias.grad
            coords = c if coords is None else coords.add_(c)
        w = self._mix @ coords
        for layer, x, g in self._layers:
            gw = g * w[:, None]
            layer.weight.grad.copy_(gw.T @ x)
            if layer.bias is not None:
                layer.bias.grad.copy_(gw.sum(0))
        for p in self._unreached:  # a layer no public row's loss reaches has no component in the subspace
            p.grad.zero_()


class PublicSubspaceProjector(PublicBatchRefit):
    """DP fine-tuning's projection step: every `every` steps a fresh batch of `rows` public rows (and their
    diffusion draws, from a generator seeded by the public `seed`) defines the subspace at the current weights;
    every step's noisy gradient is projected onto it. `per_row_loss(x, sigma, noise)` is the model's loss."""

    def __init__(self, model: nn.Module, public_rows: torch.Tensor, rank: int, rows: int, every: int, seed: int,
                 per_row_loss: Callable[..., torch.Tensor], draw_sigma: Callable[[int, torch.Generator],
                                                                                  torch.Tensor]) -> None:
        if rows < rank:
            raise UserError(f"the public gradient subspace of rank {rank} needs at least as many public rows per "
                            f"fit, got {rows}")
        super().__init__(public_rows, rows, every, seed, per_row_loss, draw_sigma, "public gradient subspace")
        self.subspace = PublicGradientSubspace(model, rank)
        self.held_share = float("nan")

    def refit(self, per_row_loss: Callable[[], torch.Tensor]) -> None:
        self.held_share = self.subspace.fit(per_row_loss)

    def __call__(self) -> None:
        self.subspace.project_()
