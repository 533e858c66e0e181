"""The ONE training loop shared by all agents (TD3+BC, IQL, CQL, AWAC, EDAC).

    train(cfg, AgentClass) -> summary dict
    train_seeds(cfg, AgentClass) -> one summary per seed (--stack_seeds K: K seeds as one stacked network)

A run: look up the eval env and score constants of --dataset (by name, no data read) -> load the training data
(the real dataset, or ONLY the synthetic samples of --diffusion.path) -> replay buffer with statistics of that
data -> `max_timesteps` updates, evaluating every `eval_freq` -> run folder with

    config.yaml    the full run config (pyrallis YAML; re-run with --config_path)
    eval.jsonl     learning curve: one line per evaluation (returns, normalized score)
    metrics.jsonl  training losses every `log_every` updates
    checkpoint.pt  agent + optimizers + RNG at the last evaluation; a killed run resumes from it
    summary.json   last score, mean of the last k evaluations, best; data source; normalization provenance; ε

A run whose summary.json exists is skipped (unless --overwrite true), so sweeps can be re-run.
"""
import contextlib
import dataclasses
import hashlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyrallis
import torch
from tqdm.auto import tqdm

from synther import layout
from synther.agents.buffer import ReplayBuffer, reward_scale_from_returns, stacked_batch
from synther.agents.data import check_dimensions, load_training_data
from synther.agents.evaluation import EvalTarget, eval_target, run_seed_episodes, SeedsPolicy
from synther.agents.graphs import GraphedUpdates, capturable_optimizers
from synther.agents.networks import Agent, stack_states
from synther.errors import UserError
from synther.utils.device import resolve_device
from synther.utils.io import atomic_path, atomic_write_json
from synther.utils.locks import FolderLock
from synther.utils.provenance import package_versions
from synther.utils.threads import follow_lent_threads
from synther.utils.tracking import Tracker, WandbConfig

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = "privtranr-agent-v2"  # v2: the networks carry a leading seed dimension (stacked seeds)
# options that may differ between a killed run and its resumption
RESUME_IGNORED = ("progress", "overwrite", "device", "threads", "log_every", "save_checkpoints", "compile", "wandb",
                   "eval_envs", "cuda_graph", "stack_seeds")
# How evaluation episodes are seeded, kept in checkpoints and summaries: a curve is never continued under another
# protocol. v2: episode i starts from its own seeded reset (evaluation.episode_seed); v1 (summaries without
# evaluation.protocol, before 2026-12): one episode after another, the env seeded at the first reset only.
EVAL_PROTOCOL = "episode-seeds-v2"
MAX_EVAL_ENVS = 50
PRECISIONS = ("fp32", "bf16")
SEED_FIELD = "{seed}"  # in --name and --diffusion.path: each stacked seed's number


@dataclass
class DiffusionSource:
    path: str = ""  # train on synthetic data INSTEAD of --dataset's real transitions: a samples.npz, or a diffusion checkpoint (.pt) to generate from on the fly; empty: train on the real dataset
    sample_limit: int = -1  # use at most this many synthetic rows, the file's first ones (-1: all); with a checkpoint, how many to generate
    num_samples: int = 100_000  # checkpoint only: how many transitions to generate when sample_limit is -1
    num_steps: int = 32  # checkpoint only: sampler steps (DPM-Solver++ 2M)


