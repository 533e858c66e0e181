"""MuJoCo/report.py and synther.report on run folders written here: exact numbers in every table, the plots, the CLI."""
import csv
import json
import math
from pathlib import Path

import pytest

from synther.report import collect, write_report
from script_helpers import assert_user_error, run_script

D = "ptr-maze2d-medium-dense-v0"


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)


def _agent(runs: Path, name: str, algorithm: str, seed: int, score: float, eps: float | None, kind: str,
           curve: list[float] = ()) -> None:
    folder = runs / "agents" / name
    _write(folder / "summary.json", {
        "algorithm": algorithm, "dataset": D, "dp_epsilon": eps, "last_k_mean_normalized_score": score,
        "final_normalized_score": score + 1, "best_normalized_score": score + 2, "evaluation": {"seed": seed},
        "data": {"kind": kind}, "run_dir": str(folder)})
    if curve:
        _write(folder / "eval.jsonl", "".join(json.dumps({"step": 10 * (i + 1), "normalized_score": v}) + "\n"
                                              for i, v in enumerate(curve)))


@pytest.fixture
def runs(tmp_path):
    """Run folders as a sweep leaves them, with known numbers."""
    r = tmp_path / "runs"
    for seed, score in enumerate((10.0, 20.0, 30.0)):
        _agent(r, f"td3_bc-{D}-eps1-seed{seed}", "td3_bc", seed, score, 1.0, "synthetic", [score - 5, score])
    for seed, score in enumerate((40.0, 50.0)):
        _agent(r, f"td3_bc-{D}-eps10-seed{seed}", "td3_bc", seed, score, 10.0, "synthetic", [score - 5, score])
    for seed, score in enumerate((80.0, 100.0)):
        _agent(r, f"td3_bc-{D}-real-seed{seed}", "td3_bc", seed, score, None, "real", [score - 5, score])
    _agent(r, f"td3_bc-{D}-mst-eps1-seed0", "td3_bc", 0, 9.0, 1.0, "synthetic")
    _agent(r, f"iql-{D}-eps1-seed4", "iql", 4, 7.0, 1.0, "synthetic")  # no real reference for iql
    ev = r / "evaluation"
    _write(ev / f"fidelity-privtranr-{D}-eps1-seed0" / "fidelity.json",
           {"marginal_score": 0.9, "correlation_score": 0.95, "dynamics": {"next_obs_nmse": 0.2, "reward_nmse": 0.4}})
    _write(ev / f"fidelity-privtranr-{D}-eps1-seed1" / "fidelity.json",
           {"marginal_score": 0.8, "correlation_score": 0.97, "dynamics": None})
    _write(ev / f"fidelity-mst-{D}-eps1-seed0" / "fidelity.json", {"marginal_score": 0.7, "correlation_score": 0.6})
    mia = ev / f"mia-privtranr-{D}-eps1-seed0"
    _write(mia / "mia.json", {"auc": 0.52, "auc_ci": [0.49, 0.55], "epsilon": 0.98, "seed": 123,
                              "tpr_at_fpr": {"0.001": 0.002, "0.01": 0.012, "0.1": 0.11}})
    _write(mia / "audit.json", {"epsilon_lower_bound": 0.12, "accountant_epsilon": 0.98, "delta": 1e-6})
    _write(ev / f"mia-privtranr-{D}-eps1-seed1" / "mia.json",
           {"auc": 0.54, "auc_ci": [0.51, 0.57], "epsilon": 0.99,
            "tpr_at_fpr": {"0.001": 0.004, "0.01": 0.014, "0.1": 0.13}})
    _write(r / "diffusion" / "pretrain-a+b-seed0" / "ledger.json", {"target_epsilon": None, "delta": None})
    _write(r / "diffusion" / f"finetune-{D}-eps1-seed0" / "ledger.json", {
        "target_epsilon": 1.0, "epsilon_spent": 0.9987, "delta": 1e-6, "noise_multiplier": 1.5, "sample_rate": 0.001,
        "steps_taken": 5000, "accountant": "rdp", "sensitive_dataset": D})
    _write(r / "baselines" / f"mst-{D}-eps1-seed0" / "ledger.json", {
        "mechanism": "mst", "target_epsilon": 1.0, "epsilon_spent": 1.0, "delta": 1e-6, "accountant": "zcdp",
        "sensitive_dataset": D, "accounting": {"epsilon_spent": 1.0}})
    _write(r / "agents" / "broken" / "summary.json", "{not json")
    _write(r / "other" / "summary.json", {"something": "else"})
    return r


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def _num(s: str) -> float | None:
    return None if s == "" else float(s)


