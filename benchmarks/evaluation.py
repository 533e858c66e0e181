"""Evaluation speed: episodes one at a time (one policy call per env step) against side by side (one batched call
per time step for all running episodes), timed in the same process in alternating blocks.

The policy is an untrained TD3+BC actor of CORL's size (2×256) behind the trainer's own make_policy; both ways run
the same episodes (evaluation.episode_seed), so they do the same env work and differ only in how the policy is
called and how the loop is driven. Each round times one full evaluation of --n_episodes each way; the table gives
episodes/s of each and the ratio (medians over rounds).

  python benchmarks/evaluation.py --threads 1
  python benchmarks/evaluation.py --datasets ptr-maze2d-umaze-dense-v0 --n_episodes 50 --rounds 5 --device cuda
"""
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np  # noqa: E402
import torch  # noqa: E402

from synther.agents import get_algorithm  # noqa: E402
from synther.agents.buffer import ReplayBuffer  # noqa: E402
from synther.agents.evaluation import eval_target, run_episodes  # noqa: E402
from synther.agents.trainer import make_policy  # noqa: E402
from synther.cli import parse, run  # noqa: E402
from synther.data import TransitionDataset  # noqa: E402
from synther.utils.device import resolve_device  # noqa: E402


@dataclass
class BenchConfig:
    datasets: str = "ptr-maze2d-umaze-dense-v0,ptr-hopper-random-v0"  # comma-separated registry names (their eval envs; no data is read)
    n_episodes: int = 50  # episodes per evaluation (the quickstart's)
    rounds: int = 3  # evaluations timed each way, alternating
    threads: int = 0  # torch CPU threads (0: torch's default)
    device: str = "cpu"  # cpu, cuda or auto


def untrained_policy(obs_dim: int, action_dim: int, max_action: float, device: torch.device):
    agent_class, config_class = get_algorithm("td3_bc")
    torch.manual_seed(0)
    agent = agent_class(config_class(), obs_dim, action_dim, max_action, device)
    agent.train_mode(False)
    rng = np.random.default_rng(0)  # statistics for make_policy only; no training happens
    stats = TransitionDataset(observations=rng.normal(size=(64, obs_dim)).astype(np.float32),
                              actions=np.zeros((64, action_dim), np.float32), rewards=np.zeros(64, np.float32),
                              next_observations=np.zeros((64, obs_dim), np.float32), terminals=np.zeros(64, np.float32))
    return make_policy(agent, ReplayBuffer(stats, device), device)


def timed(envs: list, policy, n_episodes: int) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        run_episodes(envs, policy, n_episodes, seed=0)
    return time.perf_counter() - start


def main() -> None:
    cfg = parse(BenchConfig, description=__doc__)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}; {cfg.n_episodes} episodes "
          f"per evaluation, {cfg.rounds} alternating rounds (medians)")
    print("| eval env | horizon | one at a time, episodes/s | side by side, episodes/s | side by side / one at a time |")
    print("|---|---|---|---|---|")
    for name in [d.strip() for d in cfg.datasets.split(",") if d.strip()]:
        target = eval_target(name)
        envs = [target.make_env() for _ in range(cfg.n_episodes)]
        space = envs[0].action_space
        policy = untrained_policy(envs[0].observation_space.shape[0], space.shape[0],
                                  float(np.max(np.abs([space.low, space.high]))), device)
        one, side = [], []
        for _ in range(cfg.rounds):
            one.append(timed(envs[:1], policy, cfg.n_episodes))
            side.append(timed(envs, policy, cfg.n_episodes))
        one_s, side_s = float(np.median(one)), float(np.median(side))
        print(f"| {target.describe()['env']} | {target.horizon} | {cfg.n_episodes / one_s:.1f} | "
              f"{cfg.n_episodes / side_s:.1f} | {one_s / side_s:.2f}× |", flush=True)
        for env in envs:
            env.close()


if __name__ == "__main__":
    run(main)