@dataclass
class AgentConfig:
    """Options shared by every agent; each algorithm's config adds its CORL hyper-parameters."""

    dataset: str = "ptr-maze2d-umaze-dense-v0"  # dataset name from config/datasets.yaml (or a path): the real data trained on unless --diffusion.path is given, and always the source of the evaluation env and score constants
    env: str = ""  # the paper repo's name for --dataset (on the command line it is read as --dataset)
    seed: int = 0  # seeds numpy, torch, the replay sampling and the evaluation env
    stack_seeds: int = 1  # train seeds seed, seed+1, ..., seed+stack_seeds-1 in this process as ONE stacked network (TD3+BC, IQL): each seed keeps its own data draws, noise, evaluation and run folder, as if run alone; {seed} in --name and --diffusion.path stands for each seed's number
    checkpoints_path: str = ""  # parent folder of the run folder; empty: $PRIVTRANR_RUNS_DIR/agents, else runs/agents
    name: str = ""  # run folder name; empty: <algorithm>-<dataset>-<eps<ε>|synthetic|real>-seed<seed>
    diffusion: DiffusionSource = field(default_factory=DiffusionSource)  # synthetic training data
    dp_epsilon: float = -1.0  # ε of the DP synthesizer that made --diffusion.path, recorded in the summary and run name (-1: not given)
    max_timesteps: int = 1_000_000  # gradient updates (CORL: 1M; PrivORL: 500k)
    eval_freq: int = 5000  # evaluate every this many updates (and after the last one)
    n_episodes: int = 10  # episodes per evaluation (PrivORL uses 100 on maze2d)
    eval_envs: int = 0  # episodes run side by side in an evaluation, one batched policy call per time step (0: all n_episodes, at most 50; a --stack_seeds run's seeds share one pool, one call of the stacked actor per step); the scores do not depend on it
    eval_max_episode_steps: int = 0  # evaluation horizon; 0: the dataset's registered horizon (changing it invalidates the score constants)
    summary_last_k: int = 10  # summary.json reports the mean normalized score of the last k evaluations
    device: str = "auto"  # auto (CUDA when available), cpu or cuda
    threads: int = 0  # torch CPU threads (0: torch's default; 1 is faster when other jobs share the cores)
    batch_size: int = 256  # transitions per update
    precision: str = "fp32"  # fp32, or bf16: each update's hidden layers multiply in bfloat16 under torch.autocast (output layers, losses, gradients, Adam and evaluation stay float32); pays where the hardware multiplies bf16 natively (AMX CPUs, tensor cores)
    discount: float = 0.99  # γ
    normalize: bool = True  # z-score states with the mean/std (+1e-3) of the training data
    normalize_reward: bool = False  # CORL's locomotion reward scaling by the training data's return range (needs episodes; off for synthetic samples)
    log_every: int = 1000  # write training losses to metrics.jsonl every this many updates (the only host syncs in the loop)
    save_checkpoints: bool = True  # write checkpoint.pt at every evaluation so a killed run resumes
    overwrite: bool = False  # re-run even if the run folder holds a finished run (otherwise it is skipped)
    compile: bool = False  # torch.compile the networks (first updates are slow while it compiles)
    cuda_graph: bool = False  # CUDA only; TD3+BC, IQL, AWAC, EDAC (not CQL): replay each cycle of updates as one captured CUDA graph (the same rows in the same order; several times faster on a GPU, where small updates are launch-bound)
    progress: bool = True  # show a progress bar
    wandb: WandbConfig = field(default_factory=WandbConfig)  # opt-in copy of metrics.jsonl and eval.jsonl rows to Weights & Biases


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _blank(value: Any) -> str:
    """pyrallis reads an empty command-line value (--name "") as None, or as the string 'None' for str fields."""
    return "" if value is None or value == "None" else str(value)


def _normalize(cfg: AgentConfig) -> AgentConfig:
    return dataclasses.replace(cfg, env=_blank(cfg.env), name=_blank(cfg.name),
                               checkpoints_path=_blank(cfg.checkpoints_path),
                               diffusion=dataclasses.replace(cfg.diffusion, path=_blank(cfg.diffusion.path)))


def _check(cfg: AgentConfig) -> AgentConfig:
    cfg = _normalize(cfg)
    if cfg.env and cfg.dataset != cfg.env and cfg.dataset != AgentConfig.dataset:
        raise UserError(f"--env '{cfg.env}' and --dataset '{cfg.dataset}' disagree; --env is an alias, give one")
    if cfg.env:
        cfg = dataclasses.replace(cfg, dataset=cfg.env, env="")
    if cfg.precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got '{cfg.precision}'")
    if cfg.stack_seeds < 1:
        raise UserError(f"--stack_seeds must be at least 1, got {cfg.stack_seeds}")
    if cfg.eval_envs < 0:
        raise UserError(f"--eval_envs must be 0 (automatic) or positive, got {cfg.eval_envs}")
    for opt in ("max_timesteps", "eval_freq", "n_episodes", "batch_size", "log_every", "summary_last_k"):
        if getattr(cfg, opt) <= 0:
            raise UserError(f"--{opt} must be positive, got {getattr(cfg, opt)}")
    if cfg.dp_epsilon >= 0 and not cfg.diffusion.path:
        raise UserError("--dp_epsilon describes synthetic data: it needs --diffusion.path")
    return cfg


def runs_root() -> Path:
    return layout.runs_root() / "agents"


