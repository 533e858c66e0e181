"""DP tabular baselines over datasets × methods × ε × seeds: synthesize, score fidelity, train offline-RL agents.

A front-end of MuJoCo/sweep.py's engine. For each grid point, three kinds of job (skipping what is finished):
  1. baseline  MuJoCo/baselines.py: samples.npz + samples.json (privacy ledger) in
               <runs_dir>/baselines/<method>-<dataset>-eps<ε>-seed<s>/
  2. fidelity  MuJoCo/marginal.py against the sensitive dataset: <runs_dir>/evaluation/fidelity-<method>-...
  3. agent     each --algorithms agent trained ONLY on the samples (config/agents/<algo>/<dataset>.yaml):
               <runs_dir>/agents/<algo>-<dataset>-<method>-eps<ε>-seed<s>/summary.json
Jobs run on a local process pool (--workers, default all cores; --cpus per job) or a Ray cluster (--executor ray
[--ray_address host:port]); each logs to <run folder>/job-<kind>.log. A failed grid point (e.g. ε too small for a
method's budget) is recorded in <runs_dir>/sweep_state.json and blocks only its own fidelity and agent jobs.
At the end the tables (utility, fidelity, ledger) are printed and written to <runs_dir>/baselines/report/.

  python MuJoCo/bash-baselines-agent-training.py --datasets ptr-maze2d-umaze-dense-v0 --methods mst,aim,dpctgan \\
      --epsilons 1,10 --seeds 0 --max_timesteps 20000 --eval_freq 5000 --n_episodes 10
  python MuJoCo/bash-baselines-agent-training.py --dry_run true     # the plan and what is done
"""
import dataclasses
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from synther.baselines import METHODS, GANConfig, MarginalConfig  # noqa: E402
from synther.cli import parse, run  # noqa: E402
from synther.errors import UserError  # noqa: E402
from synther.report import (  # noqa: E402
    collect,
    fidelity_markdown,
    fidelity_rows,
    ledger_markdown,
    ledger_rows,
    utility_markdown,
    utility_rows,
    write_report,
)
from synther.sweep import (  # noqa: E402
    Budgets,
    ExtraArgs,
    KindResources,
    Resources,
    SweepConfig,
    execute,
    plan,
    runs_root,
)
from synther.utils.options import comma_list  # noqa: E402


@dataclass
class BaselineSweepConfig:
    datasets: str = "ptr-maze2d-umaze-dense-v0"  # comma-separated sensitive datasets (registry names or paths)
    methods: str = "mst,aim,dpctgan,patectgan"  # comma-separated baselines: mst, aim, dpctgan, patectgan
    epsilons: str = "1,10"  # comma-separated target ε
    seeds: str = "0"  # comma-separated seeds (split, synthesizer and agent)
    delta: float = 1e-6  # target δ of every run
    num_samples: int = 100_000  # synthetic transitions per run
    public_datasets: str = ""  # comma-separated public datasets for bin edges and bounds; empty: config/diffusion/pairs.yaml
    marginal: MarginalConfig = field(default_factory=MarginalConfig)  # MST / AIM settings (see MuJoCo/baselines.py --help)
    gan: GANConfig = field(default_factory=GANConfig)  # DP-CTGAN / PATE-CTGAN settings
    algorithms: str = "td3_bc"  # comma-separated agents trained on each sample file (empty: none)
    config_dir: str = "config/agents"  # per-dataset agent YAML: <config_dir>/<algorithm>/<dataset>.yaml
    max_timesteps: int = 0  # override the agents' updates (0: the YAML's)
    eval_freq: int = 0  # override the evaluation interval (0: the YAML's)
    n_episodes: int = 0  # override the episodes per evaluation (0: the YAML's)
    fidelity_rows: int = 0  # score fidelity on at most this many rows of each side (0: all)
    dynamics: bool = True  # fidelity also steps the simulator (dynamics error; PointMaze and MuJoCo locomotion)
    runs_dir: str = ""  # sweep root (empty: $PRIVTRANR_RUNS_DIR, else runs)
    device: str = "auto"  # agents: auto (CUDA when available), cpu or cuda
    cpus: int = 1  # CPU cores per job (torch threads inside it)
    gpus: float = 0.0  # GPUs per agent job (Ray: num_gpus)
    executor: str = "local"  # local (process pool on this machine) or ray
    ray_address: str = ""  # Ray cluster to join, host:port (empty with --executor ray: start a local Ray)
    workers: int = 0  # local: CPU slots, jobs in parallel = workers / cpus (0: all cores)
    dry_run: bool = False  # print the plan (and what is done) without running anything
    progress: bool = True  # progress bars (in each job's log)


