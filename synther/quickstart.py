"""The whole pipeline on an embedded default, in one call: generate maze2d-like data, pre-train on the public mazes,
DP fine-tune on the sensitive one, sample, train TD3+BC on real and synthetic transitions, score fidelity and a
membership-inference attack, then write the report and print a summary table.

It is a sweep (synther.sweep) over one dataset, one ε and one seed, from config/sweeps/quickstart*.yaml, with its
own data folder inside its runs folder, so it never mixes with data or runs made elsewhere. Re-running it skips
what is finished.
"""
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pyrallis

from synther.data.pointmaze import MazeCollectConfig, collect_maze2d
from synther.errors import UserError
from synther.report import (collect, fidelity_rows, ladder_markdown, ladder_rows, ledger_rows, markdown_table, mia_rows,
                            utility_rows, write_report)
from synther.layout import ROOT
from synther.sweep import SweepConfig, public_sets, run_sweep

# preset -> (sweep YAML, rows generated per maze; 0 = D4RL's sizes)
PRESETS = {
    "default": ("config/sweeps/quickstart.yaml", 100_000),  # 13–19 minutes on 2 CPU cores (README)
    "tiny": ("config/sweeps/quickstart-tiny.yaml", 2_000),  # seconds of compute: checks the plumbing (CI)
    # the utility ladder at the default's settings: real, no-DP, DP at ε 1 and 10, public-only (± curiosity),
    # seeds 0-2; its default and ε=10 jobs are the default preset's, so with --runs_dir runs/quickstart it reuses them
    "ladder": ("config/sweeps/quickstart-ladder.yaml", 100_000),  # ≈ an hour on 2 CPU cores
    "paper": ("config/sweeps/quickstart-paper.yaml", 0),  # PrivORL's scale: W=2048x6, 1M samples, 500k updates (GPU)
}


@dataclass
class QuickstartConfig:
    preset: str = "default"  # default (minutes on a laptop CPU), tiny (a plumbing check), ladder (the utility ladder, 3 seeds) or paper (PrivORL's scale, for a GPU)
    seed: int = -1  # run this seed instead of the preset's seeds (-1: the preset's); runs of several seeds in one runs folder are reported together
    runs_dir: str = ""  # where the runs (and the generated data, in <runs_dir>/data) go (empty: runs/quickstart[-<preset>])
    out_dir: str = ""  # where the report and plots go (alias --out; empty: results/quickstart[-<preset>])
    executor: str = "local"  # local (process pool on this machine) or ray
    ray_address: str = ""  # Ray cluster to join, host:port (executor ray)
    workers: int = 0  # local CPU slots (0: all cores)
    device: str = "auto"  # --device of every job: auto (CUDA when available), cpu or cuda


def _suffix(preset: str) -> str:
    return "" if preset == "default" else f"-{preset}"


def _maze(name: str) -> str | None:
    """'umaze' for 'ptr-maze2d-umaze-dense-v0'; None for anything the maze generator does not make."""
    parts = name.split("-")
    if len(parts) == 5 and parts[:2] == ["ptr", "maze2d"] and parts[3:] == ["dense", "v0"]:
        return parts[2]
    return None


