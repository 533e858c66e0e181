"""DP tabular baselines (synther/baselines/): public-only preprocessing, the separate venv, each adapter end to end.

The adapter tests create the smartnoise-synth venv from requirements-baselines.txt if it is absent (about a minute
on a fresh machine; CI starts from a clean checkout) and then fit each method on 300 rows at ε = 1 with tiny budgets.
"""
import dataclasses
import importlib
import inspect
import json
import subprocess

import numpy as np
import pytest

from script_helpers import assert_user_error, run_script
from synther.baselines import BaselineConfig, GANConfig, MarginalConfig, PrivacyTarget, binning, synthesize
from synther.baselines.synthesize import prepare
from synther.baselines import env
from synther.baselines import worker
from synther.baselines.env import WORKER, ensure_env
from synther.data import TransitionDataset, TransitionLayout, load_dataset
from synther.errors import UserError

pytestmark = pytest.mark.slow  # the baselines venv (smartnoise-synth fits)


# --- bin edges and bounds never read the sensitive data -------------------------------------------------------
def test_bin_edge_functions_take_no_sensitive_argument():
    # the only data argument of the edge/bound builders is the public vectors
    for fn in (binning.public_bin_edges, binning.public_bounds):
        params = list(inspect.signature(fn).parameters)
        assert params[0] == "public_vectors" and not any("sensitive" in p or "train" in p for p in params)


@pytest.mark.parametrize("source", binning.EDGE_SOURCES)
def test_bin_edges_depend_only_on_public_data(source):
    layout = TransitionLayout(3, 2)
    rng = np.random.default_rng(0)
    public = rng.normal(size=(500, layout.dim))
    public[:, layout.terminal] = rng.integers(0, 2, 500)
    sentinel = 987654.321
    sensitive = rng.normal(size=(200, layout.dim))
    sensitive[:5] = sentinel  # a poisoned sensitive row must never shape the edges
    edges = binning.public_bin_edges(public, layout, 8, source, -np.ones(2), np.ones(2))
    again = binning.public_bin_edges(public.copy(), layout, 8, source, -np.ones(2), np.ones(2))
    assert all(np.array_equal(a, b) for a, b in zip(edges.edges, again.edges))
    flat = np.concatenate(edges.edges)
    assert not np.any(np.isclose(flat, sentinel)) and flat.max() <= np.abs(public).max() + 1
    assert edges.edges[layout.terminal].tolist() == [-0.5, 0.5, 1.5]
    assert np.allclose(edges.edges[layout.obs_dim][[0, -1]], [-1, 1])  # actions: the declared bounds
    # discretising the poisoned data only clips it into the end bins, and changing it changes no edge
    codes = binning.discretize(sensitive, edges)
    assert codes.min() >= 0 and all((codes[:, j] < k).all() for j, k in enumerate(edges.cardinalities))
    back = binning.undiscretize(codes, edges, np.random.default_rng(0))
    assert np.all(back <= np.array([e[-1] for e in edges.edges]))
    assert set(np.unique(back[:, layout.terminal])) <= {0.0, 1.0}


def test_bad_edge_source_and_bins():
    layout = TransitionLayout(1, 1)
    with pytest.raises(UserError, match="bin-edge source"):
        binning.public_bin_edges(np.zeros((3, layout.dim)), layout, 4, "sensitive_quantiles")
    with pytest.raises(UserError, match="at least 2"):
        binning.public_bin_edges(np.zeros((3, layout.dim)), layout, 1)


# --- end to end on tiny data ---------------------------------------------------------------------------------------
def _save(tmp_path, name, seed, n=300, shift=0.0):
    rng = np.random.default_rng(seed)
    obs = rng.normal(shift, 1.0, size=(n, 3)).astype(np.float32)
    act = np.clip(rng.normal(0, 0.6, size=(n, 2)), -1, 1).astype(np.float32)
    ds = TransitionDataset(observations=obs, actions=act, rewards=obs[:, 0] * 0.5,
                           next_observations=obs + 0.1 * np.concatenate([act, act[:, :1]], 1),
                           terminals=(rng.uniform(size=n) < 0.05).astype(np.float32), name=name,
                           action_low=[-1, -1], action_high=[1, 1])
    return ds.save(tmp_path / f"{name}.npz")


