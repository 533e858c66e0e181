"""The sweep's configuration (one YAML / command line, pyrallis) and its validation."""
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synther import layout
from synther.agents import ALGORITHMS
from synther.errors import UserError
from synther.layout import LADDER, METHODS, eps_tag

KINDS = ("pretrain", "finetune", "sample", "baseline", "agent", "fidelity", "mia")
EVALUATIONS = ("fidelity", "mia")


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
    by_agent: dict[str, str] = field(default_factory=dict)
    """extra flags for one algorithm's commands, after `agent` (an option one algorithm has and the others lack),
    e.g. {td3_bc: "--alpha 10"}"""
    by_rung: dict[str, dict[str, str]] = field(default_factory=dict)
    """extra flags for one rung's fine-tuning and sampling commands, after `finetune` and `sample`, keyed by the
    rung's folder tag (eps10, eps1, nodp, public, public_curiosity), e.g. {eps10: {finetune: "--dp.dynamics_steps
    500", sample: "--relabel dp"}}: a lever whose settings depend on ε or rung (an ε the sweep leaves out is
    ignored)"""
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
    stack_agent_seeds: bool = True  # one job per agent and data source for its consecutive seeds (TD3+BC, IQL): one --stack_seeds process training them as a stacked network, each seed as it would alone, in its own run folder
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
    workers: int = 0  # local: CPU slots (0: every core this process may use, i.e. its CPU affinity); ray without an address: CPUs of the local Ray (0: all)
    dry_run: bool = False  # print the jobs, what is finished and their commands, without running anything


def blank(value: Any) -> str:
    """pyrallis reads an empty command-line value as None or 'None'."""
    return "" if value is None or value == "None" else str(value)


def runs_root(cfg: SweepConfig) -> Path:
    return layout.runs_root(blank(cfg.runs_dir)).expanduser().resolve()


def layout_dirs(cfg: SweepConfig) -> dict[str, Path]:
    root = runs_root(cfg)
    out = {}
    for kind in ("diffusion", "baselines", "agents", "evaluation"):
        given = blank(getattr(cfg.layout, kind))
        out[kind] = Path(given).expanduser().resolve() if given else root / kind
    state = blank(cfg.layout.state)
    out["state"] = Path(state).expanduser().resolve() if state else root / "sweep_state.json"
    return out


def _is_eps_tag(rung: str) -> bool:
    try:
        eps = float(rung.removeprefix("eps"))
    except ValueError:
        return False
    return eps > 0 and eps_tag(eps) == rung   # the canonical spelling only: 'eps10.0' would never match a folder


def validate(cfg: SweepConfig) -> None:
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
    for a in cfg.extra_args.by_agent:
        if a not in ALGORITHMS:
            raise UserError(f"extra_args.by_agent: unknown agent '{a}' (choose from: {', '.join(ALGORITHMS)})")
    for rung, kinds in cfg.extra_args.by_rung.items():
        # an ε this sweep leaves out is accepted (one YAML, narrowed by --epsilons); a name that can never match is not
        if rung not in LADDER and not _is_eps_tag(rung):
            raise UserError(f"extra_args.by_rung: unknown rung '{rung}' (an ε as eps<ε>, e.g. "
                            f"{', '.join(eps_tag(e) for e in cfg.epsilons) or 'eps1'}, or one of: {', '.join(LADDER)})")
        allowed = ("sample",) if rung in ("public", "public_curiosity") else ("finetune", "sample")
        for kind in kinds or {}:
            if kind not in allowed:
                raise UserError(f"extra_args.by_rung.{rung}: '{kind}' is not one of its jobs "
                                f"(choose from: {', '.join(allowed)})")
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
