"""The DP-SGD engine (synther.privacy.engine.DPSGD) on a model that is not a diffusion model: a small regression
MLP, so the engine is reusable by any per-record loss (a DP agent, a trajectory model)."""
import pytest
import torch
from torch import nn

from synther.privacy.engine import DPSGD, DPSettings


def _regression(n: int = 512, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 0.0]) + 0.1 * torch.randn(n, generator=g)
    return x, y


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))


@pytest.mark.parametrize("mode", ["ghost", "opacus_hooks"])
def test_one_step_is_the_clipped_sum_plus_noise_over_the_expected_batch(mode):
    x, y = _regression(64)
    model = _mlp()
    settings = DPSettings(noise_multiplier=1.0, clip_norm=0.5, sample_rate=0.25, clipping_mode=mode)
    engine = DPSGD(model, None, len(x), settings, seed=1)
    assert engine.expected_batch == 16 and engine.noise_std == pytest.approx(1.0 * 0.5 / 16)
    engine.noise_std = 0.0  # the deterministic part only
    batch = engine.sample()
    stats = engine.step(batch, lambda rows: (model(x[rows]).squeeze(1) - y[rows]).pow(2))
    params = [p for p in model.parameters()]
    expected = [torch.zeros_like(p) for p in params]
    for i in batch.tolist():
        grads = torch.autograd.grad((model(x[i:i + 1]).squeeze() - y[i]).pow(2), params)
        norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
        for e, g in zip(expected, grads):
            e += g * min(1.0, 0.5 / (norm.item() + 1e-6)) / 16
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.grad, e, rtol=1e-4, atol=1e-6)
    assert stats["batch"] == len(batch) and engine.steps_taken == 1


def test_an_empty_batch_is_a_noise_only_step_of_the_calibrated_size():
    model = nn.Linear(200, 100)
    engine = DPSGD(model, None, 1000, DPSettings(noise_multiplier=2.0, clip_norm=1.0, sample_rate=0.01), seed=3)
    stats = engine.step(torch.zeros(0, dtype=torch.long), lambda rows: rows.float())
    draws = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert stats["batch"] == 0 and engine.steps_taken == 1
    assert draws.std().item() == pytest.approx(2.0 * 1.0 / 10, rel=0.02)  # σC/(qN) = 2/10
    assert abs(draws.mean().item()) < 0.01


def test_a_small_mlp_learns_through_the_engine_with_an_optimizer():
    x, y = _regression()
    model = _mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    engine = DPSGD(model, optimizer, len(x), DPSettings(noise_multiplier=0.5, clip_norm=1.0, sample_rate=0.25))

    def loss() -> float:
        with torch.no_grad():
            return (model(x).squeeze(1) - y).pow(2).mean().item()

    before = loss()
    for _ in range(300):
        engine.step(engine.sample(), lambda rows: (model(x[rows]).squeeze(1) - y[rows]).pow(2))
    assert engine.steps_taken == 300
    assert loss() < 0.2 * before



def test_clip_bias_diagnostic_gives_a_group_with_twice_the_norm_half_the_weight():
    """benchmarks/clip_bias.py's claim: when every record is clipped, a group whose gradients are twice as large
    keeps half the weight; groups below C keep all of theirs. Its norms come from the engine's backend, on a real
    EDM, and differ between rows."""
    import importlib.util
    from pathlib import Path

    import numpy as np

    from synther.diffusion.denoiser import DenoiserConfig
    from synther.diffusion.edm import EDM
    from synther.diffusion.normalizer import Normalizer

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "clip_bias.py"
    spec = importlib.util.spec_from_file_location("clip_bias", path)
    clip_bias = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(clip_bias)
    norms = np.array([2.0, 2.0, 4.0, 4.0, 0.5, 0.5])
    groups = [np.arange(6) < 2, (np.arange(6) >= 2) & (np.arange(6) < 4), np.arange(6) >= 4]
    assert clip_bias.weight_kept(groups, norms, clip=1.0) == pytest.approx([0.5, 0.25, 1.0])

    torch.manual_seed(0)
    model = EDM(7, Normalizer.identity(7), DenoiserConfig(width=32, depth=2, cond_dim=16, fourier_dim=8))
    g = torch.Generator().manual_seed(1)
    x, noise = torch.randn(12, 7, generator=g), torch.randn(12, 7, generator=g)
    sigma = torch.tensor([0.005, 0.05, 0.3, 1.0, 4.0, 20.0] * 2)
    chunked = clip_bias.per_record_norms(model, x, sigma, noise, chunk=5)
    params = [p for p in model.parameters() if p.requires_grad]
    one_by_one = torch.stack([torch.sqrt(sum(gr.pow(2).sum() for gr in torch.autograd.grad(
        model.per_sample_loss(x[i:i + 1], sigma[i:i + 1], noise[i:i + 1]).sum(), params))) for i in range(12)])
    torch.testing.assert_close(chunked, one_by_one, rtol=1e-4, atol=1e-6)
    assert chunked.std() > 0.1 * chunked.mean()  # the rows really differ, so the comparison is not vacuous


