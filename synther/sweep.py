"""Sweeps: the whole evaluation grid as a graph of jobs, run by a local process pool or a Ray cluster.

    plan(SweepConfig) -> [Job]       expand datasets × methods × ε × seeds × agents into jobs with dependencies
    run_jobs(jobs, executor, state)  run them in dependency order; skip finished ones; record failures

Jobs and what marks them finished (so a re-run skips them and runs only what is missing):

    pretrain   train_diffuser.py --mode pretrain   checkpoint.pt whose step reached its total (per public sets, seed)
    finetune   train_diffuser.py --mode finetune   checkpoint.pt whose step reached its total (per dataset, ε, seed)
    sample     train_diffuser.py --mode sample     samples.npz (written next to the fine-tuned checkpoint)
    baseline   baselines.py --method <m>           samples.npz
    agent      <algorithm>.py                      summary.json
    fidelity   marginal.py                         fidelity.json
    mia        mia.py                              mia.json

Each job is a subprocess of the thin MuJoCo/ script with explicit flags, so a job is isolated, resumable (the
script resumes from its own checkpoint) and the same under any executor. Its stdout and stderr go to
<run folder>/job-<kind>.log (fine-tuning and sampling share a folder). Run folders under the sweep root
(`runs_dir`, default $PRIVTRANR_RUNS_DIR or runs/):

    diffusion/pretrain-<public a+b+c>-seed<s>/
    diffusion/pretrain-<public a+b+c>[-curiosity]-seed<s>/ (+ samples.npz for the ladder's public rungs)
    diffusion/finetune-<dataset>-eps<ε>-seed<s>/          checkpoint.pt, ledger.json, samples.npz, samples.json
    diffusion/finetune-<dataset>-nodp-seed<s>/            the ladder's non-private fine-tune (NOT a private release)
    baselines/<method>-<dataset>-eps<ε>-seed<s>/          samples.npz, samples.json
    agents/<algorithm>-<dataset>-eps<ε>-seed<s>/          on PrivTranR's samples (the agent scripts' default name)
    agents/<algorithm>-<dataset>-<method>-eps<ε>-seed<s>/ trained on a baseline's samples
    agents/<algorithm>-<dataset>-real-seed<s>/            the real-data reference
    agents/<algorithm>-<dataset>-<rung>-seed<s>/          a ladder rung's samples (nodp, public, public_curiosity)
    evaluation/fidelity-<method>-<dataset>[-eps<ε>]-seed<s>/fidelity.json
    evaluation/mia-privtranr-<dataset>-eps<ε>-seed<s>/mia.json (+ audit.json)
    sweep_state.json                                       every job's last status, exit code, log tail, attempts

Executors: `LocalExecutor` (a pool of CPU slots, default the number of cores; each job gets OMP_NUM_THREADS = its
cpus) and `RayExecutor` (one remote task per job with num_cpus/num_gpus; the driver launches a job once its
dependencies have succeeded). Under Ray, every node must have the repository and the Python environment at the same
paths as the driver, and the sweep root on a shared filesystem at the same path: jobs write their run folders
there and the driver checks them.
"""
import json
import math
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol


from synther import layout
from synther.agents import ALGORITHMS
from synther.errors import UserError
from synther.utils.io import atomic_write_json
from synther.utils.locks import FolderLock

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("pretrain", "finetune", "sample", "baseline", "agent", "fidelity", "mia")
BASELINES = ("mst", "aim", "dpctgan", "patectgan")
# the utility ladder's rungs besides real data and DP fine-tuning, none of them private release methods:
#   nodp              the diffusion model fine-tuned on the sensitive data WITHOUT DP (SynthER's upper bound)
#   public            the pre-trained model alone, never shown the sensitive data
#   public_curiosity  the same with curiosity-driven pre-training
LADDER = ("nodp", "public", "public_curiosity")
METHODS = ("privtranr",) + LADDER + BASELINES
EVALUATIONS = ("fidelity", "mia")
# finished = the job will not be run again; failed/blocked/interrupted = it will on the next run
SUCCESS = ("done", "skipped")
# variables that say where data and runs live: forwarded to jobs on every executor (Ray nodes have their own env)
FORWARDED_ENV = ("PRIVTRANR_DATA_DIR", "PRIVTRANR_RUNS_DIR", "D4RL_DATASET_DIR", "MINARI_DATASETS_PATH", "MPLBACKEND")


# --- configuration -------------------------------------------------------------------------------------------
@dataclass
class Resources:
    cpus: int = 1  # CPU cores per job: the local pool counts them, Ray reserves them, OMP_NUM_THREADS is set to them
    gpus: float = 0.0  # GPUs per job (Ray: num_gpus, fractions share a GPU; local: counted against the visible GPUs)


@dataclass
class KindResources:
    pretrain: Resources = field(default_factory=Resources)  # public pre-training
    finetune: Resources = field(default_factory=Resources)  # DP fine-tuning
    sample: Resources = field(default_factory=Resources)  # sampling samples.npz
    baseline: Resources = field(default_factory=Resources)  # a DP tabular baseline
    agent: Resources = field(default_factory=Resources)  # one offline RL agent run (also its --threads)
    fidelity: Resources = field(default_factory=Resources)  # fidelity scores
    mia: Resources = field(default_factory=Resources)  # membership inference (and audit)


@dataclass
class Budgets:
    pretrain_epochs: float = 10.0  # epochs of public pre-training (paper: 10; a train.max_steps in the diffusion config wins)
    finetune_epochs: float = 5.0  # epochs of DP fine-tuning (paper: 5)
    num_samples: int = 0  # synthetic transitions per (method, dataset, ε, seed) (0: the diffusion config's num_samples; paper: 1M)
    agent_max_timesteps: int = 0  # agent gradient updates (0: the agent YAML's; PrivORL: 500k)
    agent_eval_freq: int = 0  # evaluate every this many updates (0: the agent YAML's)
    agent_n_episodes: int = 0  # episodes per evaluation (0: the agent YAML's; PrivORL: 100 on maze2d)
    agent_sample_limit: int = -1  # agents use at most this many synthetic rows (-1: all)