@pytest.fixture
def tiny_pair(tmp_path):
    sensitive = _save(tmp_path, "sens", seed=1)
    public = [_save(tmp_path, "pubA", seed=2, shift=0.2), _save(tmp_path, "pubB", seed=3, shift=-0.2)]
    return str(sensitive), ",".join(str(p) for p in public)


def _config(tmp_path, tiny_pair, method, **kw):
    sensitive, public = tiny_pair
    return BaselineConfig(method=method, dataset=sensitive, public_datasets=public, dp=PrivacyTarget(epsilon=1.0),
                          num_samples=200, run_dir=str(tmp_path / f"run-{method}"),
                          marginal=MarginalConfig(bins=4, aim_rounds=0),
                          gan=GANConfig(epochs=2, batch_size=60, hidden=[32, 32], embedding_dim=16, pate_iterations=3,
                                        pate_teacher_iters=1, pate_student_iters=1, pate_rows_per_teacher=100), **kw)


def test_bad_method_epsilon_delta_are_user_errors(tmp_path, tiny_pair):
    for kw, msg in [({"method": "ctgan"}, "unknown baseline method"), ({"epsilon": 0.0}, "positive"),
                    ({"epsilon": -1.0}, "positive"), ({"epsilon": float("inf")}, "finite"), ({"delta": 1.0}, "delta")]:
        cfg = _config(tmp_path, tiny_pair, "mst")
        for k, v in kw.items():
            setattr(cfg.dp if k in ("epsilon", "delta") else cfg, k, v)
        with pytest.raises(UserError, match=msg):
            synthesize(cfg, progress=False)


def test_missing_public_pair_is_a_user_error(tmp_path, tiny_pair):
    cfg = _config(tmp_path, tiny_pair, "mst", )
    cfg.public_datasets = ""
    with pytest.raises(UserError, match="pass --public_datasets"):
        synthesize(cfg, progress=False)


def test_script_reports_bad_method_in_one_line(tmp_path, tiny_pair):
    proc = run_script("baselines.py", "--method", "foo", "--dataset", tiny_pair[0], timeout=120)
    assert_user_error(proc, "unknown baseline method 'foo'")
    for spelling in ("--dp.epsilon", "--epsilon"):  # the fine-tune's spelling, and the old one as an alias
        proc = run_script("baselines.py", "--method", "mst", "--dataset", tiny_pair[0], spelling, "0", timeout=120)
        assert_user_error(proc, "--dp.epsilon 0")


@pytest.fixture(scope="session")
def baselines_python():
    """The smartnoise-synth venv, created from requirements-baselines.txt when absent (slow once)."""
    return ensure_env()


