"""Fast per-sample gradient clipping for MLPs (book-keeping / ghost-norm style).

For a linear layer y = W x + b applied to (batch, features) inputs, the per-sample gradient of W is the outer
product g_i x_iᵀ (g_i = ∂ℓ_i/∂y_i), so its norm is ‖g_i‖·‖x_i‖ and the bias gradient's norm is ‖g_i‖. One
backward pass that stops at the layer outputs gives every g_i; per-sample norms then cost O(batch·width) and
the clipped sum Σ_i c_i g_i x_iᵀ is one matrix product per layer, (c ⊙ G)ᵀ X. No per-sample gradient tensor is
ever materialized, so time and memory stay close to a non-private step.

Limits, checked at construction: every trainable parameter must belong to an nn.Linear, each Linear must be
called once per forward pass on 2-D (batch, features) input, and no computation may mix samples (no batch
norm). The diffusion denoiser satisfies all three by design.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from synther.errors import UserError


class LinearGhostClipper:
    """Computes Σ_i clip(∇ℓ_i, C) into `.grad` of every parameter of `model`, with per-sample norms ‖∇ℓ_i‖."""

    def __init__(self, model: nn.Module, clip_norm: float) -> None:
        if clip_norm <= 0:
            raise UserError(f"clip norm must be positive, got {clip_norm}")
        self.model = model
        self.clip_norm = float(clip_norm)
        self.layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
        covered = {id(p) for m in self.layers for p in m.parameters(recurse=False)}
        foreign = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in covered]
        if foreign:
            raise UserError(
                f"fast clipping supports models whose trainable parameters are all in nn.Linear layers; "
                f"found others: {', '.join(foreign[:5])} (use an opacus clipping mode instead)"
            )
        self._records: list[tuple[nn.Linear, torch.Tensor, torch.Tensor]] = []
        self._capturing = False
        self._handles = [m.register_forward_hook(self._hook) for m in self.layers]

    def _hook(self, module: nn.Linear, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if not self._capturing or not module.weight.requires_grad:
            return
        x = inputs[0]
        if x.dim() != 2:
            raise UserError(f"fast clipping needs (batch, features) inputs to every Linear, got shape {tuple(x.shape)}")
        if any(m is module for m, _, _ in self._records):
            raise UserError("fast clipping needs each Linear layer to be used once per forward pass")
        self._records.append((module, x.detach(), output))

    @contextmanager
    def capture(self) -> Iterator[None]:
        """Record layer inputs/outputs of the forward pass run inside this block."""
        self._records.clear()
        self._capturing = True
        try:
            yield
        finally:
            self._capturing = False

    def backward(self, per_sample_losses: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """Set p.grad = scale · Σ_i min(1, C/‖∇ℓ_i‖)·∇ℓ_i for all parameters; return the norms ‖∇ℓ_i‖ (B,).

        `per_sample_losses` (B,) must come from a forward pass run inside `capture()`; ℓ_i may depend only on
        sample i. `scale` (e.g. 1/expected batch size) is folded into the clip factors for free.
        """
        if per_sample_losses.dim() != 1:
            raise ValueError("per_sample_losses must have shape (batch,)")
        records, self._records = self._records, []
        if not records:
            raise RuntimeError("no forward pass was captured: run the model inside `with clipper.capture():`")
        outputs = [out for _, _, out in records]
        grads = torch.autograd.grad(per_sample_losses.sum(), outputs, allow_unused=True)
        batch = per_sample_losses.shape[0]
        sq_norms = per_sample_losses.new_zeros(batch)
        used = []
        for (layer, x, _), g in zip(records, grads):
            if g is None:  # a layer that did not influence the loss has zero gradient
                continue
            g_sq = torch.einsum("ij,ij->i", g, g)  # row norms without a (B, width) temporary
            x_sq = torch.einsum("ij,ij->i", x, x)
            sq_norms += g_sq * (x_sq + (1.0 if layer.bias is not None else 0.0))
            used.append((layer, x, g))
        norms = sq_norms.sqrt()
        # opacus' clip factor, so results match its DPOptimizer exactly
        coef = (self.clip_norm / (norms + 1e-6)).clamp(max=1.0) * scale
        for layer, x, g in used:
            gc = g * coef.unsqueeze(1)  # not in place: autograd may hand one tensor to two layers (x + y)
            layer.weight.grad = gc.t().mm(x)
            if layer.bias is not None:
                layer.bias.grad = coef @ g
        used_layers = {id(layer) for layer, _, _ in used}
        for layer in self.layers:  # layers that did not influence the loss get an explicit zero gradient
            if id(layer) not in used_layers:
                for p in layer.parameters(recurse=False):
                    p.grad = torch.zeros_like(p) if p.requires_grad else None
        return norms.detach()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
