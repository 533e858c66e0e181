"""Fidelity scores (sdmetrics definitions), their breakdowns and plot, the dynamics error, and the two scripts."""
import dataclasses
import json

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
from sdmetrics.column_pairs import CorrelationSimilarity
from sdmetrics.errors import ConstantInputError
from sdmetrics.single_column import KSComplement

from synther.data.dataset import TransitionDataset
from synther.evaluation.dynamics import DynamicsUnsupported, dynamics_error
from synther.evaluation.fidelity import (REFERENCE_NOTE, column_names, correlation_matrices, correlation_score,
                                         default_out_dir, evaluate_fidelity, ks_statistics, marginal_score,
                                         support_scores, write_fidelity_report)
from maze_data import shared_maze
from tests.script_helpers import assert_user_error, run_script


@pytest.fixture(scope="module")
def maze():
    return shared_maze("umaze", 2000)


def _replace(ds: TransitionDataset, **arrays) -> TransitionDataset:
    return dataclasses.replace(ds, **arrays)


def _sdmetrics_scores(real: np.ndarray, syn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column KSComplement and per-pair CorrelationSimilarity, as sdmetrics' quality report runs them
    (a pair that raises, e.g. on a constant column, gets NaN and is left out)."""
    ks = np.array([KSComplement.compute(real[:, j], syn[:, j]) for j in range(real.shape[1])])
    r, s = pd.DataFrame(real), pd.DataFrame(syn)
    pairs = []
    for i in range(real.shape[1]):
        for j in range(i + 1, real.shape[1]):
            try:
                pairs.append(CorrelationSimilarity.compute(r[[i, j]], s[[i, j]], coefficient="Pearson"))
            except ConstantInputError:
                pairs.append(np.nan)
    return ks, np.array(pairs)


def test_scores_match_sdmetrics_on_a_fixture_with_ties_nans_and_constant_columns():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(700, 7)) @ rng.normal(size=(7, 7))  # correlated columns
    syn = rng.normal(size=(500, 7)) @ rng.normal(size=(7, 7)) + 0.2
    real[:, 2], syn[:, 2] = np.round(real[:, 2]), np.round(syn[:, 2] * 2) / 2  # heavy ties across both tables
    real[10:40, 1], syn[3:5, 4] = np.nan, np.nan  # NaNs: dropped per column / per pair
    syn[:, 5] = 0.25  # constant in the synthetic table: its pairs have no correlation score
    ks_ref, pair_ref = _sdmetrics_scores(real, syn)

    np.testing.assert_allclose(1.0 - ks_statistics(real, syn), ks_ref, rtol=0, atol=1e-12)
    cr, cs = correlation_matrices(real, syn)
    iu = np.triu_indices(7, 1)
    ours = 1.0 - np.abs(cr[iu] - cs[iu]) / 2
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(pair_ref))
    assert np.isnan(pair_ref).sum() == 6  # the six pairs of the constant column
    np.testing.assert_allclose(ours[~np.isnan(ours)], pair_ref[~np.isnan(pair_ref)], rtol=0, atol=1e-9)

    # the flat-vector API: the last column is the terminal flag and is excluded
    flat_r = np.c_[real, rng.integers(0, 2, len(real))]
    flat_s = np.c_[syn, np.zeros(len(syn))]
    assert marginal_score(flat_r, flat_s) == pytest.approx(np.nanmean(ks_ref), abs=1e-12)
    assert correlation_score(flat_r, flat_s) == pytest.approx(np.nanmean(pair_ref), abs=1e-9)


def test_identical_data_scores_one_and_matches_sdmetrics(make_dataset):
    real = make_dataset(n=400, obs_dim=3, action_dim=2, seed=1)
    report = evaluate_fidelity(real, real)
    assert report["marginal_score"] == 1.0 and report["correlation_score"] == pytest.approx(1.0, abs=1e-12)
    assert all(c["score"] == 1.0 for c in report["per_column"])

    syn = make_dataset(n=300, obs_dim=3, action_dim=2, seed=2)
    report = evaluate_fidelity(real, syn)
    ks_ref, pair_ref = _sdmetrics_scores(real.to_vectors()[:, :-1].astype(np.float64),
                                         syn.to_vectors()[:, :-1].astype(np.float64))
    assert report["marginal_score"] == pytest.approx(ks_ref.mean(), abs=1e-12)
    assert report["correlation_score"] == pytest.approx(pair_ref.mean(), abs=1e-9)


def test_shifted_and_decorrelated_data_score_lower(maze):
    base = evaluate_fidelity(maze, maze)
    shifted = _replace(maze, observations=maze.observations + 0.5 * maze.observations.std(0))
    report = evaluate_fidelity(maze, shifted)
    assert report["marginal_score"] < base["marginal_score"] - 0.05
    scores = {c["column"]: c["score"] for c in report["per_column"]}
    assert max(scores[f"obs[{i}]"] for i in range(4)) < 0.9  # the shifted columns are the ones flagged
    assert min(scores[f"next_obs[{i}]"] for i in range(4)) == 1.0
    assert set(report["worst_columns"][:4]) == {f"obs[{i}]" for i in range(4)}

    # shuffling next_obs rows keeps every marginal but breaks the obs → next_obs correlations
    perm = np.random.default_rng(0).permutation(maze.size)
    shuffled = _replace(maze, next_observations=maze.next_observations[perm])
    report = evaluate_fidelity(maze, shuffled)
    assert report["marginal_score"] == 1.0
    assert report["correlation_score"] < base["correlation_score"] - 0.05
    worst = report["per_pair"][0]
    assert {worst["columns"][0][:4], worst["columns"][1][:4]} == {"obs[", "next"}
    assert worst["abs_diff"] > 0.5 and worst["score"] == pytest.approx(1 - worst["abs_diff"] / 2)


def test_report_structure_and_subsampling(maze):
    names = column_names(maze.layout)
    assert names == ["obs[0]", "obs[1]", "obs[2]", "obs[3]", "action[0]", "action[1]", "reward",
                     "next_obs[0]", "next_obs[1]", "next_obs[2]", "next_obs[3]"]
    noisy = _replace(maze, actions=np.clip(maze.actions + 0.3, -1, 1))
    report = evaluate_fidelity(maze, noisy, top_pairs=5, max_rows=1500, seed=3)
    json.dumps(report)  # JSON-serializable as written
    assert [c["column"] for c in report["per_column"]] == names
    assert report["rows"]["real"] == report["rows"]["synthetic"] == 1500
    assert len(report["per_pair"]) == 5 and report["pairs_total"] == 55
    diffs = [p["abs_diff"] for p in report["per_pair"]]
    assert diffs == sorted(diffs, reverse=True)
    assert len(report["pair_matrix"]["abs_diff"]) == 11
    assert report["reference_note"] == REFERENCE_NOTE and "sensitive" in REFERENCE_NOTE
    assert report["dynamics"] is None and "not requested" in report["dynamics_note"]
    assert {"marginal", "correlation", "total"} <= set(report["seconds"])


def test_support_precision_and_recall_see_what_the_marginals_miss():
    """Same distribution: both high. Rows from half of the space only (every marginal but one unchanged): recall
    falls, precision stays. Rows spread 3× wider: precision falls, recall stays."""
    rng = np.random.default_rng(0)
    real = rng.normal(size=(3000, 6))
    same = support_scores(real, rng.normal(size=(3000, 6)))
    pool = rng.normal(size=(8000, 6))
    half = support_scores(real, pool[pool[:, 0] < 0][:3000])
    wide = support_scores(real, 3 * rng.normal(size=(3000, 6)))
    assert same["precision"] > 0.85 and same["recall"] > 0.85
    assert half["recall"] < same["recall"] - 0.15 and half["precision"] > 0.85
    assert wide["precision"] < 0.3 and wide["recall"] > 0.95


def test_report_holds_support_scores_on_a_subsample(maze):
    report = evaluate_fidelity(maze, maze, max_rows=2000, support_rows=800)
    assert report["support"]["rows"] == {"real": 800, "synthetic": 800}
    assert report["support"]["precision"] > 0.85 and report["support"]["recall"] > 0.85
    assert evaluate_fidelity(maze, maze, max_rows=500, support_rows=0)["support"] is None


def test_dynamics_error_is_zero_for_real_maze_transitions_and_large_for_shuffled(maze):
    real = dynamics_error(maze, max_rows=1000)
    assert real["env"] == "ptr-maze2d (umaze)" and real["rows"] == 1000 and real["rows_failed"] == 0
    assert real["next_obs_nmse"] < 1e-9 and real["reward_nmse"] < 1e-9
    perm = np.random.default_rng(1).permutation(maze.size)
    shuffled = _replace(maze, next_observations=maze.next_observations[perm], rewards=maze.rewards[perm])
    bad = dynamics_error(shuffled, reference=maze, max_rows=1000)
    assert bad["next_obs_nmse"] > 1.0 and bad["reward_nmse"] > 1.0  # ≈ 2: unrelated to (s, a)


def _random_rollouts(env_id: str, steps: int) -> TransitionDataset:
    """Uniform-random actions with resets, recorded like a dataset (terminal rows included)."""
    env = gym.make(env_id)
    obs, _ = env.reset(seed=0)
    env.action_space.seed(0)
    rows = []
    for _ in range(steps):
        action = env.action_space.sample()
        nxt, reward, terminated, truncated, _ = env.step(action)
        rows.append((obs, action, reward, nxt, terminated))
        obs = env.reset()[0] if terminated or truncated else nxt
    env.close()
    o, a, r, o2, done = (np.array(x) for x in zip(*rows))
    return TransitionDataset(observations=o, actions=a, rewards=r, next_observations=o2,
                             terminals=done.astype(np.float32), env_id=env_id)


def test_dynamics_error_is_zero_for_real_halfcheetah_transitions():
    ds = _random_rollouts("HalfCheetah-v5", 300)
    out = dynamics_error(ds)
    assert out["env"] == "HalfCheetah-v5" and out["rows"] == 300
    assert out["next_obs_nmse"] < 1e-6 and out["reward_nmse"] < 1e-6
    shuffled = _replace(ds, next_observations=ds.next_observations[::-1].copy())
    assert dynamics_error(shuffled, reference=ds)["next_obs_nmse"] > 0.5


def test_walker_rows_with_clipped_velocities_are_counted_and_the_rest_replay_exactly():
    # random actions spin Walker2d's joints past the ±10 the observation clips to: such rows cannot be replayed
    ds = _random_rollouts("Walker2d-v5", 600)
    assert ds.terminals.any()  # falls are in the data; their transitions are still simulator steps
    out = dynamics_error(ds)
    assert 0 < out["rows_velocity_clipped"] < out["rows"]
    assert out["next_obs_nmse_reconstructible"] < 1e-6 and out["reward_nmse_reconstructible"] < 1e-6


def test_unsupported_env_gives_null_dynamics_with_a_reason(small_dataset):
    with pytest.raises(DynamicsUnsupported, match="no known simulator"):
        dynamics_error(small_dataset)
    report = evaluate_fidelity(small_dataset, small_dataset, dynamics=True)
    assert report["dynamics"] is None and "no known simulator" in report["dynamics_note"]


def test_write_report_writes_json_and_heatmap(maze, tmp_path):
    real_path = maze.save(tmp_path / "real.npz")
    syn = _replace(maze, observations=maze.observations * 1.1)
    syn_path = syn.save(tmp_path / "run" / "samples.npz")
    report = write_fidelity_report(str(real_path), syn_path, tmp_path / "report", dynamics=True, dynamics_rows=200)
    saved = json.loads((tmp_path / "report" / "fidelity.json").read_text())
    assert saved["marginal_score"] == report["marginal_score"] < 1.0
    assert saved["real"] == str(real_path) and saved["synthetic"] == str(syn_path)
    assert saved["dynamics"]["rows"] == 200 and saved["dynamics"]["next_obs_nmse"] > 0
    png = (tmp_path / "report" / "fidelity_pairs.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == [
        ".lock", "fidelity.json", "fidelity_pairs.png"]  # no temp files left; the folder's lock file stays


def test_default_report_folder_is_the_sweeps_and_not_the_release(tmp_path, monkeypatch):
    monkeypatch.setenv("PRIVTRANR_RUNS_DIR", str(tmp_path / "runs"))
    evaluation = tmp_path / "runs" / "evaluation"
    assert default_out_dir(tmp_path / "x" / "finetune-d-eps1-seed0" / "samples.npz") == (
        evaluation / "fidelity-privtranr-d-eps1-seed0")  # the sweep's name for PrivTranR's samples
    assert default_out_dir(tmp_path / "baselines" / "mst-d-eps1-seed0" / "samples.npz") == (
        evaluation / "fidelity-mst-d-eps1-seed0")


def test_marginal_script_writes_nothing_into_the_samples_folder(maze, tmp_path, monkeypatch):
    """The samples' folder is the release: samples.npz + samples.json, and nothing computed without DP."""
    monkeypatch.setenv("PRIVTRANR_RUNS_DIR", str(tmp_path / "runs"))
    real_path = maze.save(tmp_path / "real.npz")
    release = tmp_path / "runs" / "diffusion" / "finetune-real-eps10-seed0"
    syn_path = maze.subset(np.arange(500)).save(release / "samples.npz")
    proc = run_script("marginal.py", "--real", str(real_path), "--synthetic", str(syn_path), "--dynamics", "false",
                      timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in release.iterdir()) == ["samples.json", "samples.npz"]
    out = tmp_path / "runs" / "evaluation" / "fidelity-privtranr-real-eps10-seed0"
    assert json.loads((out / "fidelity.json").read_text())["synthetic"] == str(syn_path)
    assert (out / "fidelity_pairs.png").exists() and str(out / "fidelity.json") in proc.stdout


def test_marginal_script_writes_fidelity_json_and_rejects_bad_paths(maze, tmp_path):
    real_path = maze.save(tmp_path / "real.npz")
    syn_path = maze.subset(np.arange(0, maze.size, 2)).save(tmp_path / "run" / "samples.npz")
    out = tmp_path / "report"
    proc = run_script("marginal.py", "--real", str(real_path), "--synthetic", str(syn_path),
                      "--out_dir", str(out), "--dynamics_rows", "300", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "marginal" in proc.stdout and "sensitive" in proc.stdout
    report = json.loads((out / "fidelity.json").read_text())
    for key in ("marginal_score", "correlation_score", "per_column", "per_pair", "dynamics", "real", "synthetic",
                "reference_note", "seconds"):
        assert key in report
    assert report["marginal_score"] > 0.95 and report["dynamics"]["next_obs_nmse"] < 1e-9
    assert (out / "fidelity_pairs.png").exists()

    proc = run_script("marginal.py", "--real", str(real_path), "--synthetic", str(tmp_path / "nope.npz"))
    assert_user_error(proc, "nope.npz", "not found")


def test_sweep_script_evaluates_then_skips(maze, tmp_path, monkeypatch):
    monkeypatch.setenv("PRIVTRANR_RUNS_DIR", str(tmp_path / "runs"))
    real_path = maze.save(tmp_path / "real.npz")
    maze.subset(np.arange(500)).save(tmp_path / "runs" / "diffusion" / "finetune-real-eps10-seed0" / "samples.npz")
    args = ("--datasets", str(real_path), "--epsilons", "1,10", "--seeds", "0", "--dynamics", "false",
            "--samples", str(tmp_path / "runs" / "diffusion" / "finetune-real-eps{eps}-seed{seed}" / "samples.npz"))
    first = run_script("bash-evaluate-marginal.py", *args, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "eps1 seed0: samples missing" in first.stdout and "0.9" in first.stdout
    evaluation = tmp_path / "runs" / "evaluation"
    assert (evaluation / "fidelity-privtranr-real-eps10-seed0" / "fidelity.json").exists()
    assert sorted(p.name for p in (tmp_path / "runs" / "diffusion" / "finetune-real-eps10-seed0").iterdir()) == [
        "samples.json", "samples.npz"]
    second = run_script("bash-evaluate-marginal.py", *args, timeout=120)
    assert "fidelity-privtranr-real-eps10-seed0: done, skipped" in second.stdout
    assert json.loads((evaluation / "fidelity_results.json").read_text())[0]["dp_epsilon"] == 10
    report = evaluation / "fidelity-privtranr-real-eps10-seed0" / "fidelity.json"
    before = report.stat().st_mtime
    third = run_script("bash-evaluate-marginal.py", *args, "--force", "true", timeout=120)
    assert third.returncode == 0 and "fidelity-privtranr-real-eps10-seed0: done (" in third.stdout  # recomputed
    assert report.stat().st_mtime > before


def test_block_wise_scores_equal_whole_table_ones_and_read_datasets_in_place(monkeypatch, make_dataset):
    """KS and Pearson are computed in blocks of rows (bounded memory on 1M-row sets): with tiny blocks they still
    equal scipy's ks_2samp and numpy's corrcoef, ties straddling block edges included; a dataset is scored from its
    own arrays, with the same result as its flat vectors."""
    from scipy.stats import ks_2samp

    import synther.evaluation.fidelity as fidelity

    monkeypatch.setattr(fidelity, "CHUNK_ROWS", 7)
    rng = np.random.default_rng(3)
    real = np.round(rng.normal(size=(300, 4)) @ rng.normal(size=(4, 4)), 1)  # many ties
    syn = np.round(rng.normal(size=(250, 4)) @ rng.normal(size=(4, 4)), 1)
    expected = [ks_2samp(real[:, j], syn[:, j]).statistic for j in range(4)]
    np.testing.assert_allclose(ks_statistics(real, syn), expected, rtol=0, atol=1e-15)
    cr, cs = correlation_matrices(real, syn)
    np.testing.assert_allclose(cr, np.corrcoef(real, rowvar=False), rtol=0, atol=1e-12)
    np.testing.assert_allclose(cs, np.corrcoef(syn, rowvar=False), rtol=0, atol=1e-12)

    a, b = make_dataset(n=200, obs_dim=3, action_dim=2, seed=4), make_dataset(n=150, obs_dim=3, action_dim=2, seed=5)
    report = evaluate_fidelity(a, b)
    assert report["marginal_score"] == marginal_score(a.to_vectors(), b.to_vectors())
    assert report["correlation_score"] == pytest.approx(correlation_score(a.to_vectors(), b.to_vectors()), abs=1e-12)
