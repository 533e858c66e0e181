"""Projecting DP-SGD's noisy gradient onto the public gradient subspace (synther.privacy.projection)."""
import pytest
import torch
from torch import nn

from synther.diffusion.denoiser import DenoiserConfig
from synther.diffusion.edm import EDM
from synther.diffusion.normalizer import Normalizer
from synther.errors import UserError
from synther.privacy.engine import DPSGD, DPSettings
from synther.privacy.projection import PublicGradientSubspace


def _edm(dim: int = 5, seed: int = 0) -> EDM:
    torch.manual_seed(seed)
    return EDM(dim, Normalizer.identity(dim), DenoiserConfig(width=16, depth=2, cond_dim=8, fourier_dim=4))


def _public_batch(model: EDM, m: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, model.dim, generator=g)
    return x, model.draw_sigma(m, g), torch.randn(x.shape, generator=g)


def _per_sample_grads(model: EDM, x, sigma, noise) -> torch.Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for i in range(len(x)):
        loss = model.per_sample_loss(x[i:i + 1], sigma[i:i + 1], noise[i:i + 1]).sum()
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
    return torch.stack(rows).double()


def _set_grad(model: nn.Module, flat: torch.Tensor) -> None:
    offset = 0
    for p in model.parameters():
        p.grad = flat[offset: offset + p.numel()].view_as(p).float().clone()
        offset += p.numel()


def _grad(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double()


@pytest.mark.parametrize("rank", [3, 12])
def test_projection_is_the_orthogonal_projection_onto_the_top_public_gradient_directions(rank):
    """Without materializing a per-sample gradient, project_ equals V Vᵀ v, V the top-`rank` right singular vectors
    of the public rows' per-sample gradient matrix (computed here row by row with autograd)."""
    model = _edm()
    x, sigma, noise = _public_batch(model, 20)
    subspace = PublicGradientSubspace(model, rank)
    share = subspace.fit(lambda: model.per_sample_loss(x, sigma, noise))
    A = _per_sample_grads(model, x, sigma, noise)
    _, s, vh = torch.linalg.svd(A, full_matrices=False)
    V = vh[:rank].T
    assert share == pytest.approx(float(s[:rank].square().sum() / s.square().sum()), rel=1e-3)
    v = torch.randn(A.shape[1], generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    _set_grad(model, v)
    subspace.project_()
    projected = _grad(model)
    expected = V @ (V.T @ v)
    torch.testing.assert_close(projected, expected, rtol=1e-3, atol=1e-5 * expected.abs().max().item())
    subspace.project_()  # a projection: applying it twice changes nothing
    torch.testing.assert_close(_grad(model), projected, rtol=1e-3, atol=1e-5 * expected.abs().max().item())
    # a direction orthogonal to every public gradient is removed entirely
    u = v - torch.linalg.pinv(A) @ (A @ v)
    _set_grad(model, u)
    subspace.project_()
    assert _grad(model).norm() < 1e-3 * u.norm()


def test_projection_needs_a_fit_and_a_positive_rank():
    model = _edm()
    with pytest.raises(UserError, match="rank"):
        PublicGradientSubspace(model, 0)
    with pytest.raises(RuntimeError, match="fit"):
        PublicGradientSubspace(model, 2).project_()


def test_the_engine_projects_the_noisy_gradient_after_the_noise():
    """What the projection receives is exactly the clipped sum plus the Gaussian noise a run without it leaves in
    p.grad (same seeded engine): the noise is full, the projection post-processes it."""
    x = torch.randn(64, 5, generator=torch.Generator().manual_seed(0))
    sigma = torch.full((64,), 0.5)
    noise = torch.randn(64, 5, generator=torch.Generator().manual_seed(1))
    settings = DPSettings(noise_multiplier=1.0, clip_norm=0.5, sample_rate=0.25)

    def loss(model):
        return lambda rows: model.per_sample_loss(x[rows], sigma[rows], noise[rows])

    plain = _edm()
    engine = DPSGD(plain, None, len(x), settings, seed=3)
    engine.step(engine.sample(), loss(plain))
    seen = []
    projected = _edm()
    engine = DPSGD(projected, None, len(x), settings, seed=3, project=lambda: seen.append(_grad(projected)))
    engine.step(engine.sample(), loss(projected))
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], _grad(plain))
    assert _grad(plain).std() > 0.5 * 0.5 / 16  # the noise (σC/(qN) = 1/32 per coordinate) is in it