def _flags(prefix: str, cfg: object) -> list[str]:
    """The settings of a nested dataclass that differ from its defaults, as baselines.py flags (--marginal.bins 20)."""
    out, default = [], type(cfg)()
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if v == getattr(default, f.name):
            continue
        value = "[" + ",".join(map(str, v)) + "]" if isinstance(v, list) else str(v)
        out += [f"--{prefix}.{f.name}", value]
    return out


def sweep_config(cfg: BaselineSweepConfig) -> SweepConfig:
    try:
        epsilons = [float(e) for e in comma_list(cfg.epsilons)]
        seeds = [int(s) for s in comma_list(cfg.seeds)]
    except ValueError as e:
        raise UserError(f"--epsilons and --seeds must be comma-separated numbers ({e})") from None
    methods = comma_list(cfg.methods)
    for m in methods:
        if m not in METHODS:
            raise UserError(f"unknown method '{m}' in --methods (choose from: {', '.join(METHODS)})")
    if cfg.cpus < 1:
        raise UserError(f"--cpus must be ≥ 1, got {cfg.cpus}")
    datasets = comma_list(cfg.datasets)
    public = {d: comma_list(cfg.public_datasets) for d in datasets} if cfg.public_datasets else {}
    res = Resources(cpus=cfg.cpus)
    baseline_flags = [*_flags("marginal", cfg.marginal), *_flags("gan", cfg.gan), "--threads", str(cfg.cpus)]
    fidelity_flags = ["--max_rows", str(cfg.fidelity_rows)] if cfg.fidelity_rows else []
    return SweepConfig(
        name="bash-baselines-agent-training", datasets=datasets, public=public, methods=methods, epsilons=epsilons,
        delta=cfg.delta, seeds=seeds, agents=comma_list(cfg.algorithms), real_reference=False,
        evaluations=["fidelity"], fidelity_dynamics=cfg.dynamics, agent_config_dir=cfg.config_dir,
        runs_dir=cfg.runs_dir, device=cfg.device, progress=cfg.progress,
        budgets=Budgets(num_samples=cfg.num_samples, agent_max_timesteps=cfg.max_timesteps,
                        agent_eval_freq=cfg.eval_freq, agent_n_episodes=cfg.n_episodes),
        resources=KindResources(baseline=res, fidelity=res, agent=Resources(cpus=cfg.cpus, gpus=cfg.gpus)),
        extra_args=ExtraArgs(baseline=shlex.join(baseline_flags), fidelity=shlex.join(fidelity_flags)),
        executor=cfg.executor, ray_address=cfg.ray_address, workers=cfg.workers, dry_run=cfg.dry_run)


def main() -> None:
    sweep = sweep_config(parse(BaselineSweepConfig, description=__doc__))
    jobs = plan(sweep)
    root = runs_root(sweep)
    result = execute(jobs, sweep.executor, sweep.ray_address, sweep.workers, root / "sweep_state.json", sweep.name,
                     sweep.dry_run)
    if result is None:
        return
    results = collect(root)
    # only this driver's methods: the sweep root may also hold PrivTranR runs
    util = [r for r in utility_rows(results) if r["method"] in METHODS]
    fid = [r for r in fidelity_rows(results) if r["method"] in METHODS]
    led = [r for r in ledger_rows(results) if r["method"] in METHODS]
    print("\n" + "\n\n".join(t for t in (utility_markdown(util), fidelity_markdown(fid), ledger_markdown(led)) if t))
    out = root / "baselines" / "report"
    write_report(results, out, plots=True, source=str(root))
    print(f"\nreport: {out / 'report.md'}")
    if not result.ok:
        sys.exit(1)


if __name__ == "__main__":
    run(main)
