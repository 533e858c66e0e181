"""Fast per-sample gradient clipping for MLPs (book-keeping / ghost-norm style).

For a linear layer y = W x + b applied to (batch, features) inputs, the per-sample gradient of W is the outer
product g_i x_iᵀ (g_i = ∂ℓ_i/∂y_i), so its norm is ‖g_i‖·‖x_i‖ and the bias gradient's norm is ‖g_i‖. One
backward pass that stops at the layer outputs gives every g_i; per-sample norms then cost O(batch·width) and
the clipped sum Σ_i c_i g_i x_iᵀ is one matrix product per layer, (c ⊙ G)ᵀ X. No per-sample gradient tensor is
ever materialized, so time and memory stay close to a non-private step.

Noise multiplicity: a record's loss may be the mean of K rows (K diffusion noise draws of the same record, laid out
contiguously). Its gradient is then Σ_k g_k x_kᵀ, whose squared norm is Σ_{k,l} (g_k·g_l)(x_k·x_l): two K×K Gram
matrices per record and layer, O(B·K²·width), still no per-sample gradient. Clipping acts on the record, not the row.

Limits, checked at construction: every trainable parameter must belong to an nn.Linear, each Linear must be
called once per forward pass on 2-D (batch, features) input, and no computation may mix samples (no batch
norm). The diffusion denoiser satisfies all three by design.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Mapping, NamedTuple

import torch
from torch import nn

from synther.errors import UserError


class LinearCapture:
    """Records every nn.Linear's input x_i and output-gradient g_i per row, from which per-sample gradients of an
    MLP follow without being materialized (∇W_i = g_i x_iᵀ, ∇b_i = g_i)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
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

    def layer_grads(self, per_row_losses: torch.Tensor) -> list[tuple[nn.Linear, torch.Tensor, torch.Tensor]]:
        """(layer, X, G) for every Linear the captured forward pass used: X (rows, in) its inputs, G (rows, out) the
        gradients of Σ per_row_losses with respect to its outputs. Consumes the capture."""
        records, self._records = self._records, []
        if not records:
            raise RuntimeError("no forward pass was captured: run the model inside `with clipper.capture():`")
        grads = torch.autograd.grad(per_row_losses.sum(), [out for _, _, out in records], allow_unused=True)
        # a layer that did not influence the loss has zero gradient (its callers handle it)
        return [(layer, x, g) for (layer, x, _), g in zip(records, grads) if g is not None]

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


class LayerScales(NamedTuple):
    """A diagonal preconditioner of one Linear layer in factored form: its weight gradient g xᵀ becomes
    (row ⊙ g)(col ⊙ x)ᵀ and its bias gradient g becomes bias · (row ⊙ g) (the bias is the input column of ones)."""

    row: torch.Tensor  # (out,)
    col: torch.Tensor  # (in,)
    bias: torch.Tensor  # () the bias column's factor


