"""The README's main command at a tiny budget: the whole pipeline end to end through the sweep engine."""
import json

import pytest

from script_helpers import assert_user_error, run_script

pytestmark = pytest.mark.slow  # the whole pipeline end to end


def test_quickstart_tiny_runs_the_whole_pipeline_and_resumes(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "results"
    args = ("--preset", "tiny", "--runs_dir", str(runs), "--out_dir", str(out), "--device", "cpu")
    proc = run_script("quickstart.py", *args, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # its own data folder: sensitive umaze + the three public mazes
    assert sorted(p.name for p in (runs / "data").glob("*.npz")) == [
        f"ptr-maze2d-{m}-dense-v0.npz" for m in ("large", "medium", "open", "umaze")]
    header = next(line for line in proc.stdout.splitlines() if line.startswith("| dataset | agent"))
    assert all(c in header for c in ("real score", "synthetic score", "marginal", "ε spent", "MIA AUC"))
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| ptr-maze2d-umaze-dense-v0 | td3_bc"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    column = dict(zip([c.strip() for c in header.strip("|").split("|")], cells))
    assert "—" not in cells, row  # every column was filled from a real run folder
    assert float(column["ε spent"].split()[0]) <= 10.0  # ε spent never exceeds the target
    assert column["seeds"] == "1"
    report = (out / "report.md").read_text()
    assert "utility" in report.lower() and list(out.glob("*.png"))
    state = json.loads((runs / "sweep_state.json").read_text())
    assert state["jobs"] and all(j["status"] == "done" for j in state["jobs"].values())

    again = run_script("quickstart.py", *args, timeout=300)  # finished jobs are skipped
    assert again.returncode == 0, again.stderr[-2000:]
    assert "skipped" in again.stdout and " started " not in again.stdout

    other = run_script("quickstart.py", *args, "--seed", "1", timeout=900)  # another seed, reported with the first
    assert other.returncode == 0, other.stdout[-3000:] + other.stderr[-3000:]
    row = next(line for line in other.stdout.splitlines() if line.startswith("| ptr-maze2d-umaze-dense-v0 | td3_bc"))
    assert dict(zip(column, [c.strip() for c in row.strip("|").split("|")]))["seeds"] == "2"
    assert (runs / "agents" / "td3_bc-ptr-maze2d-umaze-dense-v0-eps10-seed1" / "summary.json").exists()


def test_quickstart_rejects_an_unknown_profile(tmp_path):
    assert_user_error(run_script("quickstart.py", "--preset", "huge", "--runs_dir", str(tmp_path)), "huge",
                      "tiny")
