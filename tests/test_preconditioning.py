"""DP-SGD with a public diagonal preconditioner applied before clipping (synther.privacy.preconditioning and the
ghost clipper's layer_scales)."""
import pytest
import torch
from torch import nn

from synther.errors import UserError
from synther.privacy.clipping import LayerScales, LinearGhostClipper
from synther.privacy.engine import DPSGD, DPSettings
from synther.privacy.preconditioning import PublicDiagonalPreconditioner


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5, bias=False), nn.Tanh(), nn.Linear(5, 3))


def _rows(m: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, 4, generator=g), torch.randn(m, 3, generator=g)


def _per_row_loss(model, x, y):
    return (model(x) - y).square().sum(1)


def _per_row_grads(model, x, y) -> torch.Tensor:
    """(m, d) per-row gradients by autograd, parameters in model.parameters() order."""
    params = list(model.parameters())
    return torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(
        _per_row_loss(model, x[i:i + 1], y[i:i + 1]).sum(), params)]) for i in range(len(x))]).double()


def _diagonal(model, scales) -> torch.Tensor:
    """The preconditioner D as a vector over model.parameters() (weight: row ⊗ col, bias: bias · row)."""
    parts = []
    for layer in (m for m in model.modules() if isinstance(m, nn.Linear)):
        s = scales[layer]
        parts.append(torch.outer(s.row, s.col).reshape(-1))
        if layer.bias is not None:
            parts.append(s.row * s.bias)
    return torch.cat(parts).double()


def _random_scales(model, seed: int = 2) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {layer: LayerScales(row=torch.rand(layer.out_features, generator=g) * 3 + 0.1,
                               col=torch.rand(layer.in_features, generator=g) * 3 + 0.1,
                               bias=torch.rand((), generator=g) * 3 + 0.1)
            for layer in model.modules() if isinstance(layer, nn.Linear)}


def _grad(model) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double()


@pytest.mark.parametrize("rows_per_sample", [1, 2])
def test_ghost_clipping_clips_the_preconditioned_per_sample_gradients(rows_per_sample):
    """With layer_scales the norms are ‖D ∇ℓ_i‖ and the sum is Σ clip(D ∇ℓ_i, C), D materialized here from the
    factors and the per-sample gradients from autograd row by row."""
    model = _mlp()
    x, y = _rows(12)
    scales = _random_scales(model)
    clipper = LinearGhostClipper(model, clip_norm=12.0)
    with clipper.capture():
        losses = _per_row_loss(model, x, y)
    norms = clipper.backward(losses, rows_per_sample=rows_per_sample, layer_scales=scales)
    per_sample = _per_row_grads(model, x, y).reshape(12 // rows_per_sample, rows_per_sample, -1).sum(1)
    preconditioned = per_sample * _diagonal(model, scales)
    torch.testing.assert_close(norms.double(), preconditioned.norm(dim=1), rtol=1e-4, atol=1e-6)
    assert (norms > 12.0).any() and (norms < 12.0).any()  # both branches of the clip
    coef = (12.0 / (preconditioned.norm(dim=1) + 1e-6)).clamp(max=1.0)
    torch.testing.assert_close(_grad(model), (coef[:, None] * preconditioned).sum(0), rtol=1e-4, atol=1e-6)


def test_without_a_preconditioner_the_clipper_is_unchanged_and_identity_scales_change_nothing():
    model = _mlp()
    x, y = _rows(10)
    clipper = LinearGhostClipper(model, clip_norm=0.5)
    results = []
    for scales in (None, {layer: LayerScales(torch.ones(layer.out_features), torch.ones(layer.in_features),
                                             torch.ones(())) for layer in clipper.layers}):
        with clipper.capture():
            losses = _per_row_loss(model, x, y)
        results.append((clipper.backward(losses, layer_scales=scales), _grad(model)))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=0, atol=0)


