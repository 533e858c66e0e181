"""The diffusion synthesizer end to end at toy sizes: pre-train, DP fine-tune, resume, sample."""
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from synther.data import load_dataset
from synther.diffusion import Synthesizer
from synther.diffusion.denoiser import DenoiserConfig
from synther.diffusion.edm import EDM, SAMPLERS, EDMConfig, SamplerConfig, network_evaluations
from synther.diffusion.synthesizer import (SAMPLING_FIELDS, DiffusionConfig, DPConfig, finetune, load_model,
                                          pretrain, sample)
from synther.diffusion.trainer import DiffusionTrainer, TrainConfig
from synther.errors import UserError
from synther.diffusion.support import StateSupport, parse_widths
from synther.diffusion.selection import PublicSelection, nearest
from synther.diffusion.saturation import saturated_share
from synther.privacy.accounting import calibrate_noise_multiplier, epsilon_spent
from synther.privacy.preconditioning import PublicDiagonalPreconditioner, PublicPreconditioner
from synther.privacy.projection import PublicGradientSubspace, PublicSubspaceProjector

from devices import DEVICES
from maze_data import write_mazes

PUBLIC = "ptr-maze2d-open-dense-v0,ptr-maze2d-umaze-dense-v0"
SENSITIVE = "ptr-maze2d-medium-dense-v0"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_mazes(tmp_path_factory.mktemp("data"), {"open": 0, "umaze": 1, "medium": 2}, 4000)


@pytest.fixture(autouse=True)
def _use_data_dir(data_dir, monkeypatch):
    monkeypatch.setenv("PRIVTRANR_DATA_DIR", str(data_dir))


def config(tmp_path, mode: str, **kw) -> DiffusionConfig:
    train = TrainConfig(max_steps=kw.pop("steps", 40), batch_size=64, log_every=10, checkpoint_every=10)
    return DiffusionConfig(mode=mode, run_dir=str(tmp_path / mode), width=32, depth=2, train=train,
                           progress=False, **kw)


@pytest.fixture(scope="module")
def pretrained(data_dir, tmp_path_factory):
    with pytest.MonkeyPatch.context() as env:  # set for this fixture only, restored after
        env.setenv("PRIVTRANR_DATA_DIR", str(data_dir))
        return pretrain(config(tmp_path_factory.mktemp("pre"), "pretrain", public_datasets=PUBLIC, steps=300))


def _fixed_loss(model, x, seed=0):
    g = torch.Generator().manual_seed(seed)
    sigma = torch.exp(torch.randn(len(x), generator=g) * 1.2 - 1.2)
    noise = torch.randn(x.shape, generator=g)
    with torch.no_grad():
        return model.per_sample_loss(x, sigma, noise).mean().item()