def test_worker_selfcheck_opacus_on_this_torch(baselines_python):
    proc = subprocess.run([str(baselines_python), str(WORKER), "--selfcheck"], capture_output=True, text=True,
                          timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["opacus_per_sample_grad_max_abs_error"] < 1e-5
    assert result["versions"]["opacus"].startswith("0.14") and result["versions"]["torch"].startswith("2.13.0")


@pytest.mark.parametrize("method", ["mst", "aim", "dpctgan", "patectgan"])
def test_adapter_writes_valid_samples(tmp_path, tiny_pair, baselines_python, method, monkeypatch):
    cfg = _config(tmp_path, tiny_pair, method)
    monkeypatch.chdir(tmp_path)
    cfg.run_dir = f"run-{method}"  # relative, as typed on the command line (the default run folder is relative too)
    out = synthesize(cfg, progress=False)
    assert out.resolve() == tmp_path / f"run-{method}" / "samples.npz"
    with np.load(out) as z:
        assert set(z.files) == {"observations", "actions", "rewards", "next_observations", "terminals"}
        assert z["observations"].shape == (200, 3) and z["next_observations"].shape == (200, 3)
        assert z["actions"].shape == (200, 2) and z["rewards"].shape == (200,) and z["terminals"].shape == (200,)
        assert all(z[k].dtype == np.float32 for k in z.files)
        assert set(np.unique(z["terminals"])) <= {0.0, 1.0}
        assert np.all(np.abs(z["actions"]) <= 1.0) and all(np.isfinite(z[k]).all() for k in z.files)
    meta = json.loads(out.with_suffix(".json").read_text())
    ledger = meta["privacy_ledger"]
    assert ledger["mechanism"] == method and ledger["target_epsilon"] == 1.0 and ledger["delta"] == 1e-6
    assert 0 < ledger["epsilon_spent"] <= 1.0 + 1e-9
    train, heldout = load_dataset(tiny_pair[0]).split(0.8, seed=0)
    assert ledger["sensitive_train_rows"] == len(train) and ledger["sensitive_heldout_rows"] == len(heldout)
    assert len(train) + len(heldout) == 300
    assert ledger["preprocessing_privacy_cost"] == 0.0
    assert all("public" in s or "declared" in s for k, s in ledger["statistics"].items()
               if k in ("bin_edges", "column_bounds", "action_bounds"))
    assert meta["baseline_meta"]["fit_seconds"] > 0 and meta["baseline_meta"]["worker_versions"]["smartnoise-synth"]
    assert json.loads((out.parent / "ledger.json").read_text()) == ledger
    assert not (out.parent / ".work").exists()
    # what agents and fidelity read: the ordinary loader accepts it
    ds = load_dataset(out)
    assert ds.size == 200 and ds.to_vectors().shape == (200, 3 * 2 + 2 + 2)
    # finished runs are skipped
    mtime = out.stat().st_mtime_ns
    assert synthesize(cfg, progress=False) == out and out.stat().st_mtime_ns == mtime


# --- randomness: nothing a mechanism draws is replayable from the published --seed -----------------------------------
# worker.py with the libraries' OWN entropy pinned, so that only the RNGs the worker seeds can tell two fits apart:
# OpenDP's Gaussian noise (its CSPRNG cannot be seeded) is removed, opacus' reseed of torch from os.urandom(8) gets
# zeros, and the test fixes PYTHONHASHSEED (AIM orders its candidates by set iteration). It also records the sizes
# of DP-CTGAN's real batches, one JSON line per fit.
PINNED_WORKER = """
import importlib.util, json, sys, types
import opacus.privacy_engine, snsynth.aim.aim, snsynth.mst.mst

def no_noise(sigma, size=None):
    return 0.0 if size is None else [0.0] * size

snsynth.mst.mst.gaussian_noise = snsynth.aim.aim.gaussian_noise = no_noise
opacus.privacy_engine.os = types.SimpleNamespace(urandom=lambda k: bytes(k))
spec = importlib.util.spec_from_file_location("worker", {worker!r})
worker = importlib.util.module_from_spec(spec)
spec.loader.exec_module(worker)
sizes = []
if hasattr(worker, "poisson_batch"):
    sample = worker.poisson_batch

    def recorded(rng, n, q):
        idx = sample(rng, n, q)
        sizes.append(len(idx))
        return idx

    worker.poisson_batch = recorded
code = worker.main(sys.argv)
with open({record!r}, "a") as f:
    f.write(json.dumps(sizes) + "\\n")
sys.exit(code)
"""


@pytest.mark.parametrize("method", ["mst", "aim", "dpctgan", "patectgan"])
def test_same_seed_fits_differ(tmp_path, tiny_pair, baselines_python, method, monkeypatch):
    """--seed is published in samples.json: fits with the same seed on the same data must differ, and the ledger
    must say what the seed was used for."""
    record, harness = tmp_path / "batch_sizes.jsonl", tmp_path / "pinned_worker.py"
    harness.write_text(PINNED_WORKER.format(worker=str(WORKER), record=str(record)))
    monkeypatch.setattr(importlib.import_module("synther.baselines.synthesize"), "WORKER", harness)
    monkeypatch.setenv("PYTHONHASHSEED", "0")
    fits = []
    for run in ("first", "second", "third"):
        cfg = _config(tmp_path, tiny_pair, method)
        cfg.run_dir = str(tmp_path / run)
        # Without measurement noise only MST/AIM's exponential-mechanism selections can differ. AIM's budget
        # annealing stops it early: on this data at 20 rounds after 3-6 selections, whose sequences had probabilities
        # up to 2e-3 in 40 fits (a test run once got two identical fits), at 200 rounds after 5-8, up to 4e-6; and
        # the test fails only if all three fits agree.
        cfg.marginal.aim_rounds = 200
        out = synthesize(cfg, progress=False)
        fits.append(load_dataset(out).to_vectors())
        ledger = json.loads((out.parent / "ledger.json").read_text())
        assert ledger["randomness"].startswith("mechanism randomness: OS entropy, never saved (")
        assert ledger["randomness"].endswith("--seed used only for the train/held-out split, sampling rows from the "
                                             "fitted model" + (", the value drawn inside each public bin"
                                                               if method in ("mst", "aim") else ""))
    assert not (np.array_equal(fits[0], fits[1]) and np.array_equal(fits[1], fits[2]))
    if method == "dpctgan":  # one real batch per iteration, each a fresh Poisson draw: the sizes vary
        runs = [json.loads(line) for line in record.read_text().splitlines()]
        acc, rows = ledger["accounting"], ledger["sensitive_train_rows"]
        assert acc["batch_sampling"].startswith("Poisson") and acc["sample_rate"] == 60 / rows
        assert [len(r) for r in runs] == [acc["optimizer_steps"] // 2] * 3 and len(set(sum(runs, []))) > 1
        assert all(0 <= b <= rows for b in sum(runs, []))


def test_poisson_batch_sampler():
    """Each row joins each batch independently with probability q: variable sizes, Binomial(n, q) moments, and
    empty batches happen (they still take their noise-only step)."""
    rng = np.random.default_rng(0)
    n, q, draws = 400, 0.05, 4000
    batches = [worker.poisson_batch(rng, n, q) for _ in range(draws)]
    sizes = np.array([len(b) for b in batches])
    assert abs(sizes.mean() - n * q) < 0.2 and abs(sizes.var() / (n * q * (1 - q)) - 1) < 0.1
    assert sizes.min() < n * q - 10 and sizes.max() > n * q + 10
    rows = np.concatenate(batches)
    assert all(np.all(np.diff(b) > 0) for b in batches) and 0 <= rows.min() and rows.max() < n
    per_row = np.bincount(rows, minlength=n) / draws
    assert np.abs(per_row - q).max() < 0.025
    assert any(len(worker.poisson_batch(rng, 3, 0.1)) == 0 for _ in range(100))


@pytest.mark.parametrize("method", ["mst", "dpctgan"])
def test_adapter_preprocessing_identical_whatever_the_sensitive_data(tmp_path, tiny_pair, method):
    """Two very different sensitive sets, same public data: the adapter's edges/bounds are identical, and none is
    a sensitive value; only the table handed to the worker differs."""
    cfg = _config(tmp_path, tiny_pair, method)
    a = prepare(cfg)
    other = _save(tmp_path, "sens2", seed=9, shift=3.0)
    b = prepare(dataclasses.replace(cfg, dataset=str(other)))
    assert json.dumps(a.preprocessing) == json.dumps(b.preprocessing)
    assert a.column_spec == b.column_spec and not np.array_equal(a.table, b.table)
    assert "public" in a.preprocessing["source"]
    layout = a.sensitive.layout
    data_cols = [j for j in range(layout.dim - 1) if j not in range(layout.obs_dim, layout.obs_dim + layout.action_dim)]
    pre = a.preprocessing  # actions use the declared bounds ±1 (which clipped sensitive actions also reach)
    values = np.concatenate([np.asarray(pre["edges"][j]) for j in data_cols] if "edges" in pre else
                            [np.asarray(pre["lower"])[data_cols], np.asarray(pre["upper"])[data_cols]])
    for sens in (a.train.to_vectors(), load_dataset(other).to_vectors()):
        assert not np.isin(values.astype(np.float32), sens).any()


def test_env_is_rebuilt_when_requirements_change(tmp_path, monkeypatch):
    """The venv is reused only while its stamp matches requirements-baselines.txt's hash."""
    venv = tmp_path / "venv"
    monkeypatch.setenv(env.ENV_VAR, str(venv))
    assert env.venv_dir() == venv.resolve() and not env.is_ready()
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")
    (venv / env.STAMP).write_text("stale\n")
    assert not env.is_ready()
    (venv / env.STAMP).write_text(env.requirements_hash() + "\n")
    assert env.is_ready()
    pins = env.REQUIREMENTS.read_text()
    assert "torch==2.13.0" in pins and "opacus==0.14" in pins and "smartnoise-synth==" in pins and "packaging" in pins


def test_sweep_driver_dry_run_and_bad_method(tmp_path, tiny_pair):
    runs = {"PRIVTRANR_RUNS_DIR": str(tmp_path / "runs")}
    proc = run_script("bash-baselines-agent-training.py", "--datasets", tiny_pair[0], "--public_datasets",
                      tiny_pair[1], "--methods", "mst,dpctgan", "--epsilons", "1,10", "--marginal.bins", "4",
                      "--dry_run", "true", env_extra=runs, timeout=120)
    assert proc.returncode == 0, proc.stderr
    jobs = [ln for ln in proc.stdout.splitlines() if ln.startswith("[")]
    # per (method, ε): the baseline, then its fidelity and TD3+BC jobs after it
    assert len(jobs) == 12 and all(": to run" in ln for ln in jobs)
    assert "baseline mst-sens-eps1-seed0" in jobs[0]
    assert "fidelity fidelity-mst-sens-eps1-seed0: to run (after baseline/mst-sens-eps1-seed0)" in proc.stdout
    assert "td3_bc-sens-mst-eps1-seed0" in proc.stdout
    command = proc.stdout.splitlines()[1]
    assert f"--public_datasets {tiny_pair[1]}" in command and "--marginal.bins 4" in command
    assert "--gan.epochs" not in command  # only settings that differ from the defaults are passed on
    proc = run_script("bash-baselines-agent-training.py", "--methods", "mst,ctgan", env_extra=runs, timeout=120)
    assert_user_error(proc, "unknown method 'ctgan'")


def test_sweep_driver_runs_through_the_sweep_engine(tmp_path, tiny_pair, baselines_python):
    """bash-baselines-agent-training.py end to end: baseline job -> fidelity job -> report; a re-run skips both."""
    runs = tmp_path / "runs"
    args = ["--datasets", tiny_pair[0], "--public_datasets", tiny_pair[1], "--methods", "mst", "--epsilons", "1",
            "--num_samples", "200", "--marginal.bins", "4", "--algorithms", "", "--dynamics", "false",
            "--runs_dir", str(runs), "--progress", "false"]
    proc = run_script("bash-baselines-agent-training.py", *args, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    samples = runs / "baselines" / "mst-sens-eps1-seed0" / "samples.npz"
    assert load_dataset(samples).size == 200
    ledger = json.loads((samples.parent / "ledger.json").read_text())
    assert ledger["mechanism"] == "mst" and ledger["epsilon_spent"] <= 1.0 + 1e-9
    fidelity = json.loads((runs / "evaluation" / "fidelity-mst-sens-eps1-seed0" / "fidelity.json").read_text())
    assert 0 < fidelity["marginal_score"] <= 1 and 0 < fidelity["correlation_score"] <= 1
    report = (runs / "baselines" / "report" / "fidelity.md").read_text()
    assert "mst" in report and f"{fidelity['marginal_score']:.3f}" in report
    state = json.loads((runs / "sweep_state.json").read_text())
    assert {j["status"] for j in state["jobs"].values()} == {"done"}
    mtime = samples.stat().st_mtime_ns
    proc = run_script("bash-baselines-agent-training.py", *args, timeout=300)
    assert proc.returncode == 0 and samples.stat().st_mtime_ns == mtime
