"""Where a maze agent's policy goes, and what its critic believes: a diagnostic for TD3+BC's fall on synthetic rows.

Rolls the checkpoint's deterministic policy out in its PointMaze (seeded resets, as the trainer's evaluation) and
prints, cell by cell in the maze's layout: the share of steps spent there, the share of episodes that end there, and
the critic's value Q(s, π(s)) of a ball at rest in the cell (the mean over a 5 × 5 grid of positions in it; members
averaged). A policy whose critic ranks a cell far from the goal above the goal's own parks the ball there.

  python benchmarks/maze_policy.py --checkpoint runs/agents/td3_bc-ptr-maze2d-umaze-dense-v0-eps10-seed0/checkpoint.pt

Agents without a `critic` ensemble (IQL) get the rollout tables only.
"""
import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from synther.agents import get_algorithm  # noqa: E402
from synther.agents.evaluation import episode_seed, eval_target  # noqa: E402
from synther.agents.networks import EnsembleMLP, critic_input  # noqa: E402
from synther.agents.trainer import make_policy  # noqa: E402
from synther.errors import UserError  # noqa: E402


def load_agent(state: dict, env):
    """(agent, its state normalization (mean, std) as tensors) from a trainer checkpoint, built for `env` as the
    trainer builds it."""
    agent_class, config_class = get_algorithm(state["algorithm"])
    known = set(config_class.__dataclass_fields__)
    cfg = config_class(**{k: v for k, v in state["config"].items() if k in known and not isinstance(v, dict)})
    max_action = float(np.max(np.abs(np.concatenate([env.action_space.low, env.action_space.high]))))
    agent = agent_class(cfg, env.observation_space.shape[0], env.action_space.shape[0], max_action)
    agent.load_state_dict(state["agent"])
    agent.train_mode(False)
    mean, std = (torch.as_tensor(np.asarray(state[k]), dtype=torch.float32) for k in ("state_mean", "state_std"))
    return agent, mean, std


def probe(path: str | Path, episodes: int = 30, horizon: int | None = None, seed: int | None = None) -> dict:
    """Rollout and value tables of a maze agent's checkpoint (arrays shaped like the maze layout, `free` marking its
    free cells); episodes start as the run's own evaluations do unless `seed` says otherwise."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    target = eval_target(state["config"]["dataset"])
    env = target.make_env(horizon)
    if not hasattr(env.unwrapped, "maze"):
        raise UserError(f"{state['config']['dataset']}: not a PointMaze dataset")
    agent, mean, std = load_agent(state, env)
    policy = make_policy(agent, SimpleNamespace(state_mean=mean, state_std=std), torch.device("cpu"))
    seed = state["config"]["seed"] if seed is None else seed
    maze = env.unwrapped.maze
    free = np.asarray(maze.maze_map) == 0
    cell = lambda xy: tuple(int(c) for c in maze.cell_xy_to_rowcol(xy))  # noqa: E731

    occupancy, ends, returns = np.zeros(free.shape), np.zeros(free.shape), []
    for ep in range(episodes):
        obs, _ = env.reset(seed=episode_seed(seed, ep))
        total, done = 0.0, False
        while not done:
            occupancy[cell(obs[:2])] += 1
            obs, reward, terminated, truncated, _ = env.step(policy(obs[None])[0])
            total, done = total + reward, terminated or truncated
        ends[cell(obs[:2])] += 1
        returns.append(total)
    values = np.full(free.shape, np.nan)
    critic = getattr(agent, "critic", None)
    if isinstance(critic, EnsembleMLP):
        offsets = np.stack(np.meshgrid(np.linspace(-0.3, 0.3, 5), np.linspace(-0.3, 0.3, 5)), -1).reshape(-1, 2)
        for rc in zip(*np.nonzero(free)):
            xy = maze.cell_rowcol_to_xy(np.array(rc)) + offsets
            s = (torch.as_tensor(np.concatenate([xy, np.zeros_like(xy)], 1), dtype=torch.float32) - mean) / std
            with torch.no_grad():
                values[rc] = float(critic(critic_input(s, agent.act(s))).mean())
    score = float(np.mean(target.normalize(np.array(returns))))
    return {"step": state["step"], "return": float(np.mean(returns)), "score": score, "free": free,
            "occupancy": 100 * occupancy / occupancy.sum(), "ends": 100 * ends / episodes, "values": values}


def grid(table: np.ndarray, fmt: str = "{:6.1f}") -> str:
    """A maze-shaped table; '#' where the value is NaN (walls, or no critic)."""
    return "\n".join(" ".join("     #" if np.isnan(v) else fmt.format(v) for v in row) for row in table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, nargs="+", help="agent checkpoint(s) (checkpoint.pt of a run)")
    ap.add_argument("--episodes", type=int, default=30, help="episodes per checkpoint (default 30)")
    ap.add_argument("--seed", type=int, default=None,
                    help="seeds the episodes' starts (default: the run's seed, so they start as its evaluations did)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for path in args.checkpoint:
        if not Path(path).is_file():
            ap.error(f"{path}: no such checkpoint")
        try:
            p = probe(path, args.episodes, seed=args.seed)
        except UserError as e:
            ap.exit(2, f"error: {e}\n")
        print(f"{path}: update {p['step']}, mean return {p['return']:.1f}, normalized score {p['score']:.1f}")
        for name, key in [("share of steps (%)", "occupancy"), ("share of episodes ending here (%)", "ends"),
                          ("Q(s, π(s)) of a ball at rest", "values")]:
            print(f"{name}:\n{grid(np.where(p['free'], p[key], np.nan))}")


if __name__ == "__main__":
    main()
