"""Evaluation in the real simulator: N episodes of a policy in the dataset's registered env, returns -> D4RL
normalized scores with the dataset's own constants (config/datasets.yaml).

The env and score constants are looked up by name only; the dataset file itself is never read here, so an agent
trained on synthetic samples is evaluated without touching the sensitive data.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import gymnasium as gym
import numpy as np

from synther.data.formats import read_sidecar
from synther.data.registry import DatasetEntry, dataset_info
from synther.errors import UserError

Policy = Callable[[np.ndarray], np.ndarray]


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


def run_episodes(env: gym.Env, policy: Policy, n_episodes: int, seed: int) -> np.ndarray:
    """Undiscounted returns of `n_episodes` episodes. The env is seeded once with `seed` (as CORL's eval_actor
    does), so every evaluation of a run sees the same start states."""
    returns = np.empty(n_episodes)
    env.action_space.seed(seed)
    low, high = env.action_space.low, env.action_space.high
    for ep in range(n_episodes):
        obs, _ = env.reset(seed=seed if ep == 0 else None)
        total, done = 0.0, False
        while not done:
            action = np.clip(policy(obs), low, high)
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = terminated or truncated
        returns[ep] = total
    return returns


def random_policy(env: gym.Env, seed: int = 0) -> Policy:
    """Uniform actions from the env's action space (the 0 of most normalized scores)."""
    rng = np.random.default_rng(seed)
    low, high = env.action_space.low, env.action_space.high
    return lambda obs: rng.uniform(low, high)
