"""maze2d-like datasets on gymnasium-robotics PointMaze, generated offline.

Semantics follow D4RL's maze2d collection (scripts/generation/generate_maze2d_datasets.py):
- one long stream in a single simulation: a planner picks a random free goal cell, plans a shortest path over the
  maze grid, and a PD controller follows the cell-centre waypoints; Gaussian noise (std 0.5) is added to every
  action; when the goal is reached a new random goal is drawn and the ball moves on without a reset;
- every `max_episode_steps` rows is marked as a timeout (truncation); the simulation itself is not reset, so each
  row's next observation is the true successor;
- the observation is [x, y, vx, vy]; the reward is the dense maze2d reward exp(-‖(x, y) − g‖) for the fixed
  evaluation goal g of the maze (D4RL relabels its files to the evaluation goal the same way); terminals are 0.

Differences from D4RL's v1 files, which is why the datasets are named `ptr-maze2d-*` and carry their own score
constants: the mazes are gymnasium-robotics' copies (coordinates centred on the map, y pointing up), the ball is
MuJoCo 3+/4 PointMaze-v3 physics, and velocities are clipped to ±5 as that env does.
"""

import contextlib
import io
import os
from collections import deque
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from tqdm.auto import tqdm

from synther.data.dataset import TransitionDataset
from synther.errors import UserError
from synther.utils.provenance import package_versions


@dataclass(frozen=True)
class MazeSpec:
    layout: tuple[tuple[int, ...], ...]  # 1 = wall, 0 = free; row 0 is the top of the map
    goal_cell: tuple[int, int]  # fixed evaluation goal (D4RL's 'G' cell of the same layout)
    max_episode_steps: int  # D4RL's evaluation horizon for this maze


def _layout(rows: list[str]) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(1 if c == "#" else 0 for c in row) for row in rows)


MAZES: dict[str, MazeSpec] = {
    "open": MazeSpec(_layout(["#######", "#.....#", "#.....#", "#.....#", "#######"]), (2, 3), 150),
    "umaze": MazeSpec(_layout(["#####", "#...#", "###.#", "#...#", "#####"]), (1, 1), 300),
    "medium": MazeSpec(
        _layout(["########", "#..##..#", "#..#...#", "##...###", "#..#...#", "#.#..#.#", "#...#..#", "########"]),
        (6, 6),
        600,
    ),
    "large": MazeSpec(
        _layout(
            [
                "############",
                "#....#.....#",
                "#.##.#.#.#.#",
                "#......#...#",
                "#.####.###.#",
                "#..#.#.....#",
                "##.#.#.#.###",
                "#..#...#...#",
                "############",
            ]
        ),
        (7, 9),
        800,
    ),
}


def dataset_name(maze: str) -> str:
    """Registry name of a generated maze dataset; `ptr-` marks it as ours, not D4RL's maze2d-*-v1."""
    return f"ptr-maze2d-{maze}-dense-v0"


def _spec(maze: str) -> MazeSpec:
    try:
        return MAZES[maze]
    except KeyError:
        raise UserError(f"unknown maze '{maze}' (choose from: {', '.join(MAZES)})") from None


class Maze2dEnv(gym.Wrapper):
    """PointMaze with D4RL maze2d's interface: Box observation [x, y, vx, vy], a goal fixed at the centre of the
    maze's evaluation cell, dense reward exp(-distance) and no termination (episodes end by time limit only)."""

    def __init__(self, maze: str = "umaze") -> None:
        spec = _spec(maze)
        PointMazeEnv = _point_maze_env_class()
        inner = PointMazeEnv(
            maze_map=[list(r) for r in spec.layout], reward_type="dense", continuing_task=True, reset_target=False
        )
        # gymnasium-robotics writes each maze's MuJoCo XML to a new file in the temp folder and never removes it (one
        # per env: thousands over a sweep, as evaluation builds an env per episode slot); MuJoCo has loaded it by now
        with contextlib.suppress(OSError, TypeError):
            os.remove(getattr(inner, "tmp_xml_file_path", None))
        super().__init__(inner)
        self.maze_name = maze
        self.spec_maze = spec
        self.goal_xy = inner.maze.cell_rowcol_to_xy(np.array(spec.goal_cell)).astype(np.float64)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(4,), dtype=np.float64)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        options = {"goal_cell": np.array(self.spec_maze.goal_cell), **(options or {})}
        obs, info = self.env.reset(seed=seed, options=options)
        inner = self.env.unwrapped
        inner.goal = self.goal_xy.copy()  # remove the env's ±0.25 goal jitter: one fixed goal per maze
        inner.update_target_site_pos()
        return obs["observation"].copy(), info

    def step(self, action):
        obs, _, _, truncated, info = self.env.step(action)
        pos = obs["observation"][:2]
        reward = float(np.exp(-np.linalg.norm(pos - self.goal_xy)))
        return obs["observation"].copy(), reward, False, truncated, info