@dataclass
class ExtraArgs:
    pretrain: str = ""  # extra flags for every pre-training command, e.g. "--width 32 --depth 2"
    finetune: str = ""  # extra flags for every fine-tuning command, e.g. "--dp.accountant prv"
    sample: str = ""  # extra flags for every sampling command, e.g. "--sampler.steps 32"
    baseline: str = ""  # extra flags for every baselines.py command
    agent: str = ""  # extra flags for every agent command, e.g. "--hidden_dim 64"
    fidelity: str = ""  # extra flags for every marginal.py command
    mia: str = ""  # extra flags for every mia.py command


@dataclass
class Layout:
    diffusion: str = ""  # folder of pre-training/fine-tuning/sample runs (empty: <runs_dir>/diffusion)
    baselines: str = ""  # folder of baseline sample runs (empty: <runs_dir>/baselines)
    agents: str = ""  # folder of agent runs (empty: <runs_dir>/agents)
    evaluation: str = ""  # folder of fidelity/MIA runs (empty: <runs_dir>/evaluation)
    state: str = ""  # the sweep state file (empty: <runs_dir>/sweep_state.json)


@dataclass
class SweepConfig:
    name: str = "sweep"  # a label recorded in the state file
    datasets: list[str] = field(default_factory=lambda: ["ptr-maze2d-medium-dense-v0"])  # sensitive datasets (registry names or paths)
    public: dict[str, list[str]] = field(default_factory=dict)  # sensitive dataset -> its public datasets, overriding the pairs file
    pairs: str = "config/diffusion/pairs.yaml"  # default public datasets of each sensitive dataset
    methods: list[str] = field(default_factory=lambda: ["privtranr"])  # privtranr, baselines (mst, aim, dpctgan, patectgan) and/or the utility ladder's non-private rungs: nodp (fine-tuned without DP), public (pre-trained only), public_curiosity
    epsilons: list[float] = field(default_factory=lambda: [1.0, 5.0, 10.0, 15.0, 20.0])  # target ε values
    delta: float = 1e-6  # target δ of every method
    seeds: list[int] = field(default_factory=lambda: [0])  # seeds: diffusion/baseline seed s feeds the agents of seed s
    agents: list[str] = field(default_factory=lambda: ["td3_bc", "iql"])  # offline RL algorithms: td3_bc, iql, cql, awac, edac (empty: none)
    real_reference: bool = True  # also train every agent on the real sensitive data (the non-private reference)
    evaluations: list[str] = field(default_factory=lambda: ["fidelity", "mia"])  # fidelity (all methods) and/or mia (PrivTranR checkpoints)
    fidelity_dynamics: bool = False  # fidelity: also score the dynamics error (marginal.py --dynamics)
    mia_audit: bool = False  # mia: also run the canary audit for an empirical ε lower bound (mia.py --audit)
    diffusion_config: str = "config/diffusion/maze2d-quickstart.yaml"  # DiffusionConfig YAML for pre-training, fine-tuning and sampling
    agent_config_dir: str = "config/agents"  # agent YAML: <dir>/<algorithm>/<dataset>.yaml (algorithm defaults when missing)
    budgets: Budgets = field(default_factory=Budgets)  # epochs, samples and agent updates
    resources: KindResources = field(default_factory=KindResources)  # cpus/gpus per job kind
    extra_args: ExtraArgs = field(default_factory=ExtraArgs)  # extra command-line flags per job kind
    layout: Layout = field(default_factory=Layout)  # where each kind's run folders go
    runs_dir: str = ""  # sweep root (empty: $PRIVTRANR_RUNS_DIR, else runs/)
    device: str = "auto"  # --device of every job: auto (CUDA when available), cpu or cuda
    progress: bool = False  # progress bars inside the jobs' logs
    python: str = ""  # interpreter that runs the jobs (empty: this one); the same path must exist on every Ray node
    executor: str = "local"  # local (process pool on this machine) or ray
    ray_address: str = ""  # Ray cluster to join, host:port (empty with --executor ray: start a local Ray)
    workers: int = 0  # local: CPU slots (0: all cores); ray without an address: CPUs of the local Ray (0: all)
    dry_run: bool = False  # print the jobs, what is finished and their commands, without running anything


def _blank(value: Any) -> str:
    """pyrallis reads an empty command-line value as None or 'None'."""
    return "" if value is None or value == "None" else str(value)


def runs_root(cfg: SweepConfig) -> Path:
    return layout.runs_root(_blank(cfg.runs_dir)).expanduser().resolve()


def layout_dirs(cfg: SweepConfig) -> dict[str, Path]:
    root = runs_root(cfg)
    out = {}
    for kind in ("diffusion", "baselines", "agents", "evaluation"):
        given = _blank(getattr(cfg.layout, kind))
        out[kind] = Path(given).expanduser().resolve() if given else root / kind
    state = _blank(cfg.layout.state)
    out["state"] = Path(state).expanduser().resolve() if state else root / "sweep_state.json"
    return out


def eps_tag(eps: float) -> str:
    return f"eps{eps:g}"


def dataset_tag(dataset: str) -> str:
    """The dataset part of folder names: as synther.agents.trainer.run_name writes it (a path's stem)."""
    return dataset.replace("/", "_") if not Path(dataset).suffix else Path(dataset).stem


