"""Fidelity over datasets × ε × seeds of existing sample files (see MuJoCo/marginal.py for the metrics).

Samples are found with --samples, by default the layout MuJoCo/bash-train-diffusion.py writes:
runs/diffusion/finetune-<dataset>-eps<ε>-seed<s>/samples.npz. Each gets fidelity.json and fidelity_pairs.png in
the folder a sweep would use, <runs root>/evaluation/fidelity-<samples' folder name> (finetune-<x> read as
privtranr-<x>; the runs root is $PRIVTRANR_RUNS_DIR, else runs/), never in the samples' folder, which is the
release. Each evaluation is a job of the sweep engine (MuJoCo/marginal.py in its own process, on a local pool of
cores or a Ray cluster; state in <runs root>/evaluation/fidelity_sweep_state.json). Sample files whose fidelity.json
already exists are skipped (their scores are read back), missing sample files are listed and skipped. A table is
printed at the end and written to --out (default: <runs root>/evaluation/fidelity_results.json).

The real reference is the sensitive dataset: run this as the data holder; the reports are not private.

  python MuJoCo/bash-evaluate-marginal.py --datasets ptr-maze2d-medium-dense-v0 --epsilons 1,5,10 --seeds 0,1
"""
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from synther.cli import parse, run  # noqa: E402
from synther.errors import UserError  # noqa: E402
from synther.evaluation.fidelity import default_out_dir, fidelity_command  # noqa: E402
from synther.layout import dataset_arg, runs_path, runs_root  # noqa: E402
from synther.sweep import SUCCESS, Job, execute  # noqa: E402
from synther.utils.io import atomic_write_json  # noqa: E402
from synther.utils.options import comma_list  # noqa: E402


@dataclass
class FidelitySweepConfig:
    datasets: str = "ptr-maze2d-medium-dense-v0"  # comma-separated real datasets (registry names or paths) the samples imitate
    epsilons: str = "1,5,10,15,20"  # comma-separated ε of the sample files
    seeds: str = "0"  # comma-separated diffusion seeds
    samples: str = "runs/diffusion/finetune-{dataset}-eps{eps}-seed{seed}/samples.npz"  # where the samples of (dataset, ε, seed) are; {eps} is formatted like 10 or 2.5; $PRIVTRANR_RUNS_DIR replaces a leading runs/
    dynamics: bool = True  # also compute the dynamics error (PointMaze, MuJoCo locomotion)
    dynamics_rows: int = 10_000  # synthetic rows the dynamics error steps through
    max_rows: int = 0  # subsample each table to at most this many rows for the scores (0: all)
    seed: int = 0  # seed of the row subsamples
    overwrite: bool = False  # recompute even where fidelity.json exists (--force: the same option)
    out: str = ""  # results table (JSON); default: <runs root>/evaluation/fidelity_results.json
    executor: str = "local"  # local (process pool on this machine) or ray
    ray_address: str = ""  # Ray cluster to join, host:port (empty with --executor ray: start a local Ray)
    workers: int = 0  # local: evaluations in parallel, one core each (0: all cores)
    dry_run: bool = False  # list what would be evaluated, done or missing, and stop


def plan(cfg: FidelitySweepConfig) -> tuple[list[Job], list[str]]:
    """(one marginal.py job per sample file that exists, a line per sample file that does not)."""
    try:
        epsilons = [float(e) for e in comma_list(cfg.epsilons)]
        seeds = [int(s) for s in comma_list(cfg.seeds)]
    except ValueError as e:
        raise UserError(f"--epsilons and --seeds must be comma-separated numbers ({e})") from None
    datasets = comma_list(cfg.datasets)
    if not datasets or not epsilons or not seeds:
        raise UserError("--datasets, --epsilons and --seeds must each name at least one value")
    started = time.time()
    jobs, missing = [], []
    for dataset in datasets:
        for eps in epsilons:
            for seed in seeds:
                path = runs_path(cfg.samples.format(dataset=dataset, eps=f"{eps:g}", seed=seed))
                if not path.exists():
                    missing.append(f"{dataset} eps{eps:g} seed{seed}: samples missing ({path}), skipped")
                    continue
                out = default_out_dir(path)
                command = fidelity_command(sys.executable, dataset_arg(dataset), path, out, cfg.dynamics) + [
                    "--dynamics_rows", str(cfg.dynamics_rows), "--max_rows", str(cfg.max_rows), "--seed", str(cfg.seed)]
                # --overwrite: an existing fidelity.json counts only once this run has rewritten it
                rewritten = (lambda d, t=started: (d / "fidelity.json").stat().st_mtime >= t) if cfg.overwrite else None
                jobs.append(Job(f"fidelity/{out.name}", "fidelity", out, command, outputs=("fidelity.json",),
                                labels={"dataset": dataset, "method": "privtranr", "epsilon": eps, "seed": seed,
                                        "data": str(path)}, finished=rewritten))
    return jobs, missing


def main() -> None:
    cfg = parse(FidelitySweepConfig, description=__doc__, aliases={"--force": "--overwrite"})
    jobs, missing = plan(cfg)
    for line in missing:
        print(line)
    state = runs_root().expanduser().resolve() / "evaluation" / "fidelity_sweep_state.json"
    result = execute(jobs, cfg.executor, cfg.ray_address, cfg.workers, state, "bash-evaluate-marginal", cfg.dry_run)
    if result is None:  # dry run
        return
    rows = []
    for job in jobs:
        if result.status.get(job.id) not in SUCCESS:
            continue
        report = json.loads((job.run_dir / "fidelity.json").read_text())
        dyn = report.get("dynamics") or {}
        rows.append({"dataset": job.labels["dataset"], "dp_epsilon": job.labels["epsilon"], "seed": job.labels["seed"],
                     "samples": job.labels["data"], "report": str(job.run_dir / "fidelity.json"),
                     "marginal_score": report["marginal_score"], "correlation_score": report["correlation_score"],
                     "dynamics_next_obs_nmse": dyn.get("next_obs_nmse"), "dynamics_reward_nmse": dyn.get("reward_nmse"),
                     "seconds": report["seconds"].get("total")})
    if not rows:
        print(f"nothing evaluated ({len(missing)} sample files missing)")
        sys.exit(0 if result.ok else 1)
    print(f"\n{'dataset':<34} {'eps':>5} {'seed':>4} {'marginal':>9} {'corr':>7} {'dyn s′':>8} {'dyn r':>8}")
    for r in rows:
        print(f"{r['dataset']:<34} {r['dp_epsilon']:>5g} {r['seed']:>4} {r['marginal_score']:>9.4f} "
              f"{_fmt(r['correlation_score'], '.4f'):>7} {_fmt(r['dynamics_next_obs_nmse'], '.3g'):>8} "
              f"{_fmt(r['dynamics_reward_nmse'], '.3g'):>8}")
    print("dyn: normalized MSE of the simulator's s′ / r vs the synthetic ones (0 = consistent, ~2 = unrelated)")
    out = Path(cfg.out) if cfg.out else Path(rows[0]["report"]).parent.parent / "fidelity_results.json"
    atomic_write_json(out, rows)
    print(f"wrote {out}")
    if not result.ok:
        sys.exit(1)


def _fmt(v, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


if __name__ == "__main__":
    run(main)