def test_dp_signal_diagnostic_is_the_mean_clipped_record_gradient_along_a_direction(monkeypatch):
    """benchmarks/dp_signal.py: a record's gradient is that of the mean of its k rows' losses, clipped to C as one,
    averaged over the records and read along the given direction — checked against per-record gradients taken one
    by one with autograd, with C between the records' norms so both sides of the clip are exercised."""
    import importlib.util
    from pathlib import Path

    from synther.diffusion.denoiser import DenoiserConfig
    from synther.diffusion.edm import EDM
    from synther.diffusion.normalizer import Normalizer

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "dp_signal.py"
    monkeypatch.syspath_prepend(str(path.parent))  # it imports its sibling clip_bias, as a script would
    spec = importlib.util.spec_from_file_location("dp_signal", path)
    dp_signal = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dp_signal)
    torch.manual_seed(0)
    model = EDM(6, Normalizer.identity(6), DenoiserConfig(width=32, depth=2, cond_dim=16, fourier_dim=8))
    params = [p for p in model.parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(2)
    records, k = 8, 3
    rows = torch.randn(records, 6, generator=g).repeat_interleave(k, dim=0)
    sigma, noise = model.draw_sigma(len(rows), g), torch.randn(rows.shape, generator=g)
    per_record = torch.stack([torch.cat([t.flatten() for t in torch.autograd.grad(
        model.per_sample_loss(rows[i * k:(i + 1) * k], sigma[i * k:(i + 1) * k], noise[i * k:(i + 1) * k]).mean(),
        params)]) for i in range(records)])
    direction = torch.randn(per_record.shape[1], generator=g)
    clip = float(per_record.norm(dim=1).median())
    want = (per_record * (clip / per_record.norm(dim=1, keepdim=True)).clamp(max=1.0)).mean(0) @ direction
    got, norms = dp_signal.clipped_signal(model, rows, sigma, noise, k, clip, direction)
    torch.testing.assert_close(norms, per_record.norm(dim=1), rtol=1e-4, atol=1e-6)
    assert got == pytest.approx(float(want), rel=1e-4)
    assert (norms > clip).any() and (norms < clip).any()


def test_loss_by_noise_diagnostic_is_the_unweighted_edm_loss_and_its_gain_shares():
    """benchmarks/loss_by_noise.py: its error per σ is the EDM per-row loss without λ(σ), on the same draw; a
    checkpoint's share is its gain over the first one relative to the last one's."""
    import importlib.util
    from pathlib import Path

    import numpy as np

    from synther.diffusion.denoiser import DenoiserConfig
    from synther.diffusion.edm import EDM
    from synther.diffusion.normalizer import Normalizer

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "loss_by_noise.py"
    spec = importlib.util.spec_from_file_location("loss_by_noise", path)
    loss_by_noise = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loss_by_noise)
    errors = np.array([[4.0, 1.0], [3.0, 1.5], [2.0, 0.5]])  # start, a fine-tune, the reference
    np.testing.assert_allclose(loss_by_noise.gain_shares(errors), [[0, 0], [0.5, -1], [1, 1]])

    torch.manual_seed(0)
    model = EDM(5, Normalizer.identity(5), DenoiserConfig(width=32, depth=2, cond_dim=16, fourier_dim=8))
    g = torch.Generator().manual_seed(1)
    x, noise = torch.randn(64, 5, generator=g), torch.randn(64, 5, generator=g)
    levels = (0.01, 0.3, 3.0)
    got = loss_by_noise.denoising_error(model, x, levels, noise)
    with torch.no_grad():
        want = [float((model.per_sample_loss(x, torch.full((64,), s), noise) * s * s / (s * s + 1)).mean())
                for s in levels]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert got[0] < got[1] < got[2]  # harder to denoise at higher noise: the levels really differ