def _dataset_arg(dataset: str) -> str:
    """Jobs run from the repository root: a dataset given as an existing relative path is made absolute."""
    p = Path(dataset).expanduser()
    return str(p.resolve()) if Path(dataset).suffix and p.exists() else dataset


# --- jobs ----------------------------------------------------------------------------------------------------
@dataclass
class Job:
    id: str  # unique, '<kind>/<run folder name>'
    kind: str  # one of KINDS (tests and tools may use others, with `outputs` saying what marks them finished)
    run_dir: Path
    command: list[str]
    deps: list[str] = field(default_factory=list)
    cpus: int = 1
    gpus: float = 0.0
    outputs: tuple[str, ...] = ()  # files in run_dir whose presence marks the job finished
    labels: dict[str, Any] = field(default_factory=dict)  # dataset, method, epsilon, seed, agent
    finished: Callable[[Path], bool] | None = None  # a further test on run_dir once the outputs exist

    @property
    def log(self) -> Path:
        return self.run_dir / f"job-{self.kind}.log"

    def is_done(self) -> bool:
        if not self.outputs or not all((self.run_dir / f).exists() for f in self.outputs):
            return False
        return self.finished is None or self.finished(self.run_dir)


def training_finished(run_dir: Path) -> bool:
    """A diffusion run whose checkpoint reached its last step (the trainer writes checkpoints mid-run too)."""
    import torch  # only here: planning and dry runs do not need it

    try:
        state = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False, mmap=True)
        return int(state["step"]) >= int(state["total_steps"])
    except Exception:  # unreadable or foreign file: not finished, the job re-runs and its script reports it
        return False


def _diffusion_script() -> str:
    return str(ROOT / "MuJoCo" / "train_diffuser.py")


def _common_diffusion(cfg: SweepConfig, diffusion_config: Path) -> list[str]:
    return ["--config_path", str(diffusion_config), "--device", cfg.device, "--progress", str(cfg.progress).lower()]


def _extra(cfg: SweepConfig, kind: str) -> list[str]:
    return shlex.split(_blank(getattr(cfg.extra_args, kind)))


def _res(cfg: SweepConfig, kind: str) -> dict[str, Any]:
    r: Resources = getattr(cfg.resources, kind)
    if r.cpus < 1 or r.gpus < 0:
        raise UserError(f"resources.{kind}: cpus must be ≥ 1 and gpus ≥ 0, got cpus={r.cpus}, gpus={r.gpus}")
    return {"cpus": r.cpus, "gpus": r.gpus}


def agent_run_name(algorithm: str, dataset: str, seed: int, method: str = "privtranr",
                   epsilon: float | None = None) -> str:
    """Agent folder name: the agent scripts' default (<algo>-<dataset>-eps<ε>|real-seed<s>) for PrivTranR and real
    data (method 'real'); baselines put their method before ε so they never collide with PrivTranR's runs; a
    ladder rung without ε is named by itself."""
    if method == "real":
        data = "real"
    elif epsilon is None:
        data = method
    else:
        data = eps_tag(epsilon) if method == "privtranr" else f"{method}-{eps_tag(epsilon)}"
    return f"{algorithm}-{dataset_tag(dataset)}-{data}-seed{seed}"



def agent_job(*, algorithm: str, dataset: str, seed: int, agents_dir: Path, python: str, config_dir: Path,
              samples: Path | None = None, epsilon: float | None = None, method: str = "privtranr",
              deps: list[str] | None = None, max_timesteps: int = 0, eval_freq: int = 0, n_episodes: int = 0,
              sample_limit: int = -1, device: str = "auto", cpus: int = 1, gpus: float = 0.0,
              threads: int | None = None, progress: bool = False, extra: list[str] | None = None) -> Job:
    """One agent run: real data when `samples` is None, else ONLY the samples (ε recorded in its summary)."""
    if algorithm not in ALGORITHMS:
        raise UserError(f"unknown agent '{algorithm}' (choose from: {', '.join(ALGORITHMS)})")
    name = agent_run_name(algorithm, dataset, seed, method if samples is not None else "real", epsilon)
    cmd = [python, str(ROOT / "MuJoCo" / f"{algorithm}.py")]
    yaml_path = config_dir / algorithm / f"{dataset_tag(dataset)}.yaml"
    if yaml_path.exists():
        cmd += ["--config_path", str(yaml_path)]
    cmd += ["--dataset", _dataset_arg(dataset), "--seed", str(seed), "--checkpoints_path", str(agents_dir),
            "--name", name, "--device", device, "--threads", str(cpus if threads is None else threads),
            "--progress", str(progress).lower()]
    for flag, value in (("--max_timesteps", max_timesteps), ("--eval_freq", eval_freq), ("--n_episodes", n_episodes)):
        if value:
            cmd += [flag, str(value)]
    if samples is not None:
        cmd += ["--diffusion.path", str(samples), "--diffusion.sample_limit", str(sample_limit)]
        if epsilon is not None:
            cmd += ["--dp_epsilon", f"{epsilon:g}"]
    labels = {"dataset": dataset, "method": method if samples is not None else "real", "epsilon": epsilon,
              "seed": seed, "agent": algorithm}
    return Job(f"agent/{name}", "agent", agents_dir / name, cmd + list(extra or []), list(deps or []), cpus, gpus,
               ("summary.json",), labels)


