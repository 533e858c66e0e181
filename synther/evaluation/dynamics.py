"""Dynamics error: are synthetic transitions consistent with the simulator? (beyond the paper's fidelity scores)

For a subsample of synthetic rows (s, a, r, s'), put the simulator in state s, apply a once, and compare the
simulator's successor ŝ' and reward r̂ with the synthetic s' and r:

    next_obs_nmse = mean over dimensions j of  mean_rows (ŝ'_j − s'_j)² / Var_real(s'_j)
    reward_nmse   =                            mean_rows (r̂ − r)²     / Var_real(r)

Var_real is taken over the real (reference) dataset, so 0 means simulator-consistent and ≈ 2 means the synthetic
successor is as unrelated to s and a as an independent draw from the real data would be.

Supported simulators:
- PointMaze (synther.data.pointmaze, our maze2d-like env): obs = [x, y, vx, vy] = (qpos, qvel); the reward is
  the dense exp(−‖(x, y) − goal‖) of the maze's fixed evaluation goal, computed after the step.
- MuJoCo locomotion HalfCheetah-v5 / Hopper-v5 / Walker2d-v5: obs = (qpos[1:], qvel); the root x position is not
  observed and does not affect dynamics or reward (x velocity comes from the step), so it is set to 0. Hopper and
  Walker2d clip velocities to ±10 in the observation: a row whose s has a clipped velocity cannot be reconstructed
  exactly (counted in `rows_velocity_clipped`; `*_nmse_reconstructible` leave those rows out).
Actions are clipped to the env's action bounds before stepping (counted in `rows_action_clipped`). Rows marked as
timeouts are skipped: some formats store a reset observation as their successor.
"""
import contextlib
import io
import re
import time
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from synther.data.dataset import TransitionDataset
from synther.errors import UserError

LOCOMOTION = ("HalfCheetah-v5", "Hopper-v5", "Walker2d-v5")
_MAZE_ENV_ID = re.compile(r"make_maze2d_env\(maze=['\"](\w+)['\"]\)")
_VAR_FLOOR = 1e-12  # a (near-)constant real dimension is normalized by 1 instead of its variance


class DynamicsUnsupported(UserError):
    """No simulator can reproduce this dataset's transitions; the message says why."""


class _Simulator(ABC):
    """Sets the simulator to an observation, steps one action, returns (next_obs, reward)."""

    env_name: str = ""
    kind: str = ""
    velocity_limit: float | None = None  # observation clips velocities to ± this (Hopper/Walker2d)
    velocity_slice: slice = slice(0, 0)

    def __init__(self, env) -> None:
        self.env = env
        self.low = np.asarray(env.action_space.low, dtype=np.float64)
        self.high = np.asarray(env.action_space.high, dtype=np.float64)

    @abstractmethod
    def step_from(self, obs: np.ndarray, action: np.ndarray) -> tuple[np.ndarray, float]:
        ...

    def close(self) -> None:
        self.env.close()


class _MazeSimulator(_Simulator):
    kind = "pointmaze"

    def __init__(self, env, maze_env) -> None:
        super().__init__(env)
        self.maze_env = maze_env  # the Maze2dEnv wrapper: it computes the dense reward to the fixed goal
        self.point = maze_env.env.unwrapped.point_env
        self.env_name = f"ptr-maze2d ({maze_env.maze_name})"

    def step_from(self, obs, action):
        self.point.set_state(np.asarray(obs[:2], dtype=np.float64), np.asarray(obs[2:4], dtype=np.float64))
        next_obs, reward, *_ = self.maze_env.step(action)
        return np.asarray(next_obs, dtype=np.float64), float(reward)