def _point_maze_env_class():
    # gymnasium_robotics prints a release notice about Adroit envs on import; it does not concern PointMaze.
    with contextlib.redirect_stderr(io.StringIO()):
        from gymnasium_robotics.envs.maze.point_maze import PointMazeEnv
    return PointMazeEnv


def make_maze2d_env(maze: str = "umaze", max_episode_steps: int | None = None) -> gym.Env:
    """Evaluation env of a generated maze2d dataset, with D4RL's horizon unless told otherwise."""
    from gymnasium.wrappers import TimeLimit

    return TimeLimit(Maze2dEnv(maze), max_episode_steps or _spec(maze).max_episode_steps)


class WaypointController:
    """Shortest path over free grid cells (BFS from the goal), then PD control towards the next cell centre.

    Gains were tuned on PointMaze-v3 (a force-actuated ball): p pulls towards the waypoint, d damps velocity.
    """

    def __init__(self, env: Maze2dEnv, p_gain: float = 10.0, d_gain: float = 1.0, reach_radius: float = 0.1) -> None:
        self.maze = env.env.unwrapped.maze
        self.free = {(i, j) for i, row in enumerate(env.spec_maze.layout) for j, v in enumerate(row) if v == 0}
        self.p_gain, self.d_gain, self.reach_radius = p_gain, d_gain, reach_radius
        self._dist: dict[tuple[int, int], int] = {}
        self.goal_cell: tuple[int, int] | None = None
        self.goal_xy: np.ndarray | None = None

    def set_goal(self, cell: tuple[int, int], xy: np.ndarray | None = None) -> None:
        self.goal_cell = cell
        self.goal_xy = self.cell_xy(cell) if xy is None else np.asarray(xy, dtype=np.float64)
        self._dist = {cell: 0}
        queue = deque([cell])
        while queue:
            c = queue.popleft()
            for n in self._neighbours(c):
                if n not in self._dist:
                    self._dist[n] = self._dist[c] + 1
                    queue.append(n)

    def cell_xy(self, cell: tuple[int, int]) -> np.ndarray:
        return self.maze.cell_rowcol_to_xy(np.array(cell)).astype(np.float64)

    def cell_of(self, xy: np.ndarray) -> tuple[int, int]:
        # The env's own xy->cell map truncates towards zero; rounding against cell centres is exact for any sign.
        scale = self.maze.maze_size_scaling
        row = int(np.floor((self.maze.y_map_center - xy[1]) / scale))
        col = int(np.floor((xy[0] + self.maze.x_map_center) / scale))
        return row, col

    def _neighbours(self, c: tuple[int, int]):
        for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            n = (c[0] + di, c[1] + dj)
            if n in self.free:
                yield n

    def reached(self, pos: np.ndarray) -> bool:
        return bool(np.linalg.norm(pos - self.goal_xy) <= 0.5 * self.maze.maze_size_scaling)

    def act(self, obs: np.ndarray) -> np.ndarray:
        pos, vel = obs[:2], obs[2:4]
        cell = self.cell_of(pos)
        if cell not in self._dist or cell == self.goal_cell:
            target = self.goal_xy
        else:
            nxt = min(self._neighbours(cell), key=lambda n: self._dist.get(n, 1 << 30))
            target = self.cell_xy(nxt)
        action = self.p_gain * (target - pos) - self.d_gain * vel
        return np.clip(action, -1.0, 1.0)


@dataclass
class MazeCollectConfig:
    name: str = "umaze"  # which maze: open, umaze, medium or large
    num_steps: int = 0  # transitions to record; 0 = D4RL's size for the maze (open/umaze 1M, medium 2M, large 4M)
    action_noise: float = 0.5  # std of Gaussian noise added to the controller's actions (D4RL maze2d used 0.5)


# D4RL's sizes; at ~25k steps/s on one core even the large maze takes under 4 minutes.
DEFAULT_STEPS = {"open": 1_000_000, "umaze": 1_000_000, "medium": 2_000_000, "large": 4_000_000}


