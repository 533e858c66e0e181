"""The stated (ε, δ) guarantee follows from the code in the worst case: no laundering through checkpoints, no
resume onto other data, the noise tail charged to δ, secret normalizer noise, a per-record split, replace-one ε."""
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import norm

from synther.data import load_dataset
from synther.data.dataset import TransitionDataset
from synther.diffusion.synthesizer import DiffusionConfig, DPConfig, finetune, load_model, pretrain, sample
from synther.diffusion.trainer import DiffusionTrainer, TrainConfig
from synther.errors import UserError
from synther.privacy.accounting import epsilon_replace_one, epsilon_spent, tail_delta
from synther.privacy.engine import DPSettings
from synther.privacy.ledger import PrivacyLedger

from maze_data import write_mazes

REPO = Path(__file__).resolve().parents[1]
PUBLIC = "ptr-maze2d-open-dense-v0,ptr-maze2d-umaze-dense-v0"
SENSITIVE = "ptr-maze2d-medium-dense-v0"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_mazes(tmp_path_factory.mktemp("data"), {"open": 0, "umaze": 1, "medium": 2, "large": 3}, 3000)


@pytest.fixture(autouse=True)
def _use_data_dir(data_dir, monkeypatch):
    monkeypatch.setenv("PRIVTRANR_DATA_DIR", str(data_dir))


def config(run_dir, mode: str, steps: int = 30, **kw) -> DiffusionConfig:
    train = TrainConfig(max_steps=steps, batch_size=64, log_every=10, checkpoint_every=10)
    return DiffusionConfig(mode=mode, run_dir=str(run_dir), width=32, depth=2, train=train, progress=False, **kw)


@pytest.fixture(scope="module")
def pretrained(data_dir, tmp_path_factory):
    with pytest.MonkeyPatch.context() as env:  # set for this fixture only, restored after
        env.setenv("PRIVTRANR_DATA_DIR", str(data_dir))
        return pretrain(config(tmp_path_factory.mktemp("pre") / "run", "pretrain", public_datasets=PUBLIC, steps=50))


# --- §0: the ledger carries the whole history -------------------------------------------------------------------
def test_a_non_private_fine_tune_can_never_be_laundered_into_a_private_one(pretrained, tmp_path):
    leaked = finetune(config(tmp_path / "nodp", "finetune", dataset=SENSITIVE, checkpoint=str(pretrained),
                             dp=DPConfig(enabled=False)))
    with pytest.raises(UserError, match="without DP"):
        finetune(config(tmp_path / "again", "finetune", dataset=SENSITIVE, checkpoint=str(leaked),
                        dp=DPConfig(epsilon=1.0)))
    # even on another sensitive set: the model still carries the first one's records
    with pytest.raises(UserError, match="without DP"):
        finetune(config(tmp_path / "other", "finetune", dataset="ptr-maze2d-large-dense-v0",
                        checkpoint=str(leaked), dp=DPConfig(epsilon=1.0)))
    # a labelled non-private run from it stays labelled, naming the data it leaks
    ref = finetune(config(tmp_path / "ref", "finetune", dataset="ptr-maze2d-large-dense-v0",
                          checkpoint=str(leaked), dp=DPConfig(enabled=False)))
    ledger = load_model(ref)[2]
    assert not ledger.private and ledger.epsilon_spent() == math.inf
    assert SENSITIVE in ledger.describe() and [u["use"] for u in ledger.data_uses] == ["public", "non-private",
                                                                                      "non-private"]


