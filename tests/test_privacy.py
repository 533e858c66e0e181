"""Every DP claim, tested: accounting, Poisson sampling, per-sample clipping, noise scale, clipping backends."""
import numpy as np
import pytest
import torch
from torch.func import functional_call, grad, vmap

from synther.data import TransitionLayout
from synther.diffusion.denoiser import DenoiserConfig
from synther.diffusion.edm import EDM
from synther.diffusion.normalizer import Normalizer
from synther.errors import UserError
from synther.privacy.accounting import calibrate_noise_multiplier, epsilon_spent
from synther.privacy.clipping import LinearGhostClipper
from synther.privacy.dpsgd import GaussianNoise, PoissonSampler, clipping_backend
from synther.privacy.ledger import PrivacyLedger

from devices import DEVICES

LAYOUT = TransitionLayout(obs_dim=4, action_dim=2)


def tiny_edm(seed: int = 0) -> EDM:
    torch.manual_seed(seed)
    return EDM(LAYOUT.dim, Normalizer.identity(LAYOUT.dim), DenoiserConfig(width=32, depth=2, cond_dim=16))


def fixed_batch(n: int = 24, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, LAYOUT.dim, generator=g)
    sigma = torch.exp(torch.randn(n, generator=g) * 1.2 - 1.2)
    noise = torch.randn(n, LAYOUT.dim, generator=g)
    return x, sigma, noise


class _LossModule(torch.nn.Module):
    """Exposes per_sample_loss as forward, so torch.func can differentiate it one sample at a time."""

    def __init__(self, model: EDM) -> None:
        super().__init__()
        self.m = model

    def forward(self, x, sigma, noise):
        return self.m.per_sample_loss(x, sigma, noise)


def independent_per_sample_grads(model: EDM, x, sigma, noise) -> torch.Tensor:
    """(B, P) per-sample gradients by torch.func (vmap of grad), independent of any clipping code under test."""
    wrapper = _LossModule(model)
    params = {k: v.detach() for k, v in wrapper.named_parameters()}
    buffers = dict(wrapper.named_buffers())

    def one(p, xi, si, ni):
        return functional_call(wrapper, {**p, **buffers}, (xi[None], si[None], ni[None]))[0]

    g = vmap(grad(one), in_dims=(None, 0, 0, 0))(params, x, sigma, noise)
    return torch.cat([g[k].reshape(len(x), -1) for k in params], dim=1)


@pytest.mark.slow
@pytest.mark.parametrize("accountant", ["rdp", "prv"])
@pytest.mark.parametrize("target", [1.0, 10.0])
def test_calibrated_sigma_meets_target_and_is_tight(accountant, target):
    q, steps, delta = 128 / 80_000, 3125, 1e-6
    sigma = calibrate_noise_multiplier(target, delta, q, steps, accountant)
    eps = epsilon_spent([(sigma, q, steps)], delta, accountant)
    assert eps <= target
    assert eps >= target - 0.02  # calibrated, not wastefully large
    assert epsilon_spent([(sigma * 0.97, q, steps)], delta, accountant) > target


def test_calibration_charges_prior_mechanisms():
    q, steps, delta, target = 0.01, 500, 1e-5, 5.0
    alone = calibrate_noise_multiplier(target, delta, q, steps)
    with_prior = calibrate_noise_multiplier(target, delta, q, steps, prior=[(5.0, 1.0, 1)])
    assert with_prior > alone
    assert epsilon_spent([(5.0, 1.0, 1), (with_prior, q, steps)], delta) <= target
    with pytest.raises(UserError, match="already spent"):
        calibrate_noise_multiplier(target, delta, q, steps, prior=[(0.1, 1.0, 1)])


@pytest.mark.parametrize("eps, delta", [(0.0, 1e-6), (-1.0, 1e-6), (float("inf"), 1e-6), (1.0, 0.0), (1.0, 1.5)])
def test_bad_privacy_targets_are_user_errors(eps, delta):
    with pytest.raises(UserError):
        calibrate_noise_multiplier(eps, delta, 0.01, 100)


def test_poisson_sampler_includes_each_record_independently():
    n, q, draws = 2000, 0.05, 400
    sampler = PoissonSampler(n, q, torch.Generator().manual_seed(0))
    counts = torch.zeros(n)
    sizes = []
    for _ in range(draws):
        idx = sampler.sample()
        assert len(torch.unique(idx)) == len(idx)  # no duplicates within a batch
        counts[idx] += 1
        sizes.append(len(idx))
    sizes = np.array(sizes)
    # batch size is Binomial(n, q): mean nq = 100, variance nq(1-q) = 95 — not a fixed batch size
    assert abs(sizes.mean() - n * q) < 3 and 60 < sizes.var() < 135 and sizes.min() != sizes.max()
    # every record's inclusion frequency is q (binomial(400, 0.05): std ≈ 0.011)
    freq = counts / draws
    assert abs(freq.mean().item() - q) < 0.002 and freq.std().item() < 0.02


