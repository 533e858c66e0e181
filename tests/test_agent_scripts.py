"""The agent scripts as a user runs them: --help, --config YAML, synthetic samples only, the sweep driver, and the
one-line error / exit code 2 contract."""
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from synther.agents import ALGORITHMS, get_algorithm
from synther.data.pointmaze import dataset_name
from maze_data import shared_maze
from script_helpers import ROOT, assert_user_error, run_script, script_env

pytestmark = pytest.mark.slow  # subprocess pipelines of the agent scripts

UMAZE = dataset_name("umaze")
TINY = ("--max_timesteps", "20", "--eval_freq", "10", "--n_episodes", "1", "--eval_max_episode_steps", "20",
        "--progress", "false")


def _options(config_class, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(config_class):
        if dataclasses.is_dataclass(f.type):
            out += _options(f.type, f"{prefix}{f.name}.")
        else:
            out.append(f"--{prefix}{f.name}")
    return out


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    """A samples.npz (shuffled, shifted maze transitions) with a side-car ledger, as the DP synthesizer writes."""
    ds = shared_maze("umaze", 3000, seed=5)
    idx = np.random.default_rng(0).permutation(ds.size)
    arrays = {k: v[idx] for k, v in ds.arrays().items() if k != "timeouts"}
    arrays["observations"] += 0.25
    arrays["next_observations"] += 0.25
    path = tmp_path_factory.mktemp("samples") / "samples.npz"
    type(ds)(**arrays, source=str(path)).save(path, extra_metadata={"privacy_ledger": {"guarantee": "(10, 1e-06)-DP"}})
    return path


def test_help_explains_every_option():
    scripts = [f"{a}.py" for a in ALGORITHMS] + ["bash-agent-training.py"]
    procs = {s: subprocess.Popen([sys.executable, str(ROOT / "MuJoCo" / s), "--help"], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=script_env(), cwd=ROOT) for s in scripts}
    outputs = {s: p.communicate(timeout=300) for s, p in procs.items()}
    for script, (stdout, stderr) in outputs.items():
        assert procs[script].returncode == 0, stderr
        if script == "bash-agent-training.py":
            spec = importlib_script("bash-agent-training.py")
            options = _options(spec.AgentSweepConfig)
        else:
            options = _options(get_algorithm(script[:-3])[1])
        for option in options:
            # every option is listed with a help text, not just its type and default
            line = next((ln for ln in stdout.splitlines() if ln.strip().startswith(option + " ")), None)
            assert line is not None, (script, option)
    td3 = outputs["td3_bc.py"][0]
    for option in ("--config_path", "--env", "--dataset", "--seed", "--checkpoints_path", "--diffusion.path",
                   "--diffusion.sample_limit", "--dp_epsilon", "--name", "--max_timesteps", "--eval_freq",
                   "--n_episodes", "--device"):
        assert option in td3
    assert "--config" in td3 and "samples.npz" in td3


def importlib_script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name.replace("-", "_")[:-3], ROOT / "MuJoCo" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_trains_on_samples_only_with_yaml_config(samples, tmp_path, data_roots):
    # the data folder is empty: the real dataset does not exist, so only the samples can have been read
    assert not any(data_roots["PRIVTRANR_DATA_DIR"].iterdir())
    proc = run_script("iql.py", "--config", "config/agents/iql/ptr-maze2d-umaze-dense-v0.yaml", *TINY,
                      "--diffusion.path", str(samples), "--diffusion.sample_limit", "1000", "--dp_epsilon", "10",
                      "--hidden_dim", "32", "--checkpoints_path", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / f"iql-{UMAZE}-eps10-seed0"
    assert f"{out}: normalized score" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["kind"] == "synthetic" and summary["data"]["rows"] == 1000
    assert "computed from: the synthetic samples" in summary["normalization_statistics"]
    assert summary["dp_epsilon"] == 10 and summary["privacy_guarantee"] == "(10, 1e-06)-DP"
    assert summary["evaluation"]["n_episodes"] == 1 and summary["steps"] == 20
    config = (out / "config.yaml").read_text()
    assert "beta: 3.0" in config and "hidden_dim: 32" in config  # YAML values, then command-line overrides
    again = run_script("iql.py", "--config_path", str(out / "config.yaml"))
    assert again.returncode == 0 and "skipped" in again.stdout


def test_env_alias_and_real_data(tmp_path, data_roots):
    shared_maze("umaze", 1000).save(data_roots["PRIVTRANR_DATA_DIR"] / f"{UMAZE}.npz")
    env = {"PRIVTRANR_DATA_DIR": str(data_roots["PRIVTRANR_DATA_DIR"])}
    proc = run_script("edac.py", "--env", UMAZE, *TINY, "--hidden_dim", "32", "--num_critics", "3", "--seed", "3",
                      "--checkpoints_path", str(tmp_path), env_extra=env)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / f"edac-{UMAZE}-real-seed3" / "summary.json").read_text())
    assert summary["data"]["kind"] == "real"
    assert "computed from: the real dataset" in summary["normalization_statistics"]