def _validate(cfg: SweepConfig) -> None:
    if not cfg.datasets:
        raise UserError("datasets: give at least one sensitive dataset")
    for m in cfg.methods:
        if m not in METHODS:
            raise UserError(f"methods: unknown method '{m}' (choose from: {', '.join(METHODS)})")
    if any(m in LADDER for m in cfg.methods) and not set(cfg.methods) - set(LADDER):
        raise UserError("methods: the ladder rungs (nodp, public, public_curiosity) are references for a private "
                        "method: add privtranr or a baseline")
    for a in cfg.agents:
        if a not in ALGORITHMS:
            raise UserError(f"agents: unknown agent '{a}' (choose from: {', '.join(ALGORITHMS)})")
    for e in cfg.evaluations:
        if e not in EVALUATIONS:
            raise UserError(f"evaluations: unknown evaluation '{e}' (choose from: {', '.join(EVALUATIONS)})")
    for eps in cfg.epsilons:
        if not (eps > 0 and math.isfinite(eps)):
            raise UserError(f"epsilons: every ε must be positive and finite, got {eps}")
    if not 0 < cfg.delta < 1:
        raise UserError(f"delta must be in (0, 1), got {cfg.delta}")
    if set(cfg.methods) - set(LADDER) and not cfg.epsilons:
        raise UserError("epsilons: give at least one ε (or no methods)")
    if not cfg.seeds:
        raise UserError("seeds: give at least one seed")
    if len(set(cfg.seeds)) != len(cfg.seeds) or len(set(cfg.epsilons)) != len(cfg.epsilons):
        raise UserError("seeds and epsilons must not repeat")
    if cfg.executor not in ("local", "ray"):
        raise UserError(f"executor must be 'local' or 'ray', got '{cfg.executor}'")
    if cfg.workers < 0:
        raise UserError(f"workers must be ≥ 0, got {cfg.workers}")


def public_sets(cfg: SweepConfig) -> dict[str, list[str]]:
    return {ds: [_dataset_arg(p) for p in (cfg.public.get(ds) or layout.public_datasets_for(
        ds, cfg.pairs, or_else="to the sweep's 'public' mapping"))] for ds in cfg.datasets}