@pytest.mark.parametrize("device", DEVICES)
def test_every_clipped_contribution_is_bounded_and_sums_match_independent_grads(device):
    model, (x, sigma, noise) = tiny_edm().to(device), (t.to(device) for t in fixed_batch())
    per_sample = independent_per_sample_grads(model, x, sigma, noise)
    norms = per_sample.norm(dim=1)
    clip = float(norms.median())  # half the samples get clipped
    coef = (clip / (norms + 1e-6)).clamp(max=1.0)
    contributions = per_sample * coef[:, None]
    assert (contributions.norm(dim=1) <= clip * (1 + 1e-5)).all()
    clipper = LinearGhostClipper(model, clip)
    with clipper.capture():
        losses = model.per_sample_loss(x, sigma, noise)
    ghost_norms = clipper.backward(losses, scale=1 / 24)  # DP-SGD divides by the expected batch size
    torch.testing.assert_close(ghost_norms, norms, rtol=1e-4, atol=1e-5)
    ours = torch.cat([p.grad.flatten() for p in model.parameters()])
    torch.testing.assert_close(ours, contributions.sum(0) / 24, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reference", ["opacus_hooks", "opacus_ghost"])
def test_fast_clipping_matches_opacus(reference, device):
    x, sigma, noise = (t.to(device) for t in fixed_batch(32))
    grads = {}
    for mode in ("ghost", reference):
        model = tiny_edm().to(device)
        clipped = clipping_backend(model, clip_norm=1.0, mode=mode)
        losses, norms = clipped(lambda: model.per_sample_loss(x, sigma, noise), scale=0.25)
        grads[mode] = (torch.cat([p.grad.flatten() for p in model.parameters()]), norms)
    torch.testing.assert_close(grads["ghost"][0], grads[reference][0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grads["ghost"][1], grads[reference][1].to(grads["ghost"][1]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["ghost", "opacus_hooks"])
def test_noise_multiplicity_clips_each_record_not_each_draw(mode, device):
    """K diffusion draws per record: the record's summed gradient is what gets clipped (its norm from the K×K Gram
    matrices), so one record still moves the clipped sum by at most C however many rows it has."""
    k, records = 3, 8
    g = torch.Generator().manual_seed(5)
    x = torch.randn(records, LAYOUT.dim, generator=g).repeat_interleave(k, 0).to(device)
    sigma = torch.exp(torch.randn(records * k, generator=g) * 1.2 - 1.2).to(device)
    noise = torch.randn(records * k, LAYOUT.dim, generator=g).to(device)
    model = tiny_edm().to(device)
    rows = independent_per_sample_grads(model, x, sigma, noise) / k
    per_record = rows.view(records, k, -1).sum(1)
    norms = per_record.norm(dim=1)
    clip = float(norms.median())
    # clipping rows one by one would let a record contribute up to k·C; the record sum is clipped to C instead
    assert (rows.norm(dim=1) < clip).any()
    expected = (per_record * (clip / (norms + 1e-6)).clamp(max=1.0)[:, None]).sum(0) / 10
    clipped = clipping_backend(model, clip, mode, rows_per_sample=k)
    _, got_norms = clipped(lambda: model.per_sample_loss(x, sigma, noise) / k, scale=0.1)
    torch.testing.assert_close(got_norms.to(norms), norms, rtol=1e-4, atol=1e-5)
    ours = torch.cat([p.grad.flatten() for p in model.parameters()])
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-6)


def test_noise_multiplicity_refuses_what_cannot_clip_records():
    with pytest.raises(UserError, match="opacus' ghost"):
        clipping_backend(tiny_edm(), 1.0, "opacus_ghost", rows_per_sample=2)
    with pytest.raises(UserError, match="at least 1"):
        clipping_backend(tiny_edm(), 1.0, "ghost", rows_per_sample=0)
    clipper = LinearGhostClipper(tiny_edm(), 1.0)
    x, sigma, noise = fixed_batch(5)
    with clipper.capture():
        losses = clipper.model.per_sample_loss(x, sigma, noise)
    with pytest.raises(ValueError, match="cannot be split"):
        clipper.backward(losses, rows_per_sample=2)


def test_ghost_clipping_refuses_unsupported_models():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3))
    with pytest.raises(UserError, match="nn.Linear"):
        LinearGhostClipper(model, 1.0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("generator", ["philox", "torch"])
@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("method", ["fill_", "add_"])
def test_noise_std_is_sigma_times_clip_over_expected_batch(workers, device, method, generator):
    params = [torch.nn.Parameter(torch.zeros(n, device=device)) for n in (150_000, 60_000, 40_000)]
    for p in params:
        p.grad = torch.full_like(p, 7.0)  # fill_ discards it, add_ adds to it
    sigma, clip, expected = 0.8, 2.0, 50.0
    getattr(GaussianNoise(params, workers=workers, generator=generator), method)(sigma * clip / expected)
    offset = 7.0 if method == "add_" else 0.0
    for p in params:  # every parameter got noise of the right scale, not just some of them
        assert abs(p.grad.mean().item() - offset) < 4 * sigma * clip / expected / np.sqrt(p.numel())
        assert p.grad.std().item() == pytest.approx(sigma * clip / expected, rel=0.02)
    flat = torch.cat([p.grad for p in params])
    assert abs(torch.corrcoef(torch.stack([flat[:-1], flat[1:]]))[0, 1].item()) < 0.01  # independent draws


def test_noise_refuses_to_add_onto_itself_and_redraws_every_step():
    p = torch.nn.Parameter(torch.zeros(1000))
    noise = GaussianNoise([p])
    with pytest.raises(RuntimeError, match="needs every parameter"):
        noise.add_(1.0)  # no gradient to add to
    noise.fill_(1.0)
    first = p.grad.clone()
    with pytest.raises(RuntimeError, match="noise buffers themselves"):
        noise.add_(1.0)  # would add a draw to itself: 2x the draw, not draw + gradient
    noise.fill_(1.0)
    assert not torch.equal(first, p.grad)  # the reused buffer holds a fresh draw


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["ghost", "opacus_hooks", "opacus_ghost"])
def test_noisy_clipped_gradient_is_the_clipped_sum_plus_noise_of_the_right_scale(mode, device):
    """The trainer's call: the same clipped sum as without noise, plus N(0, std²) on every parameter."""
    x, sigma, noise = (t.to(device) for t in fixed_batch(32))
    model = tiny_edm().to(device)
    clipped = clipping_backend(model, clip_norm=1.0, mode=mode)
    clipped(lambda: model.per_sample_loss(x, sigma, noise), scale=0.25)
    clean = [p.grad.clone() for p in clipped.params]
    std = 0.3
    gaussian = GaussianNoise(clipped.params)
    for p in model.parameters():
        p.grad = None  # as after the trainer's zero_grad(set_to_none=True)
    _, norms = clipped(lambda: model.per_sample_loss(x, sigma, noise), scale=0.25, noise=gaussian, noise_std=std)
    assert len(norms) == 32
    residual = torch.cat([(p.grad - c).flatten() for p, c in zip(clipped.params, clean)])
    assert residual.numel() > 3000 and residual.std().item() == pytest.approx(std, rel=0.1)
    assert abs(residual.mean().item()) < 4 * std / np.sqrt(residual.numel())
    for p, c in zip(clipped.params, clean):  # every parameter, not just some, got its own noise
        assert not torch.allclose(p.grad, c)