def run_name(cfg: AgentConfig, algorithm: str) -> str:
    cfg = _normalize(cfg)
    if cfg.name:
        return cfg.name
    method = "real" if not cfg.diffusion.path else ("privtranr" if cfg.dp_epsilon >= 0 else "synthetic")
    return layout.agent_run_name(algorithm, cfg.env or cfg.dataset, cfg.seed, method,
                                 cfg.dp_epsilon if cfg.dp_epsilon >= 0 else None)


def agent_command(python: str, algorithm: str, *, dataset: str, seed: int, checkpoints_path: str | Path, name: str,
                  device: str, threads: int, progress: bool, config_path: str | Path | None = None,
                  max_timesteps: int = 0, eval_freq: int = 0, n_episodes: int = 0, samples: str | Path | None = None,
                  sample_limit: int = -1, dp_epsilon: float | None = None, stack_seeds: int = 1) -> list[str]:
    """The command line of MuJoCo/<algorithm>.py (AgentConfig): real data unless `samples`; 0 keeps a budget's
    value from the YAML at `config_path` (or the algorithm's default). stack_seeds > 1: seeds seed, seed + 1, ... as
    one stacked network, {seed} in `name` and `samples` standing for each one's number."""
    cmd = [python, layout.script(f"{algorithm}.py")]
    if config_path is not None:
        cmd += ["--config_path", str(config_path)]
    cmd += ["--dataset", dataset, "--seed", str(seed), "--checkpoints_path", str(checkpoints_path), "--name", name,
            "--device", device, "--threads", str(threads), "--progress", str(progress).lower()]
    if stack_seeds > 1:
        cmd += ["--stack_seeds", str(stack_seeds)]
    for flag, value in (("--max_timesteps", max_timesteps), ("--eval_freq", eval_freq), ("--n_episodes", n_episodes)):
        if value:
            cmd += [flag, str(value)]
    if samples is not None:
        cmd += ["--diffusion.path", str(samples), "--diffusion.sample_limit", str(sample_limit)]
        if dp_epsilon is not None:
            cmd += ["--dp_epsilon", f"{dp_epsilon:g}"]
    return cmd


def run_dir(cfg: AgentConfig, algorithm: str) -> Path:
    cfg = _normalize(cfg)
    root = Path(cfg.checkpoints_path) if cfg.checkpoints_path else runs_root()
    return root / run_name(cfg, algorithm)


def _comparable(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cfg_dict.items() if k not in RESUME_IGNORED}


class _JsonLines:
    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, row: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")

    def keep_until(self, step: int) -> None:
        """Drop rows logged after `step` (a resumed run repeats them)."""
        if not self.path.exists():
            return
        rows = [line for line in self.path.read_text().splitlines() if line.strip()]
        kept = [r for r in rows if json.loads(r).get("step", 0) <= step]
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(r + "\n" for r in kept))


def make_policy(agent: Agent, buffer: ReplayBuffer, device: torch.device) -> Callable[[np.ndarray], np.ndarray]:
    """Raw env observations (B, obs_dim) -> actions (B, action_dim) of a one-seed agent, normalizing with its
    training data's statistics."""
    mean = torch.as_tensor(buffer.state_mean, device=device)
    std = torch.as_tensor(buffer.state_std, device=device)

    def policy(obs: np.ndarray) -> np.ndarray:
        x = (torch.as_tensor(obs, dtype=torch.float32, device=device) - mean) / std
        return agent.act(x).cpu().numpy()

    return policy


def make_seeds_policy(agent: Agent, buffers: list[ReplayBuffer], device: torch.device) -> SeedsPolicy:
    """Each seed's raw observations -> its actions, every seed of a stacked agent in ONE call of its stacked actor
    (the seeds' batches padded to the widest; padding rows are computed and dropped), each seed's normalized with
    its own training data's statistics. A one-seed agent: make_policy's call."""
    if agent.seeds == 1:
        one = make_policy(agent, buffers[0], device)
        return lambda obs: [one(obs[0])]
    mean = torch.stack([torch.as_tensor(b.state_mean) for b in buffers]).unsqueeze(1).to(device)  # (seeds, 1, obs)
    std = torch.stack([torch.as_tensor(b.state_std) for b in buffers]).unsqueeze(1).to(device)

    def policy(obs: list[np.ndarray]) -> list[np.ndarray]:
        padded = np.zeros((len(obs), max(len(o) for o in obs), mean.shape[-1]), np.float32)
        for k, o in enumerate(obs):
            padded[k, :len(o)] = o
        actions = agent.act((torch.as_tensor(padded, device=device) - mean) / std, None).cpu().numpy()
        return [actions[k, :len(o)] for k, o in enumerate(obs)]

    return policy