def test_tables_have_exact_means_stds_and_ratios(runs, tmp_path):
    res = collect(runs)
    assert len(res.agents) == 9 and len(res.fidelity) == 3 and len(res.mia) == 2 and len(res.ledgers) == 2
    assert any("broken" in s and "unreadable" in s for s in res.skipped)
    assert any("other" in s and "not an agent summary" in s for s in res.skipped)
    out = tmp_path / "results"
    written = write_report(res, out)

    util = {(r["agent"], r["method"], r["epsilon"]): r for r in _csv(out / "utility.csv")}
    assert list(util) == [("iql", "privtranr", "1.0"), ("td3_bc", "real", ""), ("td3_bc", "privtranr", "1.0"),
                          ("td3_bc", "privtranr", "10.0"), ("td3_bc", "mst", "1.0")]
    eps1 = util[("td3_bc", "privtranr", "1.0")]
    assert (eps1["n_seeds"], eps1["seeds"]) == ("3", "0 1 2")
    assert _num(eps1["mean"]) == 20.0 and _num(eps1["std"]) == 10.0  # sample std (n − 1) of 10, 20, 30
    assert _num(eps1["real_mean"]) == 90.0 and _num(eps1["ratio_to_real"]) == pytest.approx(20 / 90, abs=1e-15)
    eps10 = util[("td3_bc", "privtranr", "10.0")]
    assert _num(eps10["mean"]) == 45.0 and _num(eps10["std"]) == pytest.approx(math.sqrt(50), abs=1e-12)
    assert _num(eps10["ratio_to_real"]) == 0.5
    real = util[("td3_bc", "real", "")]
    assert _num(real["mean"]) == 90.0 and _num(real["std"]) == pytest.approx(math.sqrt(200), abs=1e-12)
    assert _num(real["ratio_to_real"]) == 1.0
    mst = util[("td3_bc", "mst", "1.0")]
    assert _num(mst["mean"]) == 9.0 and mst["std"] == "" and _num(mst["ratio_to_real"]) == pytest.approx(0.1)
    iql = util[("iql", "privtranr", "1.0")]
    assert iql["seeds"] == "4" and iql["real_mean"] == "" and iql["ratio_to_real"] == ""
    md = (out / "utility.md").read_text()
    assert f"| {D} | td3_bc | privtranr | 1 | 3 | 20.0 ± 10.0 | 90.0 | 0.222 |" in md
    assert f"| {D} | td3_bc | mst | 1 | 1 | 9.0 | 90.0 | 0.100 |" in md

    fid = {(r["method"], r["epsilon"]): r for r in _csv(out / "fidelity.csv")}
    pt = fid[("privtranr", "1.0")]
    assert pt["n_seeds"] == "2" and _num(pt["marginal_mean"]) == pytest.approx(0.85, abs=1e-15)
    assert _num(pt["marginal_std"]) == pytest.approx(math.sqrt(0.005), abs=1e-15)
    assert _num(pt["correlation_mean"]) == pytest.approx(0.96, abs=1e-15)
    assert _num(pt["dynamics_next_obs_nmse_mean"]) == 0.2 and pt["dynamics_next_obs_nmse_std"] == ""
    assert _num(fid[("mst", "1.0")]["marginal_mean"]) == 0.7 and fid[("mst", "1.0")]["dynamics_reward_nmse_mean"] == ""

    (m,) = _csv(out / "mia.csv")
    assert (m["method"], m["epsilon"], m["n_seeds"]) == ("privtranr", "1.0", "2")
    assert _num(m["auc_mean"]) == pytest.approx(0.53, abs=1e-15) and _num(m["auc_std"]) == pytest.approx(
        math.sqrt(0.0002), abs=1e-15)
    assert _num(m["auc_ci_low"]) == pytest.approx(0.50) and _num(m["auc_ci_high"]) == pytest.approx(0.56)
    assert _num(m["tpr_at_fpr_0.01"]) == pytest.approx(0.013) and _num(m["tpr_at_fpr_0.1"]) == pytest.approx(0.12)
    assert _num(m["accountant_epsilon"]) == pytest.approx(0.985)
    assert _num(m["audit_epsilon_lower_bound"]) == 0.12  # only seed 0 ran the audit
    assert "[0.500, 0.560]" in (out / "mia.md").read_text()

    ledger = _csv(out / "ledger.csv")
    assert [(r["method"], r["seed"], r["epsilon_spent"], r["accountant"]) for r in ledger] == [
        ("privtranr", "0", "0.9987", "rdp"), ("mst", "0", "1.0", "zcdp")]
    assert ledger[0]["noise_multiplier"] == "1.5" and ledger[0]["steps"] == "5000" and ledger[1]["steps"] == ""

    report = (out / "report.md").read_text()
    for section in ("## Utility", "## Fidelity", "## Membership inference", "## Privacy ledger", "## Files not used"):
        assert section in report
    for png in (f"utility_vs_epsilon_{D}.png", f"learning_curves_{D}.png", f"fidelity_{D}.png"):
        assert f"]({png})" in report
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and written[png] == out / png
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # atomic writes leave no temp files