@pytest.mark.slow
def test_fine_tuning_a_dp_fine_tune_composes_its_ledger(pretrained, tmp_path):
    first = finetune(config(tmp_path / "first", "finetune", dataset=SENSITIVE, checkpoint=str(pretrained),
                            dp=DPConfig(epsilon=2.0, delta=1e-5)))
    first_ledger = load_model(first)[2]
    second = finetune(config(tmp_path / "second", "finetune", dataset=SENSITIVE, checkpoint=str(first),
                             dp=DPConfig(epsilon=3.0, delta=1e-5)))
    ledger = load_model(second)[2]
    assert len(ledger.prior_mechanisms) == 1 and len(ledger.history()) == 2
    assert ledger.history()[0] == (first_ledger.noise_multiplier, first_ledger.sample_rate, first_ledger.steps_taken)
    # the total is the composition, within the new target; alone the second run would claim far less
    assert ledger.epsilon_spent() == pytest.approx(epsilon_spent(ledger.history(), 1e-5))
    assert first_ledger.epsilon_spent() < ledger.epsilon_spent() <= 3.0
    assert epsilon_spent(ledger.history()[1:], 1e-5) < ledger.epsilon_spent()
    assert [u["use"] for u in ledger.data_uses] == ["public", "dp", "dp"]
    assert ledger.data_uses[1]["final"]["epsilon_spent"] == pytest.approx(first_ledger.epsilon_spent())
    sha = load_dataset(SENSITIVE).content_sha256()
    assert ledger.data_uses[2]["datasets"][0]["sha256"] == sha
    # a target the history has already spent is refused
    with pytest.raises(UserError, match="already spent"):
        finetune(config(tmp_path / "third", "finetune", dataset=SENSITIVE, checkpoint=str(second),
                        dp=DPConfig(epsilon=2.0, delta=1e-5)))
    # samples.json shows the whole history
    out = sample(dataclasses.replace(config(tmp_path / "second", "sample", checkpoint=str(second)),
                                     num_samples=50))
    side = json.loads(out.with_suffix(".json").read_text())["privacy_ledger"]
    assert [u["use"] for u in side["data_uses"]] == ["public", "dp", "dp"]
    assert side["epsilon_spent"] == pytest.approx(ledger.epsilon_spent())
    assert "composed with 1 other mechanism(s) on sensitive data: DP-SGD fine-tune of" in side["guarantee"]


def test_a_public_pretraining_set_cannot_be_fine_tuned_on_as_sensitive(pretrained, tmp_path):
    with pytest.raises(UserError, match="PUBLIC"):
        finetune(config(tmp_path, "finetune", dataset="ptr-maze2d-open-dense-v0", checkpoint=str(pretrained)))