def plan(cfg: SweepConfig) -> list[Job]:
    """Every job of the grid, each after its dependencies. A pre-training shared by several datasets (same public
    sets and seed) appears once."""
    _validate(cfg)
    dirs = layout_dirs(cfg)
    py = _blank(cfg.python) or sys.executable
    budgets = cfg.budgets
    jobs: dict[str, Job] = {}

    def add(job: Job) -> Job:
        return jobs.setdefault(job.id, job)

    diffusion_config = layout.repo_path(cfg.diffusion_config)
    privtranr = "privtranr" in cfg.methods
    if {"privtranr", *LADDER} & set(cfg.methods) and not diffusion_config.exists():
        raise UserError(f"diffusion_config: {cfg.diffusion_config} not found")
    # baselines take their bin edges and bounds from the same public sets PrivTranR pre-trains on
    public = public_sets(cfg) if cfg.methods else {}
    num_samples = ["--num_samples", str(budgets.num_samples)] if budgets.num_samples > 0 else []
    if num_samples == [] and any(m in BASELINES for m in cfg.methods):
        raise UserError("budgets.num_samples: the baselines need an explicit number of samples")
    config_dir = layout.repo_path(cfg.agent_config_dir)
    agent_opts = dict(agents_dir=dirs["agents"], python=py, config_dir=config_dir,
                      max_timesteps=budgets.agent_max_timesteps, eval_freq=budgets.agent_eval_freq,
                      n_episodes=budgets.agent_n_episodes, sample_limit=budgets.agent_sample_limit, device=cfg.device,
                      progress=cfg.progress, extra=_extra(cfg, "agent"), **_res(cfg, "agent"))

    def pretrain_job(pre_dir: Path, flags: list[str], ds: str, seed: int) -> Job:
        return Job(f"pretrain/{pre_dir.name}", "pretrain", pre_dir, [
            py, _diffusion_script(), *_common_diffusion(cfg, diffusion_config), "--mode", "pretrain",
            "--public_datasets", ",".join(public[ds]), "--seed", str(seed), "--run_dir", str(pre_dir),
            "--train.epochs", f"{budgets.pretrain_epochs:g}", *flags, *_extra(cfg, "pretrain")],
            [], outputs=("checkpoint.pt",), labels={"public": public[ds], "seed": seed}, finished=training_finished,
            **_res(cfg, "pretrain"))

    def sample_job(model_dir: Path, out_dir: Path, dep: str, labels: dict[str, Any]) -> Job:
        return Job(f"sample/{out_dir.name}", "sample", out_dir, [
            py, _diffusion_script(), *_common_diffusion(cfg, diffusion_config), "--mode", "sample",
            "--load_checkpoint", str(model_dir / "checkpoint.pt"), *num_samples, "--seed", str(labels["seed"]),
            "--run_dir", str(out_dir), *_extra(cfg, "sample")],
            [dep], outputs=("samples.npz",), labels=labels, **_res(cfg, "sample"))

    for seed in cfg.seeds:
        for ds in cfg.datasets:
            tag = dataset_tag(ds)
            sources = []  # (method, ε, samples path, id of the job that writes them)
            public_tag = "+".join(Path(p).stem for p in public.get(ds, []))
            if privtranr or {"nodp", "public"} & set(cfg.methods):
                pre_dir = dirs["diffusion"] / f"pretrain-{public_tag}-seed{seed}"
                pre = add(pretrain_job(pre_dir, [], ds, seed))
            if "public_curiosity" in cfg.methods:
                cur_dir = dirs["diffusion"] / f"pretrain-{public_tag}-curiosity-seed{seed}"
                cur = add(pretrain_job(cur_dir, ["--curiosity.mode", "reweight"], ds, seed))
            for method in (m for m in ("public", "public_curiosity") if m in cfg.methods):
                src_dir, src = (pre_dir, pre) if method == "public" else (cur_dir, cur)
                sm = add(sample_job(src_dir, src_dir, src.id, {"dataset": ds, "method": method, "epsilon": None,
                                                               "seed": seed}))
                sources.append((method, None, src_dir / "samples.npz", sm.id))
            for method, eps in ([("nodp", None)] if "nodp" in cfg.methods else []) + \
                    ([("privtranr", e) for e in cfg.epsilons] if privtranr else []):
                private = method == "privtranr"
                ft_dir = dirs["diffusion"] / f"finetune-{tag}-{eps_tag(eps) if private else 'nodp'}-seed{seed}"
                labels = {"dataset": ds, "method": method, "epsilon": eps, "seed": seed}
                privacy = ["--dp.epsilon", f"{eps:g}", "--dp.delta", f"{cfg.delta:g}"] if private else \
                    ["--dp.enabled", "false"]
                ft = add(Job(f"finetune/{ft_dir.name}", "finetune", ft_dir, [
                    py, _diffusion_script(), *_common_diffusion(cfg, diffusion_config), "--mode", "finetune",
                    "--dataset", _dataset_arg(ds), *privacy,
                    "--load_checkpoint", str(pre_dir / "checkpoint.pt"), "--seed", str(seed),
                    "--run_dir", str(ft_dir), "--train.epochs", f"{budgets.finetune_epochs:g}",
                    *_extra(cfg, "finetune")], [pre.id], outputs=("checkpoint.pt",), labels=labels,
                    finished=training_finished, **_res(cfg, "finetune")))
                sm = add(sample_job(ft_dir, ft_dir, ft.id, labels))
                sources.append((method, eps, ft_dir / "samples.npz", sm.id))
                if "mia" in cfg.evaluations and private:
                    mia_dir = dirs["evaluation"] / f"mia-privtranr-{tag}-{eps_tag(eps)}-seed{seed}"
                    add(Job(f"mia/{mia_dir.name}", "mia", mia_dir, [
                        py, str(ROOT / "MuJoCo" / "mia.py"), "--checkpoint", str(ft_dir / "checkpoint.pt"),
                        "--out_dir", str(mia_dir), "--audit", str(cfg.mia_audit).lower(), *_extra(cfg, "mia")],
                        [ft.id], outputs=("mia.json",), labels=labels, **_res(cfg, "mia")))
            for method in (m for m in cfg.methods if m in BASELINES):
                for eps in cfg.epsilons:
                    b_dir = dirs["baselines"] / f"{method}-{tag}-{eps_tag(eps)}-seed{seed}"
                    b = add(Job(f"baseline/{b_dir.name}", "baseline", b_dir, [
                        py, str(ROOT / "MuJoCo" / "baselines.py"), "--method", method, "--dataset", _dataset_arg(ds),
                        "--epsilon", f"{eps:g}", "--delta", f"{cfg.delta:g}", "--num_samples",
                        str(budgets.num_samples), "--seed", str(seed), "--run_dir", str(b_dir),
                        "--public_datasets", ",".join(public[ds]),
                        *_extra(cfg, "baseline")], [], outputs=("samples.npz",),
                        labels={"dataset": ds, "method": method, "epsilon": eps, "seed": seed},
                        **_res(cfg, "baseline")))
                    sources.append((method, eps, b_dir / "samples.npz", b.id))
            for method, eps, samples, source_id in sources:
                labels = {"dataset": ds, "method": method, "epsilon": eps, "seed": seed}
                if "fidelity" in cfg.evaluations:
                    eps_part = "" if eps is None else f"-{eps_tag(eps)}"  # ladder rungs have no ε
                    f_dir = dirs["evaluation"] / f"fidelity-{method}-{tag}{eps_part}-seed{seed}"
                    add(Job(f"fidelity/{f_dir.name}", "fidelity", f_dir, [
                        py, str(ROOT / "MuJoCo" / "marginal.py"), "--real", _dataset_arg(ds), "--synthetic",
                        str(samples), "--out_dir", str(f_dir), "--dynamics", str(cfg.fidelity_dynamics).lower(),
                        *_extra(cfg, "fidelity")], [source_id], outputs=("fidelity.json",), labels=labels,
                        **_res(cfg, "fidelity")))
                for algorithm in cfg.agents:
                    add(agent_job(algorithm=algorithm, dataset=ds, seed=seed, samples=samples, epsilon=eps,
                                  method=method, deps=[source_id], **agent_opts))
            if cfg.real_reference:
                for algorithm in cfg.agents:
                    add(agent_job(algorithm=algorithm, dataset=ds, seed=seed, **agent_opts))
    return topological_order(list(jobs.values()))


def topological_order(jobs: list[Job]) -> list[Job]:
    """Jobs with each after its dependencies, otherwise in the given order; rejects unknown deps and cycles."""
    by_id: dict[str, Job] = {}
    for job in jobs:
        if job.id in by_id:
            raise ValueError(f"duplicate job id {job.id}")
        by_id[job.id] = job
    for job in jobs:
        for d in job.deps:
            if d not in by_id:
                raise ValueError(f"job {job.id} depends on unknown job {d}")
    order: list[Job] = []
    state: dict[str, int] = {}  # 1 visiting, 2 placed

    def visit(job: Job, path: tuple[str, ...]) -> None:
        if state.get(job.id) == 2:
            return
        if state.get(job.id) == 1:
            raise ValueError(f"dependency cycle: {' -> '.join(path + (job.id,))}")
        state[job.id] = 1
        for d in job.deps:
            visit(by_id[d], path + (job.id,))
        state[job.id] = 2
        order.append(job)

    for job in jobs:
        visit(job, ())
    return order


# --- running one job -------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    returncode: int  # negative: killed by that signal
    seconds: float
    tail: list[str]  # last lines of the job's log
    node: str = ""


