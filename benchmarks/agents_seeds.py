"""Probe for issue 17: K seeds of TD3+BC as ONE stacked network vs K separate runs, on one device.

Three ways to train K seeds, each timed here in the same run on the same random data (HalfCheetah's shapes, batch
256, CORL's 2×256 networks):

  single      our TD3BC agent, one seed, one process: updates/s; K sequential runs get this throughput
  concurrent  K processes of `single` started together on the same device: the sum of their updates/s
  stacked     one process, one agent whose actor is a K-member ensemble and critic a 2K-member ensemble (batched
              matmuls, one Adam over stacked weights = K independent Adams): K × its updates/s in seed-updates/s

With --cuda_graph true (CUDA only), `single` and `stacked` are also timed with two whole updates (batch
sampling, both losses, backward, Adam with capturable=True, target updates) captured as one CUDA graph and
replayed: a GPU update of 2×256 networks at batch 256 is bound by kernel launches, which replay removes. One
seed goes through the trainer's own --cuda_graph path (synther.agents.graphs.GraphedUpdates); the stacked agent
through a capture of the same recipe here.

Prints seed-updates/s for each and the ratios stacked / concurrent and stacked / single. A probe of the speed
only: the stacked agent here has no evaluation, checkpoints or per-seed random streams (the sweep does not use
it); its update follows ours line by line with a leading seed dimension.

  python benchmarks/agents_seeds.py --device cuda --seeds 5
  python benchmarks/agents_seeds.py --device cpu --seeds 3 --seconds 10
"""
import argparse
import json
import subprocess
import sys
import time
from typing import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from synther.agents.buffer import ReplayBuffer  # noqa: E402
from synther.agents.graphs import WARMUP_CYCLES, GraphedUpdates, capturable_optimizers  # noqa: E402
from synther.agents.networks import EnsembleMLP, adam, critic_input, frozen_copy, soft_update  # noqa: E402
from synther.agents.td3_bc import TD3BC, TD3BCConfig  # noqa: E402

OBS, ACT, BATCH, ROWS = 17, 6, 256, 200_000


class StackedTD3BC:
    """TD3+BC for K seeds at once: tensors carry a leading seed dimension (K, batch, ...)."""

    def __init__(self, cfg: TD3BCConfig, seeds: int, device: str) -> None:
        self.cfg, self.k = cfg, seeds
        self.actor = EnsembleMLP(OBS, ACT, cfg.hidden_dim, cfg.n_hidden, members=seeds).to(device)
        self.actor_target = frozen_copy(self.actor)
        # members 2k and 2k+1 are seed k's two critics
        self.critic = EnsembleMLP(OBS + ACT, 1, cfg.hidden_dim, cfg.n_hidden, members=2 * seeds).to(device)
        self.critic_target = frozen_copy(self.critic)
        self.actor_optimizer = adam(self.actor.parameters(), lr=cfg.actor_lr)
        self.critic_optimizer = adam(self.critic.parameters(), lr=cfg.critic_lr)
        self.total_it = 0

    def _q(self, net: EnsembleMLP, obs: torch.Tensor, actions: torch.Tensor, detach: bool = False) -> torch.Tensor:
        x = critic_input(obs, actions).repeat_interleave(2, dim=0)  # (2K, batch, in)
        return net(x, detach_params=detach).view(self.k, 2, -1)  # (K, 2, batch)

    def update(self, obs, actions, rewards, next_obs, dones) -> None:
        cfg = self.cfg
        self.total_it += 1
        with torch.no_grad():
            noise = (torch.randn_like(actions) * cfg.policy_noise).clamp(-cfg.noise_clip, cfg.noise_clip)
            next_actions = (torch.tanh(self.actor_target(next_obs)) + noise).clamp(-1.0, 1.0)
            target_q = self._q(self.critic_target, next_obs, next_actions).min(1).values  # (K, batch)
            target_q = rewards + (1.0 - dones) * cfg.discount * target_q
        q = self._q(self.critic, obs, actions)
        critic_loss = (q - target_q.unsqueeze(1)).pow(2).mean(-1).sum()  # each seed's loss, summed over seeds
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_optimizer.step()
        if self.total_it % cfg.policy_freq == 0:
            pi = torch.tanh(self.actor(obs))
            q1 = self._q(self.critic, obs, pi, detach=True)[:, 0]  # (K, batch)
            lmbda = cfg.alpha / q1.abs().mean(-1, keepdim=True).detach()  # per seed, as in the single agent
            actor_loss = (-(lmbda * q1).mean(-1) + (pi - actions).pow(2).mean((-2, -1))).sum()
            self.actor_optimizer.zero_grad(set_to_none=True)
            actor_loss.backward()
            self.actor_optimizer.step()
            soft_update(self.critic_target, self.critic, cfg.tau)
            soft_update(self.actor_target, self.actor, cfg.tau)


def random_buffer(device: str) -> ReplayBuffer:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from agents import random_dataset

    return ReplayBuffer(random_dataset(ROWS, OBS, ACT, seed=0), device, seed=0)


