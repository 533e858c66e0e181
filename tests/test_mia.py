"""Membership inference (attack metrics, end-to-end attack) and the one-run canary privacy audit."""
import dataclasses
import json

import numpy as np
import pytest

from maze_data import write_mazes
from script_helpers import assert_user_error, run_script
from synther.diffusion.synthesizer import (DiffusionConfig, DPConfig, default_run_dir, finetune, load_model,
                                           pretrain, sensitive_split)
from synther.diffusion.trainer import TrainConfig
from synther.evaluation.mia import (AttackSettings, attack_checkpoint, attack_metrics, auc, roc_curve, run_audit,
                                    run_experiment, tpr_at_fpr)
from synther.privacy.audit import audit_from_scores, epsilon_lower_bound, p_value

pytestmark = pytest.mark.slow  # attacks on trained models, subprocess scripts

SENSITIVE = "ptr-maze2d-medium-dense-v0"
FAST = AttackSettings(draws=8)


# --- attack metrics ---------------------------------------------------------------------------------------
def test_auc_and_roc_follow_their_definitions():
    members, nonmembers = np.array([3.0, 2.0]), np.array([1.0, 2.0])
    # pairs (3,1) (3,2) (2,1) win, (2,2) ties: (3 + 0.5) / 4
    assert auc(members, nonmembers) == pytest.approx(0.875)
    fpr, tpr = roc_curve(members, nonmembers)
    assert fpr.tolist() == [0.0, 0.0, 0.5, 1.0] and tpr.tolist() == [0.0, 0.5, 1.0, 1.0]
    assert tpr_at_fpr(fpr, tpr, 0.1) == 0.5 and tpr_at_fpr(fpr, tpr, 0.5) == 1.0


def test_random_scores_give_chance_level_with_an_interval_around_it():
    rng = np.random.default_rng(0)
    res = attack_metrics(rng.normal(size=1000), rng.normal(size=1000), bootstrap=200)
    assert abs(res["auc"] - 0.5) < 0.04
    assert res["auc_ci"][0] < 0.5 < res["auc_ci"][1]
    assert abs(res["tpr_at_fpr"]["0.1"] - 0.1) < 0.05 and res["tpr_at_fpr"]["0.001"] < 0.02
    lo, hi = res["tpr_ci"]["0.01"]
    assert lo <= res["tpr_at_fpr"]["0.01"] <= hi


def test_separated_scores_give_auc_one():
    res = attack_metrics(np.arange(100.0) + 1000, np.arange(100.0), bootstrap=50)
    assert res["auc"] == 1.0 and res["tpr_at_fpr"]["0.001"] == 1.0 and res["auc_ci"] == [1.0, 1.0]


# --- audit statistics ---------------------------------------------------------------------------------------
def test_p_value_grows_with_epsilon_and_the_delta_term_only_adds():
    ps = [p_value(1000, 200, 150, e, 0.0) for e in (0.0, 0.5, 1.0, 2.0)]
    assert ps == sorted(ps) and ps[0] < 1e-10
    assert p_value(1000, 200, 150, 1.0, 1e-3) >= p_value(1000, 200, 150, 1.0, 0.0)
    # the bound is the ε where the p-value crosses the significance level
    eps = epsilon_lower_bound(1000, 200, 150, 1e-6, 0.05)
    assert p_value(1000, 200, 150, eps * 0.999, 1e-6) < 0.05 <= p_value(1000, 200, 150, eps * 1.01, 1e-6)


def test_audit_bound_is_valid_for_a_mechanism_with_known_epsilon():
    """ε-DP randomized response on each canary's inclusion bit: the bound must not exceed ε (but in ≤ 5% of
    runs), and with 1000 canaries it should still detect a good part of ε."""
    eps_true, m, rng = 1.0, 1000, np.random.default_rng(1)
    bounds = []
    for _ in range(200):
        inserted = rng.random(m) < 0.5
        keep = rng.random(m) < np.exp(eps_true) / (1 + np.exp(eps_true))
        reported = np.where(keep, inserted, ~inserted)
        bounds.append(audit_from_scores(reported + 1e-3 * rng.random(m), inserted, delta=0.0).epsilon_lower_bound)
    bounds = np.array(bounds)
    assert (bounds > eps_true).mean() <= 0.05
    assert bounds.mean() > 0.3


