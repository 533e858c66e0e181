"""Train offline RL agents over datasets × algorithms × ε × seeds on existing sample files, plus the real dataset
as the non-private reference; finished runs (summary.json present) are skipped, killed runs resume.

Each run uses config/agents/<algorithm>/<dataset>.yaml (CORL's per-env settings; the algorithm's defaults when
there is none) with the dataset, seed, samples and ε of the grid point. Samples are found with --samples, by
default the layout MuJoCo/bash-train-diffusion.py writes: runs/diffusion/finetune-<dataset>-eps<ε>-seed<s>/samples.npz.
Runs go to <checkpoints_path>/<algorithm>-<dataset>-eps<ε>-seed<s> (and ...-real-seed<s>); a results table is
printed at the end and written to <checkpoints_path>/results.json.

  python MuJoCo/bash-agent-training.py --datasets ptr-maze2d-medium-dense-v0 --algorithms td3_bc,iql \\
      --epsilons 1,10 --seeds 0,1 --dry_run true
"""
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import pyrallis  # noqa: E402

from synther.agents import ALGORITHMS, get_algorithm  # noqa: E402
from synther.agents.trainer import DiffusionSource, run_dir, runs_root, train  # noqa: E402
from synther.cli import parse, run  # noqa: E402
from synther.errors import UserError  # noqa: E402
from synther.utils.io import atomic_write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class AgentSweepConfig:
    datasets: str = "ptr-maze2d-medium-dense-v0"  # comma-separated datasets (registry names): what the samples imitate and where agents are scored
    algorithms: str = "td3_bc,iql"  # comma-separated algorithms: td3_bc, iql, cql, awac, edac
    epsilons: str = "1,5,10,15,20"  # comma-separated ε of the sample files to train on (empty: none)
    seeds: str = "0"  # comma-separated agent seeds
    sample_seed: int = -1  # train every agent on the samples of this diffusion seed (-1: the agent's own seed)
    real: bool = True  # also train on the real dataset (the non-private reference)
    samples: str = "runs/diffusion/finetune-{dataset}-eps{eps}-seed{seed}/samples.npz"  # where the samples of (dataset, ε, seed) are; {eps} is formatted like 10 or 2.5
    sample_limit: int = -1  # use at most this many rows of each sample file (-1: all)
    config_dir: str = "config/agents"  # per-run YAML: <config_dir>/<algorithm>/<dataset>.yaml (algorithm defaults when missing)
    checkpoints_path: str = ""  # parent of the run folders; empty: $PRIVTRANR_RUNS_DIR/agents, else runs/agents
    max_timesteps: int = 0  # override the updates of every run (0: the YAML's)
    eval_freq: int = 0  # override the evaluation interval (0: the YAML's)
    n_episodes: int = 0  # override the episodes per evaluation (0: the YAML's)
    device: str = "auto"  # auto (CUDA when available), cpu or cuda
    threads: int = 0  # torch CPU threads per run (0: torch's default)
    missing: str = "skip"  # a sample file that does not exist: 'skip' (listed as missing) or 'error'
    dry_run: bool = False  # print the plan (and what is done or missing) without training
    progress: bool = True  # progress bars