def eval_envs(target: EvalTarget, cfg: AgentConfig, seeds: int = 1) -> list:
    """The envs an evaluation runs its episodes on, side by side (built once per run): --eval_envs, or all the
    seeds' episodes up to MAX_EVAL_ENVS (wider pools ran slower per episode: 150 umaze episodes took 2.5–2.7 s on
    150 envs, 2.1–2.2 s as three rounds on 50)."""
    width = min(cfg.eval_envs or MAX_EVAL_ENVS, cfg.n_episodes * seeds)
    return [target.make_env(cfg.eval_max_episode_steps) for _ in range(width)]


def evaluate(agent: Agent, buffers: list[ReplayBuffer], envs: list, target: EvalTarget, n_episodes: int,
             seeds: list[int], device: torch.device) -> list[dict[str, Any]]:
    """n_episodes episodes for each seed of `agent` (buffers and seeds: the seeds' own, in the agent's order), all
    side by side on `envs`; one row of eval.jsonl per seed."""
    agent.train_mode(False)
    with torch.inference_mode():
        returns = run_seed_episodes(envs, make_seeds_policy(agent, buffers, device), n_episodes, seeds)
    agent.train_mode(True)
    rows = []
    for seed_returns in returns:
        scores = np.asarray(target.normalize(seed_returns))
        rows.append({"return_mean": float(seed_returns.mean()), "return_std": float(seed_returns.std()),
                     "normalized_score": float(scores.mean()), "normalized_score_std": float(scores.std()),
                     "episodes": n_episodes})
    return rows


def summarize(evals: list[dict[str, Any]], k: int) -> dict[str, Any]:
    scores = [e["normalized_score"] for e in evals]
    best = int(np.argmax(scores))
    last = evals[-1]
    return {"final_normalized_score": last["normalized_score"], "final_return": last["return_mean"],
            "last_k": min(k, len(scores)), "last_k_mean_normalized_score": float(np.mean(scores[-k:])),
            "best_normalized_score": scores[best], "best_step": evals[best]["step"], "evaluations": len(evals)}


def normalization_note(data_kind: str, source: str, normalize: bool, reward_scale: float) -> str:
    what = "state mean/std" if normalize else "nothing (state normalization off)"
    if reward_scale != 1.0:
        what += " and the reward scale"
    origin = (f"the synthetic samples ({source}); the real dataset was not read" if data_kind == "synthetic"
              else f"the real dataset ({source})")
    return f"normalization statistics ({what}) computed from: {origin}"


def train(cfg: AgentConfig, agent_class: type[Agent]) -> dict[str, Any]:
    """Train `agent_class` as configured; returns the summary (also written to <run folder>/summary.json)."""
    if cfg.stack_seeds != 1:
        raise UserError("train() runs one seed; train_seeds() runs --stack_seeds seeds")
    return train_seeds(cfg, agent_class)[0]


def train_seeds(cfg: AgentConfig, agent_class: type[Agent]) -> list[dict[str, Any]]:
    """Train seeds seed, seed + 1, ..., seed + stack_seeds − 1 of `agent_class` in this process, as one stacked
    network when there are several (Agent's stacked seeds); each seed gets the run folder, files and summary a
    one-seed run of it writes. Returns the summaries, seed by seed."""
    cfg = _check(cfg)
    if cfg.stack_seeds > 1:
        if not agent_class.stackable:
            raise UserError(f"--stack_seeds: {agent_class.name} trains one seed per process (stacked: td3_bc, iql)")
        if cfg.name and SEED_FIELD not in cfg.name:
            raise UserError(f"--stack_seeds: each seed needs its own run folder; give no --name, or one with {SEED_FIELD}")
        if cfg.cuda_graph:
            raise UserError("--stack_seeds and --cuda_graph are not tested together yet: pass one of them")
    if cfg.precision not in agent_class.precisions:
        raise UserError(f"--precision {cfg.precision}: {agent_class.name} trains in "
                        f"{' or '.join(agent_class.precisions)} (bf16: td3_bc, iql)")
    if cfg.precision != "fp32" and cfg.cuda_graph:
        raise UserError("--precision bf16 and --cuda_graph are not tested together yet: pass one of them")
    cfgs = [seed_config(cfg, cfg.seed + i) for i in range(cfg.stack_seeds)]
    outs = [run_dir(c, agent_class.name) for c in cfgs]
    with contextlib.ExitStack() as locks:
        for out in outs:  # a second process on the same folder is refused, not interleaved
            locks.enter_context(FolderLock(out))
        return _train(cfgs, agent_class, outs)