def test_a_perfect_attack_gives_a_large_bound_and_a_blind_one_none():
    rng = np.random.default_rng(2)
    inserted = rng.random(1000) < 0.5
    assert audit_from_scores(inserted.astype(float), inserted, delta=1e-6).epsilon_lower_bound > 3.0
    assert audit_from_scores(rng.random(1000), inserted, delta=1e-6).epsilon_lower_bound < 0.5


# --- end to end on a tiny maze dataset ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_mazes(tmp_path_factory.mktemp("data"), {"open": 0, "medium": 2}, 3000)


@pytest.fixture(autouse=True)
def _use_data_dir(data_dir, monkeypatch):
    monkeypatch.setenv("PRIVTRANR_DATA_DIR", str(data_dir))


def tiny(tmp, mode, steps, **kw) -> DiffusionConfig:
    # a short EMA, so the attacked (EMA) weights are the fine-tuned ones and not the pre-trained ones
    train = TrainConfig(max_steps=steps, batch_size=32, log_every=50, checkpoint_every=10_000, lr=1e-3,
                        ema_decay=0.9, ema_every=1)
    return DiffusionConfig(mode=mode, run_dir=str(tmp / mode), width=128, depth=2, train=train, progress=False,
                           device="cpu", **kw)


@pytest.fixture(scope="module")
def pretrained(data_dir, tmp_path_factory):
    with pytest.MonkeyPatch.context() as env:  # set for this fixture only, restored after
        env.setenv("PRIVTRANR_DATA_DIR", str(data_dir))
        return pretrain(tiny(tmp_path_factory.mktemp("pre"), "pretrain", 200,
                             public_datasets="ptr-maze2d-open-dense-v0"))


@pytest.fixture(scope="module")
def overfit(pretrained, tmp_path_factory, data_dir):
    """A non-private model fine-tuned for long on 64 sensitive records (64 held out)."""
    with pytest.MonkeyPatch.context() as env:  # set for this fixture only, restored after
        env.setenv("PRIVTRANR_DATA_DIR", str(data_dir))
        cfg = tiny(tmp_path_factory.mktemp("nodp"), "finetune", 5000, dataset=SENSITIVE,
                   checkpoint=str(pretrained), max_sensitive_rows=128,
                   dp=DPConfig(enabled=False, train_fraction=0.5))
        return cfg, finetune(cfg)


def test_non_private_finetune_is_labelled_as_such(overfit):
    _, checkpoint = overfit
    _, meta, ledger = load_model(checkpoint)
    assert not ledger.private and ledger.epsilon_spent() == float("inf")
    assert ledger.describe().startswith("NOT differentially private")
    assert meta["config"]["dp"]["enabled"] is False and meta["sensitive_spec"] == SENSITIVE
    default = default_run_dir(DiffusionConfig(mode="finetune", dataset="x.npz", dp=DPConfig(enabled=False)))
    assert default.name == "finetune-x-nodp-seed0"


def test_attack_separates_members_of_an_overfitted_model(overfit):
    cfg, checkpoint = overfit
    res = attack_checkpoint(checkpoint, members=64, settings=FAST, bootstrap=100, device="cpu")
    _, train, held = sensitive_split(cfg)  # a coin per record: about 64 each
    assert (res["members"], res["nonmembers"]) == (min(64, train.size), min(64, held.size))
    assert min(train.size, held.size) >= 40
    assert res["auc"] > 0.75 and res["auc_ci"][0] > 0.6, res["auc"]
    assert res["epsilon"] is None and res["private"] is False