def timed(step, seconds: float, sync) -> float:
    """Updates/s of `step` over about `seconds` after a warm-up."""
    for _ in range(20):
        step()
    sync()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(20):
            step()
        sync()
        done += 20
    return done / (time.perf_counter() - start)


def graphed(body: Callable[[], None]) -> Callable[[], None]:
    """`body` (two stacked updates) captured once as a CUDA graph; returns its replay. Warm-up runs on a side
    stream, as torch's whole-network capture recipe asks (the trainer's GraphedUpdates does the same for one seed)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(WARMUP_CYCLES):
            body()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body()
    return graph.replay


def single_rate(device: str, seconds: float, start_at: float = 0.0, cuda_graph: bool = False) -> float:
    buffer = random_buffer(device)
    agent = TD3BC(TD3BCConfig(alpha=10.0), OBS, ACT, 1.0, device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    if cuda_graph:  # the trainer's --cuda_graph path: a policy_freq cycle replayed, batches drawn in the graph
        cycles = GraphedUpdates(agent, buffer, BATCH)
        return cycles.period * timed(cycles.run, seconds, sync)
    agent.update(buffer.sample(BATCH))
    sync()
    while time.time() < start_at:  # concurrent children start their timed loops together
        time.sleep(0.01)
    return timed(lambda: agent.update(buffer.sample(BATCH)), seconds, sync)


def stacked_rate(device: str, seeds: int, seconds: float, cuda_graph: bool = False) -> float:
    buffer = random_buffer(device)
    agent = StackedTD3BC(TD3BCConfig(alpha=10.0), seeds, device)
    gen = torch.Generator(device=device).manual_seed(0)
    splits = (OBS, ACT, 1, OBS, 1)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    chunk = {"i": 1000, "idx": None}

    def update(indices: torch.Tensor) -> None:
        rows = buffer.data.index_select(0, indices).view(seeds, BATCH, -1)
        obs, act, rew, nxt, done = torch.split(rows, splits, dim=-1)
        agent.update(obs, act, rew.squeeze(-1), nxt, done.squeeze(-1))

    def step() -> None:
        if chunk["i"] == 1000:  # indices drawn in bulk, as the replay buffer does
            chunk["idx"], chunk["i"] = torch.randint(ROWS, (1000, seeds * BATCH), generator=gen, device=device), 0
        update(chunk["idx"][chunk["i"]])
        chunk["i"] += 1

    if cuda_graph:
        capturable_optimizers(agent)

        def body() -> None:
            for _ in range(2):
                update(torch.randint(ROWS, (seeds * BATCH,), device=device))

        return 2 * seeds * timed(graphed(body), seconds, sync)
    return timed(step, seconds, sync) * seeds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seeds", type=int, nargs="+", default=[3, 5], help="K values to measure")
    ap.add_argument("--seconds", type=float, default=8.0, help="timed seconds per measurement")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    ap.add_argument("--cuda_graph", type=lambda v: v.lower() in ("1", "true", "yes"), default=False,
                    help="also time single and stacked as replayed CUDA graphs (CUDA only)")
    ap.add_argument("--child", type=float, default=None, help=argparse.SUPPRESS)  # start time of a concurrent child
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.child is not None:
        print(json.dumps({"rate": single_rate(args.device, args.seconds, args.child)}))
        return
    print(f"torch {torch.__version__}, device {args.device}"
          f"{' (' + torch.cuda.get_device_name() + ')' if args.device.startswith('cuda') else ''}, "
          f"{args.threads} thread(s) per process, batch {BATCH}, TD3+BC 2×256; seed-updates/s")
    single = single_rate(args.device, args.seconds)
    print(f"single seed, one process: {single:.0f}", flush=True)
    print("| K | K sequential runs | K concurrent processes | stacked, one process | stacked / concurrent | "
          "stacked / sequential |")
    print("|---|---|---|---|---|---|")
    for k in args.seeds:
        start_at = time.time() + 15.0  # time for the children to import and build their agents
        children = [subprocess.Popen([sys.executable, __file__, "--device", args.device, "--threads",
                                      str(args.threads), "--seconds", str(args.seconds), "--child", str(start_at)],
                                     stdout=subprocess.PIPE, text=True) for _ in range(k)]
        concurrent = sum(json.loads(c.communicate()[0].strip().splitlines()[-1])["rate"] for c in children)
        stacked = stacked_rate(args.device, k, args.seconds)
        print(f"| {k} | {single:.0f} | {concurrent:.0f} | {stacked:.0f} | {stacked / concurrent:.2f}× | "
              f"{stacked / single:.2f}× |", flush=True)
    if args.cuda_graph:
        graph_single = single_rate(args.device, args.seconds, cuda_graph=True)
        print(f"\nCUDA graph, single seed: {graph_single:.0f} ({graph_single / single:.2f}× eager single)")
        for k in args.seeds:
            graph_stacked = stacked_rate(args.device, k, args.seconds, cuda_graph=True)
            print(f"CUDA graph, stacked K={k}: {graph_stacked:.0f} ({graph_stacked / single:.2f}× eager single, "
                  f"{graph_stacked / graph_single:.2f}× graphed single)", flush=True)


if __name__ == "__main__":
    main()