def seed_config(cfg: AgentConfig, seed: int) -> AgentConfig:
    """The one-seed config of `seed` in a --stack_seeds run: {seed} in --name and --diffusion.path filled in."""
    fill = lambda text: text.replace(SEED_FIELD, str(seed))  # noqa: E731
    return dataclasses.replace(cfg, seed=seed, stack_seeds=1, name=fill(cfg.name),
                               diffusion=dataclasses.replace(cfg.diffusion, path=fill(cfg.diffusion.path)))


def _run_key(cfg_dict: dict[str, Any], data_sha256: str) -> str:
    """What a finished or checkpointed run must match to be reused: its configuration and its data's content."""
    return hashlib.sha256(json.dumps([_comparable(cfg_dict), data_sha256], sort_keys=True,
                                     default=str).encode()).hexdigest()[:16]


@dataclass
class _SeedRun:
    """One seed's share of a training process: its folder, data, buffer, agent state and logs."""

    cfg: AgentConfig
    out: Path
    cfg_dict: dict[str, Any]
    run_key: str
    data: Any  # synther.agents.data's TrainingData (its arrays already freed)
    source: str
    reward_scale: float
    buffer: ReplayBuffer
    agent: Agent  # this seed alone; a stacked run trains these as one network
    noise_rng: torch.Tensor  # the state its update's random draws continue from
    evals_log: "_JsonLines"
    metrics_log: "_JsonLines"
    start: int = 0
    evals: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0
    tracker: Tracker | None = None
    graphed: dict[str, Any] | None = None  # GraphedUpdates.describe() of a --cuda_graph run
    stacked_with: list[int] | None = None  # the seeds it trained with as one network, itself included


def _noise_generator(device: torch.device) -> torch.Generator:
    """The generator a one-seed run's update draws from: torch's default one of the device."""
    if device.type == "cuda":
        return torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
    return torch.default_generator


def _train(cfgs: list[AgentConfig], agent_class: type[Agent], outs: list[Path]) -> list[dict[str, Any]]:
    cfg = cfgs[0]
    if cfg.overwrite:
        for out in outs:
            for name in ("summary.json", "eval.jsonl", "metrics.jsonl", CHECKPOINT, "config.yaml"):
                (out / name).unlink(missing_ok=True)

    target = eval_target(cfg.dataset)  # fails fast, before any data is loaded
    device = resolve_device(cfg.device)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    summaries: dict[int, dict[str, Any]] = {}
    runs: list[_SeedRun] = []
    envs: list | None = None
    for i, (seed_cfg, out) in enumerate(zip(cfgs, outs)):
        # each seed is set up exactly as a one-seed run of it would be: same seeding, same draws, same order
        seed_everything(seed_cfg.seed)
        data = load_training_data(seed_cfg.dataset, seed_cfg.diffusion.path, seed_cfg.diffusion.sample_limit,
                                  seed_cfg.diffusion.num_samples, seed_cfg.diffusion.num_steps, seed_cfg.seed,
                                  seed_cfg.device)
        _check_epsilon_label(seed_cfg.dp_epsilon, data.description.get("privacy_ledger") or {})
        cfg_dict = asdict(seed_cfg)
        run_key = _run_key(cfg_dict, data.dataset.content_sha256())
        summary = _finished_summary(out, run_key)
        if summary is not None:
            summaries[i] = summary
            continue
        if envs is None:
            envs = eval_envs(target, seed_cfg, seeds=len(cfgs))
        runs.append(_seed_run(seed_cfg, out, cfg_dict, run_key, data, target, envs[0], agent_class, device))

    for group in _groups_by_start(runs):
        _train_group(group, agent_class, target, envs, device)
    for env in envs or []:
        env.close()
    for i, run in zip([i for i in range(len(cfgs)) if i not in summaries], runs):
        summaries[i] = _write_summary(run, agent_class.name, target, device)
    return [summaries[i] for i in range(len(cfgs))]