def _bad_npz(kind: str, path: Path) -> Path:
    base = {"observations": np.zeros((10, 4)), "actions": np.zeros((10, 2)), "rewards": np.zeros(10),
            "next_observations": np.zeros((10, 4)), "terminals": np.zeros(10)}
    if kind == "missing":
        del base["rewards"]
    elif kind == "nan":
        base["rewards"][3] = np.nan
    elif kind == "dims":
        base["actions"] = np.zeros((10, 3))
    np.savez(path, **base)
    return path


@pytest.mark.parametrize(
    "kind, args, fragments",
    [
        ("missing", (), ("samples.npz", "missing field", "'rewards'")),
        ("nan", (), ("samples.npz", "'rewards'", "NaN")),
        ("dims", (), ("dimension mismatch", "action_dim=3", "action_dim=2")),
        ("suffix", (), ("must be a samples .npz or a diffusion checkpoint",)),
        ("missing_file", (), ("samples.npz", "file not found")),
        ("ok", ("--dp_epsilon", "10", "--diffusion.path", ""), ("needs --diffusion.path",)),
        ("ok", ("--dataset", "maze2d-umaze-dense-v1"), ("no evaluation environment",)),
        ("ok", ("--max_timesteps", "abc"), ("invalid option", "max_timesteps")),
    ],
)
def test_bad_inputs_exit_2_with_one_line(tmp_path, kind, args, fragments):
    path = tmp_path / "samples.npz"
    if kind in ("missing", "nan", "dims", "ok"):
        _bad_npz(kind, path)
    elif kind == "suffix":
        path = tmp_path / "samples.csv"
        path.write_text("a,b\n")
    proc = run_script("td3_bc.py", "--diffusion.path", str(path), *TINY, "--checkpoints_path", str(tmp_path / "runs"),
                      *args)
    assert_user_error(proc, *fragments)
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("summary.json"))


def test_sweep_driver_plans_trains_and_skips(samples, tmp_path, data_roots):
    shared_maze("umaze", 1000).save(data_roots["PRIVTRANR_DATA_DIR"] / f"{UMAZE}.npz")
    layout = tmp_path / "samples" / "{dataset}" / "eps{eps}" / "seed{seed}" / "samples.npz"
    target = Path(str(layout).format(dataset=UMAZE, eps="10", seed=0))
    target.parent.mkdir(parents=True)
    target.write_bytes(samples.read_bytes())
    runs = tmp_path / "runs"
    args = ("--datasets", UMAZE, "--algorithms", "td3_bc,awac", "--epsilons", "1,10", "--seeds", "0",
            "--samples", str(layout), "--checkpoints_path", str(runs), "--max_timesteps", "20", "--eval_freq", "10",
            "--n_episodes", "1", "--progress", "false")
    env = {"PRIVTRANR_DATA_DIR": str(data_roots["PRIVTRANR_DATA_DIR"])}
    dry = run_script("bash-agent-training.py", *args, "--dry_run", "true", env_extra=env)
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert len(lines) == 6 and sum("to run" in ln for ln in lines) == 4
    assert sum("samples missing" in ln and "eps1/" in ln for ln in lines) == 2
    assert not runs.exists()

    proc = run_script("bash-agent-training.py", *args, env_extra=env)
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in runs.iterdir() if p.name != ".sweep.lock")  # the driver's lock file stays
    assert names == sorted([f"awac-{UMAZE}-eps10-seed0", f"awac-{UMAZE}-real-seed0", f"td3_bc-{UMAZE}-eps10-seed0",
                            f"td3_bc-{UMAZE}-real-seed0", "results.json", "sweep_state.json"])
    results = json.loads((runs / "results.json").read_text())
    assert {(r["algorithm"], r["dp_epsilon"]) for r in results} == {("td3_bc", None), ("td3_bc", 10.0),
                                                                    ("awac", None), ("awac", 10.0)}
    awac = json.loads((runs / f"awac-{UMAZE}-eps10-seed0" / "summary.json").read_text())
    assert awac["dp_epsilon"] == 10.0 and awac["data"]["path"] == str(target)

    again = run_script("bash-agent-training.py", *args, env_extra=env)
    assert again.returncode == 0 and again.stdout.count("done, skipped") == 4
    assert_user_error(run_script("bash-agent-training.py", *args, "--missing", "error", env_extra=env),
                      "sample file not found", "eps1")
    assert_user_error(run_script("bash-agent-training.py", "--algorithms", "ppo", env_extra=env),
                      "unknown algorithm 'ppo'")

