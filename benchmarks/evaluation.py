"""Evaluation speed: episodes one at a time (one policy call per env step) against side by side (one batched call
per time step for all running episodes), timed in the same process in alternating blocks.

The policy is an untrained TD3+BC actor of CORL's size (2×256) behind the trainer's own make_policy; both ways run
the same episodes (evaluation.episode_seed), so they do the same env work and differ only in how the policy is
called and how the loop is driven. Each round times one full evaluation of --n_episodes each way; the table gives
episodes/s of each and the ratio (medians over rounds).

  python benchmarks/evaluation.py --threads 1
  python benchmarks/evaluation.py --datasets ptr-maze2d-umaze-dense-v0 --n_episodes 50 --rounds 5 --device cuda

--seeds K compares, for an untrained K-seed stacked TD3+BC (the trainer's --stack_seeds), the seeds evaluated one
after another (each seed's episodes side by side, one call of its actor per time step) with all K seeds' episodes
side by side (synther.agents.evaluation.run_seed_episodes: one call of the stacked actor per time step), as the
trainer now evaluates, each on the env pool the trainer builds (at most 50 envs); the table gives seed-episodes/s of
each and the ratio.

  python benchmarks/evaluation.py --threads 1 --seeds 3
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
from synther.agents.evaluation import eval_target, run_episodes, run_seed_episodes  # noqa: E402
from synther.agents.trainer import MAX_EVAL_ENVS, make_policy, make_seeds_policy  # noqa: E402
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
    seeds: int = 0  # compare K stacked seeds evaluated one after another with all side by side instead (0: off)


def untrained_agent(obs_dim: int, action_dim: int, max_action: float, device: torch.device, seeds: int = 1):
    """An untrained TD3+BC of `seeds` stacked seeds and one statistics buffer per seed (for the policies' input
    normalization only; no training happens)."""
    agent_class, config_class = get_algorithm("td3_bc")
    torch.manual_seed(0)
    agent = agent_class(config_class(), obs_dim, action_dim, max_action, device, seeds=seeds)
    agent.train_mode(False)
    buffers = []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        zeros = lambda *shape: np.zeros(shape, np.float32)  # noqa: E731
        stats = TransitionDataset(observations=rng.normal(size=(64, obs_dim)).astype(np.float32),
                                  actions=zeros(64, action_dim), rewards=zeros(64),
                                  next_observations=zeros(64, obs_dim), terminals=zeros(64))
        buffers.append(ReplayBuffer(stats, device))
    return agent, buffers


def untrained_policy(obs_dim: int, action_dim: int, max_action: float, device: torch.device):
    agent, buffers = untrained_agent(obs_dim, action_dim, max_action, device)
    return make_policy(agent, buffers[0], device)


def one_seed_policy(agent, buffer: ReplayBuffer, seed_index: int, device: torch.device):
    """Seed `seed_index` of a stacked agent alone (how the trainer evaluated stacked seeds before: one by one)."""
    mean, std = (torch.as_tensor(v, device=device) for v in (buffer.state_mean, buffer.state_std))
    return lambda obs: agent.act((torch.as_tensor(obs, dtype=torch.float32, device=device) - mean) / std,
                                 seed_index).cpu().numpy()


def compare_seeds(envs: list, cfg: "BenchConfig", device: torch.device) -> tuple[float, float]:
    """Median seconds of one evaluation of cfg.seeds stacked seeds: one seed after another, and all together on
    `envs`, the pool the trainer builds for all seeds' episodes."""
    space = envs[0].action_space
    agent, buffers = untrained_agent(envs[0].observation_space.shape[0], space.shape[0],
                                     float(np.max(np.abs([space.low, space.high]))), device, cfg.seeds)
    singles = [one_seed_policy(agent, b, k, device) for k, b in enumerate(buffers)]
    together = make_seeds_policy(agent, buffers, device)
    width = min(MAX_EVAL_ENVS, cfg.n_episodes)  # the pool the trainer builds for one seed's episodes
    apart, joint = [], []
    for _ in range(cfg.rounds):
        start = time.perf_counter()
        with torch.inference_mode():
            for k, policy in enumerate(singles):
                run_episodes(envs[:width], policy, cfg.n_episodes, seed=k)
        apart.append(time.perf_counter() - start)
        start = time.perf_counter()
        with torch.inference_mode():
            run_seed_episodes(envs, together, cfg.n_episodes, list(range(cfg.seeds)))
        joint.append(time.perf_counter() - start)
    return float(np.median(apart)), float(np.median(joint))


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
    if cfg.seeds:
        print(f"{cfg.seeds} stacked seeds")
        print("| eval env | horizon | seeds one after another, seed-episodes/s | all seeds side by side, "
              "seed-episodes/s | together / one after another |")
    else:
        print("| eval env | horizon | one at a time, episodes/s | side by side, episodes/s "
              "| side by side / one at a time |")
    print("|---|---|---|---|---|")
    for name in [d.strip() for d in cfg.datasets.split(",") if d.strip()]:
        target = eval_target(name)
        count = min(MAX_EVAL_ENVS, cfg.n_episodes * cfg.seeds) if cfg.seeds else cfg.n_episodes
        envs = [target.make_env() for _ in range(count)]
        if cfg.seeds:
            apart_s, joint_s = compare_seeds(envs, cfg, device)
            episodes = cfg.n_episodes * cfg.seeds
            print(f"| {target.describe()['env']} | {target.horizon} | {episodes / apart_s:.1f} | "
                  f"{episodes / joint_s:.1f} | {apart_s / joint_s:.2f}× |", flush=True)
            for env in envs:
                env.close()
            continue
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