def _finished_summary(out: Path, run_key: str) -> dict[str, Any] | None:
    summary_path = out / "summary.json"
    if not summary_path.exists():
        return None
    summary = _read_summary(summary_path)
    if summary.get("run_key") not in (None, run_key):
        raise UserError(f"{out} holds a finished run of another configuration or other data; pass --overwrite "
                        "true to replace it, or --name for another run folder")
    print(f"{out}: finished run found (summary.json); skipped (pass --overwrite true to re-run)")
    return summary


def _seed_run(cfg: AgentConfig, out: Path, cfg_dict: dict[str, Any], run_key: str, data: Any, target: EvalTarget,
              env: Any, agent_class: type[Agent], device: torch.device) -> _SeedRun:
    """One seed's buffer and agent, resumed from its checkpoint if it has one; its logs trimmed to match."""
    obs_dim, action_dim = env.observation_space.shape[0], env.action_space.shape[0]
    check_dimensions(data.dataset, obs_dim, action_dim, target.dataset)
    max_action = float(np.max(np.abs(np.concatenate([env.action_space.low, env.action_space.high]))))
    reward_scale = (reward_scale_from_returns(data.dataset, target.horizon or 1000) if cfg.normalize_reward else 1.0)
    buffer = ReplayBuffer(data.dataset, device, cfg.normalize, reward_scale, seed=cfg.seed)
    source = data.description.get("path") or data.description.get("source")
    data.dataset = None  # the buffer holds what training needs; free the arrays

    agent = agent_class(cfg, obs_dim, action_dim, max_action, device)
    agent.fit_to_data(*buffer.reward_range())
    run = _SeedRun(cfg, out, cfg_dict, run_key, data, str(source), reward_scale, buffer, agent,
                   _noise_generator(device).get_state(), _JsonLines(out / "eval.jsonl"),
                   _JsonLines(out / "metrics.jsonl"))
    ckpt_path = out / CHECKPOINT
    if ckpt_path.exists():
        try:
            state = torch.load(ckpt_path, map_location=device, weights_only=False)
        except Exception as e:  # truncated or foreign file: torch raises several types
            raise UserError(f"{ckpt_path} is unreadable ({type(e).__name__}): pass --overwrite true to start this "
                            "run over") from None
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT \
                or state.get("run_key", run_key) != run_key or _comparable(state["config"]) != _comparable(cfg_dict):
            raise UserError(f"{out} holds a checkpoint of a different run configuration or checkpoint format; pass "
                            "--overwrite true to start over or --name for another run folder")
        if state.get("eval_protocol", "episode-seeds-v1") != EVAL_PROTOCOL:
            raise UserError(f"{out} holds a checkpoint whose evaluations were scored under another protocol "
                            f"({state.get('eval_protocol', 'episode-seeds-v1')}, now {EVAL_PROTOCOL}); pass "
                            "--overwrite true to start this run over")
        agent.load_state_dict(state["agent"])
        buffer.set_rng_state(state["buffer_rng"].cpu(), state["buffer_cursor"])
        run.noise_rng = state["noise_rng"].cpu() if device.type == "cpu" else run.noise_rng
        np.random.set_state(state["numpy_rng"])
        run.start, run.evals, run.train_seconds = state["step"], state["evals"], state["train_seconds"]
        print(f"{out}: resuming from update {run.start}")
    run.evals_log.keep_until(run.start)
    run.metrics_log.keep_until(run.start)
    if run.start == 0:
        run.evals_log.path.unlink(missing_ok=True)
        run.metrics_log.path.unlink(missing_ok=True)
    with atomic_path(out / "config.yaml") as tmp, open(tmp, "w") as f:
        pyrallis.dump(cfg, f)
    return run


def _groups_by_start(runs: list[_SeedRun]) -> list[list[_SeedRun]]:
    """Seeds resumed from the same update train together; a process killed between two seeds' checkpoints leaves
    them at different updates, and each such group then trains on its own."""
    starts = sorted({run.start for run in runs})
    return [[run for run in runs if run.start == start] for start in starts]


def _stacked_agent(group: list[_SeedRun], agent_class: type[Agent], device: torch.device) -> Agent:
    """The group's seeds as one agent: a one-seed group's own agent drawing from torch's generator as a one-seed
    run does, or a stacked agent holding every seed's state and a generator per seed."""
    if len(group) == 1:
        if device.type == "cpu":  # as a one-seed run's checkpoint restores it (on CUDA: not restored)
            _noise_generator(device).set_state(group[0].noise_rng)
        return group[0].agent
    first = group[0]
    agent = agent_class(first.cfg, first.buffer.obs_dim, first.buffer.action_dim, first.agent.max_action, device,
                        seeds=len(group))
    try:
        agent.load_state_dict(stack_states([run.agent.state_dict() for run in group]))
    except ValueError as e:
        raise UserError(f"--stack_seeds: these seeds cannot train as one network ({e}); run them one by one") from None
    agent.generators = []
    for run in group:
        generator = torch.Generator(device=device)
        generator.set_state(run.noise_rng)
        agent.generators.append(generator)
    return agent