@pytest.mark.slow
def test_pretraining_lowers_the_loss(pretrained, tmp_path):
    public = np.concatenate([load_dataset(n).to_vectors() for n in PUBLIC.split(",")])
    x = torch.as_tensor(public[:2000])
    trained, meta, ledger = load_model(pretrained, ema=False)
    torch.manual_seed(0)
    fresh = EDM(trained.dim, trained.normalizer, DenoiserConfig(**meta["denoiser"]), EDMConfig(**meta["edm"]))
    assert _fixed_loss(trained, x) < 0.85 * _fixed_loss(fresh, x)  # same σ and noise draws for both
    assert meta["normalizer_source"]["kind"] == "public" and ledger.epsilon_spent() == 0.0
    metrics = [json.loads(line) for line in (pretrained.parent / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(10, 301, 10))


@pytest.mark.slow
def test_finetune_meets_target_and_never_reads_sensitive_statistics(pretrained, tmp_path, data_dir):
    base, _, _ = load_model(pretrained)
    out = finetune(config(tmp_path, "finetune", dataset=SENSITIVE, checkpoint=str(pretrained),
                          dp=DPConfig(epsilon=5.0, delta=1e-5)))
    model, meta, ledger = load_model(out)
    # the normalizer is the public one, bit for bit
    torch.testing.assert_close(model.normalizer.mean, base.normalizer.mean, rtol=0, atol=0)
    torch.testing.assert_close(model.normalizer.std, base.normalizer.std, rtol=0, atol=0)
    assert meta["normalizer_source"]["kind"] == "public"
    assert ledger.steps_taken == 40 and ledger.epsilon_spent() <= 5.0
    assert ledger.sensitive_train_rows + ledger.sensitive_heldout_rows == 4000
    assert abs(ledger.sensitive_train_rows - 3200) < 4 * np.sqrt(4000 * 0.8 * 0.2)  # a coin per record
    assert ledger.sample_rate == pytest.approx(64 / ledger.sensitive_train_rows)
    assert "philox4x32-10" in ledger.statistics["dp_noise"]  # the ledger names the noise generator
    saved = json.loads((out.parent / "ledger.json").read_text())
    for key in ("epsilon_spent", "delta", "noise_multiplier", "sample_rate", "steps_taken", "accountant", "clip_norm",
                "statistics", "sensitive_train_rows"):
        assert key in saved
    # a sensitive set with wildly different statistics leaves the normalizer untouched
    shifted = load_dataset(SENSITIVE)
    shifted = dataclasses.replace(shifted, observations=shifted.observations * 100 + 1000,
                                  next_observations=shifted.next_observations * 100 + 1000)
    shifted.save(data_dir / "shifted.npz")
    out2 = finetune(config(tmp_path / "b", "finetune", dataset=str(data_dir / "shifted.npz"),
                           checkpoint=str(pretrained)))
    torch.testing.assert_close(load_model(out2)[0].normalizer.mean, base.normalizer.mean, rtol=0, atol=0)


def test_dp_normalizer_is_charged_to_the_budget(pretrained, tmp_path):
    out = finetune(config(tmp_path, "finetune", dataset=SENSITIVE, checkpoint=str(pretrained),
                          dp=DPConfig(epsilon=8.0, delta=1e-5, normalizer="dp", normalizer_noise_multiplier=20.0)))
    model, meta, ledger = load_model(out)
    assert meta["normalizer_source"]["kind"] == "dp" and len(ledger.prior_mechanisms) == 1
    history = ledger.history()
    assert history[0] == (20.0, 1.0, 1) and len(history) == 2
    assert ledger.epsilon_spent() == pytest.approx(epsilon_spent(history, 1e-5)) and ledger.epsilon_spent() <= 8.0
    train, _ = load_dataset(SENSITIVE).split(0.8, seed=0)  # the split the run trained on
    # what the mechanism estimates: the mean of the records clipped to the public box (public range ± 10%)
    low, high = np.asarray(meta["public_min"]), np.asarray(meta["public_max"])
    low, high = low - 0.1 * (high - low), high + 0.1 * (high - low)
    true = np.clip(train.to_vectors(), low, high)[:, :4].mean(0)
    # noise of the mean in data units: half-range of the clip box · σ·√(2d+1) / n; the noise is secret (OS
    # entropy), so allow 5 standard deviations (a false alarm once in ~10^5 runs)
    noise_std = (high - low)[:4] / 2 * 20.0 * np.sqrt(2 * 12 + 1) / len(train)
    est = model.normalizer.mean.numpy()[:4]
    assert (np.abs(est - true) < 5 * noise_std + 1e-3).all(), (est, true, noise_std)


SUPPORT = DPConfig(epsilon=8.0, delta=1e-5, support_cells="0.5,0.5,2,2", support_noise_multiplier=3.0)


def test_state_cells_follow_the_public_grid_and_clip_outside_it():
    grid = StateSupport.grid(parse_widths("1,0,0.5", 3), np.array([0.0, -9.0, -1.0]), np.array([3.0, 9.0, 1.0]))
    assert grid.shape.tolist() == [3, 1, 4]  # a width-0 dimension is left out: one cell along it
    obs = np.array([[0.5, 7.0, -0.9], [2.9, -8.0, 0.9], [-5.0, 0.0, 0.1], [99.0, 0.0, -99.0]])
    cells = grid.cells(obs)
    assert cells.tolist() == [0 * 4 + 0, 2 * 4 + 3, 0 * 4 + 2, 2 * 4 + 0]  # row-major over (3, 1, 4)
    for spec, match in (("1,1", "one cell width per observation"), ("1,-1,1", "≥ 0"), ("0,0,0", "positive"),
                        ("a,b,c", "numbers")):
        with pytest.raises(UserError, match=match):
            parse_widths(spec, 3)
    with pytest.raises(UserError, match="cells"):
        StateSupport.grid(parse_widths("1e-3,1e-3,1e-3", 3), np.zeros(3), np.ones(3))


def test_state_histogram_is_a_full_gaussian_release_charged_to_the_budget(pretrained, tmp_path):
    out = finetune(config(tmp_path, "finetune", dataset=SENSITIVE, checkpoint=str(pretrained), dp=SUPPORT))
    model, meta, ledger = load_model(out)
    # one more Gaussian mechanism (σ = 3, sensitivity 1) in the history, and DP-SGD's σ raised to keep ε at target
    assert ledger.history()[0] == (3.0, 1.0, 1) and len(ledger.history()) == 2
    assert ledger.epsilon_spent() == pytest.approx(epsilon_spent(ledger.history(), 1e-5))
    assert ledger.epsilon_spent() <= 8.0
    alone = calibrate_noise_multiplier(8.0, 1e-5, ledger.sample_rate, ledger.steps_taken)
    assert ledger.noise_multiplier > alone
    assert "state_support" in ledger.statistics and meta["state_support"]["noise_multiplier"] == 3.0
    assert "composed with 1 other mechanism(s) on sensitive data: DP state-support histogram" in ledger.describe()
    # the released counts are the training split's per-cell counts plus N(0, 3²) on every cell
    train, _ = load_dataset(SENSITIVE).split(0.8, seed=0)
    support = model.support
    true = np.bincount(support.cells(train.observations), minlength=support.counts.numel())
    z = (support.counts.numpy() - true) / 3.0
    assert len(z) > 1000 and abs(z.mean()) < 0.1 and 0.9 < z.std() < 1.1 and np.abs(z).max() > 3.0
    ema_free, _, _ = load_model(out, ema=False)
    assert torch.equal(ema_free.support.counts, support.counts)  # the EMA weights carry the same release
    again = finetune(config(tmp_path / "again", "finetune", steps=10, dataset=SENSITIVE, checkpoint=str(pretrained),
                            dp=SUPPORT))
    assert not torch.equal(load_model(again)[0].support.counts, support.counts)  # same --seed, fresh noise
    plain = finetune(config(tmp_path / "plain", "finetune", steps=10, dataset=SENSITIVE, checkpoint=str(out)))
    plain_model, _, plain_ledger = load_model(plain)
    assert plain_model.support is None  # a later fine-tune does not pass on the earlier set's histogram...
    assert (3.0, 1.0, 1) in plain_ledger.history()  # ...but still pays for having released it
    for bad, match in ((dataclasses.replace(SUPPORT, support_cells="1,1"), "one cell width"),
                       (dataclasses.replace(SUPPORT, support_noise_multiplier=0.0), "positive"),
                       (dataclasses.replace(SUPPORT, enabled=False), "needs DP fine-tuning")):
        with pytest.raises(UserError, match=match):
            finetune(config(tmp_path / "bad", "finetune", dataset=SENSITIVE, checkpoint=str(pretrained), dp=bad))
        assert not (tmp_path / "bad").exists()


WARMUP = DPConfig(epsilon=8.0, delta=1e-5, public_warmup_steps=25, public_warmup_clusters=16,
                  public_warmup_noise_multiplier=3.0)


def test_public_selection_releases_a_full_gaussian_count_and_draws_toward_the_sensitive_clusters():
    g = torch.Generator().manual_seed(0)
    # public rows in two far-apart blobs (900 near 0, 100 near 10); the sensitive records all near 10
    public = torch.cat([torch.randn(900, 3, generator=g), 10 + torch.randn(100, 3, generator=g)])
    selection = PublicSelection.fit(public, 2, seed=0)
    assert sorted(selection.public_counts.tolist()) == [100, 900]
    selection.release(10 + torch.randn(300, 3, generator=g), 0.5, np.random.default_rng())
    far = public[:, 0] > 5
    p = selection.row_probabilities()
    assert p.sum().item() == pytest.approx(1.0, abs=1e-5) and p[far].sum().item() > 0.99
    assert selection.effective_share() == pytest.approx(0.1, abs=0.01)  # worth the far blob's 100 rows of 1000
    # the release: each cluster's count plus N(0, σ²), a fresh draw each time (many clusters to see its law)
    many = PublicSelection(torch.zeros(20_000, 3), torch.arange(20_000) % 7)
    releases = []
    for _ in range(2):
        many.release(torch.zeros(50, 3), 2.0, np.random.default_rng())  # all 50 records nearest centroid 0
        releases.append(many.noisy_counts.copy())
    true = np.zeros(20_000)
    true[0] = 50
    z = (releases[0] - true) / 2.0
    assert abs(z.mean()) < 0.05 and 0.97 < z.std() < 1.03 and np.abs(z).max() > 3.5
    assert not np.array_equal(*releases)
    with pytest.raises(UserError, match="positive"):
        many.release(torch.zeros(5, 3), 0.0, np.random.default_rng())
    with pytest.raises(UserError, match="between 2"):
        PublicSelection.fit(public, 1, seed=0)
    empty = PublicSelection.fit(public, 2, seed=0)
    empty.noisy_counts, empty.noise_multiplier = np.array([-1.0, -2.0]), 1.0
    with pytest.raises(UserError, match="too small for this noise"):
        empty.row_probabilities()


def test_public_warmup_trains_on_public_rows_drawn_by_a_dp_count_charged_to_the_budget(pretrained, tmp_path,
                                                                                       monkeypatch):
    import synther.diffusion.synthesizer as synthesizer
    calls = []
    original = synthesizer.warm_up

    def spy_warm_up(model, public_rows, probabilities, *args, **kwargs):
        calls.append({"rows": public_rows.clone(), "p": probabilities.clone(),
                      "before": [p.detach().clone() for p in model.parameters()]})
        loss = original(model, public_rows, probabilities, *args, **kwargs)
        calls[-1]["after"] = [p.detach().clone() for p in model.parameters()]
        return loss

    monkeypatch.setattr(synthesizer, "warm_up", spy_warm_up)
    out = finetune(config(tmp_path, "finetune", dataset=SENSITIVE, checkpoint=str(pretrained), steps=20, dp=WARMUP))
    model, meta, ledger = load_model(out)
    # one more Gaussian mechanism (σ = 3, sensitivity 1) in the history, and DP-SGD's σ raised to keep ε at target
    assert ledger.history()[0] == (3.0, 1.0, 1) and len(ledger.history()) == 2
    assert ledger.epsilon_spent() <= 8.0
    assert ledger.noise_multiplier > calibrate_noise_multiplier(8.0, 1e-5, ledger.sample_rate, ledger.steps_taken)
    assert "DP cluster histogram for the public warm-up" in ledger.describe()
    assert "25 non-private steps on public rows" in ledger.statistics["public_warmup"]
    # the warm-up read the public datasets' rows, no sensitive row, and moved the weights
    public = np.concatenate([load_dataset(n).to_vectors() for n in PUBLIC.split(",")])
    sensitive_rows = {row.tobytes() for row in load_dataset(SENSITIVE).to_vectors()}
    assert len(calls) == 1
    np.testing.assert_array_equal(calls[0]["rows"].numpy(), public)
    assert not any(row.tobytes() in sensitive_rows for row in calls[0]["rows"].numpy())
    assert any(not torch.equal(a, b) for a, b in zip(calls[0]["before"], calls[0]["after"]))
    # the release: the training split's count nearest each public centroid (k-means of the public rows from
    # --seed, refitted here) plus noise; the draw probabilities follow it
    warm = meta["public_warmup"]
    pre, _, _ = load_model(pretrained)
    with torch.no_grad():
        refit = PublicSelection.fit(pre.normalizer.normalize(torch.as_tensor(public)), 16, seed=0)
        train, _ = load_dataset(SENSITIVE).split(0.8, seed=0)
        true = np.bincount(nearest(pre.normalizer.normalize(torch.as_tensor(train.to_vectors())), refit.centroids)
                           .numpy(), minlength=16)
    noisy = np.asarray(warm["noisy_counts"])
    assert warm["public_counts"] == refit.public_counts.tolist() and true.sum() == ledger.sensitive_train_rows
    assert 0 < np.abs(noisy - true).max() < 3.0 * 8.5  # noise, within the generator's cap
    refit.noisy_counts = noisy
    torch.testing.assert_close(calls[0]["p"], refit.row_probabilities())
    again = finetune(config(tmp_path / "again", "finetune", dataset=SENSITIVE, checkpoint=str(pretrained), steps=10,
                            dp=WARMUP))
    assert load_model(again)[1]["public_warmup"]["noisy_counts"] != warm["noisy_counts"]  # same --seed, fresh noise
    for bad, match in ((dataclasses.replace(WARMUP, public_warmup_steps=-1), "public_warmup_steps must"),
                       (dataclasses.replace(WARMUP, public_warmup_noise_multiplier=0.0), "positive"),
                       (dataclasses.replace(WARMUP, public_warmup_clusters=1), "between 2"),
                       (dataclasses.replace(WARMUP, enabled=False), "needs DP fine-tuning")):
        with pytest.raises(UserError, match=match):
            finetune(config(tmp_path / "bad", "finetune", dataset=SENSITIVE, checkpoint=str(pretrained), dp=bad))
        assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def _kill_training_at(monkeypatch, call: int):
    """Make DiffusionTrainer's `call`-th training step (counted across runs) raise KeyboardInterrupt, as a killed
    process would; returns the original step, to put back before resuming."""
    original = DiffusionTrainer._train_step
    calls = {"n": 0}

    def dying_step(self, x):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return original(self, x)

    monkeypatch.setattr(DiffusionTrainer, "_train_step", dying_step)
    return original


def _record_refits(monkeypatch, record, refitting=PublicSubspaceProjector) -> None:
    """Call record(step) whenever the public subspace projector (or another `refitting` class) refits (observed,
    not re-derived)."""
    original = refitting.before_step

    def spy_before(self, step):
        before = self.fitted_at
        original(self, step)
        if self.fitted_at != before:
            record(step)

    monkeypatch.setattr(refitting, "before_step", spy_before)


def _killed_then_resumed(cfg: DiffusionConfig, monkeypatch) -> tuple[dict, Path]:
    """Fine-tune with `cfg`, killed after its checkpoint at step 10, then run again: (the checkpoint the killed run
    left, the resumed run's output)."""
    original = _kill_training_at(monkeypatch, 15)
    with pytest.raises(KeyboardInterrupt):
        finetune(cfg)
    killed = torch.load(Path(cfg.run_dir) / "checkpoint.pt", weights_only=False)
    monkeypatch.setattr(DiffusionTrainer, "_train_step", original)
    return killed, finetune(cfg)


def test_a_resumed_fine_tune_keeps_the_histogram_it_released(pretrained, tmp_path, monkeypatch):
    cfg = config(tmp_path, "finetune", dataset=SENSITIVE, checkpoint=str(pretrained), dp=SUPPORT)
    killed, out = _killed_then_resumed(cfg, monkeypatch)
    model, _, ledger = load_model(out)  # the restart draws fresh noise, then resumes the saved release
    assert torch.equal(model.support.counts, killed["model"]["support.counts"])
    assert len(ledger.prior_mechanisms) == 1 and ledger.steps_taken == 40  # charged once


def test_a_resumed_fine_tune_keeps_its_warmup_release_and_does_not_warm_up_again(pretrained, tmp_path,
                                                                                  monkeypatch):
    import synther.diffusion.synthesizer as synthesizer
    warmups = []
    original_warm_up = synthesizer.warm_up
    monkeypatch.setattr(synthesizer, "warm_up", lambda *a, **k: warmups.append(1) or original_warm_up(*a, **k))
    cfg = config(tmp_path, "finetune", dataset=SENSITIVE, checkpoint=str(pretrained), dp=WARMUP)
    killed, out = _killed_then_resumed(cfg, monkeypatch)
    _, meta, ledger = load_model(out)
    assert warmups == [1]  # the resumed run kept the checkpoint's warmed-up weights: no second warm-up or release
    assert meta["public_warmup"] == killed["meta"]["public_warmup"]
    assert len(ledger.prior_mechanisms) == 1 and ledger.steps_taken == 40  # charged once
    for other in (dataclasses.replace(WARMUP, public_warmup_steps=30),  # nor with other warm-up settings
                  dataclasses.replace(WARMUP, public_warmup_clusters=8)):
        with pytest.raises(UserError, match="different configuration"):
            finetune(dataclasses.replace(cfg, dp=other))
    # a run folder begun without the warm-up does not resume with it, and nothing is released first
    plain = config(tmp_path / "plain", "finetune", dataset=SENSITIVE, checkpoint=str(pretrained),
                   dp=DPConfig(epsilon=8.0, delta=1e-5))
    original = _kill_training_at(monkeypatch, 15)
    with pytest.raises(KeyboardInterrupt):
        finetune(plain)
    monkeypatch.setattr(DiffusionTrainer, "_train_step", original)
    with pytest.raises(UserError, match="different configuration"):
        finetune(dataclasses.replace(plain, dp=WARMUP))
    assert warmups == [1]


def test_sampling_keeps_rows_in_the_histograms_support_and_the_release_says_so(pretrained, tmp_path):
    out = finetune(config(tmp_path, "finetune", steps=10, dataset=SENSITIVE, checkpoint=str(pretrained), dp=SUPPORT))
    syn = Synthesizer.load(out, device="cpu")
    support = syn.model.support
    x_index = np.unravel_index(np.arange(support.counts.numel()), tuple(support.shape.tolist()))[0]
    support.counts.copy_(torch.where(torch.as_tensor(x_index % 2 == 0), 100.0, -100.0))  # planted: even x-columns
    sampler = SamplerConfig(name="euler", steps=4)
    supported = support.counts.numpy() >= 6.0
    loose = syn.sample(300, sampler, support_threshold=0)  # no filter: rows land in both kinds of cells
    assert not supported[support.cells(loose.observations)].all()
    ds = syn.sample(300, sampler)  # default: 2 noise standard deviations, count ≥ 6
    assert ds.size == 300
    assert supported[support.cells(ds.observations)].all() and supported[support.cells(ds.next_observations)].all()
    dropped = ds.provenance["dropped_outside_support"]
    assert dropped > 0 and ds.provenance["drawn"] >= 300 + dropped
    assert f"{dropped} of {ds.provenance['drawn']} rows dropped as outside the support" in ds.provenance["postprocessing"]
    support.counts.fill_(-100.0)  # nothing supported: a clear error, not an endless loop
    with pytest.raises(UserError, match="lower --support_threshold"):
        syn.sample(20, sampler)
    with pytest.raises(UserError, match="support_threshold"):
        syn.sample(20, sampler, support_threshold=-1.0)


@pytest.mark.slow
def test_resume_after_kill_continues_the_privacy_ledger(pretrained, tmp_path, monkeypatch):
    cfg = config(tmp_path, "finetune", dataset=SENSITIVE, checkpoint=str(pretrained), dp=DPConfig(epsilon=3.0))
    reference = finetune(dataclasses.replace(cfg, run_dir=str(tmp_path / "uninterrupted")))
    original = _kill_training_at(monkeypatch, 26)  # killed between checkpoints 20 and 30
    with pytest.raises(KeyboardInterrupt):
        finetune(cfg)
    state = torch.load(tmp_path / "finetune" / "checkpoint.pt", weights_only=False)
    assert state["step"] == 20 and state["ledger"]["steps_taken"] == 20 and state["ledger"]["epsilon_spent"] > 0
    monkeypatch.setattr(DiffusionTrainer, "_train_step", original)
    out = finetune(cfg)
    _, _, ledger = load_model(out)
    _, _, ref_ledger = load_model(reference)
    assert ledger.steps_taken == 40  # 20 before the kill + 20 after, not 40 after a reset
    assert ledger.epsilon_spent() == pytest.approx(ref_ledger.epsilon_spent())
    steps = [json.loads(line)["step"] for line in (out.parent / "metrics.jsonl").read_text().splitlines()]
    assert steps == [10, 20, 30, 40]  # no duplicated records from the killed run


@pytest.mark.slow
def test_cosine_learning_rate_is_a_function_of_the_step_and_resumes_with_it(pretrained, tmp_path, monkeypatch):
    """--train.lr_decay cosine: step t uses lr·(1 + cos(πt/T))/2, whatever the data (a public schedule, free under
    DP), and a resumed run continues the schedule where the killed one stopped."""
    import math

    original = DiffusionTrainer._train_step
    seen: dict[str, list[float]] = {}

    def recording_step(self, x):
        out = original(self, x)
        seen.setdefault(str(self.run_dir), []).append(self.optimizer.param_groups[0]["lr"])
        if len(seen[str(self.run_dir)]) == 26 and "killed" in str(self.run_dir) and not seen.get("resumed"):
            seen["resumed"] = [1.0]
            raise KeyboardInterrupt  # killed between checkpoints 20 and 30
        return out

    monkeypatch.setattr(DiffusionTrainer, "_train_step", recording_step)
    cfg = config(tmp_path, "finetune", dataset=SENSITIVE, checkpoint=str(pretrained), dp=DPConfig(epsilon=3.0))
    cfg.train = dataclasses.replace(cfg.train, lr=1e-3, lr_decay="cosine")
    finetune(dataclasses.replace(cfg, run_dir=str(tmp_path / "whole")))
    expected = [0.5 * 1e-3 * (1 + math.cos(math.pi * t / 40)) for t in range(40)]
    assert seen[str(tmp_path / "whole")] == pytest.approx(expected, rel=1e-12)
    killed = dataclasses.replace(cfg, run_dir=str(tmp_path / "killed"))
    with pytest.raises(KeyboardInterrupt):
        finetune(killed)
    finetune(killed)
    assert seen[str(tmp_path / "killed")][26:] == pytest.approx(expected[20:], rel=1e-12)  # resumed at step 20
    cfg.train = dataclasses.replace(cfg.train, lr_decay="linear")
    with pytest.raises(UserError, match="unknown train.lr_decay 'linear'"):
        finetune(dataclasses.replace(cfg, run_dir=str(tmp_path / "bad")))
    assert not (tmp_path / "bad").exists()


def test_samples_npz_has_d4rl_keys_bounds_and_ledger(pretrained, tmp_path):
    cfg = config(tmp_path, "sample", checkpoint=str(pretrained), num_samples=500, sample_batch=200,
                 sampler=SamplerConfig(name="dpm2m", steps=8))
    out = sample(cfg)
    with np.load(out) as f:
        assert set(f.files) == {"observations", "actions", "rewards", "next_observations", "terminals"}
        assert f["observations"].shape == (500, 4) and f["next_observations"].shape == (500, 4)
        assert f["actions"].shape == (500, 2) and f["rewards"].shape == (500,) and f["terminals"].shape == (500,)
        assert all(f[k].dtype == np.float32 for k in f.files)
        assert set(np.unique(f["terminals"])) <= {0.0, 1.0}
        assert f["actions"].min() >= -1 and f["actions"].max() <= 1
    side = json.loads(out.with_suffix(".json").read_text())
    assert "privacy_ledger" in side and side["provenance"]["dropped_non_finite"] == 0
    assert side["provenance"]["network_evaluations_per_sample"] == 8


def test_non_finite_rows_are_dropped_and_counted(pretrained, monkeypatch):
    syn = Synthesizer.load(pretrained, device="cpu")
    real_sample = syn.model.sample

    def with_nan(n, sampler, generator=None, guide=None):
        x = real_sample(n, sampler, generator=generator)
        x[::10, 0] = float("nan")
        return x

    monkeypatch.setattr(syn.model, "sample", with_nan)
    ds = syn.sample(100, SamplerConfig(name="euler", steps=4))
    assert ds.size == 90 and ds.provenance["dropped_non_finite"] == 10


def test_rewards_are_clipped_to_the_public_range_and_the_release_says_so(pretrained, monkeypatch, tmp_path):
    public = np.concatenate([load_dataset(n).rewards for n in PUBLIC.split(",")])
    syn = Synthesizer.load(pretrained, device="cpu")
    real_sample = syn.model.sample

    def wild_rewards(n, sampler, generator=None, guide=None):
        x = real_sample(n, sampler, generator=generator)
        x[:, syn.layout.reward] = torch.linspace(-3, 3, n)
        return x

    monkeypatch.setattr(syn.model, "sample", wild_rewards)
    kept = syn.sample(100, SamplerConfig(name="euler", steps=4), reward_range="none")
    assert kept.rewards.min() < public.min() and kept.rewards.max() > public.max()
    ds = syn.sample(100, SamplerConfig(name="euler", steps=4))
    assert ds.rewards.min() == pytest.approx(public.min()) and ds.rewards.max() == pytest.approx(public.max())
    assert "rewards clipped to the public datasets' range" in ds.provenance["postprocessing"]
    with pytest.raises(UserError, match="reward_range"):
        syn.sample(4, SamplerConfig(name="euler", steps=4), reward_range="sensitive")
    monkeypatch.setattr(Synthesizer, "load", classmethod(lambda cls, path, device="auto": syn))
    out = sample(config(tmp_path, "sample", checkpoint=str(pretrained), num_samples=50,
                        sampler=SamplerConfig(name="euler", steps=4)))
    side = json.loads(out.with_suffix(".json").read_text())
    assert "rewards clipped" in side["privacy_ledger"]["statistics"]["sample_postprocessing"]


def test_actions_sit_on_their_bounds_as_often_as_in_the_public_data_and_the_release_says_so(pretrained, tmp_path,
                                                                                           data_dir):
    public = np.concatenate([load_dataset(n).actions for n in PUBLIC.split(",")])
    share = saturated_share(public, -np.ones(2), np.ones(2))
    assert 0.1 < share < 0.9  # the mazes' controller saturates: the test data has a share to match
    syn = Synthesizer.load(pretrained, device="cpu")
    assert syn.meta["public_action_saturation"] == pytest.approx(share)
    sampler = SamplerConfig(name="euler", steps=4)
    plain = syn.sample(2000, sampler, saturated_actions="none")
    snapped = syn.sample(2000, sampler)
    on_bound = lambda a: float(np.mean(np.abs(a) >= 1))  # noqa: E731
    assert on_bound(plain.actions) < share - 0.05 and on_bound(snapped.actions) == pytest.approx(share, abs=2e-3)
    moved = plain.actions != snapped.actions
    assert np.all(np.abs(snapped.actions[moved]) == 1) and np.array_equal(snapped.observations, plain.observations)
    assert "of a bound moved onto it" in snapped.provenance["postprocessing"]
    with pytest.raises(UserError, match="saturated_actions"):
        syn.sample(4, sampler, saturated_actions="sensitive")
    # a checkpoint pre-trained before the share was recorded reads it from the public datasets its ledger names...
    del syn.meta["public_action_saturation"]
    assert on_bound(syn.sample(2000, sampler).actions) == pytest.approx(share, abs=2e-3)
    # ...only while they are unchanged; otherwise the release says the actions were not snapped
    syn.ledger.data_uses[0]["datasets"][0]["sha256"] = "0" * 64
    unsnapped = syn.sample(2000, sampler)
    assert np.array_equal(unsnapped.actions, plain.actions)
    assert "actions not snapped" in unsnapped.provenance["postprocessing"]


def _squashed_copy(name: str, folder) -> str:
    """The maze dataset `name` as a tanh-squashed policy would log it: no action entry on a bound."""
    ds = load_dataset(name)
    ds = dataclasses.replace(ds, actions=(np.tanh(2 * ds.actions) * 0.9).astype(np.float32))
    return str(ds.save(folder / f"{name}-squashed.npz"))


def test_squashed_public_actions_are_modelled_in_atanh_space_end_to_end(pretrained, tmp_path):
    public = ",".join(_squashed_copy(n, tmp_path) for n in PUBLIC.split(","))
    pre = pretrain(config(tmp_path / "pre", "pretrain", public_datasets=public, steps=60, action_space="auto"))
    model, meta, ledger = load_model(pre)
    assert meta["action_space"] == "atanh" and meta["public_action_saturation"] == 0.0
    assert "0 of the public datasets' action entries lie on a bound" in ledger.statistics["action_space"]
    # the model's statistics are those of atanh(a): wider than the actions' own (|a| ≤ 0.9·tanh(2))
    public_actions = np.concatenate([load_dataset(p).actions for p in public.split(",")])
    assert np.allclose(model.normalizer.std[model.normalizer.squashed].numpy(), np.arctanh(public_actions).std(0),
                       rtol=1e-3)
    assert load_model(pretrained)[1]["action_space"] == "raw"  # the default
    sampler = SamplerConfig(name="euler", steps=4)
    ds = Synthesizer.load(pre, device="cpu").sample(2000, sampler)
    assert np.all(np.abs(ds.actions) < 1) and "mapped back with tanh" in ds.provenance["postprocessing"]
    # DP fine-tuning keeps the representation; guidance by a model of another action space is refused
    fine = finetune(config(tmp_path / "fine", "finetune", checkpoint=str(pre), dataset=_squashed_copy(SENSITIVE,
                           tmp_path), steps=10, dp=DPConfig(epsilon=10.0, normalizer="dp")))
    fine_model, fine_meta, _ = load_model(fine)
    assert fine_meta["action_space"] == "atanh" and fine_model.normalizer.source["kind"] == "dp"
    assert np.all(np.abs(Synthesizer.load(fine, device="cpu").sample(500, sampler).actions) < 1)
    with pytest.raises(UserError, match="action space"):
        Synthesizer.load(fine, device="cpu").sample(10, SamplerConfig(name="euler", steps=4, guidance=1.0,
                                                                      guide_checkpoint=str(pretrained)))
    with pytest.raises(UserError, match="finite"):
        unbounded = load_dataset(SENSITIVE)
        unbounded = dataclasses.replace(unbounded, action_low=np.full(2, -np.inf), action_high=np.full(2, np.inf))
        pretrain(config(tmp_path / "bad", "pretrain", public_datasets=str(unbounded.save(tmp_path / "inf.npz")),
                        action_space="atanh"))
    assert not (tmp_path / "bad").exists()


def test_isolated_rows_are_dropped_after_oversampling_and_the_release_says_so(pretrained, monkeypatch, tmp_path):
    syn = Synthesizer.load(pretrained, device="cpu")
    real_sample = syn.model.sample
    planted = []

    def with_outliers(n, sampler, generator=None, guide=None):  # every 25th row's state far from all others
        x = real_sample(n, sampler, generator=generator)
        rows = torch.arange(0, n, 25)
        x[rows, syn.layout.obs] = 100.0 * (1 + rows.double().unsqueeze(1)).to(x.dtype)
        planted.append(len(rows))
        return x

    monkeypatch.setattr(syn.model, "sample", with_outliers)
    sampler = SamplerConfig(name="euler", steps=4)
    assert (np.abs(syn.sample(100, sampler, identities="none").observations) > 50).any()  # kept without the filter
    ds = syn.sample(100, sampler, identities="none", drop_sparse=0.1, sparse_k=5)
    assert ds.size == 100 and ds.provenance["drawn"] == 112 and planted[-1] == 5  # ceil(100 / 0.9) rows drawn
    assert np.abs(ds.observations).max() < 50  # every planted row is among the 12 dropped
    assert "12 of 112 rows dropped as the most isolated" in ds.provenance["postprocessing"]
    for bad in ({"drop_sparse": 1.0}, {"drop_sparse": -0.1}, {"sparse_k": 0}):
        with pytest.raises(UserError, match="drop_sparse|sparse_k"):
            syn.sample(10, sampler, **bad)
    monkeypatch.setattr(Synthesizer, "load", classmethod(lambda cls, path, device="auto": syn))
    out = sample(config(tmp_path, "sample", checkpoint=str(pretrained), num_samples=50, sampler=sampler,
                        drop_sparse=0.2))
    side = json.loads(out.with_suffix(".json").read_text())
    assert "13 of 63 rows dropped as the most isolated" in side["privacy_ledger"]["statistics"]["sample_postprocessing"]
    with pytest.raises(UserError, match="drop_sparse"):  # refused before any folder is touched
        sample(config(tmp_path / "bad", "sample", checkpoint=str(pretrained), drop_sparse=2.0))
    assert not (tmp_path / "bad").exists()


def test_knn_sparsity_is_the_distance_to_the_kth_other_row_in_every_backend(monkeypatch):
    from synther.diffusion import sparsity as sp

    x = np.random.default_rng(0).normal(size=(300, 3)) * [1.0, 10.0, 0.1]  # scales differ: rows are standardised
    z = (x - x.mean(0)) / x.std(0)
    d = np.linalg.norm(z[:, None] - z[None], axis=2)
    np.fill_diagonal(d, np.inf)
    expected = np.sort(d, axis=1)[:, 6]  # the 7th nearest other row
    np.testing.assert_allclose(sp.sparsity(x, 7), expected, rtol=1e-6)  # k-d tree
    monkeypatch.setattr(sp, "KD_TREE_MAX_DIM", 0)
    np.testing.assert_allclose(sp.sparsity(x, 7), expected, rtol=1e-4)  # brute force
    assert list(sp.keep_densest(x, 290, 7)) == sorted(np.argsort(expected)[:290])
    with pytest.raises(UserError, match="more than k"):
        sp.sparsity(x[:5], 7)


def test_samples_keep_the_public_datas_exact_identities_and_the_release_says_so(pretrained, tmp_path):
    syn = Synthesizer.load(pretrained, device="cpu")
    assert len(syn.meta["public_identities"]["basis"]) == 2  # the maze step x′ = x + 0.01·v′, per coordinate
    assert "2 exact linear identities" in syn.ledger.statistics["linear_identities"]

    def euler_residual(ds):
        return np.abs(ds.next_observations[:, :2] - ds.observations[:, :2] - 0.01 * ds.next_observations[:, 2:]).max()

    sampler = SamplerConfig(name="euler", steps=4)
    assert euler_residual(syn.sample(200, sampler, identities="none")) > 1e-3  # a 300-step model misses them
    ds = syn.sample(200, sampler)
    assert euler_residual(ds) < 1e-5
    assert "projected onto the 2 exact linear identities" in ds.provenance["postprocessing"]
    with pytest.raises(UserError, match="identities"):
        syn.sample(4, sampler, identities="sensitive")
    out = sample(config(tmp_path, "sample", checkpoint=str(pretrained), num_samples=50, sampler=sampler))
    side = json.loads(out.with_suffix(".json").read_text())
    assert "projected onto the 2 exact" in side["privacy_ledger"]["statistics"]["sample_postprocessing"]
    # a checkpoint from before identities were recorded samples as before, and says why nothing was projected
    del syn.meta["public_identities"]
    assert "pre-trained before they were recorded" in syn.sample(10, sampler).provenance["postprocessing"]


def test_relabelling_fits_on_the_public_datasets_only_and_the_release_says_so(pretrained, tmp_path, monkeypatch,
                                                                              capsys):
    import synther.diffusion.synthesizer as synthesizer
    from synther.diffusion.relabel import fit_public_dynamics

    ft = finetune(config(tmp_path, "finetune", dataset=SENSITIVE, checkpoint=str(pretrained), steps=10,
                         dp=DPConfig(epsilon=5.0)))
    loaded = []
    real_load = synthesizer.load_dataset
    monkeypatch.setattr(synthesizer, "load_dataset", lambda where: loaded.append(where) or real_load(where))
    syn = Synthesizer.load(ft, device="cpu")
    sampler = SamplerConfig(name="euler", steps=4)
    plain = syn.sample(300, sampler, seed=1, identities="none", reward_range="none")
    relabelled = syn.sample(300, sampler, seed=1, identities="none", reward_range="none", relabel="public",
                            relabel_steps=50)
    # the model is fitted on the public mazes the ledger names, never on the sensitive one
    assert sorted(Path(w).stem for w in loaded) == sorted(PUBLIC.split(","))
    # s, a and the terminal flag are the sampled ones; s′ and r are the public model's prediction at (s, a)
    for key in ("observations", "actions", "terminals"):
        np.testing.assert_array_equal(getattr(relabelled, key), getattr(plain, key))
    model, _ = fit_public_dynamics([real_load(n) for n in PUBLIC.split(",")], 50, seed=1)
    next_obs, reward = model.predict(plain.observations.astype(np.float64), plain.actions.astype(np.float64))
    np.testing.assert_allclose(relabelled.next_observations, next_obs, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(relabelled.rewards, reward, rtol=1e-5, atol=1e-5)
    assert "replaced by a dynamics model (s, a) → (s′ − s, r) fitted to the public datasets" in \
        relabelled.provenance["postprocessing"]
    assert "256 units wide" in relabelled.provenance["postprocessing"]
    # --relabel_width: the same fit with wider layers, and the release says how wide
    wide = syn.sample(300, sampler, seed=1, identities="none", reward_range="none", relabel="public",
                      relabel_steps=50, relabel_width=64)
    wide_model, _ = fit_public_dynamics([real_load(n) for n in PUBLIC.split(",")], 50, seed=1, width=64)
    wide_next, _ = wide_model.predict(plain.observations.astype(np.float64), plain.actions.astype(np.float64))
    np.testing.assert_allclose(wide.next_observations, wide_next, rtol=1e-5, atol=1e-5)
    assert not np.allclose(wide.next_observations, relabelled.next_observations, atol=1e-3)
    assert "64 units wide" in wide.provenance["postprocessing"]
    # each fit is kept beside the pre-trained checkpoint: a sample of another fine-tune of it reuses the fit
    kept = sorted((Path(pretrained).parent / "public-dynamics").glob("*.pt"))
    other = finetune(config(tmp_path / "other", "finetune", dataset=SENSITIVE, checkpoint=str(pretrained), steps=10,
                            dp=DPConfig(epsilon=5.0)))
    capsys.readouterr()
    again = Synthesizer.load(other, device="cpu").sample(300, sampler, seed=1, identities="none",
                                                         reward_range="none", relabel="public", relabel_steps=50)
    assert "public dynamics model: reused" in capsys.readouterr().out
    assert sorted((Path(pretrained).parent / "public-dynamics").glob("*.pt")) == kept
    assert again.provenance["postprocessing"] == relabelled.provenance["postprocessing"]
    out = sample(config(tmp_path, "sample", checkpoint=str(ft), num_samples=50, sampler=sampler, relabel="public",
                        relabel_steps=20))
    side = json.loads(out.with_suffix(".json").read_text())
    assert "fitted to the public datasets" in side["privacy_ledger"]["statistics"]["sample_postprocessing"]
    with pytest.raises(UserError, match="unknown relabel"):
        syn.sample(4, sampler, relabel="sensitive")
    with pytest.raises(UserError, match="relabel_steps must be at least 1"):
        syn.sample(4, sampler, relabel="public", relabel_steps=0)
    # a public dataset the ledger also lists as sensitive is refused; a changed one too, before any row is drawn
    uses = syn.ledger.data_uses
    sensitive_sha = next(u for u in uses if u["use"] != "public")["datasets"][0]["sha256"]
    public_use = next(u for u in uses if u["use"] == "public")
    monkeypatch.setattr(syn.model, "sample", lambda *a, **k: pytest.fail("sampled before refusing"))
    original = public_use["datasets"][0]["sha256"]
    with monkeypatch.context() as m:
        m.setattr(synthesizer, "_load_unchanged", lambda d: real_load(d["name"]))
        public_use["datasets"][0]["sha256"] = sensitive_sha
        with pytest.raises(UserError, match="as sensitive data too"):
            syn.sample(4, sampler, relabel="public", relabel_steps=5)
    public_use["datasets"][0]["sha256"] = "0" * 64
    with pytest.raises(UserError, match="unchanged"):
        syn.sample(4, sampler, relabel="public", relabel_steps=5)
    public_use["datasets"][0]["sha256"] = original
    # floor 'public' needs one robot's model: these public mazes are two environments, refused before any row is drawn
    with pytest.raises(UserError, match="floor 'public' needs public datasets of one environment"):
        syn.sample(4, sampler, floor="public")


def test_the_fine_tunes_dynamics_model_is_charged_to_the_budget_kept_and_used_by_relabel_dp(pretrained, tmp_path):
    from synther.diffusion.relabel import fit_public_dynamics
    from synther.diffusion.synthesizer import DYNAMICS_MECHANISM

    dynamics = dict(dynamics_steps=60, dynamics_noise_multiplier=1.0, dynamics_batch_size=64, dynamics_width=32,
                    dynamics_public_steps=30)
    plain = finetune(config(tmp_path / "plain", "finetune", dataset=SENSITIVE, checkpoint=str(pretrained), steps=10,
                            dp=DPConfig(epsilon=3.0)))
    ft = finetune(config(tmp_path, "finetune", dataset=SENSITIVE, checkpoint=str(pretrained), steps=10,
                         dp=DPConfig(epsilon=3.0, **dynamics)))
    _, meta, ledger = load_model(ft)
    _, _, plain_ledger = load_model(plain)
    entry = next(m for m in ledger.prior_mechanisms if m["mechanism"] == DYNAMICS_MECHANISM)
    q = 64 / ledger.sensitive_train_rows
    assert entry["accountant_entry"] == [1.0, pytest.approx(q), 60] and entry["z_max"] > 9
    # one budget: the diffusion's σ is raised to make room, the whole history stays at the target, and without the
    # dynamics model's entry it would not reach it
    assert ledger.noise_multiplier > plain_ledger.noise_multiplier
    assert 3.0 - 0.02 <= ledger.epsilon_spent() <= 3.0 + 1e-9
    rest = [h for h, m in zip(ledger.history(), [*ledger.prior_mechanisms, None]) if m is not entry]
    assert epsilon_spent(rest, ledger.delta) < 3.0 - 0.05
    assert DYNAMICS_MECHANISM in ledger.describe() and "DP-SGD (σ 1" in ledger.statistics["dp_dynamics"]
    # the weights: fine-tuned from the public fit (so different from it), from OS entropy (a second run differs)
    syn = Synthesizer.load(ft, device="cpu")
    public, _ = fit_public_dynamics([load_dataset(n) for n in PUBLIC.split(",")], 30, seed=0, width=32)
    assert not torch.equal(syn.sensitive_dynamics.net[0].weight, public.members[0].net[0].weight)
    assert syn.sensitive_dynamics.in_mean.equal(public.members[0].in_mean)
    again = finetune(config(tmp_path / "again", "finetune", dataset=SENSITIVE, checkpoint=str(pretrained), steps=10,
                            dp=DPConfig(epsilon=3.0, **dynamics)))
    assert not torch.equal(Synthesizer.load(again, device="cpu").sensitive_dynamics.net[0].weight,
                           syn.sensitive_dynamics.net[0].weight)
    # a finished run asked again trains nothing and releases nothing again: same model, same ledger
    before = syn.sensitive_dynamics.state_dict()
    finetune(config(tmp_path, "finetune", dataset=SENSITIVE, checkpoint=str(pretrained), steps=10,
                    dp=DPConfig(epsilon=3.0, **dynamics)))
    resumed = Synthesizer.load(ft, device="cpu")
    assert all(torch.equal(v, resumed.sensitive_dynamics.state_dict()[k]) for k, v in before.items())
    assert resumed.ledger.to_dict() == syn.ledger.to_dict()
    # relabel 'dp': s, a and terminals as sampled, s′ and r the kept model's prediction; the release says so
    sampler = SamplerConfig(name="euler", steps=4)
    raw = syn.sample(200, sampler, seed=1, identities="none", reward_range="none")
    labelled = syn.sample(200, sampler, seed=1, identities="none", reward_range="none", relabel="dp")
    for key in ("observations", "actions", "terminals"):
        np.testing.assert_array_equal(getattr(labelled, key), getattr(raw, key))
    next_obs, reward = syn.sensitive_dynamics.predict(raw.observations.astype(np.float64),
                                                      raw.actions.astype(np.float64))
    np.testing.assert_allclose(labelled.next_observations, next_obs, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(labelled.rewards, reward, rtol=1e-5, atol=1e-5)
    assert "the checkpoint's dynamics model" in labelled.provenance["postprocessing"]
    # relabel_reward 'ranked': s′ as above; r the rows' own sampled rewards, handed out in the model's order
    ranked = syn.sample(200, sampler, seed=1, identities="none", reward_range="none", relabel="dp",
                        relabel_reward="ranked")
    np.testing.assert_array_equal(ranked.next_observations, labelled.next_observations)
    np.testing.assert_array_equal(np.sort(ranked.rewards), np.sort(raw.rewards))
    np.testing.assert_array_equal(np.argsort(ranked.rewards, kind="stable"), np.argsort(reward, kind="stable"))
    assert "handed out again in the model's order" in ranked.provenance["postprocessing"]
    with pytest.raises(UserError, match="needs a checkpoint fine-tuned with --dp.dynamics_steps"):
        Synthesizer.load(plain, device="cpu").sample(4, sampler, relabel="dp")
    # without DP the model is trained and labelled non-private, and nothing is charged
    nodp = finetune(config(tmp_path / "nodp", "finetune", dataset=SENSITIVE, checkpoint=str(pretrained), steps=10,
                           dp=DPConfig(enabled=False, **dynamics)))
    _, _, nodp_ledger = load_model(nodp)
    assert not nodp_ledger.private and not nodp_ledger.prior_mechanisms
    assert "WITHOUT DP" in nodp_ledger.statistics["dp_dynamics"]
    with pytest.raises(UserError, match="different configuration"):  # that folder resumed as a DP run: refused
        finetune(config(tmp_path / "nodp", "finetune", dataset=SENSITIVE, checkpoint=str(pretrained), steps=10,
                        dp=DPConfig(epsilon=3.0, **dynamics)))
    # a mechanism that alone spends the budget is refused before anything is trained or written
    with pytest.raises(UserError, match="raise dp.dynamics_noise_multiplier"):
        finetune(config(tmp_path / "over", "finetune", dataset=SENSITIVE, checkpoint=str(pretrained), steps=10,
                        dp=DPConfig(epsilon=0.5, **{**dynamics, "dynamics_noise_multiplier": 0.3})))
    assert not (tmp_path / "over" / "finetune").exists() or not any((tmp_path / "over" / "finetune").iterdir())
    # only the last layers trained (the others stay at the public fit), with a clip norm of its own
    few = finetune(config(tmp_path / "few", "finetune", dataset=SENSITIVE, checkpoint=str(pretrained), steps=10,
                          dp=DPConfig(epsilon=3.0, **dynamics, dynamics_layers=2, dynamics_clip_norm=0.5)))
    tuned, _, few_ledger = Synthesizer.load(few, device="cpu").sensitive_dynamics, *load_model(few)[1:]
    assert next(m for m in few_ledger.prior_mechanisms if m["mechanism"] == DYNAMICS_MECHANISM)["clip_norm"] == 0.5
    assert "the last 2 of its 4 layers" in few_ledger.statistics["dp_dynamics"]
    for i, layer in enumerate(m for m in tuned.net if isinstance(m, torch.nn.Linear)):
        start = [m for m in public.members[0].net if isinstance(m, torch.nn.Linear)][i]
        assert torch.equal(layer.weight, start.weight) == (i < 2), i
    for bad, match in (({"dynamics_width": 0}, "dp.dynamics_width must be at least 1"),
                       ({"dynamics_lr": 0.0}, "must be positive"), ({"dynamics_steps": -1}, "must be ≥ 0"),
                       ({"dynamics_layers": 5}, "dp.dynamics_layers must be 0"),
                       ({"dynamics_clip_norm": -1.0}, "dp.dynamics_clip_norm must be ≥ 0")):
        with pytest.raises(UserError, match=match):
            finetune(config(tmp_path / "bad", "finetune", dataset=SENSITIVE, checkpoint=str(pretrained), steps=10,
                            dp=DPConfig(epsilon=3.0, **{**dynamics, **bad})))


def test_relabel_drop_keeps_the_rows_the_public_models_agree_on(pretrained, tmp_path):
    from synther.diffusion.relabel import fit_public_dynamics, least_disputed

    ft = finetune(config(tmp_path, "finetune", dataset=SENSITIVE, checkpoint=str(pretrained), steps=10,
                         dp=DPConfig(epsilon=5.0)))
    syn = Synthesizer.load(ft, device="cpu")
    sampler = SamplerConfig(name="euler", steps=4)
    # 300 rows with half dropped are 600 draws: the same draws as 600 plain rows from the same seed
    plain = syn.sample(600, sampler, seed=1, identities="none", reward_range="none")
    kept = syn.sample(300, sampler, seed=1, identities="none", reward_range="none", relabel="public",
                      relabel_steps=50, relabel_models=3, relabel_drop=0.5)
    assert kept.size == 300 and kept.provenance["drawn"] == 600
    ensemble, _ = fit_public_dynamics([load_dataset(n) for n in PUBLIC.split(",")], 50, seed=1, members=3)
    s, a = plain.observations.astype(np.float64), plain.actions.astype(np.float64)
    agreed = least_disputed(ensemble.disagreement(s, a), 300)
    np.testing.assert_array_equal(kept.observations, plain.observations[agreed])
    np.testing.assert_array_equal(kept.actions, plain.actions[agreed])
    next_obs, reward = ensemble.predict(s[agreed], a[agreed])
    np.testing.assert_allclose(kept.next_observations, next_obs, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(kept.rewards, reward, rtol=1e-5, atol=1e-5)
    assert "the mean of 3 dynamics models" in kept.provenance["postprocessing"]
    assert "300 of 600 rows dropped where those models disagree most" in kept.provenance["postprocessing"]
    # settings that cannot work are refused before any row is drawn
    for kwargs, match in (({"relabel": "public", "relabel_drop": 0.2}, "needs an ensemble"),
                          ({"relabel_models": 3}, "--relabel public only"),
                          ({"relabel_width": 512}, "--relabel public only"),
                          ({"relabel": "public", "relabel_width": 0}, "relabel_width must be at least 1"),
                          ({"relabel": "public", "relabel_models": 2, "relabel_drop": 1.0}, "fraction in"),
                          ({"relabel_reward": "ranked"}, "--relabel public or dp only"),
                          ({"relabel": "public", "relabel_reward": "sampled"}, "unknown relabel_reward")):
        with pytest.raises(UserError, match=match):
            syn.sample(4, sampler, **kwargs)


def test_guidance_by_the_public_model_only_and_said_in_the_release(pretrained, tmp_path):
    from synther.diffusion.edm import _Guided

    ft = finetune(config(tmp_path, "finetune", dataset=SENSITIVE, checkpoint=str(pretrained), steps=20,
                         dp=DPConfig(epsilon=5.0)))
    syn = Synthesizer.load(ft, device="cpu")
    plain = syn.sample(300, SamplerConfig(name="dpm2m", steps=6), seed=1)
    guided = syn.sample(300, SamplerConfig(name="dpm2m", steps=6, guidance=0.5), seed=1)
    assert not np.allclose(plain.to_vectors(), guided.to_vectors())
    assert "autoguidance w=0.5 by the public checkpoint" in guided.provenance["postprocessing"]
    assert guided.provenance["network_evaluations_per_sample"] == 12
    # each step: D + w (D - D_public), the guide being the model the fine-tune started from
    guide = load_model(pretrained)[0]
    x, sigma = torch.randn(5, syn.model.dim, dtype=torch.float64), 0.7
    expected = 1.5 * syn.model._d(x, sigma) - 0.5 * guide._d(x, sigma)
    torch.testing.assert_close(_Guided(syn.model, guide, 0.5)._d(x, sigma), expected)
    # a model guided by itself samples as without guidance
    pub = Synthesizer.load(pretrained, device="cpu")
    itself = SamplerConfig(name="dpm2m", steps=6, guidance=1.0, guide_checkpoint=str(pretrained))
    np.testing.assert_allclose(pub.sample(200, itself, seed=2).to_vectors(),
                               pub.sample(200, SamplerConfig(name="dpm2m", steps=6), seed=2).to_vectors(), atol=1e-5)
    # only a model that never saw sensitive data may guide (then guidance is post-processing)
    with pytest.raises(UserError, match="shows sensitive data"):
        syn.sample(10, SamplerConfig(name="dpm2m", steps=6, guidance=0.5, guide_checkpoint=str(ft)))
    syn.meta = {**syn.meta, "identity": {**syn.meta["identity"], "base_checkpoint_sha256": "0" * 64}}
    with pytest.raises(UserError, match="not the checkpoint"):
        syn.sample(10, SamplerConfig(name="dpm2m", steps=6, guidance=0.5))
    with pytest.raises(UserError, match="needs a fine-tuned checkpoint"):
        pub.sample(10, SamplerConfig(name="dpm2m", steps=6, guidance=0.5))


def test_noise_multiplicity_fine_tunes_under_the_same_guarantee(pretrained, tmp_path):
    out = finetune(config(tmp_path, "finetune", dataset=SENSITIVE, checkpoint=str(pretrained), steps=20,
                          dp=DPConfig(epsilon=5.0, draws_per_record=3)))
    one = finetune(config(tmp_path / "k1", "finetune", dataset=SENSITIVE, checkpoint=str(pretrained), steps=20,
                          dp=DPConfig(epsilon=5.0)))
    ledger, ref = (json.loads((p.parent / "ledger.json").read_text()) for p in (out, one))
    # K draws per record change the variance of each record's gradient, not its sensitivity: the same σ and ε
    assert ledger["noise_multiplier"] == ref["noise_multiplier"] and ledger["steps_taken"] == 20
    assert "3 diffusion draws" in ledger["statistics"]["noise_multiplicity"]
    with pytest.raises(UserError, match="draws_per_record"):
        finetune(config(tmp_path / "k0", "finetune", dataset=SENSITIVE, checkpoint=str(pretrained),
                        dp=DPConfig(draws_per_record=0)))


def _fine_tunes_on_two_sensitive_sets_and_a_plain_one(pretrained, tmp_path, dp: DPConfig, fits: list):
    """Fine-tune with `dp` on the sensitive set and on a different one, then without the option; every run recorded
    in `fits` (by the caller's spy) must have been handed exactly the public datasets' rows, none sensitive.
    Returns the first run's and the plain run's checkpoints."""
    out = finetune(config(tmp_path, "finetune", dataset=SENSITIVE, checkpoint=str(pretrained), steps=20, dp=dp))
    other = load_dataset(SENSITIVE)
    other = dataclasses.replace(other, observations=other.observations[::-1] * 2,
                                next_observations=other.next_observations[::-1] * 2)
    other.save(tmp_path / "other.npz")
    finetune(config(tmp_path / "b", "finetune", dataset=str(tmp_path / "other.npz"), checkpoint=str(pretrained),
                    steps=20, dp=dp))
    plain = finetune(config(tmp_path / "plain", "finetune", dataset=SENSITIVE, checkpoint=str(pretrained), steps=20,
                            dp=DPConfig(epsilon=dp.epsilon)))
    public = np.concatenate([load_dataset(n).to_vectors() for n in PUBLIC.split(",")])
    sensitive_rows = {row.tobytes() for row in load_dataset(SENSITIVE).to_vectors()}
    assert len(fits) == 2
    for run in fits:
        np.testing.assert_array_equal(run["public_rows"].numpy(), public)
        assert not any(row.tobytes() in sensitive_rows for row in run["public_rows"].numpy())
    return out, plain


def test_public_gradient_subspace_is_fit_on_public_rows_only_and_the_release_says_so(pretrained, tmp_path,
                                                                                       monkeypatch):
    """The subspace each noisy gradient is projected onto comes from the pre-training datasets' rows at the current
    weights: at the first step (the public weights) it is the same whatever the sensitive data, and no sensitive
    row is among the rows it may draw. The projection is post-processing: σ and ε are those of a plain run."""
    fits = []
    original_init, original_fit = PublicSubspaceProjector.__init__, PublicGradientSubspace.fit

    def spy_init(self, model, public_rows, *args, **kwargs):
        fits.append({"public_rows": public_rows.clone(), "mixes": [], "steps": []})
        original_init(self, model, public_rows, *args, **kwargs)

    def spy_fit(self, per_row_loss):
        share = original_fit(self, per_row_loss)
        fits[-1]["mixes"].append(self._mix.clone())
        return share

    monkeypatch.setattr(PublicSubspaceProjector, "__init__", spy_init)
    monkeypatch.setattr(PublicGradientSubspace, "fit", spy_fit)
    _record_refits(monkeypatch, lambda step: fits[-1]["steps"].append(step))
    dp = DPConfig(epsilon=5.0, public_subspace=4, public_subspace_rows=32, public_subspace_every=10)
    out, plain = _fine_tunes_on_two_sensitive_sets_and_a_plain_one(pretrained, tmp_path, dp, fits)
    assert all(run["steps"] == [0, 10] and len(run["mixes"]) == 2 for run in fits)
    torch.testing.assert_close(fits[0]["mixes"][0], fits[1]["mixes"][0], rtol=0, atol=0)
    ledger, ref = (json.loads((p.parent / "ledger.json").read_text()) for p in (out, plain))
    assert ledger["noise_multiplier"] == ref["noise_multiplier"] and ledger["epsilon_spent"] == ref["epsilon_spent"]
    assert "top-4 subspace" in ledger["statistics"]["gradient_projection"]
    assert "no sensitive data read" in ledger["statistics"]["gradient_projection"]
    records = [json.loads(line) for line in (out.parent / "metrics.jsonl").read_text().splitlines()]
    assert all(0 < r["subspace_share"] <= 1 for r in records)
    for bad, match in ((DPConfig(public_subspace=-1), "public_subspace must"),
                       (DPConfig(public_subspace=8, public_subspace_rows=4), "at least the subspace"),
                       (DPConfig(public_subspace=2, public_subspace_every=0), "every must"),
                       (DPConfig(public_subspace=2, enabled=False), "needs DP fine-tuning"),
                       (DPConfig(public_subspace=2, clipping="opacus_hooks"), "not built for clipping")):
        with pytest.raises(UserError, match=match):
            finetune(config(tmp_path / "bad", "finetune", dataset=SENSITIVE, checkpoint=str(pretrained), dp=bad))


def test_a_resumed_fine_tune_refits_the_public_subspace_before_its_first_step(pretrained, tmp_path, monkeypatch):
    fits = []
    _record_refits(monkeypatch, fits.append)
    original_step = _kill_training_at(monkeypatch, 26)  # killed between checkpoints 20 and 30
    cfg = config(tmp_path, "finetune", dataset=SENSITIVE, checkpoint=str(pretrained),
                 dp=DPConfig(epsilon=3.0, public_subspace=4, public_subspace_rows=32, public_subspace_every=15))
    with pytest.raises(KeyboardInterrupt):
        finetune(cfg)
    assert fits == [0, 15]
    monkeypatch.setattr(DiffusionTrainer, "_train_step", original_step)
    _, _, ledger = load_model(finetune(cfg))
    assert fits == [0, 15, 20, 35] and ledger.steps_taken == 40  # resumed at 20: a fit before its first step


def test_public_preconditioner_is_fit_on_public_rows_only_and_the_release_says_so(pretrained, tmp_path,
                                                                                   monkeypatch):
    """The preconditioner every per-sample gradient is scaled by before clipping comes from the pre-training
    datasets' rows at the current weights: at the first step it is the same whatever the sensitive data, and no
    sensitive row is among the rows it may draw. The clipped quantity is the preconditioned gradient, so σ and ε
    are a plain run's."""
    fits = []
    original_init, original_fit = PublicPreconditioner.__init__, PublicDiagonalPreconditioner.fit

    def spy_init(self, model, public_rows, *args, **kwargs):
        fits.append({"public_rows": public_rows.clone(), "scales": [], "steps": []})
        original_init(self, model, public_rows, *args, **kwargs)

    def spy_fit(self, per_row_loss):
        spread = original_fit(self, per_row_loss)
        fits[-1]["scales"].append(torch.cat([torch.cat([s.row, s.col, s.bias[None]]) for s in self.scales.values()]))
        return spread

    monkeypatch.setattr(PublicPreconditioner, "__init__", spy_init)
    monkeypatch.setattr(PublicDiagonalPreconditioner, "fit", spy_fit)
    _record_refits(monkeypatch, lambda step: fits[-1]["steps"].append(step), PublicPreconditioner)
    dp = DPConfig(epsilon=5.0, public_precondition=True, public_precondition_rows=32, public_precondition_every=10)
    out, plain = _fine_tunes_on_two_sensitive_sets_and_a_plain_one(pretrained, tmp_path, dp, fits)
    assert all(run["steps"] == [0, 10] and len(run["scales"]) == 2 for run in fits)
    torch.testing.assert_close(fits[0]["scales"][0], fits[1]["scales"][0], rtol=0, atol=0)
    assert not torch.equal(fits[0]["scales"][0], fits[0]["scales"][1])  # refit at the moved weights
    ledger, ref = (json.loads((p.parent / "ledger.json").read_text()) for p in (out, plain))
    assert ledger["noise_multiplier"] == ref["noise_multiplier"] and ledger["epsilon_spent"] == ref["epsilon_spent"]
    assert "before clipping" in ledger["statistics"]["gradient_preconditioning"]
    assert "no sensitive data read" in ledger["statistics"]["gradient_preconditioning"]
    records = [json.loads(line) for line in (out.parent / "metrics.jsonl").read_text().splitlines()]
    assert all(r["precondition_spread"] >= 1 for r in records)
    for bad, match in ((DPConfig(public_precondition=True, enabled=False), "needs DP fine-tuning"),
                       (DPConfig(public_precondition=True, clipping="opacus_hooks"), "not built for clipping"),
                       (DPConfig(public_precondition=True, public_precondition_floor=0.0), "floor must"),
                       (DPConfig(public_precondition=True, public_precondition_every=0), "_every must")):
        with pytest.raises(UserError, match=match):
            finetune(config(tmp_path / "bad", "finetune", dataset=SENSITIVE, checkpoint=str(pretrained), dp=bad))


class _SamplingFieldsUnread(DiffusionConfig):
    """A config whose sampling-only fields may be copied whole (dataclasses.asdict: the run's record) but not read."""

    def __getattribute__(self, name):
        if name in SAMPLING_FIELDS and sys._getframe(1).f_globals.get("__name__") != "dataclasses":
            raise AssertionError(f"{object.__getattribute__(self, 'mode')} read --{name}, a sampling-only field")
        return object.__getattribute__(self, name)


def test_training_never_reads_the_sampling_fields(pretrained, tmp_path):
    """The sweep leaves SAMPLING_FIELDS out of the fingerprints of pre-trainings and fine-tunes (a new sampler does
    not train a DP fine-tune again): that holds only if neither reads them."""
    def guarded(cfg: DiffusionConfig) -> DiffusionConfig:
        return _SamplingFieldsUnread(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)})

    with pytest.raises(AssertionError, match="sampling-only"):  # the guard itself works
        guarded(config(tmp_path, "sample")).sampler
    pretrain(guarded(config(tmp_path, "pretrain", public_datasets=PUBLIC, steps=10)))
    for dp in (DPConfig(epsilon=5.0), DPConfig(enabled=False)):
        finetune(guarded(config(tmp_path / str(dp.enabled), "finetune", dataset=SENSITIVE,
                                checkpoint=str(pretrained), steps=10, dp=dp)))


def test_adapters_start_from_the_pretrained_model_and_merge_back_exactly(pretrained):
    from synther.diffusion.lora import LoRALinear, add_adapters, merge_adapters

    model, _, _ = load_model(pretrained)
    x = torch.as_tensor(load_dataset(SENSITIVE).to_vectors()[:64])
    before = _fixed_loss(model, x)
    add_adapters(model.net, 4)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(("down.weight", "up.weight")) for n in trainable)
    assert _fixed_loss(model, x) == before  # B = 0: the same function until trained
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.up.weight.normal_(0, 0.01)
    adapted = _fixed_loss(model, x)
    merge_adapters(model.net)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert _fixed_loss(model, x) == pytest.approx(adapted, rel=1e-5)


def test_dp_fine_tuning_of_adapters_only_noises_them_and_loads_as_the_plain_model(pretrained, tmp_path):
    out = finetune(config(tmp_path, "finetune", dataset=SENSITIVE, checkpoint=str(pretrained), steps=20,
                          dp=DPConfig(epsilon=5.0, lora_rank=4)))
    ledger = json.loads((out.parent / "ledger.json").read_text())
    assert "rank-4 adapters" in ledger["statistics"]["trained_parameters"]
    state = torch.load(out, weights_only=False)
    assert any(k.endswith("up.weight") for k in state["model"]) and state["meta"]["lora_rank"] == 4
    base, _, _ = load_model(pretrained)
    tuned, meta, _ = load_model(out)  # merged: the pre-trained architecture, with changed weights
    assert [n for n, _ in tuned.named_parameters()] == [n for n, _ in base.named_parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(tuned.parameters(), base.parameters()))
    frozen = dict(base.named_parameters())["net.blocks.0.linear.bias"]  # biases are not adapted
    assert torch.equal(dict(tuned.named_parameters())["net.blocks.0.linear.bias"], frozen)
    assert Synthesizer.load(out, device="cpu").sample(32, SamplerConfig(name="euler", steps=4)).size == 32


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_produces_finite_transitions(pretrained, name, device):
    syn = Synthesizer.load(pretrained, device=device)
    cfg = SamplerConfig(name=name, steps=6)
    ds = syn.sample(64, cfg)
    assert ds.size == 64 and np.isfinite(ds.to_vectors()).all()
    assert network_evaluations(cfg) == (11 if "heun" in name else 6)


def test_bf16_sampling_follows_the_fp32_trajectory_and_the_release_says_so(pretrained):
    """sampler.precision 'bf16' runs the denoiser's products in bfloat16 from the same noise draws: the rows move
    by rounding only (under 1 % of each column's spread on average; ≈ 0.1 % measured), they do move (so autocast
    was on), and the provenance says which precision drew them."""
    syn = Synthesizer.load(pretrained, device="cpu")
    cfg = SamplerConfig(name="dpm2m", steps=8)
    full = syn.sample(500, cfg, seed=1)
    half = syn.sample(500, dataclasses.replace(cfg, precision="bf16"), seed=1)
    a, b = full.to_vectors(), half.to_vectors()
    assert np.isfinite(b).all() and not np.array_equal(a, b)
    assert (np.abs(a - b).mean(0) <= 0.01 * a.std(0) + 1e-6).all()
    assert half.provenance["sampler"]["precision"] == "bf16" and full.provenance["sampler"]["precision"] == "fp32"
    with pytest.raises(UserError, match="precision"):
        syn.sample(8, dataclasses.replace(cfg, precision="fp16"))


def test_sampling_follows_the_threads_a_sweep_lends(pretrained, two_lent_threads, capsys):
    """A sweep lends a sampling job idle cores (every waiting job needs its samples): it switches torch to the lent
    thread count before its next chunk of rows."""
    assert Synthesizer.load(pretrained, device="cpu").sample(64, SamplerConfig(steps=4), batch_size=32).size == 64
    assert torch.get_num_threads() == 2
    assert "now 2 threads" in capsys.readouterr().out


@pytest.mark.parametrize("name,steps", [("dpm2m", 32), ("heun", 32), ("stochastic_heun", 128), ("euler", 256)])
def test_every_sampler_draws_the_data_distribution_given_the_exact_denoiser(name, steps):
    """Gaussian data N(μ, Σ) has the closed-form ideal denoiser D(x; σ) = μ + Σ(Σ + σ²I)⁻¹(x − μ): with it in place
    of the network, each sampler must return samples with mean μ and covariance Σ (within 0.05 per entry; the
    Monte-Carlo error on 20k samples is ≈ 0.01 for the mean and ≈ 0.02 for the covariance). Fewer steps trade
    accuracy for speed: on this case 16 steps of dpm2m or heun overshoot the variances by ≈ 0.1, euler needs ≈ 256."""
    from synther.diffusion.normalizer import Normalizer

    mu = torch.tensor([0.5, -1.0, 0.2], dtype=torch.float64)
    a = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.5, 0.0], [-0.3, 0.2, 0.4]], dtype=torch.float64)
    cov = a @ a.T  # correlated, eigenvalues from ≈ 0.1 to ≈ 1.5
    model = EDM(3, Normalizer.identity(3), DenoiserConfig(width=8, depth=1), EDMConfig())

    def exact_denoiser(x, sigma):
        x = x.double()
        gain = cov @ torch.linalg.inv(cov + sigma[0].double() ** 2 * torch.eye(3, dtype=torch.float64))
        return (mu + (x - mu) @ gain.T).float()

    model.denoise = exact_denoiser
    x = model.sample(20_000, SamplerConfig(name=name, steps=steps), torch.Generator().manual_seed(0)).double()
    torch.testing.assert_close(x.mean(0), mu, rtol=0, atol=0.05)
    torch.testing.assert_close(torch.cov(x.T), cov, rtol=0, atol=0.05)


