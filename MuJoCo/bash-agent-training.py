"""Train offline RL agents over datasets × algorithms × ε × seeds on existing sample files, plus the real dataset
as the non-private reference; finished runs (summary.json present) are skipped, killed runs resume.

A front-end of MuJoCo/sweep.py's engine: each run is a job (a MuJoCo/<algorithm>.py subprocess logging to
<run folder>/job-agent.log) on a local process pool (--workers, default all cores; --cpus per run) or a Ray cluster
(--executor ray [--ray_address host:port]). A failed run is recorded in <checkpoints_path>/sweep_state.json and
does not stop the others. Each run uses config/agents/<algorithm>/<dataset>.yaml (CORL's per-env settings; the
algorithm's defaults when there is none) with the dataset, seed, samples and ε of the grid point. Samples are found
with --samples, by default the layout MuJoCo/bash-train-diffusion.py writes:
runs/diffusion/finetune-<dataset>-eps<ε>-seed<s>/samples.npz. Runs go to
<checkpoints_path>/<algorithm>-<dataset>-eps<ε>-seed<s> (and ...-real-seed<s>); a results table is printed at the
end and written to <checkpoints_path>/results.json.

  python MuJoCo/bash-agent-training.py --datasets ptr-maze2d-medium-dense-v0 --algorithms td3_bc,iql \\
      --epsilons 1,10 --seeds 0,1 --dry_run true
"""
import json
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from synther.agents import ALGORITHMS  # noqa: E402
from synther.cli import parse, run  # noqa: E402
from synther.errors import UserError  # noqa: E402
from synther.layout import eps_tag, repo_path, runs_root  # noqa: E402
from synther.sweep import SUCCESS, Job, agent_job, execute  # noqa: E402
from synther.utils.io import atomic_write_json  # noqa: E402
from synther.utils.options import comma_list  # noqa: E402


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
    threads: int = 0  # torch CPU threads per run (0: --cpus)
    cpus: int = 1  # CPU cores reserved per run (local pool slots, Ray num_cpus, OMP_NUM_THREADS)
    gpus: float = 0.0  # GPUs per run (Ray: num_gpus, fractions share a GPU)
    executor: str = "local"  # local (process pool on this machine) or ray
    ray_address: str = ""  # Ray cluster to join, host:port (empty with --executor ray: start a local Ray)
    workers: int = 0  # local: CPU slots, runs in parallel = workers / cpus (0: all cores)
    missing: str = "skip"  # a sample file that does not exist: 'skip' (listed as missing) or 'error'
    dry_run: bool = False  # print the plan (and what is done or missing) without training
    progress: bool = True  # progress bars (in each run's job-agent.log)


def agents_root(cfg: AgentSweepConfig) -> Path:
    default = runs_root() / "agents"
    root = Path(cfg.checkpoints_path) if cfg.checkpoints_path else default
    return root.expanduser().absolute()


def plan(cfg: AgentSweepConfig) -> tuple[list[Job], list[tuple[Job, Path]]]:
    """(jobs to run, jobs whose sample file is missing)."""
    try:
        epsilons = [float(e) for e in comma_list(cfg.epsilons)]
        seeds = [int(s) for s in comma_list(cfg.seeds)]
    except ValueError as e:
        raise UserError(f"--epsilons and --seeds must be comma-separated numbers ({e})") from None
    algorithms = comma_list(cfg.algorithms)
    for a in algorithms:
        if a not in ALGORITHMS:
            raise UserError(f"unknown algorithm '{a}' in --algorithms (choose from: {', '.join(ALGORITHMS)})")
    if cfg.missing not in ("skip", "error"):
        raise UserError(f"--missing must be 'skip' or 'error', got '{cfg.missing}'")
    if cfg.cpus < 1:
        raise UserError(f"--cpus must be ≥ 1, got {cfg.cpus}")
    common = dict(agents_dir=agents_root(cfg), python=sys.executable, config_dir=repo_path(cfg.config_dir),
                  max_timesteps=cfg.max_timesteps, eval_freq=cfg.eval_freq, n_episodes=cfg.n_episodes,
                  sample_limit=cfg.sample_limit, device=cfg.device, cpus=cfg.cpus, gpus=cfg.gpus,
                  threads=cfg.threads or cfg.cpus, progress=cfg.progress)
    jobs, missing = [], []
    for dataset in comma_list(cfg.datasets):
        for algorithm in algorithms:
            for seed in seeds:
                if cfg.real:
                    jobs.append(agent_job(algorithm=algorithm, dataset=dataset, seed=seed, **common))
                for eps in epsilons:
                    sample_seed = seed if cfg.sample_seed < 0 else cfg.sample_seed
                    path = repo_path(cfg.samples.format(dataset=dataset, eps=f"{eps:g}", seed=sample_seed))
                    job = agent_job(algorithm=algorithm, dataset=dataset, seed=seed, samples=path, epsilon=eps,
                                    **common)
                    if path.exists():
                        jobs.append(job)
                    elif cfg.missing == "error":
                        raise UserError(f"{path}: sample file not found (for {label(job)})")
                    else:
                        missing.append((job, path))
    return jobs, missing


def label(job: Job) -> str:
    eps = job.labels["epsilon"]
    data = "real" if eps is None else eps_tag(eps)
    return f"{job.labels['agent']:<7} {job.labels['dataset']} {data:<8} seed{job.labels['seed']}"


def main() -> None:
    cfg = parse(AgentSweepConfig, description=__doc__)
    jobs, missing = plan(cfg)
    for job, path in missing:
        print(f"{label(job)}: samples missing ({path}), skipped")
    if cfg.dry_run:
        for i, job in enumerate(jobs, 1):
            print(f"[{i}/{len(jobs)}] {label(job)}: {'done' if job.is_done() else 'to run'} -> {job.run_dir}")
        return
    root = agents_root(cfg)
    result = execute(jobs, cfg.executor, cfg.ray_address, cfg.workers, root / "sweep_state.json",
                     "bash-agent-training")
    results = []
    for job in jobs:
        if result.status.get(job.id) not in SUCCESS:
            continue
        summary = json.loads((job.run_dir / "summary.json").read_text())
        results.append({"algorithm": job.labels["agent"], "dataset": job.labels["dataset"],
                        "dp_epsilon": job.labels["epsilon"], "data": "real" if job.labels["epsilon"] is None
                        else "synthetic", "seed": job.labels["seed"], "final": summary["final_normalized_score"],
                        "best": summary["best_normalized_score"],
                        "last_k_mean": summary["last_k_mean_normalized_score"], "run_dir": summary["run_dir"]})
    if results:
        print(f"\n{'algorithm':<8} {'dataset':<34} {'data':<9} {'seed':>4} {'final':>7} {'last-k':>7} {'best':>7}")
        for r in results:
            data = "real" if r["dp_epsilon"] is None else eps_tag(r["dp_epsilon"])
            print(f"{r['algorithm']:<8} {r['dataset']:<34} {data:<9} {r['seed']:>4} {r['final']:>7.1f} "
                  f"{r['last_k_mean']:>7.1f} {r['best']:>7.1f}")
        atomic_write_json(root / "results.json", results)
    if not result.ok:
        sys.exit(1)


if __name__ == "__main__":
    run(main)