def _train_group(group: list[_SeedRun], agent_class: type[Agent], target: EvalTarget, envs: list,
                 device: torch.device) -> None:
    cfg = group[0].cfg
    agent = _stacked_agent(group, agent_class, device)
    for run in group:
        run.agent = None  # the stacked agent holds the state now
    if cfg.compile:
        for module in agent.modules():
            module.compile()
    period = _graph_period(cfg, agent, device)
    start = group[0].start
    graphed = GraphedUpdates(agent, group[0].buffer, cfg.batch_size) if cfg.cuda_graph else None
    if graphed is None and start:
        capturable_optimizers(agent, False)  # the checkpoint may come from a graphed run
    buffers = [run.buffer for run in group]
    stacked = len(group) > 1

    def save_checkpoint(i: int, run: _SeedRun, step: int) -> None:
        if not run.cfg.save_checkpoints:
            return
        noise = (agent.generators[i] if stacked else _noise_generator(device)).get_state()
        buffer_rng, buffer_cursor = run.buffer.rng_state()
        state = {"format": CHECKPOINT_FORMAT, "algorithm": agent_class.name, "step": step, "config": run.cfg_dict,
                 "run_key": run.run_key, "eval_protocol": EVAL_PROTOCOL,
                 "agent": agent.seed_state(i), "evals": run.evals, "train_seconds": run.train_seconds,
                 "buffer_rng": buffer_rng, "buffer_cursor": buffer_cursor, "noise_rng": noise,
                 "numpy_rng": np.random.get_state(),
                 "state_mean": run.buffer.state_mean, "state_std": run.buffer.state_std}
        with atomic_path(run.out / CHECKPOINT) as tmp:
            torch.save(state, tmp)

    names = [run_name(run.cfg, agent_class.name) for run in group]
    for run, name in zip(group, names):
        run.tracker = Tracker(run.cfg.wandb, run.out, name, run.cfg_dict)
    try:
        bar = tqdm(total=cfg.max_timesteps, initial=start, desc=names[0] if not stacked else
                   f"{agent_class.name} seeds {', '.join(str(r.cfg.seed) for r in group)}", unit="upd",
                   disable=not cfg.progress, mininterval=1.0)
        tick, tick_step = time.perf_counter(), start
        for step in range(start + period, cfg.max_timesteps + 1, period):
            if graphed:
                losses = graphed.run()
            else:
                batch = stacked_batch(buffers, cfg.batch_size) if stacked else buffers[0].sample(cfg.batch_size)
                with update_precision(cfg.precision, device):
                    losses = agent.update(batch)
            if step % cfg.log_every == 0:
                follow_lent_threads()
                for i, run in enumerate(group):
                    seed_losses = {k: float(v.reshape(-1)[i]) for k, v in losses.items()}
                    run.metrics_log.append({"step": step, **seed_losses})
                    run.tracker.log({f"train/{k}": v for k, v in seed_losses.items()}, step)
            if step % cfg.eval_freq == 0 or step == cfg.max_timesteps:
                now = time.perf_counter()
                speed = (step - tick_step) / max(now - tick, 1e-9)
                rows = evaluate(agent, buffers, envs, target, cfg.n_episodes, [run.cfg.seed for run in group], device)
                eval_seconds = time.perf_counter() - now  # one evaluation for all seeds: each row carries its time
                for i, (run, row) in enumerate(zip(group, rows)):
                    run.train_seconds += now - tick
                    row = {"step": step, **row, "updates_per_s": speed, "eval_seconds": eval_seconds}
                    run.evals.append(row)
                    run.evals_log.append(row)
                    run.tracker.log({f"eval/{k}": v for k, v in row.items() if k != "step"}, step)
                    save_checkpoint(i, run, step)
                bar.set_postfix(score=" ".join(f"{run.evals[-1]['normalized_score']:.1f}" for run in group),
                                refresh=False)
                bar.update(step - bar.n)
                tick, tick_step = time.perf_counter(), step
            elif step % 100 < period:
                bar.update(step - bar.n)
        bar.close()
    finally:
        for run in group:
            if run.tracker is not None:
                run.tracker.close()
    for run in group:
        run.graphed = graphed.describe() if graphed else None
        run.stacked_with = [r.cfg.seed for r in group] if stacked else None