def test_pipeline_errors_are_user_errors(pretrained, tmp_path):
    with pytest.raises(UserError, match="public_datasets"):
        pretrain(config(tmp_path, "pretrain"))
    with pytest.raises(UserError, match="ε"):
        finetune(config(tmp_path, "finetune", dataset=SENSITIVE, checkpoint=str(pretrained),
                        dp=DPConfig(epsilon=0.0)))
    with pytest.raises(UserError, match="unknown noise generator"):
        finetune(config(tmp_path, "finetune", dataset=SENSITIVE, checkpoint=str(pretrained),
                        dp=DPConfig(noise_generator="mt19937")))
    with pytest.raises(UserError, match="checkpoint not found"):
        finetune(config(tmp_path, "finetune", dataset=SENSITIVE, checkpoint=str(tmp_path / "none.pt")))
    with pytest.raises(UserError, match="unknown sampler"):
        Synthesizer.load(pretrained, device="cpu").sample(4, SamplerConfig(name="ddim"))
    with pytest.raises(UserError, match="sampler.precision"):  # refused before the checkpoint is even opened
        sample(config(tmp_path, "sample", checkpoint=str(tmp_path / "none.pt"),
                      sampler=SamplerConfig(precision="fp16")))


@pytest.mark.slow
def test_dp_randomness_is_secret_and_metrics_hold_no_private_statistics(pretrained, tmp_path):
    cfg = config(tmp_path, "finetune", dataset=SENSITIVE, checkpoint=str(pretrained), dp=DPConfig(epsilon=5.0))
    a = finetune(dataclasses.replace(cfg, run_dir=str(tmp_path / "a")))
    b = finetune(dataclasses.replace(cfg, run_dir=str(tmp_path / "b")))
    # same --seed, yet different noise and batches: the DP randomness cannot be replayed from the seed
    wa, wb = load_model(a, ema=False)[0].net.out.weight, load_model(b, ema=False)[0].net.out.weight
    assert not torch.allclose(wa, wb)
    state = torch.load(a, weights_only=False)
    assert state["rng"] == {}  # no generator state is saved under DP, not even the diffusion draws
    assert "OS entropy" in state["ledger"]["statistics"]["dp_randomness"]
    for line in (a.parent / "metrics.jsonl").read_text().splitlines():  # not even the realized batch sizes
        assert set(json.loads(line)) == {"step", "time_s", "epsilon"}
    # asking for private diagnostics logs them, and the ledger says the file must not be released
    diag = finetune(dataclasses.replace(cfg, run_dir=str(tmp_path / "diag"),
                                        train=dataclasses.replace(cfg.train, log_private_diagnostics=True)))
    records = [json.loads(line) for line in (diag.parent / "metrics.jsonl").read_text().splitlines()]
    assert "loss" in records[0]
    assert len({r["batch"] for r in records}) > 1  # Poisson batches: the realized size varies from step to step
    assert "do not release" in load_model(diag)[2].statistics["metrics.jsonl"]
    # torch's generator on request, and the ledger says so
    torch_noise = finetune(dataclasses.replace(cfg, run_dir=str(tmp_path / "torch-noise"),
                                               dp=DPConfig(epsilon=5.0, noise_generator="torch")))
    assert "mt19937" in load_model(torch_noise)[2].statistics["dp_noise"]