def _kill_after_first_checkpoint(cmd: list[str], run_dir: Path) -> None:
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not (run_dir / "checkpoint.pt").exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline, "no checkpoint written"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_a_killed_fine_tune_does_not_resume_on_another_dataset(pretrained, tmp_path, data_dir):
    # another sensitive set with exactly as many rows
    medium = load_dataset(SENSITIVE)
    other = load_dataset("ptr-maze2d-large-dense-v0").subset(np.arange(medium.size))
    other.save(data_dir / "same-size.npz")
    run_dir = tmp_path / "ft"
    cmd = [sys.executable, "MuJoCo/train_diffuser.py", "--mode", "finetune", "--dataset", SENSITIVE,
           "--checkpoint", str(pretrained), "--run_dir", str(run_dir), "--width", "32", "--depth", "2",
           "--train.max_steps", "400", "--train.batch_size", "64", "--train.checkpoint_every", "20",
           "--progress", "false", "--dp.epsilon", "5"]
    _kill_after_first_checkpoint(cmd, run_dir)
    swapped = [*cmd]
    swapped[swapped.index(SENSITIVE)] = str(data_dir / "same-size.npz")
    done = subprocess.run(swapped, cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 2 and "different configuration" in done.stderr, done.stderr
    # the same for another starting checkpoint
    other_base = pretrain(config(tmp_path / "pre2", "pretrain", public_datasets=PUBLIC, steps=20, seed=1))
    rebased = [*cmd]
    rebased[rebased.index(str(pretrained))] = str(other_base)
    done = subprocess.run(rebased, cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 2 and "different configuration" in done.stderr, done.stderr


# --- §1: the noise tail is charged to δ --------------------------------------------------------------------------
def test_the_ledger_adds_the_noise_tail_to_delta():
    z, sigma, q, steps = 5.768, 0.511, 0.0016, 12_500  # the old 24-bit cap at the quickstart's σ
    assert tail_delta([(sigma, q, steps, z)]) == pytest.approx(q * steps * norm.sf(z - 1 / sigma))
    assert tail_delta([(sigma, q, steps, z)]) > 1e-3  # what the issue measured: δ ≳ 1.4e-3, not 1e-6
    ledger = PrivacyLedger(target_epsilon=10, delta=1e-6, accountant="rdp", noise_multiplier=sigma, sample_rate=q,
                           steps_taken=steps, noise_z_max=9.419, clip_norm=1.0, sensitive_dataset="x",
                           prior_mechanisms=[{"accountant_entry": [50.0, 1.0, 1], "z_max": 8.5}])
    expected = q * steps * norm.sf(9.419 - 1 / sigma) + norm.sf(8.5 - 1 / 50.0)
    assert ledger.delta_tail() == pytest.approx(expected)
    assert ledger.to_dict()["delta_total"] == pytest.approx(1e-6 + expected) and expected < 1e-9
    with pytest.raises(UserError, match="tail"):
        ledger.check_tail(sigma, q, steps, 5.768)
    ledger.check_tail(sigma, q, steps, 9.419)
    # entries recorded before the cap was recorded are charged with the old cap
    legacy = PrivacyLedger(target_epsilon=10, delta=1e-6, noise_multiplier=sigma, sample_rate=q, steps_taken=steps)
    assert legacy.delta_tail() == pytest.approx(q * steps * norm.sf(5.768 - 1 / sigma))


@pytest.mark.slow
def test_a_run_whose_noise_tail_is_not_negligible_is_refused(pretrained, tmp_path):
    # ε = 1e5 needs σ so small that the capped tail would dominate δ
    with pytest.raises(UserError, match="tail"):
        finetune(config(tmp_path, "finetune", dataset=SENSITIVE, checkpoint=str(pretrained),
                        dp=DPConfig(epsilon=1e5)))
    assert not (tmp_path / "checkpoint.pt").exists()
    out = finetune(config(tmp_path / "ok", "finetune", dataset=SENSITIVE, checkpoint=str(pretrained),
                          dp=DPConfig(epsilon=10.0)))
    ledger = load_model(out)[2]
    assert ledger.noise_z_max >= 8.5 and 0 < ledger.delta_tail() < 1e-3 * ledger.delta
    assert "noise tail" in ledger.describe()


# --- §2: the DP normalizer's noise is secret ---------------------------------------------------------------------
@pytest.mark.slow
def test_the_dp_normalizer_noise_is_not_derivable_from_the_seed(pretrained, tmp_path):
    dp = DPConfig(epsilon=8.0, delta=1e-5, normalizer="dp", normalizer_noise_multiplier=20.0)
    a = finetune(config(tmp_path / "a", "finetune", steps=10, dataset=SENSITIVE, checkpoint=str(pretrained),
                        dp=dp))
    b = finetune(config(tmp_path / "b", "finetune", steps=10, dataset=SENSITIVE, checkpoint=str(pretrained),
                        dp=dp))
    mean_a, mean_b = load_model(a)[0].normalizer.mean, load_model(b)[0].normalizer.mean
    assert not np.allclose(mean_a.numpy(), mean_b.numpy())  # same --seed, different noise
    assert "OS entropy" in load_model(a)[2].statistics["normalizer"]


def test_the_diffusion_draws_inside_dp_fine_tuning_are_secret(pretrained, tmp_path):
    """Each per-sample loss draws its σ and noise by position in the Poisson batch: known draws would let one
    record's presence shift the others' gradients, so under DP they come from OS entropy, like the DP noise."""
    model, meta, _ = load_model(pretrained, ema=False)
    data = torch.as_tensor(load_dataset(SENSITIVE).to_vectors()[:500])
    dp = DPSettings(noise_multiplier=1.0, clip_norm=1.0, sample_rate=0.1)
    draws = []
    for run in ("a", "b"):
        torch.manual_seed(0)  # what a published --seed would replay
        DiffusionTrainer(model, data, TrainConfig(max_steps=1), tmp_path / run, PrivacyLedger(delta=1e-5), meta,
                         seed=0, dp=dp, progress=False)
        draws.append(torch.randn(8))
    assert not torch.equal(*draws)
    torch.manual_seed(0)  # public pre-training stays reproducible
    DiffusionTrainer(model, data, TrainConfig(max_steps=1), tmp_path / "public", PrivacyLedger(), meta, seed=0,
                     progress=False)
    after_public_init = torch.randn(8)
    torch.manual_seed(0)
    assert torch.equal(after_public_init, torch.randn(8))


# --- §3: the split and the neighbouring relation -----------------------------------------------------------------
def test_adding_one_record_changes_no_other_records_side_of_the_split():
    ds = load_dataset(SENSITIVE)
    train, held = ds.split(0.8, seed=3)
    record = ds.subset(np.array([17]))
    record = dataclasses.replace(record, rewards=record.rewards + 0.123)  # a new, different record
    grown = TransitionDataset.from_vectors(np.concatenate([ds.to_vectors(), record.to_vectors()]), ds.layout)
    train2, held2 = grown.split(0.8, seed=3)
    rows = lambda d: {r.tobytes() for r in d.to_vectors()}  # noqa: E731
    assert rows(train2) - rows(train) <= rows(record) and rows(train) <= rows(train2)
    assert rows(held2) - rows(held) <= rows(record) and rows(held) <= rows(held2)
    # a new seed gives another split, and the fraction is the coin's
    assert rows(ds.split(0.8, seed=4)[0]) != rows(train)
    assert abs(train.size / ds.size - 0.8) < 4 * np.sqrt(0.16 / ds.size)


def test_the_subset_cap_swaps_at_most_one_record(pretrained, tmp_path):
    ds = load_dataset(SENSITIVE)
    from synther.diffusion.synthesizer import sensitive_split

    cfg = config(tmp_path, "finetune", dataset=SENSITIVE, max_sensitive_rows=500)
    kept = {r.tobytes() for r in sensitive_split(cfg, ds)[0].to_vectors()}
    fewer = ds.subset(np.arange(1, ds.size))
    kept2 = {r.tobytes() for r in sensitive_split(cfg, fewer)[0].to_vectors()}
    assert len(kept) == len(kept2) == 500 and len(kept ^ kept2) <= 2


def test_replace_one_epsilon_is_reported_and_matches_twice_the_sensitivity():
    # without subsampling, swapping a record moves the sum by up to 2C: the Gaussian mechanism at σ/2
    sigma = 4.0
    direct = epsilon_spent([(sigma / 2, 1.0, 1)], 1e-5, "prv")
    assert epsilon_replace_one([(sigma, 1.0, 1)], 1e-5) == pytest.approx(direct, rel=0.02)
    assert epsilon_replace_one([(sigma, 1.0, 1)], 1e-5) > epsilon_spent([(sigma, 1.0, 1)], 1e-5, "prv") * 1.5
    ledger = PrivacyLedger(target_epsilon=10, delta=1e-6, accountant="rdp", noise_multiplier=0.6, sample_rate=0.01,
                           steps_taken=2000, noise_z_max=9.419, clip_norm=1.0, sensitive_dataset="x")
    d = ledger.to_dict()
    assert d["epsilon_replace_one"] == pytest.approx(epsilon_replace_one(ledger.history(), 1e-6))
    assert d["epsilon_replace_one"] > 0 and "replace-one" in d["guarantee"] and "treated as public" in d["guarantee"]
