"""Run a whole evaluation sweep from one YAML: pre-train -> DP fine-tune per ε -> sample -> agents, fidelity, MIA,
plus DP baselines and the real-data reference, as a graph of jobs on a local process pool or a Ray cluster.

  python MuJoCo/sweep.py --config config/sweeps/maze2d-paper.yaml --dry_run true     # the plan, nothing runs
  python MuJoCo/sweep.py --config config/sweeps/maze2d-paper.yaml                     # local pool (all cores)
  python MuJoCo/sweep.py --config config/sweeps/maze2d-paper.yaml --executor ray --ray_address head:6379

Finished jobs (their run folder holds the finished output) are skipped, so re-running resumes a sweep: unfinished
jobs run again and their scripts resume from their checkpoints. A failed job is recorded (exit code and log tail in
<runs_dir>/sweep_state.json) and blocks only the jobs that need its output. Each job logs to
<run folder>/job-<kind>.log. The command exits 0 when every job finished, 1 when some failed or were blocked.

Ray: start the cluster first (`ray start --head` on one node, `ray start --address head:6379` on the others). Every
node needs this repository and its Python environment at the same paths as the driver, and the sweep root
(--runs_dir) on a shared filesystem at the same path. Per-job CPUs/GPUs come from `resources` in the YAML.
Any field below can be set in the YAML or on the command line (lists as "[a,b]").
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from synther.cli import parse, run  # noqa: E402
from synther.sweep import SweepConfig, run_sweep  # noqa: E402


def main() -> None:
    cfg = parse(SweepConfig, __doc__)
    result = run_sweep(cfg)
    if result is not None and not result.ok:
        sys.exit(1)


if __name__ == "__main__":
    run(main)