def generate_data(names: list[str], data_dir: Path, rows: int, echo: Callable[[str], None]) -> None:
    """Generate the maze datasets the sweep needs that are not in `data_dir` yet (seeded per maze)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        path = data_dir / f"{name}.npz"
        if path.exists():
            continue
        maze = _maze(name)
        if maze is None:
            raise UserError(f"quickstart can only generate ptr-maze2d-*-dense-v0 datasets, not '{name}'")
        start = time.time()
        ds = collect_maze2d(MazeCollectConfig(name=maze, num_steps=rows), seed=i, progress=True)
        ds.save(path)
        echo(f"generated {path} ({ds.size} transitions, {time.time() - start:.0f} s)")


def summary_table(results: Any) -> str:
    """One line per (dataset, agent, ε): real vs synthetic score, fidelity, ε spent, MIA AUC."""
    util = [r for r in utility_rows(results) if r["method"] == "privtranr"]
    fid = {(r["dataset"], r["epsilon"]): r for r in fidelity_rows(results) if r["method"] == "privtranr"}
    mia = {(r["dataset"], r["epsilon"]): r for r in mia_rows(results) if r["method"] == "privtranr"}
    spent = {(r["dataset"], r["epsilon"]): r for r in ledger_rows(results) if r["method"] == "privtranr"}

    def f(v: Any, digits: int = 3) -> str:
        return "—" if v is None else f"{v:.{digits}f}"

    body = []
    for r in util:
        key = (r["dataset"], r["epsilon"])
        led = spent.get(key, {})
        eps_spent = (f"{led['epsilon_spent']:.3g} (δ={led['delta']:g})"
                     if led.get("epsilon_spent") is not None and led.get("delta") is not None else "—")
        ci = "" if r["ratio_ci_low"] is None else f" [{r['ratio_ci_low']:.2f}, {r['ratio_ci_high']:.2f}]"
        score = f(r["mean"], 1) + ("" if r["std"] is None else f" ± {r['std']:.1f}")
        body.append([r["dataset"], r["agent"], f"{r['epsilon']:g}", str(r["n_seeds"]), f(r["real_mean"], 1), score,
                     f(r["ratio_to_real"], 2) + ci, f(fid.get(key, {}).get("marginal_mean")),
                     f(fid.get(key, {}).get("correlation_mean")), eps_spent, f(mia.get(key, {}).get("auc_mean"))])
    header = ["dataset", "agent", "target ε", "seeds", "real score", "synthetic score", "ratio [95% CI]", "marginal",
              "correlation", "ε spent", "MIA AUC"]
    return markdown_table(header, body)


def quickstart(cfg: QuickstartConfig, echo: Callable[[str], None] = lambda s: print(s, flush=True)) -> dict[str, Any]:
    """Run the quickstart; returns {"ok", "table", "report", "seconds"}."""
    if cfg.preset not in PRESETS:
        raise UserError(f"unknown preset '{cfg.preset}' (choose from: {', '.join(PRESETS)})")
    start = time.time()
    sweep_yaml, rows = PRESETS[cfg.preset]
    runs_dir = Path(cfg.runs_dir or f"runs/quickstart{_suffix(cfg.preset)}").resolve()
    out = Path(cfg.out_dir or f"results/quickstart{_suffix(cfg.preset)}")
    sweep = pyrallis.parse(config_class=SweepConfig, config_path=str(ROOT / sweep_yaml), args=[])
    sweep.runs_dir, sweep.executor, sweep.ray_address = str(runs_dir), cfg.executor, cfg.ray_address
    sweep.workers, sweep.device = cfg.workers, cfg.device
    if cfg.seed >= 0:
        sweep.seeds = [cfg.seed]

    # The jobs find datasets by name under PRIVTRANR_DATA_DIR (forwarded to every job, Ray nodes included).
    data_dir = runs_dir / "data"
    os.environ["PRIVTRANR_DATA_DIR"] = str(data_dir)
    public = public_sets(sweep)
    needed = list(dict.fromkeys([*sweep.datasets, *(p for d in sweep.datasets for p in public[d])]))
    generate_data(needed, data_dir, rows, echo)

    result = run_sweep(sweep, echo)
    results = collect(runs_dir)
    write_report(results, out, plots=True, source=str(runs_dir))
    table = summary_table(results)
    ladder = ladder_rows(results)
    if ladder:
        table = f"{table}\n\nutility ladder:\n{ladder_markdown(ladder)}"
    seconds = time.time() - start
    echo(f"\n{table}\n\nreport: {out / 'report.md'} (tables, plots); runs: {runs_dir}; {seconds / 60:.1f} min")
    return {"ok": bool(result and result.ok), "table": table, "report": out / "report.md", "seconds": seconds}