def test_audit_bound_is_positive_without_dp_and_below_the_accountant_with_dp(overfit, tmp_path):
    cfg, _ = overfit
    nodp = run_audit(cfg, tmp_path / "nodp", canaries=200, radius=2.0, settings=FAST)
    assert nodp["epsilon_lower_bound"] > 0.5, nodp["tried"]
    assert nodp["accountant_epsilon"] is None and (tmp_path / "nodp" / "audit.json").exists()
    dp_cfg = dataclasses.replace(cfg, dp=DPConfig(epsilon=1.0, delta=1e-5, train_fraction=0.5),
                                 train=dataclasses.replace(cfg.train, max_steps=300))
    dp = run_audit(dp_cfg, tmp_path / "dp", canaries=200, radius=2.0, settings=FAST)
    assert dp["accountant_epsilon"] <= 1.0 + 1e-6
    assert dp["epsilon_lower_bound"] <= dp["accountant_epsilon"]
    saved = json.loads((tmp_path / "dp" / "audit.json").read_text())
    assert saved["epsilon_lower_bound"] == dp["epsilon_lower_bound"] and 0 < saved["inserted"] < 200
    # what a perfect attacker could show with 200 canaries, beside the bound
    assert saved["canaries"] == 200 and saved["epsilon_lower_bound"] <= saved["max_attainable_bound"] < 4


def test_experiment_attacks_the_non_private_and_dp_models_into_one_table(pretrained, tmp_path):
    base = tiny(tmp_path, "finetune", 60)
    rows = run_experiment(base, str(pretrained), SENSITIVE, tmp_path / "exp", members=40, epsilons=(10.0,),
                          nodp_epochs=40, settings=FAST, bootstrap=20, audit=True, canaries=30)
    assert [r["label"] for r in rows] == ["no DP", "DP ε=10"]
    assert rows[0]["epsilon"] is None and rows[1]["epsilon"] <= 10.0
    # the canary count reaches every audit; 30 canaries could not contradict ε = 10 even with a perfect attack
    assert [r["audit"]["canaries"] for r in rows] == [30, 30]
    assert all(r["audit"]["epsilon_lower_bound"] <= r["audit"]["max_attainable_bound"] < 10 for r in rows)
    table = (tmp_path / "exp" / "mia_experiment.md").read_text()
    assert "no DP" in table and "DP ε=10" in table and (tmp_path / "exp" / "mia_roc.png").stat().st_size > 0


def test_mia_script_attacks_a_checkpoint_and_rejects_bad_input(overfit, tmp_path, data_dir):
    _, checkpoint = overfit
    env = {"PRIVTRANR_DATA_DIR": str(data_dir)}
    proc = run_script("mia.py", "--checkpoint", str(checkpoint), "--out_dir", str(tmp_path / "m"), "--members", "32",
                      "--draws", "4", "--bootstrap", "20", "--device", "cpu", "--progress", "false", env_extra=env)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "m" / "mia.json").read_text())
    assert {"auc", "auc_ci", "tpr_at_fpr", "epsilon"} <= result.keys() and (tmp_path / "m" / "mia_roc.png").exists()
    # by default the report goes to the sweep's evaluation folder, not next to the checkpoint (the release folder)
    before = sorted(p.name for p in checkpoint.parent.iterdir())
    proc = run_script("mia.py", "--checkpoint", str(checkpoint), "--members", "8", "--draws", "2", "--bootstrap", "0",
                      "--device", "cpu", "--progress", "false",
                      env_extra={**env, "PRIVTRANR_RUNS_DIR": str(tmp_path / "runs")})
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == before
    assert (tmp_path / "runs" / "evaluation" / f"mia-{checkpoint.parent.name}" / "mia.json").exists()
    assert_user_error(run_script("mia.py", "--checkpoint", str(tmp_path / "missing.pt"), env_extra=env),
                      "missing.pt", "not found")
    pre = load_model(checkpoint)[1]["pretrained_from"]
    assert_user_error(run_script("mia.py", "--checkpoint", pre, env_extra=env), "not a fine-tuned checkpoint")
    assert_user_error(run_script("mia.py", "--mode", "experiment", env_extra=env), "--dataset")
