"""Fidelity over datasets × ε × seeds of existing sample files (see MuJoCo/marginal.py for the metrics).

Samples are found with --samples, by default the layout MuJoCo/bash-train-diffusion.py writes:
runs/diffusion/finetune-<dataset>-eps<ε>-seed<s>/samples.npz. Each gets fidelity.json and fidelity_pairs.png in
the folder a sweep would use, <runs root>/evaluation/fidelity-<samples' folder name> (finetune-<x> read as
privtranr-<x>; the runs root is $PRIVTRANR_RUNS_DIR, else runs/), never in the samples' folder, which is the
release. Sample files whose fidelity.json already exists are skipped (their scores are read back), missing sample
files are listed and skipped. A table is printed at the end and written to --out (default:
<runs root>/evaluation/fidelity_results.json).

The real reference is the sensitive dataset: run this as the data holder; the reports are not private.

  python MuJoCo/bash-evaluate-marginal.py --datasets ptr-maze2d-medium-dense-v0 --epsilons 1,5,10 --seeds 0,1
"""
import json
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from synther.cli import comma_list, parse, run  # noqa: E402
from synther.data import load_dataset  # noqa: E402
from synther.errors import UserError  # noqa: E402
from synther.evaluation.fidelity import default_out_dir, write_fidelity_report  # noqa: E402
from synther.layout import runs_path  # noqa: E402
from synther.utils.io import atomic_write_json  # noqa: E402


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
    dry_run: bool = False  # list what would be evaluated, done or missing, and stop


def main() -> None:
    cfg = parse(FidelitySweepConfig, description=__doc__, aliases={"--force": "--overwrite"})
    try:
        epsilons = [float(e) for e in comma_list(cfg.epsilons)]
        seeds = [int(s) for s in comma_list(cfg.seeds)]
    except ValueError as e:
        raise UserError(f"--epsilons and --seeds must be comma-separated numbers ({e})") from None
    datasets = comma_list(cfg.datasets)
    if not datasets or not epsilons or not seeds:
        raise UserError("--datasets, --epsilons and --seeds must each name at least one value")
    jobs = [(d, e, s, runs_path(cfg.samples.format(dataset=d, eps=f"{e:g}", seed=s)))
            for d in datasets for e in epsilons for s in seeds]
    rows, missing = [], 0
    for i, (dataset, eps, seed, path) in enumerate(jobs, 1):
        label = f"[{i}/{len(jobs)}] {dataset} eps{eps:g} seed{seed}"
        report_path = default_out_dir(path) / "fidelity.json"
        if not path.exists():
            print(f"{label}: samples missing ({path}), skipped")
            missing += 1
            continue
        done = report_path.exists() and not cfg.overwrite
        if cfg.dry_run:
            print(f"{label}: {'done' if done else 'to evaluate'} -> {report_path}")
            continue
        if done:
            print(f"{label}: done, skipped")
            report = json.loads(report_path.read_text())
        else:
            print(f"{label} -> {report_path}", flush=True)
            real = _cached_real(dataset)
            report = write_fidelity_report(dataset, path, report_path.parent, real=real, max_rows=cfg.max_rows or None,
                                           seed=cfg.seed, dynamics=cfg.dynamics, dynamics_rows=cfg.dynamics_rows)
        dyn = report.get("dynamics") or {}
        rows.append({"dataset": dataset, "dp_epsilon": eps, "seed": seed, "samples": str(path),
                     "report": str(report_path),
                     "marginal_score": report["marginal_score"], "correlation_score": report["correlation_score"],
                     "dynamics_next_obs_nmse": dyn.get("next_obs_nmse"), "dynamics_reward_nmse": dyn.get("reward_nmse"),
                     "seconds": report["seconds"].get("total")})
    if not rows:
        if not cfg.dry_run:
            print(f"nothing evaluated ({missing} sample files missing)")
        return
    print(f"\n{'dataset':<34} {'eps':>5} {'seed':>4} {'marginal':>9} {'corr':>7} {'dyn s′':>8} {'dyn r':>8}")
    for r in rows:
        print(f"{r['dataset']:<34} {r['dp_epsilon']:>5g} {r['seed']:>4} {r['marginal_score']:>9.4f} "
              f"{_fmt(r['correlation_score'], '.4f'):>7} {_fmt(r['dynamics_next_obs_nmse'], '.3g'):>8} "
              f"{_fmt(r['dynamics_reward_nmse'], '.3g'):>8}")
    print("dyn: normalized MSE of the simulator's s′ / r vs the synthetic ones (0 = consistent, ~2 = unrelated)")
    out = Path(cfg.out) if cfg.out else Path(rows[0]["report"]).parent.parent / "fidelity_results.json"
    atomic_write_json(out, rows)
    print(f"wrote {out}")


_REAL: dict = {}


def _cached_real(spec: str):
    # one load per real dataset across all ε and seeds
    if spec not in _REAL:
        _REAL[spec] = load_dataset(spec)
    return _REAL[spec]


def _fmt(v, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


if __name__ == "__main__":
    run(main)