def job_env(cpus: int, overrides: dict[str, str] | None = None) -> dict[str, str]:
    """A job's environment: this process's (on Ray: the worker's) + thread limits + `overrides`."""
    env = dict(os.environ)
    # torch/numpy threads = the job's cores: two multi-threaded torch processes on the same cores collapse ~100×
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(cpus)
    env["PYTHONUNBUFFERED"] = "1"
    return {**env, **(overrides or {})}


def forwarded_env() -> dict[str, str]:
    return {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}


def log_tail(path: Path, lines: int = 20) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    # progress bars rewrite their line with \r: keep the last state of each line
    out = [ln.rsplit("\r", 1)[-1].rstrip() for ln in text.splitlines()]
    return [ln for ln in out if ln.strip()][-lines:]


def _start_process(command: list[str], log: Path, env: dict[str, str]) -> tuple[subprocess.Popen, Any]:
    log.parent.mkdir(parents=True, exist_ok=True)
    f = open(log, "a")
    f.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} on {socket.gethostname()}: {shlex.join(command)}\n")
    f.flush()
    # own session: Ctrl-C in the terminal reaches the driver only, which then stops each job's process group
    proc = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=ROOT,
                            start_new_session=True, preexec_fn=_die_with(os.getpid()))
    return proc, f


def _die_with(driver_pid: int) -> Callable[[], None] | None:
    """For the child before exec (Linux): ask for SIGTERM when the driver dies, kill -9 included, so a job never runs
    on as an orphan in a folder a re-run will use; if the driver is already gone, exit at once. prctl is looked up
    here, in the parent: the child between fork and exec must not import (another thread may hold the lock)."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: the run-folder locks still refuse a second writer
        return None

    def arm() -> None:
        prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != driver_pid:
            os._exit(1)

    return arm


def _stop_process(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGINT to the job's process group (scripts stop cleanly on it), SIGKILL if it outlives `grace` seconds."""
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue


def run_subprocess(command: list[str], log: str, env_overrides: dict[str, str], cpus: int) -> dict[str, Any]:
    """Run one job to completion on this machine (the body of a Ray task): log to `log`, return its Outcome."""
    start = time.time()
    proc, f = _start_process(command, Path(log), job_env(cpus, env_overrides))
    try:
        rc = proc.wait()
    except BaseException:  # Ray cancels a task by raising KeyboardInterrupt in it: stop the job too
        _stop_process(proc)
        raise
    finally:
        f.close()
    return {"returncode": rc, "seconds": time.time() - start, "tail": log_tail(Path(log)),
            "node": socket.gethostname()}


# --- executors -------------------------------------------------------------------------------------------------
class Executor(Protocol):
    name: str

    def fits(self, job: Job) -> bool: ...
    def start(self, job: Job) -> None: ...
    def wait(self, timeout: float) -> list[tuple[Job, Outcome]]: ...
    def running(self) -> list[Job]: ...
    def stop_all(self) -> list[Job]: ...
    def close(self) -> None: ...


def _visible_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:
        return 0


