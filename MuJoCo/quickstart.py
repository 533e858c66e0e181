"""The whole PrivTranR pipeline on an embedded default, in one command:

  1. generate maze2d-like datasets (PointMaze, offline): the sensitive umaze and the public open/medium/large mazes
  2. pre-train the EDM diffusion model on the public mazes
  3. DP fine-tune it on the sensitive maze to ε = 10, δ = 1e-6, and sample 100k synthetic transitions
  4. train TD3+BC on the real and on the synthetic transitions, scored in the real simulator (D4RL-normalized)
  5. fidelity (marginal / correlation vs the real data) and a membership-inference attack on the fine-tuned model
  6. write the report (tables + plots) and print a summary table

Profiles: default (13.5–16 minutes on 2 CPU cores, by the machine), tiny (a plumbing check in under a minute, what CI
runs), ladder (the utility ladder: real data, fine-tuned without DP, DP at ε = 10 and 1, public pre-training only
with and without curiosity, 3 seeds each, at the default's settings; about an hour) and paper (PrivORL's scale:
D4RL-sized data, W=2048x6 denoiser, 1M samples, 500k agent updates; for a GPU machine). --seed N runs another seed;
runs of several seeds in one runs folder are reported together (mean ± std, bootstrap CI of the ratio).
Runs (and the generated data) go to runs/quickstart[-<preset>], the report to results/quickstart[-<preset>].
Re-running skips what is finished; the sweep behind it is config/sweeps/quickstart*.yaml (see MuJoCo/sweep.py).

  python MuJoCo/quickstart.py
  python MuJoCo/quickstart.py --seed 1                                  # another seed, reported with seed 0
  python MuJoCo/quickstart.py --preset ladder --runs_dir runs/quickstart   # reuses the default's runs
  python MuJoCo/quickstart.py --preset paper --executor ray --ray_address head:6379
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from synther.cli import OUT_ALIASES, parse, run  # noqa: E402
from synther.quickstart import QuickstartConfig, quickstart  # noqa: E402


def main() -> None:
    result = quickstart(parse(QuickstartConfig, description=__doc__, aliases=OUT_ALIASES))
    if not result["ok"]:
        print("some jobs failed: see the table above and their job-*.log files", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    run(main)
