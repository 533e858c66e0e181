"""Peak memory of fidelity scoring and dataset inspection, as a multiple of the arrays they load.

Writes a real and a synthetic dataset (random values, D4RL keys; default 1M rows with maze2d's shapes, obs 4 and
action 2) to a temporary folder, then runs each script's main() in a fresh process:

  inspect   MuJoCo/inspect_data.py --dataset real.npz                          (loads one side)
  marginal  MuJoCo/marginal.py --real real.npz --synthetic synthetic.npz       (loads both sides)

Each process imports its script, resets the kernel's peak-RSS mark (/proc/self/clear_refs), runs main() and reads
the peak (VmHWM). It prints extra = peak − RSS before main(), the bytes of the arrays main() loads (canonical dtypes,
as TransitionDataset holds them) and their ratio. The target for fidelity scoring is ≤ 2.5×.

  python benchmarks/fidelity_memory.py
  python benchmarks/fidelity_memory.py --rows 200000 --obs_dim 17 --action_dim 6
"""
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from synther.cli import parse, run  # noqa: E402

# runs inside the measured process: the script's module is imported first, so imports are not counted
PROBE = r"""
import json, runpy, sys
def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
script, args = sys.argv[1], sys.argv[2:]
module = runpy.run_path(script, run_name="probe")
sys.argv = [script, *args]
before = rss("VmRSS:")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset VmHWM to the current RSS
module["main"]()
print("PROBE " + json.dumps({"before": before, "peak": rss("VmHWM:")}))
"""


@dataclass
class MemoryBenchConfig:
    rows: int = 1_000_000  # transitions in each dataset
    obs_dim: int = 4  # maze2d: 4
    action_dim: int = 2  # maze2d: 2
    seed: int = 0  # seed of the random values


def write_dataset(path: Path, rows: int, obs_dim: int, action_dim: int, rng: np.random.Generator) -> int:
    """A random D4RL-keyed npz; returns the bytes its arrays take once loaded (float32, terminals float32,
    timeouts bool)."""
    arrays = {"observations": rng.standard_normal((rows, obs_dim), dtype=np.float32),
              "actions": rng.uniform(-1, 1, (rows, action_dim)).astype(np.float32),
              "rewards": rng.random(rows, dtype=np.float32),
              "next_observations": rng.standard_normal((rows, obs_dim), dtype=np.float32),
              "terminals": (rng.random(rows) < 0.01).astype(np.float32),
              "timeouts": rng.random(rows) < 0.001}
    np.savez(path, **arrays)
    return sum(a.nbytes for a in arrays.values())


def measure(script: str, args: list[str]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", PROBE, str(ROOT / "MuJoCo" / script), *args], capture_output=True,
                          text=True, env=env, cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("PROBE ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{script} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(lines[-1][len("PROBE "):])


def main() -> None:
    cfg = parse(MemoryBenchConfig, description=__doc__)
    rng = np.random.default_rng(cfg.seed)
    with tempfile.TemporaryDirectory() as tmp:
        real, syn, out = Path(tmp) / "real.npz", Path(tmp) / "synthetic.npz", Path(tmp) / "out"
        one_side = write_dataset(real, cfg.rows, cfg.obs_dim, cfg.action_dim, rng)
        write_dataset(syn, cfg.rows, cfg.obs_dim, cfg.action_dim, rng)
        cases = [("inspect", "inspect_data.py", ["--dataset", str(real)], one_side),
                 ("marginal", "marginal.py", ["--real", str(real), "--synthetic", str(syn), "--out_dir", str(out),
                                              "--plot", "false"], 2 * one_side)]
        print(f"{cfg.rows} rows, obs {cfg.obs_dim}, action {cfg.action_dim}: {one_side / 2**20:.1f} MiB per dataset")
        print("| script | loaded MiB | extra peak MiB | ratio |")
        print("|---|---|---|---|")
        for name, script, args, loaded in cases:
            m = measure(script, args)
            extra = m["peak"] - m["before"]
            print(f"| {name} | {loaded / 2**20:.1f} | {extra / 2**20:.1f} | {extra / loaded:.2f}× |", flush=True)


if __name__ == "__main__":
    run(main)
