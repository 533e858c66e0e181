"""D4RL-style MuJoCo locomotion datasets (random, medium, medium-replay, full-replay), generated offline with SAC.

Semantics, following D4RL's definitions:
- random:        rollouts of a uniform-random policy;
- medium:        rollouts of the SAC policy snapshot taken the first time its evaluation return reaches
                 `medium_target` (D4RL-normalized; ≈ a third of expert). If the budget ends first, the best
                 snapshot is used instead and the side-car says so. Actions are sampled from the stochastic
                 policy, as a behaviour policy would act; evaluations use the same stochastic policy, so the
                 reported score describes the data;
- medium-replay: every transition SAC collected up to the step at which the medium snapshot was taken;
- full-replay:   every transition SAC collected over the whole budget.

Budgets are sized for a 2-core CPU (see LocomotionCollectConfig); D4RL trained to expert over 1M+ steps, which
would take about two hours here per environment. Training resumes from its last checkpoint (every evaluation)
when restarted with the same configuration; a resumed run is valid but not bit-identical to an uninterrupted one.
"""

import dataclasses
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

from synther.data.dataset import TransitionDataset
from synther.errors import UserError
from synther.utils.io import atomic_write_json
from synther.utils.provenance import package_versions

ENVS = {"HalfCheetah-v5": "halfcheetah", "Hopper-v5": "hopper", "Walker2d-v5": "walker2d"}
KINDS = ("random", "medium", "medium-replay", "full-replay")


def dataset_name(env_id: str, kind: str) -> str:
    """Registry name of a generated locomotion dataset; `ptr-` marks it as ours, not D4RL's *-v2 files."""
    return f"ptr-{ENVS[env_id]}-{kind}-v0"


@dataclass
class LocomotionCollectConfig:
    env: str = "HalfCheetah-v5"  # gymnasium id: HalfCheetah-v5, Hopper-v5 or Walker2d-v5
    total_steps: int = 100_000  # SAC environment steps; the full-replay dataset has this many transitions
    medium_target: float = 33.3  # D4RL-normalized evaluation score at which the 'medium' policy is frozen
    eval_every: int = 5_000  # environment steps between evaluations (each also writes a resumable checkpoint)
    eval_episodes: int = 5  # episodes per evaluation
    random_steps: int = 100_000  # transitions in the random dataset
    medium_steps: int = 100_000  # transitions rolled out by the medium policy
    learning_starts: int = 5_000  # uniform-random steps before SAC starts updating
    train_freq: int = 1  # environment steps between SAC updates
    gradient_steps: int = 1  # gradient steps per update
    batch_size: int = 256  # SAC minibatch size
    net_width: int = 256  # hidden width of SAC's two-layer actor and critics
    max_episode_steps: int = 1000  # episode horizon (D4RL: 1000)


def collect_locomotion(
    cfg: LocomotionCollectConfig,
    out_dir: Path,
    seed: int = 0,
    progress: bool = True,
    save: Callable[[TransitionDataset, Path], Any] | None = None,
) -> dict[str, Path]:
    """Generate the four datasets into `out_dir` as ptr-<env>-<kind>-v0.npz (+ side-cars); returns their paths.

    Files already present are kept (delete them to regenerate); unfinished training resumes from `out_dir`.
    """
    from stable_baselines3 import SAC

    if cfg.env not in ENVS:
        raise UserError(f"unknown locomotion env '{cfg.env}' (choose from: {', '.join(ENVS)})")
    for key in ("total_steps", "eval_every", "eval_episodes", "random_steps", "medium_steps", "max_episode_steps"):
        if getattr(cfg, key) <= 0:
            raise UserError(f"locomotion.{key} must be positive, got {getattr(cfg, key)}")
    out_dir = Path(out_dir)
    paths = {kind: out_dir / f"{dataset_name(cfg.env, kind)}.npz" for kind in KINDS}
    save = save or (lambda ds, path: ds.save(path))
    from synther.data.registry import dataset_info

    score = dataset_info(dataset_name(cfg.env, "random")).score
    torch.manual_seed(seed)
    common = {"generator": "synther.data.locomotion.collect_locomotion", "config": dataclasses.asdict(cfg),
              "seed": seed, "versions": package_versions(), "score_constants": dataclasses.asdict(score)}

    if not paths["random"].exists():
        rng = np.random.default_rng(seed)
        env = _make_env(cfg)
        ds, returns = _rollouts(env, lambda obs: rng.uniform(env.action_space.low, env.action_space.high),
                                cfg.random_steps, seed, desc=f"{cfg.env} random", progress=progress)
        save(_finish(ds, cfg, "random", {**common, "policy": "uniform random actions",
                                          **_return_summary(returns, score)}), paths["random"])

    work = out_dir / f".work-{ENVS[cfg.env]}-seed{seed}"
    if not (paths["medium-replay"].exists() and paths["full-replay"].exists() and paths["medium"].exists()):
        state, model = _train(cfg, work, seed, score, progress, SAC)
        buf = model.replay_buffer
        replay = _buffer_dataset(model, buf.pos if not buf.full else buf.buffer_size)
        medium = state["medium"]
        train_info = {**common, "evaluations": state["evals"], "medium_policy": medium}
        save(_finish(replay.subset(np.arange(medium["step"])), cfg, "medium-replay",
                     {**train_info, "policy": f"SAC replay buffer up to step {medium['step']}"}), paths["medium-replay"])
        save(_finish(replay, cfg, "full-replay",
                     {**train_info, "policy": f"SAC replay buffer, all {len(replay)} steps"}), paths["full-replay"])
        model.policy.load_state_dict(torch.load(work / medium["snapshot"], weights_only=True))
        env = _make_env(cfg)
        env.action_space.seed(seed + 1)
        ds, returns = _rollouts(env, lambda obs: model.predict(obs, deterministic=False)[0], cfg.medium_steps,
                                seed + 1, desc=f"{cfg.env} medium", progress=progress)
        save(_finish(ds, cfg, "medium", {**train_info, "policy": f"SAC snapshot at step {medium['step']} "
                                         "(stochastic actions)", **_return_summary(returns, score)}), paths["medium"])
        shutil.rmtree(work, ignore_errors=True)
    return paths