class _LocomotionSimulator(_Simulator):
    kind = "mujoco-locomotion"

    def __init__(self, env, name: str) -> None:
        super().__init__(env)
        self.base = env.unwrapped
        self.env_name = name
        self.nq, self.nv = self.base.model.nq, self.base.model.nv
        if name in ("Hopper-v5", "Walker2d-v5"):
            self.velocity_limit, self.velocity_slice = 10.0, slice(self.nq - 1, self.nq - 1 + self.nv)

    def step_from(self, obs, action):
        obs = np.asarray(obs, dtype=np.float64)
        qpos = np.concatenate([[0.0], obs[: self.nq - 1]])  # root x: unobserved, irrelevant to dynamics and reward
        self.base.set_state(qpos, obs[self.nq - 1 : self.nq - 1 + self.nv])
        next_obs, reward, *_ = self.base.step(action)
        return np.asarray(next_obs, dtype=np.float64), float(reward)


def _find_maze_env(env):
    from synther.data.pointmaze import Maze2dEnv

    while env is not None:
        if isinstance(env, Maze2dEnv):
            return env
        env = getattr(env, "env", None)
    return None


def make_simulator(dataset: TransitionDataset, *others: TransitionDataset) -> _Simulator:
    """The simulator of `dataset` (else of the first of `others` that names one); DynamicsUnsupported if none.

    Looks for a registry entry with an env (by dataset name), then a known env id (LOCOMOTION, or the env id our
    maze generator records).
    """
    from synther.data.registry import EnvSpec, dataset_info

    spec, label = None, None
    for ds in (dataset, *others):
        entry = dataset_info(ds.name)
        if entry is not None and entry.env is not None:
            spec, label = entry.env, entry.name
            break
        if ds.env_id in LOCOMOTION:
            spec, label = EnvSpec(gym_id=ds.env_id), ds.env_id
            break
        match = _MAZE_ENV_ID.search(ds.env_id or "")
        if match:
            spec = EnvSpec(entry_point="synther.data.pointmaze:make_maze2d_env", kwargs={"maze": match.group(1)})
            label = ds.env_id
            break
    if spec is None:
        names = ", ".join(sorted({str(d.name or d.env_id or d.source) for d in (dataset, *others)}))
        raise DynamicsUnsupported(f"no known simulator for {names} (supported: ptr-maze2d-* PointMaze datasets "
                                  f"and {', '.join(LOCOMOTION)})")
    if spec.gym_id and spec.gym_id not in LOCOMOTION:
        raise DynamicsUnsupported(f"{label}: env {spec.gym_id} is not supported (supported: PointMaze mazes and "
                                  f"{', '.join(LOCOMOTION)})")
    with contextlib.redirect_stderr(io.StringIO()):  # gymnasium_robotics' import notice
        env = spec.make()
    env.reset(seed=0)
    maze = _find_maze_env(env)
    sim: _Simulator
    if maze is not None:
        sim = _MazeSimulator(env, maze)
        want = 4
    elif spec.gym_id in LOCOMOTION and getattr(env.unwrapped, "_exclude_current_positions_from_observation", False):
        sim = _LocomotionSimulator(env, spec.gym_id)
        want = sim.nq - 1 + sim.nv
    else:
        env.close()
        raise DynamicsUnsupported(f"{label}: its environment is neither PointMaze nor {', '.join(LOCOMOTION)} "
                                  f"with the root x position excluded from observations")
    if dataset.obs_dim != want:
        sim.close()
        raise DynamicsUnsupported(f"{label}: observations have {dataset.obs_dim} dimensions but {sim.env_name} "
                                  f"observes {want}")
    return sim


