"""Evaluation in the real simulator: N episodes of a policy in the dataset's registered env, returns -> D4RL
normalized scores with the dataset's own constants (config/datasets.yaml).

The env and score constants are looked up by name only; the dataset file itself is never read here, so an agent
trained on synthetic samples is evaluated without touching the sensitive data.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import gymnasium as gym
import numpy as np

from synther.data.formats import read_sidecar
from synther.data.registry import DatasetEntry, dataset_info
from synther.errors import UserError

Policy = Callable[[np.ndarray], np.ndarray]  # observations (B, obs_dim) -> actions (B, action_dim)
SeedsPolicy = Callable[[list[np.ndarray]], list[np.ndarray]]  # each seed's observations -> each seed's actions


@dataclass(frozen=True)
class EvalTarget:
    """Where and how an agent for `dataset` is evaluated."""

    dataset: str  # registry name
    entry: DatasetEntry

    def make_env(self, max_episode_steps: int | None = None) -> gym.Env:
        return self.entry.env.make(max_episode_steps=max_episode_steps or None)

    def normalize(self, returns: np.ndarray | float) -> np.ndarray | float:
        return self.entry.score.normalize(returns)

    @property
    def horizon(self) -> int | None:
        return self.entry.env.max_episode_steps

    def describe(self) -> dict:
        env = self.entry.env
        return {"dataset": self.dataset, "env": env.gym_id or f"{env.entry_point}({env.kwargs})",
                "max_episode_steps": env.max_episode_steps,
                "score": {"min": self.entry.score.min, "max": self.entry.score.max, "origin": self.entry.score.origin}}


def eval_target(dataset: str) -> EvalTarget:
    """The eval env and score constants of `dataset` (a registry name, or a dataset file whose side-car names one),
    without loading any data."""
    name = dataset
    entry = dataset_info(dataset)
    if entry is None and Path(dataset).expanduser().exists():
        name = read_sidecar(Path(dataset).expanduser()).get("name") or ""
        entry = dataset_info(name)
    if entry is None and Path(dataset).suffix:  # looks like a file, not a registry name
        if not Path(dataset).expanduser().exists():
            raise UserError(f"{dataset}: file not found")
    if entry is None:
        raise UserError(
            f"cannot tell which environment evaluates '{dataset}': pass a dataset name from config/datasets.yaml "
            "(or a dataset file whose side-car JSON names one) as --dataset"
        )
    if entry.env is None:
        raise UserError(f"dataset '{name}' has no evaluation environment in this stack (env: null in "
                        "config/datasets.yaml), so agents cannot be scored on it")
    if entry.score is None:
        raise UserError(f"dataset '{name}' has no normalized-score constants in config/datasets.yaml")
    return EvalTarget(name, entry)


def episode_seed(seed: int, episode: int) -> int:
    """The reset seed of episode `episode` of an evaluation seeded with `seed`: each episode starts from its own
    seeded reset, so every evaluation of a run sees the same start states however many episodes run side by side."""
    return int(np.random.SeedSequence([seed, episode]).generate_state(1)[0])


def run_episodes(envs: gym.Env | Sequence[gym.Env], policy: Policy, n_episodes: int, seed: int) -> np.ndarray:
    """Undiscounted returns of `n_episodes` episodes, run side by side on `envs` (one env runs them one after
    another). The policy maps a batch of observations (B, obs_dim) to actions (B, action_dim): one network call per
    time step for all running episodes. Episode i always starts from env.reset(seed=episode_seed(seed, i)), so the
    returns do not depend on how many envs there are (up to float rounding of the batched policy)."""
    return run_seed_episodes(envs, lambda obs: [policy(obs[0])], n_episodes, [seed])[0]


def run_seed_episodes(envs: gym.Env | Sequence[gym.Env], policy: SeedsPolicy, n_episodes: int,
                      seeds: Sequence[int]) -> np.ndarray:
    """Returns (len(seeds), n_episodes) of `n_episodes` episodes for each of several policies (a stacked agent's
    seeds), all run side by side on one pool of `envs` with ONE policy call per time step: policy(observations of
    each seed's running episodes, a list of (B_k, obs_dim) arrays, B_k possibly 0) -> a list of their actions.
    Episode i of policy k starts from env.reset(seed=episode_seed(seeds[k], i)), as it does evaluated alone, so the
    returns do not depend on the grouping. A finished episode's env starts the next pending episode (episode-major:
    every policy's episode 0, then every policy's episode 1, ...); finished envs are never stepped."""
    envs = [envs] if isinstance(envs, gym.Env) else list(envs)
    returns = np.zeros((len(seeds), n_episodes))
    low, high = envs[0].action_space.low, envs[0].action_space.high
    pending = ((k, episode) for episode in range(n_episodes) for k in range(len(seeds)))
    running: list[tuple[int, int, gym.Env]] = []  # (policy, episode, env), in step with `obs`
    obs: list[np.ndarray] = []

    def start(env: gym.Env) -> None:
        k, episode = next(pending, (None, None))
        if k is not None:
            first, _ = env.reset(seed=episode_seed(seeds[k], episode))
            running.append((k, episode, env))
            obs.append(first)

    for env in envs:
        start(env)
    none_running = np.zeros((0, *np.shape(obs[0])), np.float32) if obs else None  # a policy with no episode left
    while running:
        rows = [[i for i, (k, _, _) in enumerate(running) if k == policy_k] for policy_k in range(len(seeds))]
        seed_actions = policy([np.stack([obs[i] for i in r]) if r else none_running for r in rows])
        actions: list[np.ndarray] = [none_running] * len(running)
        for r, a in zip(rows, seed_actions):
            for i, action in zip(r, np.clip(a, low, high)):
                actions[i] = action
        stepping, running, obs = running, [], []
        for (k, episode, env), action in zip(stepping, actions):
            next_obs, reward, terminated, truncated, _ = env.step(action)
            returns[k, episode] += float(reward)
            if terminated or truncated:
                start(env)
            else:
                running.append((k, episode, env))
                obs.append(next_obs)
    return returns


def random_policy(env: gym.Env, seed: int = 0) -> Policy:
    """Uniform actions from the env's action space (the 0 of most normalized scores)."""
    rng = np.random.default_rng(seed)
    low, high = env.action_space.low, env.action_space.high
    return lambda obs: rng.uniform(low, high, size=(len(obs), *low.shape))