def _make_env(cfg: LocomotionCollectConfig) -> gym.Env:
    return gym.make(cfg.env, max_episode_steps=cfg.max_episode_steps)


def _config_hash(cfg: LocomotionCollectConfig, seed: int) -> str:
    return hashlib.sha256(json.dumps([dataclasses.asdict(cfg), seed], sort_keys=True).encode()).hexdigest()[:16]


def _train(cfg: LocomotionCollectConfig, work: Path, seed: int, score, progress: bool, SAC) -> tuple[dict, Any]:
    """Train SAC, evaluating every cfg.eval_every steps; each evaluation leaves a complete checkpoint in `work`.

    A checkpoint is a folder ckpt-<step> (model + replay buffer) made current by rewriting state.json, so a run
    killed at any moment resumes from the last complete one.
    """
    env = _make_env(cfg)
    state_path = work / "state.json"
    state: dict[str, Any] = {"config_hash": _config_hash(cfg, seed), "evals": [], "medium": None, "best": None,
                             "checkpoint": None}
    model = None
    if state_path.exists():
        saved = json.loads(state_path.read_text())
        if saved.get("config_hash") != state["config_hash"]:
            raise UserError(f"{work} holds an unfinished run with a different configuration; delete it or rerun "
                            f"with the same options")
        state = saved
        ckpt = work / state["checkpoint"]
        model = SAC.load(ckpt / "model.zip", env=env, device="cpu")
        model.load_replay_buffer(ckpt / "replay.pkl")
    if model is None:
        work.mkdir(parents=True, exist_ok=True)
        model = SAC("MlpPolicy", env, seed=seed, device="cpu", buffer_size=cfg.total_steps,
                    learning_starts=cfg.learning_starts, train_freq=cfg.train_freq,
                    gradient_steps=cfg.gradient_steps, batch_size=cfg.batch_size,
                    policy_kwargs={"net_arch": [cfg.net_width, cfg.net_width]}, verbose=0)
    from stable_baselines3.common.logger import Logger

    model.set_logger(Logger(folder=None, output_formats=[]))  # SB3's default logger leaves an SB3-<time> dir in /tmp
    eval_env = _make_env(cfg)
    bar = tqdm(total=cfg.total_steps, initial=model.num_timesteps, desc=f"{cfg.env} SAC", unit="step",
               disable=not progress, mininterval=1.0)
    tick = _BarCallback(bar)
    while model.num_timesteps < cfg.total_steps:
        chunk = min(cfg.eval_every, cfg.total_steps - model.num_timesteps)
        model.learn(chunk, reset_num_timesteps=False, progress_bar=False, callback=tick)
        step = model.num_timesteps
        returns = _evaluate(model, eval_env, cfg.eval_episodes, seed=seed + 10_000 + step)
        entry = {"step": step, **_return_summary(returns, score)}
        state["evals"].append(entry)
        bar.set_postfix(score=f"{entry['normalized_score_mean']:.1f}")
        snapshot = None
        if state["medium"] is None and (state["best"] is None or entry["normalized_score_mean"] >
                                        state["best"]["normalized_score_mean"]):
            snapshot = f"policy-{step}.pt"
            torch.save(model.policy.state_dict(), work / snapshot)
            state["best"] = {**entry, "snapshot": snapshot}
            if entry["normalized_score_mean"] >= cfg.medium_target:
                state["medium"] = {**state["best"], "target_reached": True, "target": cfg.medium_target}
        _checkpoint(model, work, state)
    bar.close()
    if state["medium"] is None:
        state["medium"] = {**state["best"], "target_reached": False, "target": cfg.medium_target}
        atomic_write_json(state_path, state)
    return state, model


