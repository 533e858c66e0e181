"""Curiosity-driven pre-training: RND novelty, the paper's reweighting and the repo's top-k append."""
import pytest
import torch

from synther.diffusion.curiosity import Curiosity, CuriosityConfig
from synther.diffusion.denoiser import DenoiserConfig
from synther.diffusion.edm import EDM
from synther.diffusion.normalizer import Normalizer
from synther.diffusion.trainer import DiffusionTrainer, TrainConfig
from synther.errors import UserError
from synther.privacy.engine import DPSettings
from synther.privacy.ledger import PrivacyLedger

DIM = 12


def tiny_model() -> EDM:
    torch.manual_seed(0)
    return EDM(DIM, Normalizer.identity(DIM), DenoiserConfig(width=32, depth=2, cond_dim=16))


def batch(n=64, seed=0):
    return torch.randn(n, DIM, generator=torch.Generator().manual_seed(seed))


def test_topk_appends_the_most_novel_pool_rows(monkeypatch):
    model = tiny_model()
    cur = Curiosity(model, CuriosityConfig(mode="topk", rate=0.3, append=16, pool_size=200, sampler_steps=4),
                    steps_per_epoch=10)
    candidates = batch(200, seed=5) * torch.linspace(0.1, 5.0, 200).unsqueeze(1)  # a spread of novelty
    monkeypatch.setattr(model, "sample", lambda n, sampler, generator=None: candidates[:n].clone())
    real = batch()
    out = cur(0, real)
    assert out.shape == (64 + 16, DIM) and torch.equal(out[:64], real)
    with torch.no_grad():
        c = cur.novelty(candidates)
    expected = candidates[c.topk(60).indices]  # top 30% of the 200 candidates by novelty
    assert sorted(map(tuple, cur.pool.tolist())) == sorted(map(tuple, expected.tolist()))
    assert all(any(torch.equal(row, p) for p in cur.pool) for row in out[64:])


def test_reweight_replaces_a_share_p_with_novelty_weighted_draws():
    cur = Curiosity(tiny_model(), CuriosityConfig(mode="reweight", rate=0.25, beta=2.0, pool_size=200,
                                                  sampler_steps=4), steps_per_epoch=10)
    real = batch()
    out = cur(0, real)
    assert out.shape == real.shape and torch.equal(out[:48], real[16:])  # 16 = 0.25·64 rows replaced
    with torch.no_grad():
        c = cur.novelty(cur.pool)
    torch.testing.assert_close(cur.weights, torch.softmax(2.0 * c, dim=0))
    assert cur.weights[c.argmax()] >= cur.weights[c.argmin()]


def test_rnd_predictor_learns_the_real_data():
    cur = Curiosity(tiny_model(), CuriosityConfig(mode="topk", pool_size=32, sampler_steps=2, refresh_every=10**6),
                    steps_per_epoch=10**6)
    real = batch(256, seed=1)
    with torch.no_grad():
        before = cur.novelty(real).mean()
    for step in range(1, 200):
        cur(step, real)
    with torch.no_grad():
        assert cur.novelty(real).mean() < 0.5 * before


def test_curiosity_is_refused_under_dp(tmp_path):
    model = tiny_model()
    cur = Curiosity(model, CuriosityConfig(mode="topk"), steps_per_epoch=1)
    with pytest.raises(UserError, match="public pre-training only"):
        DiffusionTrainer(model, batch(), TrainConfig(max_steps=1), tmp_path, PrivacyLedger(), {}, augment=cur,
                         dp=DPSettings(noise_multiplier=1.0, clip_norm=1.0, sample_rate=0.5))


def test_bad_curiosity_settings_are_user_errors():
    with pytest.raises(UserError, match="unknown curiosity mode"):
        Curiosity(tiny_model(), CuriosityConfig(mode="bored"), steps_per_epoch=1)
    with pytest.raises(UserError, match="rate"):
        Curiosity(tiny_model(), CuriosityConfig(mode="topk", rate=0.0), steps_per_epoch=1)