def test_public_pretraining_is_reproducible_from_the_seed(tmp_path):
    a = pretrain(config(tmp_path / "a", "pretrain", public_datasets=PUBLIC, steps=20))
    b = pretrain(config(tmp_path / "b", "pretrain", public_datasets=PUBLIC, steps=20))
    torch.testing.assert_close(load_model(a)[0].state_dict(), load_model(b)[0].state_dict(), rtol=0, atol=0)


def test_fused_optimizer_is_fused_where_torch_can_and_plain_elsewhere():
    from synther.utils.optim import fused_optimizer

    w = torch.nn.Parameter(torch.zeros(3))
    opt = fused_optimizer(torch.optim.AdamW, [w], lr=1e-3, betas=(0.9, 0.99))
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["fused"] is True
    assert opt.defaults["lr"] == 1e-3 and opt.defaults["betas"] == (0.9, 0.99)

    class NoFused(torch.optim.SGD):  # an optimizer without a fused kernel: the same class, unfused
        def __init__(self, params, lr=0.1, fused=None):
            if fused:
                raise RuntimeError("no fused kernel")
            super().__init__(params, lr=lr)

    plain = fused_optimizer(NoFused, (p for p in [w]), lr=0.5)  # a generator of parameters is fine too
    assert isinstance(plain, NoFused) and plain.defaults["lr"] == 0.5 and len(plain.param_groups[0]["params"]) == 1
