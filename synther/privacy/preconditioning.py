"""A diagonal preconditioner for DP-SGD fitted on public data, applied to each per-sample gradient BEFORE clipping
(AdaDPS: Li, Zaheer, Reddi and Smith, "Private adaptive optimization with side information", ICML 2022).

Why: under DP-SGD at the sweeps' settings the Gaussian noise per coordinate (σC/B ≈ 1.5e-3 at ε = 10) is about ten
times the clipped signal's rms (≈ 1.2e-4), so Adam's second moment estimates the noise, which is the same in every
coordinate: DP-Adam moves every coordinate alike and loses the per-coordinate scaling that lets non-private
fine-tuning move small-gradient coordinates as far as large ones. Here the scaling comes from public rows instead:
each per-sample gradient g_i becomes D g_i with D ≈ diag(E_public[g²])^(-1/2) (RMSProp's), THEN is clipped to C and
noised. The sensitivity stays C (it is the preconditioned gradient that is clipped), σ and ε are unchanged, and D is
a function of public rows, their draws from --seed and the current (DP) weights only.

D is factored per Linear layer as Adafactor (Shazeer and Stern 2018) factors the second moment: with the bias as an
input column of ones, V_jk ≈ R_j C_k / S (R, C the row and column sums of E[g²], S their total), so
D_jk = r_j c_k and the preconditioned per-sample gradient (r ⊙ g)(c ⊙ x)ᵀ stays an outer product — ghost
clipping's norms and sums remain exact (synther.privacy.clipping.LayerScales). R and C come from the captured
layer inputs and output gradients without a per-sample gradient: E[g_j² (‖x‖² + 1)] and E[x_k² ‖g‖²].
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from synther.errors import UserError
from synther.privacy.clipping import LayerScales, LinearCapture
from synther.privacy.public_batches import PublicBatchRefit


class PublicDiagonalPreconditioner:
    """`fit` on public rows gives every Linear layer of `model` the factors (LayerScales) of D ≈ diag(E[g²])^(-1/2).

    `floor` (0, 1]: each factored second moment is raised to at least floor × its layer's mean before the inverse
    square root, so no factor exceeds 1/√floor times a typical one (coordinates public rows barely move would
    otherwise be amplified without bound). D is scaled by one constant so that the public rows' mean squared
    gradient norm is the same with and without it: clipping then acts at the scale it had."""

    def __init__(self, model: nn.Module, floor: float) -> None:
        if not 0 < floor <= 1:
            raise UserError(f"the preconditioner's floor must be in (0, 1], got {floor}")
        self.floor = floor
        self.capture = LinearCapture(model)
        self.scales: dict[nn.Linear, LayerScales] = {}

    @torch.no_grad()
    def _factors(self, layer: nn.Linear, x: torch.Tensor, g: torch.Tensor) -> LayerScales:
        x_sq, g_sq = x.square(), g.square()
        bias = layer.bias is not None
        x_norm_sq = x_sq.sum(1) + (1.0 if bias else 0.0)  # ‖x‖² (+ the bias column's 1)
        g_norm_sq = g_sq.sum(1)
        rows = (g_sq * x_norm_sq[:, None]).mean(0)  # R_j = E[g_j² (‖x‖² + 1)]
        cols = (x_sq * g_norm_sq[:, None]).mean(0)  # C_k = E[x_k² ‖g‖²]
        if bias:
            cols = torch.cat([cols, g_norm_sq.mean()[None]])  # the bias column: E[‖g‖²]
        total = rows.sum()
        if not total > 0:  # no public row moves this layer: uniform factors, not 0 · ∞
            return LayerScales(row=g.new_ones(g.shape[1]), col=x.new_ones(x.shape[1]), bias=x.new_ones(()))
        rows = rows.clamp(min=self.floor * float(rows.mean()))
        cols = cols.clamp(min=self.floor * float(cols.mean()))
        # D_jk = (R_j C_k / S)^(-1/2) = r_j c_k with S^(1/4) on each side
        r, c = total.pow(0.25) * rows.rsqrt(), total.pow(0.25) * cols.rsqrt()
        return LayerScales(row=r, col=c[:-1] if bias else c, bias=c[-1] if bias else c.new_ones(()))

    def fit(self, per_row_loss: Callable[[], torch.Tensor]) -> float:
        """Fit D on the public rows whose losses `per_row_loss()` returns (one loss per row, each depending on its
        own row only). Returns the ratio of D's largest factor to its median (how far D is from the identity)."""
        with self.capture.capture():
            losses = per_row_loss()
        layers = self.capture.layer_grads(losses)
        if not layers:
            raise RuntimeError("the public rows' loss reached no trainable Linear layer")
        scales = {layer: self._factors(layer, x, g.detach()) for layer, x, g in layers}
        with torch.no_grad():  # one constant: E‖D g‖² = E‖g‖² over the public rows
            raw = sum((g.square().sum(1) * (x.square().sum(1) + (layer.bias is not None))).sum()
                      for layer, x, g in layers)
            scaled = sum(((g * s.row).square().sum(1) * ((x * s.col).square().sum(1) + s.bias.square()
                                                          * (layer.bias is not None))).sum()
                         for (layer, x, g), s in zip(layers, scales.values()))
            gain = (raw / scaled).sqrt() if scaled > 0 else torch.ones(())
        self.scales = {layer: LayerScales(s.row * gain, s.col, s.bias) for layer, s in scales.items()}
        factors = torch.cat([torch.outer(s.row, torch.cat([s.col, s.bias[None]]) if layer.bias is not None
                                         else s.col).flatten() for layer, s in self.scales.items()])
        return float(factors.max() / factors.median())


class PublicPreconditioner(PublicBatchRefit):
    """DP fine-tuning's preconditioner: refit on `rows` fresh public rows (and draws from the public `seed`) every
    `every` steps at the current weights; calling it returns the layers' scales for the DP engine."""

    def __init__(self, model: nn.Module, public_rows: torch.Tensor, floor: float, rows: int, every: int, seed: int,
                 per_row_loss: Callable[..., torch.Tensor],
                 draw_sigma: Callable[[int, torch.Generator], torch.Tensor]) -> None:
        super().__init__(public_rows, rows, every, seed, per_row_loss, draw_sigma, "gradient preconditioner")
        self.preconditioner = PublicDiagonalPreconditioner(model, floor)
        self.spread = float("nan")

    def refit(self, per_row_loss: Callable[[], torch.Tensor]) -> None:
        self.spread = self.preconditioner.fit(per_row_loss)

    def __call__(self) -> dict[nn.Linear, LayerScales]:
        if not self.preconditioner.scales:
            raise RuntimeError("fit the preconditioner on public rows before a step uses it")
        return self.preconditioner.scales