def test_report_script(runs, tmp_path):
    out = tmp_path / "results"
    proc = run_script("report.py", "--runs_dir", str(runs), "--out", str(out), "--score", "final", "--plots", "false")
    assert proc.returncode == 0, proc.stderr
    assert f"| {D} | td3_bc | privtranr | 1 | 3 | 21.0 ± 10.0 | 91.0 | 0.231 |" in proc.stdout  # final = last-k + 1
    assert "9 agent runs, 3 fidelity, 2 MIA, 2 ledgers" in proc.stdout and "not used:" in proc.stderr
    assert not list(out.glob("*.png"))
    (tmp_path / "empty").mkdir()
    assert_user_error(run_script("report.py", "--runs_dir", str(tmp_path / "empty")), "no results found")
    assert_user_error(run_script("report.py", "--runs_dir", str(tmp_path / "nope")), "runs folder not found")
    assert_user_error(run_script("report.py", "--runs_dir", str(runs), "--score", "median"), "score must be one of")


def test_ladder_rungs_are_labelled_from_their_folders_and_tabled_in_loss_order(runs, tmp_path):
    for seed, score in enumerate((70.0, 90.0)):
        _agent(runs, f"td3_bc-{D}-nodp-seed{seed}", "td3_bc", seed, score, None, "synthetic")
        _agent(runs, f"td3_bc-{D}-public-seed{seed}", "td3_bc", seed, score / 10, None, "synthetic")
        _write(runs / "evaluation" / f"fidelity-nodp-{D}-seed{seed}" / "fidelity.json",
               {"marginal_score": 0.96 + seed / 100, "correlation_score": 0.99,
                "dynamics": {"next_obs_nmse": 0.004, "reward_nmse": 0.02}})
    res = collect(runs)
    nodp = [f for f in res.fidelity if f["method"] == "nodp"]
    assert len(nodp) == 2 and all(f["epsilon"] is None and f["dataset"] == D for f in nodp)
    out = write_report(res, tmp_path / "report", plots=False)
    rows = [r for r in _csv(out["ladder.csv"]) if r["agent"] == "td3_bc"]
    assert [(r["method"], r["epsilon"]) for r in rows] == [("real", ""), ("nodp", ""), ("privtranr", "10.0"),
                                                          ("privtranr", "1.0"), ("public", "")]
    nodp_row = rows[1]
    assert float(nodp_row["mean"]) == 80.0 and float(nodp_row["ratio_to_real"]) == pytest.approx(80 / 90)
    assert float(nodp_row["marginal_mean"]) == pytest.approx(0.965) and nodp_row["fidelity_seeds"] == "2"
    assert "fine-tuned without DP" in (tmp_path / "report" / "ladder.md").read_text()
    assert "## Utility ladder" in (tmp_path / "report" / "report.md").read_text()


