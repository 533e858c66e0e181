"""Privacy audits: the white-box audit of the DP-SGD step (tight for the real engine, firing on broken ones) and the
attainable ceiling of the one-run canary audit."""
import json
import math

import numpy as np
import pytest
from scipy import optimize, stats

from script_helpers import run_script
from synther.privacy.audit import audit_from_scores
from synther.privacy.whitebox_audit import WhiteboxSetup, audit_dpsgd, bound_from_scores

pytestmark = pytest.mark.slow  # audits train many canary models

# q = 0.5, T = 10; 1M canary slots (245 runs of the 64 × 64 layer) take a few seconds on one core
SETUP = WhiteboxSetup(canaries=1_000_000)


def test_whitebox_audit_of_the_real_engine_is_within_a_factor_two_of_the_accountant():
    res = audit_dpsgd(4.0, SETUP, seed=0)
    eps = res["accountant_epsilon"]
    assert eps == pytest.approx(4.0, abs=0.01) and res["broken_on_purpose"] is None
    # measured 2.43-2.66 over seeds 0-4: valid (below ε) and tight (at least ε/2)
    assert eps / 2 <= res["epsilon_lower_bound"] <= eps, res
    assert res["max_attainable_bound"] > 2 * eps  # the canary count is not what limits the bound
    assert res["canaries"] == 245 * 64 ** 2 and res["canaries_in"] + res["canaries_out"] == res["canaries"] // 2
    assert res["setup"]["clipping_mode"] == "ghost" and res["setup"]["sample_rate"] == 0.5


@pytest.mark.parametrize("broken", [{"noise_scale": 0.5}, {"clip_norm_override": math.inf}],
                         ids=["noise-halved", "clipping-off"])
def test_whitebox_audit_fires_on_a_broken_mechanism(broken):
    res = audit_dpsgd(4.0, SETUP, seed=0, **broken)
    # measured over seeds 0-4: noise halved 4.8-5.6, clipping off (canary norm 4C) 8.5-9.4
    assert res["epsilon_lower_bound"] > res["accountant_epsilon"], res
    assert res["broken_on_purpose"] is not None


def _gaussian_epsilon(mu: float, delta: float) -> float:
    """Exact ε(δ) of the Gaussian mechanism with sensitivity / σ = mu."""
    def excess(eps: float) -> float:
        return stats.norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2) - delta
    return optimize.brentq(excess, 1e-9, 50)


def test_bound_statistics_hold_for_a_mechanism_of_known_epsilon():
    """Scores of a Gaussian mechanism (in: N(μ, 1), out: N(0, 1)) with known exact ε: the bound exceeds ε in at
    most 5% of repeats (Clopper–Pearson is conservative: here never) and still finds a good part of it."""
    mu, delta, rng = 1.0, 1e-5, np.random.default_rng(0)
    eps_true = _gaussian_epsilon(mu, delta)
    bounds = []
    for _ in range(100):
        sel_in, eval_in = rng.normal(mu, 1, size=(2, 20_000))
        sel_out, eval_out = rng.normal(0, 1, size=(2, 20_000))
        res = bound_from_scores((sel_in, sel_out), (eval_in, eval_out), delta)
        assert res["epsilon_lower_bound"] <= res["max_attainable_bound"]
        bounds.append(res["epsilon_lower_bound"])
    bounds = np.array(bounds)
    assert (bounds > eps_true).mean() <= 0.05
    assert bounds.mean() > 0.4 * eps_true, (bounds.mean(), eps_true)
    perfect = bound_from_scores((np.ones(100), np.zeros(100)), (np.ones(1000), np.zeros(1000)), delta)
    assert perfect["epsilon_lower_bound"] == perfect["max_attainable_bound"] > 5  # ln(0.996 / 0.0037)


def test_one_run_audit_reports_the_bound_a_perfect_attacker_could_reach():
    """1000 canaries cap the one-run audit near 4.64 whatever the attack: at ε = 10 it cannot fire."""
    rng = np.random.default_rng(2)
    inserted = rng.random(1000) < 0.5
    perfect = audit_from_scores(inserted.astype(float), inserted, delta=1e-6)
    assert perfect.max_attainable_bound == perfect.epsilon_lower_bound == pytest.approx(4.64, abs=0.01)
    blind = audit_from_scores(rng.random(1000), inserted, delta=1e-6)
    assert blind.max_attainable_bound == perfect.max_attainable_bound
    assert blind.epsilon_lower_bound < blind.max_attainable_bound < 10
    more = audit_from_scores(np.r_[inserted, inserted].astype(float), np.r_[inserted, inserted], delta=1e-6)
    assert more.max_attainable_bound > perfect.max_attainable_bound  # more canaries, higher ceiling


def test_mia_script_runs_the_dpsgd_audit(tmp_path):
    proc = run_script("mia.py", "--mode", "audit_dpsgd", "--epsilons", "2", "--dpsgd.canaries", "50000",
                      "--out_dir", str(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stderr
    (res,) = json.loads((tmp_path / "audit_dpsgd.json").read_text())["results"]
    assert {"accountant_epsilon", "epsilon_lower_bound", "max_attainable_bound", "setup", "noise_multiplier",
            "canaries"} <= res.keys()
    assert res["setup"]["canaries"] == 50_000 and 0 <= res["epsilon_lower_bound"] <= res["accountant_epsilon"]
    assert "max attainable" in proc.stdout
    assert "audit_dpsgd" in run_script("mia.py", "--help").stdout
