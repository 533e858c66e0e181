"""The scripts as a user runs them: --help, outputs, and the one-line error / exit code 2 contract."""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from synther.data.locomotion import LocomotionCollectConfig
from synther.data.pointmaze import MazeCollectConfig
from script_helpers import assert_user_error, run_script

def test_collect_help_explains_every_option():
    proc = run_script("collect_data.py", "--help")
    assert proc.returncode == 0
    options = ["--generator", "--out_dir", "--seed", "--overwrite", "--progress"]
    options += [f"--maze.{f.name}" for f in dataclasses.fields(MazeCollectConfig)]
    options += [f"--locomotion.{f.name}" for f in dataclasses.fields(LocomotionCollectConfig)]
    for option in options:
        # each option is listed with a help text, not just its type and default
        line = next((line for line in proc.stdout.splitlines() if line.strip().startswith(option + " ")), None)
        assert line is not None, option
    assert proc.stdout.count("(default:") >= len(options)
    assert "SAC" in proc.stdout and "PointMaze" in proc.stdout


def test_collect_maze_writes_dataset_and_sidecar_then_skips(tmp_path):
    args = ("--generator", "pointmaze", "--maze.name", "open", "--maze.num_steps", "500", "--out_dir", str(tmp_path),
            "--progress", "false", "--seed", "3")
    proc = run_script("collect_data.py", *args)
    assert proc.returncode == 0, proc.stderr
    npz, side = tmp_path / "ptr-maze2d-open-dense-v0.npz", tmp_path / "ptr-maze2d-open-dense-v0.json"
    with np.load(npz) as f:
        assert set(f.files) == {"observations", "actions", "rewards", "next_observations", "terminals", "timeouts"}
        assert f["rewards"].shape == (500,) and f["rewards"].dtype == np.float32
    meta = json.loads(side.read_text())
    assert meta["provenance"]["seed"] == 3 and meta["size"] == 500
    assert sorted(p.name for p in tmp_path.iterdir()) == [side.name, npz.name]  # no temp files left behind
    before = npz.stat().st_mtime_ns
    again = run_script("collect_data.py", *args)
    assert again.returncode == 0 and "keeping it" in again.stdout and npz.stat().st_mtime_ns == before


@pytest.mark.parametrize(
    "args, fragments",
    [
        (("--generator", "atari"), ("unknown --generator 'atari'",)),
        (("--maze.name", "tiny", "--maze.num_steps", "10"), ("unknown maze 'tiny'",)),
        (("--seed", "abc"), ("invalid option", "seed")),
        (("--generator", "locomotion", "--locomotion.env", "Ant-v5"), ("unknown locomotion env",)),
    ],
)
def test_collect_bad_options_exit_2_with_one_line(tmp_path, args, fragments):
    assert_user_error(run_script("collect_data.py", "--out_dir", str(tmp_path), *args), *fragments)
    assert not list(tmp_path.glob("*.npz"))


def _write(path: Path, **overrides) -> Path:
    n = 20
    arrays = {"observations": np.zeros((n, 3)), "actions": np.zeros((n, 2)), "rewards": np.zeros(n),
              "next_observations": np.zeros((n, 3)), "terminals": np.zeros(n)}
    arrays.update(overrides)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"actions": None}, "'actions'"),
        ({"rewards": np.zeros(19)}, "'rewards'"),
        ({"rewards": np.r_[np.zeros(19), np.nan]}, "'rewards'"),
        ({"observations": np.full((20, 3), np.inf)}, "'observations'"),
        ({"terminals": np.full(20, 0.5)}, "'terminals'"),
        ({"observations": np.zeros(20)}, "'observations'"),
    ],
)
def test_inspect_reports_bad_files_by_file_and_field(tmp_path, overrides, field):
    path = _write(tmp_path / "bad.npz", **overrides)
    assert_user_error(run_script("inspect_data.py", "--dataset", str(path)), str(path), field)


def test_inspect_checks_public_sensitive_dimensions(tmp_path):
    good = _write(tmp_path / "a.npz")
    same = _write(tmp_path / "b.npz")
    wider = _write(tmp_path / "c.npz", observations=np.zeros((20, 4)), next_observations=np.zeros((20, 4)))
    ok = run_script("inspect_data.py", "--dataset", str(good), "--compare_with", str(same))
    assert ok.returncode == 0 and "20 transitions" in ok.stdout and "compatible with" in ok.stdout
    assert_user_error(run_script("inspect_data.py", "--dataset", str(good), "--compare_with", f"{same},{wider}"),
                      "dimension mismatch", "obs_dim")


def test_inspect_missing_registered_dataset_tells_how_to_make_it(tmp_path):
    proc = run_script("inspect_data.py", "--dataset", "ptr-maze2d-large-dense-v0",
                      env_extra={"PRIVTRANR_DATA_DIR": str(tmp_path)})
    assert_user_error(proc, "ptr-maze2d-large-dense-v0", "collect_data.py --generator pointmaze --maze.name large")


def test_comma_list_reads_empty_and_none_as_no_items():
    from synther.cli import comma_list

    assert comma_list("td3_bc, iql,") == ["td3_bc", "iql"]
    assert comma_list("") == comma_list(None) == comma_list("None") == comma_list(" none ") == []