def test_noise_is_not_replayable():
    def draw():
        p = torch.nn.Parameter(torch.zeros(1000))
        p.grad = torch.zeros_like(p)
        GaussianNoise([p]).add_(1.0)
        return p.grad.clone()

    assert not torch.equal(draw(), draw())  # OS entropy: two instances never share a stream


def test_ledger_reports_composition_and_guarantee():
    ledger = PrivacyLedger(target_epsilon=10, delta=1e-6, accountant="rdp", noise_multiplier=1.0, sample_rate=0.01,
                           clip_norm=1.0, steps_taken=100, sensitive_dataset="s",
                           prior_mechanisms=[{"accountant_entry": [50.0, 1.0, 1]}])
    d = ledger.to_dict()
    assert d["epsilon_spent"] == pytest.approx(epsilon_spent([(50.0, 1.0, 1), (1.0, 0.01, 100)], 1e-6))
    assert "rdp" in d["guarantee"] and PrivacyLedger.from_dict(d).history() == ledger.history()
    assert PrivacyLedger().epsilon_spent() == 0.0


def test_an_unreachable_target_is_one_clear_error_without_accountant_warnings():
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(UserError, match="cannot reach ε=1e-09.*raise --dp.epsilon"):
            calibrate_noise_multiplier(1e-9, 1e-6, 0.0016, 3131)
    assert not caught, [str(w.message) for w in caught]  # the error is the only thing a user sees