def _BarCallback(bar: tqdm):
    from stable_baselines3.common.callbacks import BaseCallback

    class BarCallback(BaseCallback):
        def _on_step(self) -> bool:
            bar.update(1)
            return True

    return BarCallback()


def _checkpoint(model, work: Path, state: dict) -> None:
    name = f"ckpt-{model.num_timesteps}"
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "model.zip")
    model.save_replay_buffer(folder / "replay.pkl")
    previous = state.get("checkpoint")
    state["checkpoint"] = name
    atomic_write_json(work / "state.json", state)  # the commit point: from here on, this checkpoint is current
    if previous and previous != name:
        shutil.rmtree(work / previous, ignore_errors=True)
    for path in work.glob("policy-*.pt"):  # snapshots that are neither the best nor the medium one
        if path.name not in {(state.get("best") or {}).get("snapshot"), (state.get("medium") or {}).get("snapshot")}:
            path.unlink()


def _evaluate(model, env: gym.Env, episodes: int, seed: int) -> np.ndarray:
    returns = np.empty(episodes)
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(model.predict(obs, deterministic=False)[0])
            total += float(reward)
            done = terminated or truncated
        returns[ep] = total
    return returns


def _rollouts(env: gym.Env, policy: Callable[[np.ndarray], np.ndarray], n: int, seed: int, desc: str,
              progress: bool) -> tuple[TransitionDataset, np.ndarray]:
    """Exactly n transitions from consecutive episodes (the last one cut short and marked as a timeout)."""
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    buf = {"observations": np.empty((n, obs_dim), np.float32), "actions": np.empty((n, act_dim), np.float32),
           "rewards": np.empty(n, np.float32), "next_observations": np.empty((n, obs_dim), np.float32),
           "terminals": np.zeros(n, np.float32), "timeouts": np.zeros(n, bool)}
    returns, ep_return, episode = [], 0.0, 0
    obs, _ = env.reset(seed=seed)
    for t in tqdm(range(n), desc=desc, unit="step", disable=not progress, mininterval=1.0):
        action = np.asarray(policy(obs), dtype=np.float32)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        buf["observations"][t], buf["actions"][t], buf["rewards"][t] = obs, action, reward
        buf["next_observations"][t], buf["terminals"][t] = next_obs, float(terminated)
        buf["timeouts"][t] = truncated and not terminated
        ep_return += float(reward)
        if terminated or truncated:
            returns.append(ep_return)
            ep_return, episode = 0.0, episode + 1
            obs, _ = env.reset(seed=seed + episode)
        else:
            obs = next_obs
    if not (buf["terminals"][-1] or buf["timeouts"][-1]):
        buf["timeouts"][-1] = True  # the budget cut the last episode: a truncation, not a terminal
    env.close()
    ds = TransitionDataset(**buf, action_low=env.action_space.low, action_high=env.action_space.high)
    return ds, np.asarray(returns)


def _buffer_dataset(model, n: int) -> TransitionDataset:
    """The first n transitions of SAC's replay buffer (single env), actions mapped back to env units."""
    buf = model.replay_buffer
    dones = buf.dones[:n, 0].astype(bool)
    timeouts = buf.timeouts[:n, 0].astype(bool) & dones
    space = model.env.action_space
    return TransitionDataset(
        observations=buf.observations[:n, 0],
        actions=model.policy.unscale_action(buf.actions[:n, 0]),
        rewards=buf.rewards[:n, 0],
        next_observations=buf.next_observations[:n, 0],  # SB3 stores the true final observation at episode ends
        terminals=(dones & ~timeouts).astype(np.float32),
        timeouts=timeouts,
        action_low=space.low,
        action_high=space.high,
    )


def _return_summary(returns: np.ndarray, score) -> dict[str, Any]:
    if len(returns) == 0:  # rollout budget shorter than one episode
        return {"episodes": 0, "return_mean": None, "normalized_score_mean": None}
    return {"episodes": int(len(returns)), "return_mean": float(returns.mean()), "return_std": float(returns.std()),
            "normalized_score_mean": float(score.normalize(returns.mean()))}


def _finish(ds: TransitionDataset, cfg: LocomotionCollectConfig, kind: str, provenance: dict) -> TransitionDataset:
    return dataclasses.replace(ds, name=dataset_name(cfg.env, kind), env_id=cfg.env,
                               source=f"generator:locomotion:{cfg.env}:{kind}", provenance={**provenance, "kind": kind})