class LinearGhostClipper(LinearCapture):
    """Computes Σ_i clip(∇ℓ_i, C) into `.grad` of every parameter of `model`, with per-sample norms ‖∇ℓ_i‖."""

    def __init__(self, model: nn.Module, clip_norm: float) -> None:
        if clip_norm <= 0:
            raise UserError(f"clip norm must be positive, got {clip_norm}")
        super().__init__(model)
        self.clip_norm = float(clip_norm)

    def backward(self, per_sample_losses: torch.Tensor, scale: float = 1.0, accumulate: bool = False,
                 rows_per_sample: int = 1, layer_scales: Mapping[nn.Linear, LayerScales] | None = None
                 ) -> torch.Tensor:
        """p.grad = scale · Σ_i min(1, C/‖∇ℓ_i‖)·∇ℓ_i for all parameters (added to p.grad if `accumulate`, e.g.
        onto the DP noise, in the same matrix product); returns the norms ‖∇ℓ_i‖ (B,).

        `per_sample_losses` (B·K,) must come from a forward pass run inside `capture()`, K = `rows_per_sample`:
        sample i owns rows iK … iK+K−1 and ℓ_i is the sum of their losses (pass each row's loss / K for a mean);
        a row's loss may depend only on its own input row. `scale` (e.g. 1/expected batch size) is folded into
        the clip factors for free. `layer_scales` (a factored diagonal preconditioner D, per layer) replaces
        every per-sample gradient ∇ℓ_i by D ∇ℓ_i BEFORE its norm is taken and it is clipped: the sum is then of
        clip(D ∇ℓ_i, C), still of norm ≤ C per sample (layers without an entry keep D = 1).
        """
        if per_sample_losses.dim() != 1:
            raise ValueError("per_sample_losses must have shape (batch·rows_per_sample,)")
        k = int(rows_per_sample)
        if k < 1 or per_sample_losses.shape[0] % k:
            raise ValueError(f"{per_sample_losses.shape[0]} loss rows cannot be split into samples of {k} rows")
        num_samples = per_sample_losses.shape[0] // k
        if accumulate and any(p.grad is None for layer in self.layers for p in layer.parameters() if p.requires_grad):
            raise RuntimeError("accumulate=True needs every parameter's .grad to be set")
        used = self.layer_grads(per_sample_losses)
        if layer_scales is not None:  # (r ⊙ g)(c ⊙ x)ᵀ: scaling the captured rows scales every per-sample gradient
            used = [(layer, x * layer_scales[layer].col, g * layer_scales[layer].row) if layer in layer_scales
                    else (layer, x, g) for layer, x, g in used]
        groups, layer_sq = [], []
        for items in self._groups(used):
            # X (L, B, in), G (L, B, out): layers of one shape stacked, so each op below is one kernel per group
            X = torch.stack([x for _, x, _ in items]) if len(items) > 1 else items[0][1].unsqueeze(0)
            G = torch.stack([g for _, _, g in items]) if len(items) > 1 else items[0][2].unsqueeze(0)
            bias = _bias_factors(items, layer_scales, X)  # None, or (L,) factors of the bias column
            # (L, B): each layer's share of each sample's squared norm
            layer_sq.append(_rows_sq_norm(X, G, bias) if k == 1 else _gram_sq_norm(X, G, bias, k))
            groups.append((items, X, G, bias))
        if layer_sq:
            norms = torch.cat(layer_sq).sum(0).sqrt()
        else:
            norms = per_sample_losses.new_zeros(num_samples)
        # opacus' clip factor, so results match its DPOptimizer exactly
        coef = (self.clip_norm / (norms + 1e-6)).clamp(max=1.0) * scale
        row_coef = coef if k == 1 else coef.repeat_interleave(k)  # every row of a sample gets its sample's factor
        for items, X, G, bias in groups:
            CG = G * row_coef[None, :, None]  # not in place: autograd may hand one tensor to two layers (x + y)
            weight_grads = None
            if accumulate and len(items) == 1:  # Σ_i c_i g_i x_iᵀ by one GEMM that adds onto p.grad as it writes
                items[0][0].weight.grad.addmm_(CG[0].t(), X[0])
            else:
                weight_grads = torch.bmm(CG.transpose(1, 2), X)
            bias_grads = None if bias is None else CG.sum(1)  # (L, out)
            if bias_grads is not None and layer_scales is not None:
                bias_grads *= bias[:, None]
            for k, (layer, _, _) in enumerate(items):
                if weight_grads is not None:
                    _store_grad(layer.weight, weight_grads[k], accumulate)
                if bias_grads is not None:
                    _store_grad(layer.bias, bias_grads[k], accumulate)
        if not accumulate:  # layers that did not influence the loss get an explicit zero gradient
            used_layers = {id(layer) for layer, _, _ in used}
            for layer in self.layers:
                if id(layer) not in used_layers:
                    for p in layer.parameters(recurse=False):
                        p.grad = torch.zeros_like(p) if p.requires_grad else None
        return norms.detach()

    @staticmethod
    def _groups(used: list[tuple[nn.Linear, torch.Tensor, torch.Tensor]]
                ) -> list[list[tuple[nn.Linear, torch.Tensor, torch.Tensor]]]:
        """On CUDA, layers with the same input/output shapes and bias form one group: a step at the paper's sizes
        is bound by kernel launches there, and a group costs the launches of one layer. On the CPU stacking would
        only copy, so every layer is its own group."""
        if not used or not used[0][1].is_cuda:
            return [[item] for item in used]
        groups: dict[tuple, list] = {}
        for item in used:
            layer, x, g = item
            groups.setdefault((tuple(x.shape), tuple(g.shape), layer.bias is not None, x.dtype), []).append(item)
        return list(groups.values())


def _bias_factors(items: list[tuple[nn.Linear, torch.Tensor, torch.Tensor]],
                  layer_scales: Mapping[nn.Linear, LayerScales] | None, X: torch.Tensor) -> torch.Tensor | None:
    """The bias column's factor of each layer of a group (L,), ones without a preconditioner; None: no bias."""
    if items[0][0].bias is None:
        return None
    if layer_scales is None:
        return X.new_ones(len(items))
    return torch.stack([layer_scales[layer].bias if layer in layer_scales else X.new_ones(())
                        for layer, _, _ in items])


def _rows_sq_norm(X: torch.Tensor, G: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """(L, B) squared per-sample gradient norms of L layers, one row per sample: ‖g_i‖²(‖x_i‖² + b²), b the bias
    column's factor (L,) (1 unpreconditioned; none without a bias)."""
    g_sq = torch.linalg.vector_norm(G, dim=2).square_()  # row norms without a (B, width) temporary
    x_sq = torch.linalg.vector_norm(X, dim=2).square_()
    if bias is not None:  # ‖∇W_i‖² + ‖∇b_i‖² = ‖g_i‖²(‖x_i‖² + b²)
        x_sq += bias.square()[:, None]
    return g_sq.mul_(x_sq)


def _gram_sq_norm(X: torch.Tensor, G: torch.Tensor, bias: torch.Tensor | None, k: int) -> torch.Tensor:
    """(L, B) squared norms of Σ_k g_k x_kᵀ (+ b Σ_k g_k for the bias) over each sample's k rows:
    Σ_{k,l} (g_k·g_l)(x_k·x_l + b²)."""
    L, rows = X.shape[:2]
    Xs, Gs = X.reshape(L * rows // k, k, -1), G.reshape(L * rows // k, k, -1)
    xx = torch.bmm(Xs, Xs.transpose(1, 2))
    if bias is not None:
        xx.view(L, rows // k, k, k).add_(bias.square()[:, None, None, None])
    return (torch.bmm(Gs, Gs.transpose(1, 2)) * xx).sum((1, 2)).view(L, rows // k)


def _store_grad(param: nn.Parameter, grad: torch.Tensor, accumulate: bool) -> None:
    if accumulate:
        param.grad.add_(grad)
    else:
        param.grad = grad