def test_no_ladder_section_without_ladder_rungs(runs, tmp_path):
    out = write_report(collect(runs), tmp_path / "report", plots=False)
    assert "ladder.md" not in out and "Utility ladder" not in (tmp_path / "report" / "report.md").read_text()


def test_ratio_ci_brackets_the_ratio_and_needs_two_seeds_a_side():
    from synther.report import ratio_ci

    low, high = ratio_ci([10.0, 20.0, 30.0], [80.0, 100.0])
    assert low < 20 / 90 < high
    assert 10 / 100 <= low and high <= 30 / 80  # within the extreme resamples
    assert ratio_ci([10.0, 20.0, 30.0], [80.0, 100.0], level=0.5)[1] < high  # a narrower level, a narrower interval
    assert ratio_ci([10.0], [80.0, 100.0]) == (None, None) and ratio_ci([1.0, 2.0], [5.0]) == (None, None)
    assert ratio_ci([5.0, 5.0], [10.0, 10.0]) == (0.5, 0.5)  # no spread: a point


def test_run_json_labels_win_over_folder_names(tmp_path):
    """A folder named by hand is labelled from the run.json the sweep wrote into it; without run.json it could not
    be told apart from a real-data run."""
    from synther.layout import write_run_labels

    r = tmp_path / "runs"
    _agent(r, "my-agent", "td3_bc", 7, 42.0, None, "synthetic")
    write_run_labels(r / "agents" / "my-agent", "agent", {"dataset": D, "method": "aim", "epsilon": 5.0, "seed": 7,
                                                          "agent": "td3_bc", "data": "x/samples.npz"})
    _write(r / "evaluation" / "scores" / "fidelity.json", {"marginal_score": 0.9, "correlation_score": 0.9})
    write_run_labels(r / "evaluation" / "scores", "fidelity",
                     {"dataset": D, "method": "nodp", "epsilon": None, "seed": 3, "data": "y/samples.npz"})
    res = collect(r)
    (run,) = res.agents
    assert (run.method, run.epsilon, run.seed) == ("aim", 5.0, 7)
    (fid,) = res.fidelity
    assert (fid["method"], fid["epsilon"], fid["seed"]) == ("nodp", None, 3)
    assert not res.skipped
    # the same folders without run.json: the agent falls back to its summary, the fidelity folder cannot be labelled
    (r / "agents" / "my-agent" / "run.json").unlink()
    (r / "evaluation" / "scores" / "run.json").unlink()
    res = collect(r)
    assert res.agents[0].method == "synthetic" and not res.fidelity and res.skipped
    # an entry that lacks labels (hand-edited, foreign) is not trusted: the folder name labels the run
    _agent(r, f"td3_bc-{D}-eps10-seed2", "td3_bc", 2, 30.0, 10.0, "synthetic")
    write_run_labels(r / "agents" / f"td3_bc-{D}-eps10-seed2", "agent", {"seed": 9})
    run = next(a for a in collect(r).agents if a.score == 30.0)
    assert (run.method, run.epsilon, run.seed) == ("privtranr", 10.0, 2)


def test_a_std_is_shown_to_its_means_last_decimal():
    from synther.report import _pm

    assert _pm(0.996, 0.000879, 3) == "0.996 ± 0.001"  # not 0.996 ± 0.000879
    assert _pm(0.000445, 0.000117, 3) == "0.000445 ± 0.000117"  # a small mean keeps its significant digits
    assert _pm(35.24, 9.31, 1) == "35.2 ± 9.3"
    assert _pm(1e-7, 2e-8, 3) == "1e-07 ± 2e-08"
    assert _pm(0.5, None, 3) == "0.500" and _pm(None, 0.1) == "—"