def test_the_fitted_preconditioner_is_the_factored_inverse_root_of_the_public_second_moment():
    """Per layer, with the bias as a column of ones: R_j, C_k the row and column sums of E[g²] (from materialized
    per-row gradients), floored at floor × their mean, D_jk ∝ (R_j C_k / S)^(-1/2); one constant makes
    E‖D g‖² = E‖g‖²."""
    model = _mlp()
    x, y = _rows(40)
    x[:, 3] = 0.0  # an input no public row uses: its column's second moment is 0, so the floor decides its factor
    floor = 0.05
    pre = PublicDiagonalPreconditioner(model, floor)
    spread = pre.fit(lambda: _per_row_loss(model, x, y))
    grads = _per_row_grads(model, x, y)
    expected, offset = [], 0
    for layer in (m for m in model.modules() if isinstance(m, nn.Linear)):
        n_w = layer.weight.numel()
        v = grads[:, offset: offset + n_w].square().mean(0).reshape(layer.out_features, layer.in_features)
        offset += n_w
        if layer.bias is not None:
            v = torch.cat([v, grads[:, offset: offset + layer.out_features].square().mean(0)[:, None]], 1)
            offset += layer.out_features
        rows, cols, total = v.sum(1), v.sum(0), v.sum()
        rows, cols = rows.clamp(min=floor * rows.mean()), cols.clamp(min=floor * cols.mean())
        d = (total / torch.outer(rows, cols)).sqrt()
        expected.append(torch.cat([d[:, :layer.in_features].reshape(-1), d[:, layer.in_features]])
                        if layer.bias is not None else d.reshape(-1))
    expected = torch.cat(expected)
    expected *= (grads.square().sum(1).mean() / (grads * expected).square().sum(1).mean()).sqrt()
    got = _diagonal(model, pre.scales)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=0)
    assert torch.isfinite(got).all()
    assert spread == pytest.approx(float(got.max() / got.median()), rel=1e-5)


def test_the_engine_clips_the_preconditioned_gradient_so_one_record_moves_it_by_at_most_c():
    """One record, sampled with certainty, no noise: the step's gradient is clip(D ∇ℓ, C) — its norm is C when the
    preconditioned gradient exceeds it, and it points along D ∇ℓ, not ∇ℓ."""
    model = _mlp()
    x, y = _rows(1)
    scales = _random_scales(model)
    settings = DPSettings(noise_multiplier=0.0, clip_norm=0.01, sample_rate=1.0)
    engine = DPSGD(model, None, 1, settings, seed=0, precondition=lambda: scales)
    engine.step(engine.sample(), lambda rows: _per_row_loss(model, x[rows], y[rows]))
    preconditioned = _per_row_grads(model, x, y)[0] * _diagonal(model, scales)
    assert preconditioned.norm() > 0.01
    assert _grad(model).norm().item() == pytest.approx(0.01, rel=1e-4)
    torch.testing.assert_close(_grad(model), 0.01 * preconditioned / preconditioned.norm(), rtol=1e-3, atol=1e-7)


def test_a_layer_no_public_row_moves_gets_uniform_finite_factors():
    model = _mlp()
    x, y = _rows(8)
    with torch.no_grad():
        model[4].weight.zero_()  # the last layer's inputs still flow, but nothing reaches the layers before it
    pre = PublicDiagonalPreconditioner(model, 0.01)
    pre.fit(lambda: _per_row_loss(model, x, y))
    first = pre.scales[model[0]]
    assert torch.equal(first.col, torch.ones(4)) and torch.equal(first.row, first.row[0].expand(6))  # uniform
    assert all(torch.isfinite(torch.cat([s.row, s.col, s.bias[None]])).all() for s in pre.scales.values())


def test_preconditioning_refusals():
    model = _mlp()
    with pytest.raises(UserError, match="floor"):
        PublicDiagonalPreconditioner(model, 0.0)
    with pytest.raises(UserError, match="needs clipping 'ghost'"):
        DPSGD(model, None, 4, DPSettings(noise_multiplier=1.0, clip_norm=1.0, sample_rate=0.5,
                                         clipping_mode="opacus_hooks"), seed=0, precondition=lambda: {})