def _write_summary(run: _SeedRun, algorithm: str, target: EvalTarget, device: torch.device) -> dict[str, Any]:
    cfg = run.cfg
    summary = {
        "algorithm": algorithm,
        "dataset": cfg.dataset,
        "run_dir": str(run.out),
        "run_key": run.run_key,
        "steps": cfg.max_timesteps,
        **summarize(run.evals, cfg.summary_last_k),
        "data": run.data.description,
        "normalization_statistics": normalization_note(run.data.kind, run.source, cfg.normalize, run.reward_scale),
        "normalization": {"computed_from": "synthetic samples" if run.data.synthetic else "real dataset",
                          **run.buffer.statistics()},
        "dp_epsilon": cfg.dp_epsilon if cfg.dp_epsilon >= 0 else None,
        "privacy_guarantee": (run.data.description.get("privacy_ledger") or {}).get("guarantee"),
        "evaluation": {**target.describe(), "n_episodes": cfg.n_episodes, "seed": cfg.seed, "protocol": EVAL_PROTOCOL},
        "device": str(device),
        "cuda_graph": run.graphed,
        # trained as one network with these seeds (each its own data draws, noise and state): its updates/s are
        # the whole process's, per seed
        "stacked_seeds": run.stacked_with,
        "train_seconds": run.train_seconds,
        "updates_per_s": cfg.max_timesteps / max(run.train_seconds, 1e-9),
        "versions": package_versions(),
    }
    atomic_write_json(run.out / "summary.json", summary)
    return summary


def update_precision(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The context an update runs in: nothing for fp32; for bf16 autocast, whose products EnsembleMLP keeps in
    float32 at its output layer."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _graph_period(cfg: AgentConfig, agent: Agent, device: torch.device) -> int:
    """Updates per loop iteration: 1, or with --cuda_graph the agent's graph cycle, which every update count the
    loop stops at (logs, evaluations, the end) must be a multiple of."""
    if not cfg.cuda_graph:
        return 1
    if device.type != "cuda":
        raise UserError(f"--cuda_graph true needs a CUDA device (this run is on {device.type})")
    if cfg.compile:
        raise UserError("--cuda_graph and --compile are alternatives: pass one of them")
    period = agent.graph_period
    if not period:
        raise UserError(f"--cuda_graph is not supported for {agent.name} yet (its update is not capture-safe)")
    for opt in ("max_timesteps", "eval_freq", "log_every"):
        if getattr(cfg, opt) % period:
            raise UserError(f"--cuda_graph: --{opt} ({getattr(cfg, opt)}) must be a multiple of {agent.name}'s update "
                            f"cycle ({period})")
    return period


def _check_epsilon_label(dp_epsilon: float, ledger: dict[str, Any]) -> None:
    """--dp_epsilon only labels the run: refuse a label the samples' own ledger contradicts."""
    if dp_epsilon < 0 or not ledger:
        return
    if ledger.get("private") is False:
        raise UserError(f"--dp_epsilon {dp_epsilon:g}: the samples' privacy ledger says they are NOT differentially "
                        f"private ({ledger.get('guarantee', 'non-private')}); drop --dp_epsilon")
    target = ledger.get("target_epsilon")
    if target is not None and not math.isclose(float(target), dp_epsilon, rel_tol=1e-9):
        raise UserError(f"--dp_epsilon {dp_epsilon:g}: the samples' privacy ledger says target ε = {float(target):g}")


def _read_summary(path: Path) -> dict[str, Any]:
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is unreadable ({type(e).__name__}): pass --overwrite true to re-run") from None
    if not isinstance(summary, dict):
        raise UserError(f"{path} is not a run summary: pass --overwrite true to re-run")
    return summary


def summary_line(summary: dict[str, Any]) -> str:
    """The one line an agent script prints at the end."""
    return (f"{summary['run_dir']}: normalized score {summary['final_normalized_score']:.1f} (last), "
            f"{summary['last_k_mean_normalized_score']:.1f} (mean of last {summary['last_k']}), "
            f"{summary['best_normalized_score']:.1f} (best)")
