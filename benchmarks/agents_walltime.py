"""Wall time of real agent runs, evaluations and checkpoints included: K seeds as K one-thread processes started
together against one `--stack_seeds K` process (issue 17's "evaluation included" comparison).

Each arm runs the agent script itself (MuJoCo/<agent>.py) on real data of --dataset (generated beforehand, e.g.
`python MuJoCo/collect_data.py --maze.name umaze`) into a fresh folder under --out_dir, in every --precisions; the
arms take turns round by round (the order reversed every other round), and the table gives each arm's wall time
per round and its speed relative to the fp32 processes of the same round. Scores are printed too: a stacked seed
follows its one-seed run up to float rounding, so they should agree closely.

  python benchmarks/agents_walltime.py --dataset ptr-maze2d-umaze-dense-v0 --seeds 3 --rounds 2
"""
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from synther.agents import get_algorithm  # noqa: E402
from synther.agents.trainer import agent_command  # noqa: E402
from synther.cli import parse, run  # noqa: E402
from synther.errors import UserError  # noqa: E402


@dataclass
class BenchConfig:
    dataset: str = "ptr-maze2d-umaze-dense-v0"  # registry name of real data present under $PRIVTRANR_DATA_DIR
    agent: str = "td3_bc"  # td3_bc or iql (the stackable agents)
    seeds: int = 3  # K: seeds 0 … K−1
    updates: int = 15_000  # updates per seed
    eval_freq: int = 5000  # evaluate every this many updates
    n_episodes: int = 50  # episodes per evaluation
    precisions: str = "fp32,bf16"  # --precision values to time, each with both arms
    stacked_threads: int = 2  # threads of the stacked process (the one-seed processes get one each)
    rounds: int = 1  # rounds of every arm
    extra: str = "--alpha 10"  # further agent options, the same for every arm
    out_dir: str = "runs/bench-walltime"  # scratch folder (emptied per arm)


def arm(cfg: BenchConfig, stacked: bool, precision: str, out: Path) -> tuple[float, list[float]]:
    """Wall seconds of one arm and each seed's last normalized score."""
    shutil.rmtree(out, ignore_errors=True)
    common = dict(dataset=cfg.dataset, checkpoints_path=out, device="cpu", progress=False,
                  max_timesteps=cfg.updates, eval_freq=cfg.eval_freq, n_episodes=cfg.n_episodes)
    extra = ["--precision", precision, *cfg.extra.split()]
    if stacked:
        commands = [agent_command(sys.executable, cfg.agent, seed=0, name="seed{seed}", threads=cfg.stacked_threads,
                                  stack_seeds=cfg.seeds, **common) + extra]
        threads = cfg.stacked_threads
    else:
        commands = [agent_command(sys.executable, cfg.agent, seed=s, name=f"seed{s}", threads=1, **common) + extra
                    for s in range(cfg.seeds)]
        threads = 1
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out.mkdir(parents=True, exist_ok=True)
    logs = [open(out / f"log{i}.txt", "w") for i in range(len(commands))]
    start = time.perf_counter()
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=log) for c, log in zip(commands, logs)]
    codes = [p.wait() for p in procs]
    seconds = time.perf_counter() - start
    for log in logs:
        log.close()
    if any(codes):
        raise UserError(f"an agent run failed (exit {max(codes)}); see the logs under {out}")
    scores = [json.loads((out / f"seed{s}" / "summary.json").read_text())["final_normalized_score"]
              for s in range(cfg.seeds)]
    return seconds, scores


def main() -> None:
    cfg = parse(BenchConfig, description=__doc__)
    if not get_algorithm(cfg.agent)[0].stackable:
        raise UserError(f"--agent {cfg.agent} cannot stack seeds (td3_bc, iql can)")
    arms = [(precision.strip(), stacked) for precision in cfg.precisions.split(",") if precision.strip()
            for stacked in (False, True)]
    print(f"{cfg.agent} on {cfg.dataset}: {cfg.seeds} seeds × {cfg.updates} updates, {cfg.n_episodes} episodes every "
          f"{cfg.eval_freq}; {cfg.seeds} one-thread processes vs one stacked process on {cfg.stacked_threads} threads")
    print("| round | precision | arm | wall s | vs fp32 processes | final scores |")
    print("|---|---|---|---|---|---|")
    for r in range(cfg.rounds):
        results = {}
        for precision, stacked in (arms if r % 2 == 0 else list(reversed(arms))):
            name = f"{precision}-{'stacked' if stacked else 'processes'}"
            results[precision, stacked] = arm(cfg, stacked, precision, Path(cfg.out_dir) / name)
        base = results[("fp32", False)][0] if ("fp32", False) in results else None
        for (precision, stacked), (seconds, scores) in ((key, results[key]) for key in arms):
            ratio = f"{base / seconds:.2f}×" if base else "—"
            print(f"| {r} | {precision} | {'one stacked process' if stacked else f'{cfg.seeds} processes'} | "
                  f"{seconds:.1f} | {ratio} | {' / '.join(f'{v:.1f}' for v in scores)} |", flush=True)


if __name__ == "__main__":
    run(main)