def collect_maze2d(cfg: MazeCollectConfig, seed: int = 0, progress: bool = True) -> TransitionDataset:
    """Generate a maze2d-like dataset (see the module docstring). `seed` drives the simulator, goals and noise."""
    spec = _spec(cfg.name)
    if cfg.num_steps < 0 or cfg.action_noise < 0:
        raise UserError(f"maze.num_steps and maze.action_noise must be >= 0, got {cfg.num_steps}, {cfg.action_noise}")
    n = cfg.num_steps or DEFAULT_STEPS[cfg.name]
    env = Maze2dEnv(cfg.name)
    ctrl = WaypointController(env)
    rng = np.random.default_rng(seed)
    free_cells = sorted(ctrl.free)

    obs_buf = np.empty((n + 1, 4), dtype=np.float32)
    act_buf = np.empty((n, 2), dtype=np.float32)
    rew_buf = np.empty(n, dtype=np.float32)
    goal_buf = np.empty((n, 2), dtype=np.float32)
    obs, _ = env.reset(seed=seed)
    obs_buf[0] = obs

    def new_goal(pos: np.ndarray) -> None:
        here = ctrl.cell_of(pos)
        choices = [c for c in free_cells if c != here]
        ctrl.set_goal(choices[rng.integers(len(choices))])

    new_goal(obs[:2])
    goals_reached = 0
    for t in tqdm(range(n), desc=f"maze2d-{cfg.name}", unit="step", disable=not progress, mininterval=1.0):
        action = ctrl.act(obs)
        if cfg.action_noise > 0:
            action = action + cfg.action_noise * rng.standard_normal(2)
        action = np.clip(action, -1.0, 1.0)
        obs, reward, _, _, _ = env.step(action)
        act_buf[t], rew_buf[t], goal_buf[t] = action, reward, ctrl.goal_xy
        obs_buf[t + 1] = obs
        if ctrl.reached(obs[:2]):
            goals_reached += 1
            new_goal(obs[:2])
    env.close()

    timeouts = np.zeros(n, dtype=bool)
    timeouts[spec.max_episode_steps - 1 :: spec.max_episode_steps] = True
    return TransitionDataset(
        observations=obs_buf[:-1],
        actions=act_buf,
        rewards=rew_buf,
        next_observations=obs_buf[1:],
        terminals=np.zeros(n, dtype=np.float32),
        timeouts=timeouts,
        name=dataset_name(cfg.name),
        env_id=f"synther.data.pointmaze:make_maze2d_env(maze={cfg.name!r})",
        source=f"generator:pointmaze:{cfg.name}",
        action_low=-np.ones(2),
        action_high=np.ones(2),
        provenance={
            "generator": "synther.data.pointmaze.collect_maze2d",
            "config": {**vars(cfg), "num_steps": n},
            "seed": seed,
            "semantics": "D4RL maze2d-like stream: planner to random goal cells + PD controller + N(0, noise) "
            "action noise; reward exp(-dist) to the fixed evaluation goal; timeouts every max_episode_steps",
            "evaluation_goal_cell": list(spec.goal_cell),
            "evaluation_goal_xy": env.goal_xy.tolist(),
            "max_episode_steps": spec.max_episode_steps,
            "goals_reached": goals_reached,
            "versions": package_versions(),
        },
    )


def rollout_returns(
    maze: str, policy: str, episodes: int, seed: int = 0, max_episode_steps: int | None = None
) -> np.ndarray:
    """Undiscounted returns on the evaluation env of `maze` for `policy` in {'random', 'expert'}.

    'expert' is the waypoint controller without noise driving to the fixed evaluation goal; 'random' samples
    uniform actions. These two give the normalized-score constants of the generated datasets.
    """
    env = make_maze2d_env(maze, max_episode_steps)
    rng = np.random.default_rng(seed)
    returns = np.empty(episodes)
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        base = env.unwrapped
        ctrl = None
        if policy == "expert":
            ctrl = WaypointController(env.env)
            ctrl.set_goal(MAZES[maze].goal_cell, base.goal)
        elif policy != "random":
            raise ValueError(f"policy must be 'random' or 'expert', got {policy!r}")
        total, done = 0.0, False
        while not done:
            action = ctrl.act(obs) if ctrl else rng.uniform(-1.0, 1.0, size=2)
            obs, reward, terminated, truncated, _ = env.step(action)
            total += reward
            done = terminated or truncated
        returns[ep] = total
    env.close()
    return returns