class LocalExecutor:
    """A pool of CPU slots on this machine; a job takes its cpus (at most all slots) until it exits."""

    name = "local"

    def __init__(self, workers: int = 0) -> None:
        self.slots = workers or os.cpu_count() or 1
        self.used_cpus = 0
        self.used_gpus = 0.0
        self.gpus: float | None = None  # counted on the first GPU job
        self._running: dict[str, tuple[Job, subprocess.Popen, Any, float]] = {}

    def _cpus(self, job: Job) -> int:
        return max(1, min(job.cpus, self.slots))

    def _gpus(self, job: Job) -> float:
        if job.gpus <= 0:
            return 0.0
        if self.gpus is None:
            self.gpus = float(_visible_gpus())
            if self.gpus == 0:
                print("sweep: jobs ask for GPUs but none is visible; they run without GPU accounting", flush=True)
        return min(job.gpus, self.gpus)

    def fits(self, job: Job) -> bool:
        gpus = self._gpus(job)
        return (self.used_cpus + self._cpus(job) <= self.slots
                and (gpus == 0 or self.used_gpus + gpus <= (self.gpus or 0) + 1e-9))

    def start(self, job: Job) -> None:
        cpus = self._cpus(job)
        proc, f = _start_process(job.command, job.log, job_env(cpus))
        self.used_cpus += cpus
        self.used_gpus += self._gpus(job)
        self._running[job.id] = (job, proc, f, time.time())

    def _release(self, job_id: str) -> tuple[Job, float]:
        job, proc, f, start = self._running.pop(job_id)
        f.close()
        self.used_cpus -= self._cpus(job)
        self.used_gpus -= self._gpus(job)
        return job, start

    def wait(self, timeout: float) -> list[tuple[Job, Outcome]]:
        deadline = time.time() + timeout
        while True:
            finished = [(jid, proc.returncode) for jid, (_, proc, _, _) in self._running.items()
                        if proc.poll() is not None]
            if finished or time.time() >= deadline or not self._running:
                break
            time.sleep(0.05)
        out = []
        for jid, rc in finished:
            job, start = self._release(jid)
            out.append((job, Outcome(rc, time.time() - start, log_tail(job.log), socket.gethostname())))
        return out

    def running(self) -> list[Job]:
        return [job for job, *_ in self._running.values()]

    def stop_all(self) -> list[Job]:
        stopped = []
        threads = [threading.Thread(target=_stop_process, args=(proc,)) for _, proc, _, _ in self._running.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for jid in list(self._running):
            stopped.append(self._release(jid)[0])
        return stopped

    def close(self) -> None:
        if self._running:
            self.stop_all()


class RayExecutor:
    """One Ray task per job, reserving its cpus/gpus; Ray places it on any node with room."""

    name = "ray"

    def __init__(self, address: str = "", workers: int = 0) -> None:
        try:
            import ray
        except ImportError:
            raise UserError("--executor ray needs Ray: pip install ray") from None
        self.ray = ray
        import logging

        try:
            if address:
                ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
            else:  # a private local Ray for this sweep, kept small: tasks exchange only a few small values
                ray.init(num_cpus=workers or None, object_store_memory=100_000_000, include_dashboard=False,
                         logging_level=logging.WARNING, log_to_driver=False)
        except ConnectionError as e:
            raise UserError(f"could not connect to the Ray cluster at {address}: {e}") from None
        resources = ray.cluster_resources()
        self.total_cpus = int(resources.get("CPU", 0))
        self.total_gpus = float(resources.get("GPU", 0))
        self._task = ray.remote(run_subprocess)
        self._running: dict[Any, tuple[Job, float]] = {}
        print(f"sweep: Ray cluster with {self.total_cpus} CPUs, {self.total_gpus:g} GPUs "
              f"({len(ray.nodes())} node(s))", flush=True)

    def check(self, jobs: list[Job]) -> None:
        """Before anything runs: a request no node can ever satisfy would wait forever in Ray's queue."""
        for job in jobs:
            if job.cpus > self.total_cpus or job.gpus > self.total_gpus:
                raise UserError(f"{job.id} asks for {job.cpus} CPUs / {job.gpus:g} GPUs but the Ray cluster has "
                                f"{self.total_cpus} / {self.total_gpus:g}: lower resources.{job.kind}")

    def fits(self, job: Job) -> bool:
        return True  # Ray queues each task until a node has room for it

    def start(self, job: Job) -> None:
        ref = self._task.options(num_cpus=job.cpus, num_gpus=job.gpus, name=job.id, max_retries=0).remote(
            job.command, str(job.log), forwarded_env(), job.cpus)
        self._running[ref] = (job, time.time())

    def wait(self, timeout: float) -> list[tuple[Job, Outcome]]:
        if not self._running:
            return []
        ready, _ = self.ray.wait(list(self._running), num_returns=len(self._running), timeout=timeout)
        out = []
        for ref in ready:
            job, start = self._running.pop(ref)
            try:
                out.append((job, Outcome(**self.ray.get(ref))))
            except Exception as e:  # the task itself died (node lost, worker killed): a failed job
                lines = [ln for ln in str(e).splitlines() if ln.strip()][-5:]
                out.append((job, Outcome(-1, time.time() - start, log_tail(job.log) + lines)))
        return out

    def running(self) -> list[Job]:
        return [job for job, _ in self._running.values()]

    def stop_all(self) -> list[Job]:
        refs = list(self._running)
        for ref in refs:
            self.ray.cancel(ref)  # KeyboardInterrupt inside the task, which stops its subprocess
        try:
            self.ray.wait(refs, num_returns=len(refs), timeout=20)
        except Exception:
            pass
        stopped = [job for job, _ in self._running.values()]
        self._running.clear()
        return stopped

    def close(self) -> None:
        if self._running:
            self.stop_all()
        self.ray.shutdown()


def make_executor(executor: str, ray_address: str = "", workers: int = 0) -> Executor:
    if executor == "local":
        if _blank(ray_address):
            raise UserError("--ray_address needs --executor ray")
        return LocalExecutor(workers)
    if executor == "ray":
        return RayExecutor(_blank(ray_address), workers)
    raise UserError(f"executor must be 'local' or 'ray', got '{executor}'")


# --- the scheduler ---------------------------------------------------------------------------------------------
class SweepState:
    """<root>/sweep_state.json: each job's last status, exit code, log tail and attempt count, kept across runs."""

    def __init__(self, path: Path, name: str) -> None:
        self.path = path
        self.data: dict[str, Any] = {"jobs": {}}
        if path.exists():
            try:
                self.data = json.loads(path.read_text())
            except (OSError, ValueError):
                pass  # a damaged state file is only history: start a new one
        self.data.setdefault("jobs", {})
        self.data.update({"sweep": name, "updated": _now()})

    def record(self, job: Job, status: str, **info: Any) -> None:
        entry = self.data["jobs"].setdefault(job.id, {})
        if status == "running":
            entry["attempts"] = entry.get("attempts", 0) + 1
            for k in ("returncode", "seconds", "tail", "finished", "blocked_by", "error"):
                entry.pop(k, None)
        entry.update({"kind": job.kind, "run_dir": str(job.run_dir), "log": str(job.log),
                      "command": shlex.join(job.command), "status": status, "labels": job.labels, **info})
        self.data["updated"] = _now()
        atomic_write_json(self.path, self.data)

    def write(self) -> None:
        atomic_write_json(self.path, self.data)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


@dataclass
class SweepResult:
    status: dict[str, str]  # job id -> done | skipped | failed | blocked | interrupted
    jobs: list[Job]
    notes: dict[str, str] = field(default_factory=dict)  # job id -> why it failed / what blocked it

    def count(self, status: str) -> int:
        return sum(1 for s in self.status.values() if s == status)

    @property
    def ok(self) -> bool:
        return all(s in SUCCESS for s in self.status.values())


def _short(job: Job) -> str:
    return f"{job.kind:<8} {job.id.split('/', 1)[-1]}"


def run_jobs(jobs: list[Job], executor: Executor, state_path: Path, name: str = "sweep",
             echo: Callable[[str], None] = lambda s: print(s, flush=True), poll: float = 0.5) -> SweepResult:
    """Run `jobs` in dependency order on `executor`; finished ones are skipped, a failure blocks only its dependents.

    Ctrl-C (or SIGTERM) stops the running jobs (SIGINT to each, then SIGKILL), records them as interrupted and
    re-raises KeyboardInterrupt; they re-run (resuming from their checkpoints) next time.
    """
    order = topological_order(jobs)
    n = len(order)
    status: dict[str, str] = {}
    notes: dict[str, str] = {}
    with FolderLock(state_path.parent, ".sweep.lock", what="sweep root"):  # one driver per sweep root
        state = SweepState(state_path, name)
        finished = 0

        def settle(job: Job, st: str, note: str = "", **info: Any) -> None:
            nonlocal finished
            finished += 1
            status[job.id] = st
            if note:
                notes[job.id] = note
            state.record(job, st, finished=_now(), **info)
            shown = "done, skipped" if st == "skipped" else st  # the line the bash-* drivers always printed
            echo(f"[{finished:>{len(str(n))}}/{n}] {_short(job)}: {shown}{' (' + note + ')' if note else ''}")

        for job in order:
            if job.is_done():
                settle(job, "skipped", seconds=0.0)
        check = getattr(executor, "check", None)
        if check is not None:
            check([j for j in order if j.id not in status])
        pending = [j for j in order if j.id not in status]
        previous = _sigterm_as_interrupt()
        try:
            while pending or executor.running():
                started = False
                for job in list(pending):
                    bad = [d for d in job.deps if status.get(d) in ("failed", "blocked", "interrupted")]
                    if bad:
                        pending.remove(job)
                        settle(job, "blocked", f"needs {bad[0]} ({status[bad[0]]})", blocked_by=bad)
                    elif all(status.get(d) in SUCCESS for d in job.deps) and executor.fits(job):
                        pending.remove(job)
                        state.record(job, "running", started=_now())
                        echo(f"{'':>{2 * len(str(n)) + 3}} {_short(job)}: started -> {job.log}")
                        executor.start(job)
                        started = True
                if pending and not started and not executor.running():
                    raise RuntimeError(f"sweep stalled: {pending[0].id} can never start")  # a scheduler bug
                for job, out in executor.wait(poll):
                    if out.returncode == 0 and job.is_done():
                        settle(job, "done", f"{out.seconds:.1f}s", returncode=0, seconds=out.seconds, node=out.node)
                        continue
                    last = next((ln for ln in reversed(out.tail) if ln.strip()), "")
                    why = (f"exit {out.returncode}" if out.returncode >= 0 else f"killed by signal {-out.returncode}")
                    if out.returncode == 0:
                        why = f"exit 0 but no {', '.join(job.outputs) or 'outputs'}"
                    settle(job, "failed", f"{why}: {last[:160]}; log {job.log}" if last else f"{why}; log {job.log}",
                           returncode=out.returncode, seconds=out.seconds, tail=out.tail, node=out.node)
        except KeyboardInterrupt:
            for job in executor.stop_all():
                settle(job, "interrupted", "stopped; it resumes on the next run")
            state.write()
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
    return SweepResult(status, order, notes)


def _sigterm_as_interrupt() -> Any:
    """A SIGTERM (cluster scheduler, kill) stops the sweep like Ctrl-C; only possible in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)


def summary_table(result: SweepResult) -> str:
    """Counts per kind and status, then one line per job that did not finish."""
    cols = ("done", "skipped", "failed", "blocked", "interrupted")
    kinds = list(dict.fromkeys(j.kind for j in result.jobs))
    lines = [f"{'kind':<9}" + "".join(f"{c:>12}" for c in cols)]
    for kind in kinds:
        ids = [j.id for j in result.jobs if j.kind == kind]
        lines.append(f"{kind:<9}" + "".join(f"{sum(result.status.get(i) == c for i in ids):>12}" for c in cols))
    lines.append(f"{'total':<9}" + "".join(f"{result.count(c):>12}" for c in cols))
    bad = [j for j in result.jobs if result.status.get(j.id) not in SUCCESS]
    if bad:
        lines.append("")
        for job in bad:
            lines.append(f"{result.status.get(job.id, 'pending'):<11} {job.id}: {result.notes.get(job.id, '')}")
    return "\n".join(lines)


def describe_plan(jobs: list[Job], echo: Callable[[str], None] = print, commands: bool = True) -> None:
    """The dry run: every job, whether it is finished, and its command."""
    counts: dict[str, list[int]] = {}
    for i, job in enumerate(jobs, 1):
        done = job.is_done()
        c = counts.setdefault(job.kind, [0, 0])
        c[0 if done else 1] += 1
        deps = f" (after {', '.join(job.deps)})" if job.deps and not done else ""
        echo(f"[{i}/{len(jobs)}] {_short(job)}: {'done' if done else 'to run'}{deps}")
        if commands and not done:
            echo(f"    {shlex.join(job.command)}")
    echo("\n" + ", ".join(f"{k}: {d + t} ({t} to run)" for k, (d, t) in counts.items())
         + f"; {len(jobs)} jobs in all")


def run_sweep(cfg: SweepConfig, echo: Callable[[str], None] = lambda s: print(s, flush=True)) -> SweepResult | None:
    """Plan the sweep, then print it (dry run) or run it and print the summary table."""
    jobs = plan(cfg)
    return execute(jobs, cfg.executor, cfg.ray_address, cfg.workers, layout_dirs(cfg)["state"], cfg.name,
                   cfg.dry_run, echo)


def execute(jobs: list[Job], executor: str, ray_address: str, workers: int, state_path: Path, name: str,
            dry_run: bool = False, echo: Callable[[str], None] = lambda s: print(s, flush=True)) -> SweepResult | None:
    if dry_run:
        describe_plan(jobs, echo)
        return None
    if not jobs:
        echo("nothing to run")
        return SweepResult({}, [])
    ex = make_executor(executor, ray_address, workers)
    try:
        result = run_jobs(jobs, ex, state_path, name, echo)
    finally:
        ex.close()
    echo("\n" + summary_table(result) + f"\n\nstate: {state_path}")
    return result