def dynamics_error(
    synthetic: TransitionDataset,
    reference: TransitionDataset | None = None,
    max_rows: int = 10_000,
    seed: int = 0,
) -> dict[str, Any]:
    """Step the simulator from `max_rows` random synthetic rows and compare s' and r (see the module docstring).

    `reference` (the real dataset) supplies the normalizing variances and, if `synthetic` names no environment,
    the simulator. Raises DynamicsUnsupported when no simulator fits.
    """
    t0 = time.perf_counter()
    reference = reference if reference is not None else synthetic
    sim = make_simulator(synthetic, reference)
    candidates = np.arange(synthetic.size)
    skipped_timeouts = 0
    if synthetic.timeouts is not None:
        candidates = np.flatnonzero(~synthetic.timeouts)
        skipped_timeouts = synthetic.size - len(candidates)
    if len(candidates) == 0:
        sim.close()
        raise DynamicsUnsupported("every row is a timeout; no transition to check")
    rng = np.random.default_rng(seed)
    if max_rows and len(candidates) > max_rows:
        candidates = np.sort(rng.choice(candidates, size=max_rows, replace=False))

    obs = synthetic.observations[candidates].astype(np.float64)
    act = synthetic.actions[candidates].astype(np.float64)
    clipped_act = np.clip(act, sim.low, sim.high)
    sim_next = np.full_like(obs, np.nan)
    sim_rew = np.full(len(obs), np.nan)
    with np.errstate(all="ignore"):
        for i in range(len(obs)):
            sim_next[i], sim_rew[i] = sim.step_from(obs[i], clipped_act[i])
    sim.close()

    ok = np.isfinite(sim_next).all(axis=1) & np.isfinite(sim_rew)  # an unphysical state can blow the solver up
    syn_next = synthetic.next_observations[candidates].astype(np.float64)[ok]
    syn_rew = synthetic.rewards[candidates].astype(np.float64)[ok]
    var_next = reference.next_observations.astype(np.float64).var(axis=0)
    var_rew = float(reference.rewards.astype(np.float64).var())
    constant_dims = np.flatnonzero(var_next < _VAR_FLOOR).tolist()
    var_next = np.where(var_next < _VAR_FLOOR, 1.0, var_next)
    var_rew = var_rew if var_rew >= _VAR_FLOOR else 1.0

    sq_next = (sim_next[ok] - syn_next) ** 2
    sq_rew = (sim_rew[ok] - syn_rew) ** 2
    per_dim = sq_next.mean(axis=0) / var_next
    row_nmse = (sq_next / var_next).mean(axis=1)
    clipped = np.zeros(len(obs), dtype=bool)
    if sim.velocity_limit is not None:
        clipped = (np.abs(obs[:, sim.velocity_slice]) >= sim.velocity_limit).any(axis=1)
    exact = ~clipped[ok]  # rows whose simulator state the observation determines
    return {
        "env": sim.env_name,
        "simulator": sim.kind,
        "rows": int(ok.sum()),
        "rows_requested": int(max_rows) if max_rows else None,
        "rows_failed": int((~ok).sum()),
        "rows_skipped_timeouts": int(skipped_timeouts),
        "rows_action_clipped": int((np.abs(clipped_act - act) > 0).any(axis=1).sum()),
        "rows_velocity_clipped": int(clipped.sum()),
        "next_obs_nmse": float(per_dim.mean()),
        "reward_nmse": float(sq_rew.mean() / var_rew),
        # the same over rows without a clipped velocity in s (Hopper/Walker2d), which the simulator can replay exactly
        "next_obs_nmse_reconstructible": float((sq_next[exact].mean(axis=0) / var_next).mean()) if exact.any()
        else None,
        "reward_nmse_reconstructible": float(sq_rew[exact].mean() / var_rew) if exact.any() else None,
        "next_obs_mse": float(sq_next.mean()),
        "reward_mse": float(sq_rew.mean()),
        "next_obs_nmse_per_dim": [{"column": f"next_obs[{j}]", "nmse": float(v)} for j, v in enumerate(per_dim)],
        "row_nmse_quantiles": {q: float(np.quantile(row_nmse, float(q))) for q in ("0.5", "0.9", "0.99")}
        if len(row_nmse) else None,
        "constant_real_dims": constant_dims,
        "definition": "NMSE = mean over dims of mean over rows (sim - synthetic)^2 / Var_real; 0 = the simulator "
                      "reproduces the synthetic successor and reward, ~2 = unrelated to (s, a)",
        "seed": seed,
        "seconds": time.perf_counter() - t0,
    }
