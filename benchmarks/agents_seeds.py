"""K seeds of one agent as ONE stacked network (--stack_seeds K) against K separate one-seed processes (issue 17).

The trainer's own agents (TD3+BC or IQL, CORL's 2×256 networks, batch 256, random transitions with HalfCheetah's
shapes), timed on one device in the same run:

  single      one seed alone in this process: updates/s; K sequential runs get this throughput
  concurrent  K one-seed processes started together (each --threads threads): the sum of their updates/s
  stacked     one process, the agent built with seeds=K, each seed its own replay buffer: K × its updates/s

each in every --precisions (fp32, and bf16: the trainer's --precision bf16, hidden layers under autocast). Prints
seed-updates/s and the ratios stacked / concurrent and stacked / single, against the same precision's arms and
against fp32's. Updates only: evaluation, checkpoints and logging are outside (a real run's wall time:
benchmarks/agents_walltime.py times the agent scripts themselves, one --stack_seeds K process against K processes).

With --cuda_graph true (CUDA only), `single` and `stacked` are also timed with two whole updates (batch sampling,
both losses, backward, Adam with capturable=True, target updates) captured as one CUDA graph and replayed: a GPU
update of 2×256 networks at batch 256 is bound by kernel launches, which replay removes. One seed goes through the
trainer's --cuda_graph path (synther.agents.graphs.GraphedUpdates); the stacked agent (which the trainer does not
graph yet) through a capture of the same recipe here, its batches drawn inside the graph.

  python benchmarks/agents_seeds.py --device cpu --seeds 3 --threads 1 --precisions fp32,bf16
  python benchmarks/agents_seeds.py --device cuda --seeds 5 --cuda_graph true
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from synther.agents import get_algorithm  # noqa: E402
from synther.agents.buffer import Batch, ReplayBuffer, stacked_batch  # noqa: E402
from synther.agents.graphs import WARMUP_CYCLES, GraphedUpdates, capturable_optimizers  # noqa: E402
from synther.agents.networks import Agent  # noqa: E402
from synther.agents.trainer import update_precision  # noqa: E402

OBS, ACT, BATCH, ROWS = 17, 6, 256, 200_000


def random_buffer(device: str, seed: int) -> ReplayBuffer:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from agents import random_dataset

    return ReplayBuffer(random_dataset(ROWS, OBS, ACT, seed=0), device, seed=seed)


def make_agent(algorithm: str, seeds: int, device: str) -> Agent:
    agent_class, config_class = get_algorithm(algorithm)
    overrides = {"alpha": 10.0} if algorithm == "td3_bc" else {}
    torch.manual_seed(0)
    return agent_class(config_class(batch_size=BATCH, **overrides), OBS, ACT, 1.0, device, seeds=seeds)


def timed(step: Callable[[], None], seconds: float, sync: Callable[[], None]) -> float:
    """Calls/s of `step` over about `seconds` after a warm-up."""
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
    """`body` captured once as a CUDA graph after warm-up on a side stream (torch's whole-network recipe); returns
    its replay."""
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


def rate(algorithm: str, seeds: int, precision: str, device: str, seconds: float, start_at: float = 0.0,
         cuda_graph: bool = False) -> float:
    """Seed-updates/s of `seeds` seeds in this process (one seed: the plain agent)."""
    agent = make_agent(algorithm, seeds, device)
    buffers = [random_buffer(device, seed) for seed in range(seeds)]
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    dev = torch.device(device)
    if cuda_graph and seeds == 1:  # the trainer's --cuda_graph path
        cycles = GraphedUpdates(agent, buffers[0], BATCH)
        return cycles.period * timed(cycles.run, seconds, sync)
    if cuda_graph:
        capturable_optimizers(agent)
        data = buffers[0].data

        def body() -> None:
            for _ in range(2):
                rows = data.index_select(0, torch.randint(ROWS, (seeds * BATCH,), device=device)).view(seeds, BATCH, -1)
                parts = torch.split(rows, (OBS, ACT, 1, OBS, 1), dim=-1)
                agent.update(Batch(parts[0], parts[1], parts[2].squeeze(-1), parts[3], parts[4].squeeze(-1)))

        return 2 * seeds * timed(graphed(body), seconds, sync)

    def step() -> None:
        batch = stacked_batch(buffers, BATCH) if seeds > 1 else buffers[0].sample(BATCH)
        with update_precision(precision, dev):
            agent.update(batch)

    step()
    sync()
    while time.time() < start_at:  # concurrent children start their timed loops together
        time.sleep(0.01)
    return seeds * timed(step, seconds, sync)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agent", default="td3_bc", choices=["td3_bc", "iql"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seeds", type=int, nargs="+", default=[3], help="K values to measure")
    ap.add_argument("--seconds", type=float, default=8.0, help="timed seconds per measurement")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    ap.add_argument("--precisions", default="fp32", help="comma-separated: fp32, bf16")
    ap.add_argument("--cuda_graph", type=lambda v: v.lower() in ("1", "true", "yes"), default=False,
                    help="also time single and stacked as replayed CUDA graphs (CUDA only, fp32)")
    ap.add_argument("--child", type=float, default=None, help=argparse.SUPPRESS)  # start time of a concurrent child
    ap.add_argument("--child_precision", default="fp32", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.child is not None:
        print(json.dumps({"rate": rate(args.agent, 1, args.child_precision, args.device, args.seconds, args.child)}))
        return
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    print(f"torch {torch.__version__}, device {args.device}"
          f"{' (' + torch.cuda.get_device_name() + ')' if args.device.startswith('cuda') else ''}, "
          f"{args.threads} thread(s) per process, {args.agent}, batch {BATCH}; seed-updates/s")
    print("| precision | K | single seed | K concurrent processes | stacked, one process | stacked / concurrent | "
          "stacked / single | stacked / fp32 concurrent |")
    print("|---|---|---|---|---|---|---|---|")
    fp32_concurrent: dict[int, float] = {}
    for precision in precisions:
        single = rate(args.agent, 1, precision, args.device, args.seconds)
        for k in args.seeds:
            start_at = time.time() + 15.0  # time for the children to import and build their agents
            children = [subprocess.Popen([sys.executable, __file__, "--agent", args.agent, "--device", args.device,
                                          "--threads", str(args.threads), "--seconds", str(args.seconds),
                                          "--child", str(start_at), "--child_precision", precision],
                                         stdout=subprocess.PIPE, text=True) for _ in range(k)]
            concurrent = sum(json.loads(c.communicate()[0].strip().splitlines()[-1])["rate"] for c in children)
            fp32_concurrent.setdefault(k, concurrent) if precision == "fp32" else None
            stacked = rate(args.agent, k, precision, args.device, args.seconds)
            versus_fp32 = (f"{stacked / fp32_concurrent[k]:.2f}×" if k in fp32_concurrent else "—")
            print(f"| {precision} | {k} | {single:.0f} | {concurrent:.0f} | {stacked:.0f} | "
                  f"{stacked / concurrent:.2f}× | {stacked / single:.2f}× | {versus_fp32} |", flush=True)
    if args.cuda_graph:
        graph_single = rate(args.agent, 1, "fp32", args.device, args.seconds, cuda_graph=True)
        print(f"\nCUDA graph, single seed: {graph_single:.0f}")
        for k in args.seeds:
            graph_stacked = rate(args.agent, k, "fp32", args.device, args.seconds, cuda_graph=True)
            print(f"CUDA graph, stacked K={k}: {graph_stacked:.0f} ({graph_stacked / graph_single:.2f}× graphed "
                  "single)", flush=True)


if __name__ == "__main__":
    main()