def _split(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def _resolve(path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() or p.exists() else ROOT / p


@dataclass
class Job:
    algorithm: str
    dataset: str
    eps: float | None  # None: the real dataset
    seed: int
    samples: Path | None
    config: object

    @property
    def label(self) -> str:
        data = "real" if self.eps is None else f"eps{self.eps:g}"
        return f"{self.algorithm:<7} {self.dataset} {data:<8} seed{self.seed}"


def plan(cfg: AgentSweepConfig) -> list[Job]:
    try:
        epsilons = [float(e) for e in _split(cfg.epsilons)]
        seeds = [int(s) for s in _split(cfg.seeds)]
    except ValueError as e:
        raise UserError(f"--epsilons and --seeds must be comma-separated numbers ({e})") from None
    algorithms = _split(cfg.algorithms)
    for a in algorithms:
        if a not in ALGORITHMS:
            raise UserError(f"unknown algorithm '{a}' in --algorithms (choose from: {', '.join(ALGORITHMS)})")
    if cfg.missing not in ("skip", "error"):
        raise UserError(f"--missing must be 'skip' or 'error', got '{cfg.missing}'")
    overrides = {k: getattr(cfg, k) for k in ("max_timesteps", "eval_freq", "n_episodes", "threads") if getattr(cfg, k)}
    jobs = []
    for dataset in _split(cfg.datasets):
        for algorithm in algorithms:
            _, config_class = get_algorithm(algorithm)
            yaml_path = _resolve(cfg.config_dir) / algorithm / f"{dataset}.yaml"
            base = (pyrallis.parse(config_class=config_class, config_path=str(yaml_path), args=[])
                    if yaml_path.exists() else config_class())
            base = dataclasses.replace(base, dataset=dataset, checkpoints_path=cfg.checkpoints_path,
                                       device=cfg.device, progress=cfg.progress, **overrides)
            for seed in seeds:
                if cfg.real:
                    jobs.append(Job(algorithm, dataset, None, seed, None, dataclasses.replace(base, seed=seed)))
                for eps in epsilons:
                    sample_seed = seed if cfg.sample_seed < 0 else cfg.sample_seed
                    path = _resolve(cfg.samples.format(dataset=dataset, eps=f"{eps:g}", seed=sample_seed))
                    source = DiffusionSource(path=str(path), sample_limit=cfg.sample_limit)
                    jobs.append(Job(algorithm, dataset, eps, seed, path,
                                    dataclasses.replace(base, seed=seed, diffusion=source, dp_epsilon=eps)))
    return jobs


def main() -> None:
    cfg = parse(AgentSweepConfig, description=__doc__)
    jobs = plan(cfg)
    results = []
    for i, job in enumerate(jobs, 1):
        agent_class, _ = get_algorithm(job.algorithm)
        out = run_dir(job.config, job.algorithm)
        label = f"[{i}/{len(jobs)}] {job.label}"
        if job.samples is not None and not job.samples.exists():
            if cfg.missing == "error":
                raise UserError(f"{job.samples}: sample file not found (for {job.label.strip()})")
            print(f"{label}: samples missing ({job.samples}), skipped")
            continue
        done = (out / "summary.json").exists()
        if cfg.dry_run:
            print(f"{label}: {'done' if done else 'to run'} -> {out}")
            continue
        if done:
            print(f"{label}: done, skipped")
            summary = json.loads((out / "summary.json").read_text())
        else:
            print(f"{label} -> {out}", flush=True)
            summary = train(job.config, agent_class)
        results.append({"algorithm": job.algorithm, "dataset": job.dataset, "dp_epsilon": job.eps,
                        "data": "real" if job.eps is None else "synthetic", "seed": job.seed,
                        "final": summary["final_normalized_score"], "best": summary["best_normalized_score"],
                        "last_k_mean": summary["last_k_mean_normalized_score"], "run_dir": summary["run_dir"]})
    if results:
        print(f"\n{'algorithm':<8} {'dataset':<34} {'data':<9} {'seed':>4} {'final':>7} {'last-k':>7} {'best':>7}")
        for r in results:
            data = "real" if r["dp_epsilon"] is None else f"eps{r['dp_epsilon']:g}"
            print(f"{r['algorithm']:<8} {r['dataset']:<34} {data:<9} {r['seed']:>4} {r['final']:>7.1f} "
                  f"{r['last_k_mean']:>7.1f} {r['best']:>7.1f}")
        root = Path(cfg.checkpoints_path) if cfg.checkpoints_path else runs_root()
        atomic_write_json(root / "results.json", results)


if __name__ == "__main__":
    run(main)
