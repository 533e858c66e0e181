"""Gradient updates per second of each offline RL agent, and where the time goes.

CORL network sizes (TD3+BC/IQL 2×256, CQL/AWAC/EDAC 3×256, EDAC 10 critics), batch 256, random transitions with
HalfCheetah's shapes (obs 17, action 6) in the real replay buffer. For each agent: updates/s over a fixed number of
updates (or --seconds, whichever ends first), then one torch.profiler pass to split the time into

  matmul   GEMM kernels (mm/addmm/bmm/baddbmm, forward and backward): the network math proper
  kernels  every other ATen kernel (elementwise ops, reductions, Adam's foreach updates, the batch gather)
  outside  time in no kernel at all: Python, autograd engine and dispatcher overhead

so "outside the network math" = kernels + outside. Also reported: the share of the optimizer steps and of
batch sampling (both included in the split above). The profiler adds per-op overhead, so 'outside' is an upper
bound; updates/s are measured without it.

--reference true (TD3+BC and IQL) times ours against a plain-PyTorch loop with CORL's structure
(benchmarks/corl_reference.py: separate networks and Adams, numpy-indexed buffer, .item() logging) on the same data
in the same process: blocks of --block updates alternate between the two for --rounds rounds, so drifts of the
machine's speed hit both alike; it prints each one's updates/s and the ratio.

--cuda_graph true (CUDA only; the agents with a graph cycle) times the trainer's eager update against its
--cuda_graph path (synther.agents.graphs.GraphedUpdates: each cycle captured once, then replayed) in alternating
blocks on two agents of the same seed, and prints each one's updates/s and the ratio.

  python benchmarks/agents.py                      # all agents, torch's default threads
  python benchmarks/agents.py --threads 1 --agents td3_bc,iql --updates 2000
  python benchmarks/agents.py --threads 1 --agents td3_bc,iql --reference true
  python benchmarks/agents.py --device cuda --agents td3_bc,iql,awac,edac --cuda_graph true

--lent_threads N times one agent's updates on 1 thread against N threads, switching between alternating blocks as
the trainer switches when a local sweep lends its last running jobs the idle cores (synther/utils/threads.py).

  python benchmarks/agents.py --agents td3_bc,iql --lent_threads 2 --block 200 --rounds 6

--bf16 true times each agent's fp32 update against the same update under the trainer's --precision bf16 (hidden
layers under torch.autocast bfloat16, output layers in fp32; TD3+BC and IQL), two agents of the same seed in
alternating blocks: what bf16 gains where the hardware multiplies it natively (AMX, tensor cores).
--precision bf16 with --reference true times ours in bf16 against the (fp32) reference loop.

  python benchmarks/agents.py --threads 1 --agents td3_bc,iql --bf16 true
  python benchmarks/agents.py --threads 1 --agents td3_bc,iql --reference true --precision bf16
"""
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402

from synther.agents import ALGORITHMS, get_algorithm  # noqa: E402
from synther.agents.buffer import ReplayBuffer  # noqa: E402
from synther.agents.trainer import PRECISIONS, update_precision  # noqa: E402
from synther.cli import parse, run  # noqa: E402
from synther.data import TransitionDataset  # noqa: E402
from synther.errors import UserError  # noqa: E402

MATMUL = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear"}


@dataclass
class BenchConfig:
    agents: str = ",".join(ALGORITHMS)  # comma-separated agents to measure
    updates: int = 1000  # updates timed per agent (fewer if --seconds runs out first)
    seconds: float = 20.0  # time limit of the timed loop per agent
    profile_updates: int = 30  # updates under torch.profiler for the time split
    batch_size: int = 256  # transitions per update
    obs_dim: int = 17  # observation size (HalfCheetah)
    action_dim: int = 6  # action size (HalfCheetah)
    rows: int = 200_000  # transitions in the replay buffer
    threads: int = 0  # torch CPU threads (0: torch's default)
    compile: bool = False  # torch.compile the agents' networks (compile time is excluded from the timing)
    device: str = "cpu"  # cpu or cuda
    seed: int = 0  # seeds the data and the networks
    reference: bool = False  # compare with the CORL-structured reference loop instead (td3_bc, iql), alternating blocks
    cuda_graph: bool = False  # compare eager updates with CUDA-graph replays instead (CUDA only), alternating blocks
    lent_threads: int = 0  # compare 1 thread with this many (the cores a sweep lends its last jobs) instead, alternating blocks
    bf16: bool = False  # compare fp32 updates with the same updates under --precision bf16 instead, alternating blocks
    precision: str = "fp32"  # ours' --precision in the reference comparison (fp32 or bf16; the reference is fp32)
    block: int = 50  # updates per block in the reference, CUDA-graph, thread and bf16 comparisons
    rounds: int = 10  # blocks of each loop in the reference, CUDA-graph, thread and bf16 comparisons


def random_dataset(rows: int, obs_dim: int, action_dim: int, seed: int) -> TransitionDataset:
    rng = np.random.default_rng(seed)
    return TransitionDataset(
        observations=rng.normal(size=(rows, obs_dim)).astype(np.float32),
        actions=rng.uniform(-1, 1, size=(rows, action_dim)).astype(np.float32),
        rewards=rng.normal(size=rows).astype(np.float32),
        next_observations=rng.normal(size=(rows, obs_dim)).astype(np.float32),
        terminals=(rng.random(rows) < 0.01).astype(np.float32),
        source="benchmark:random",
    )


def measure(name: str, buffer: ReplayBuffer, cfg: BenchConfig) -> dict:
    agent_class, config_class = get_algorithm(name)
    torch.manual_seed(cfg.seed)
    agent = agent_class(config_class(batch_size=cfg.batch_size), cfg.obs_dim, cfg.action_dim, 1.0, cfg.device)
    if cfg.compile:
        for module in agent.modules():
            module.compile()
    sync = torch.cuda.synchronize if cfg.device.startswith("cuda") else (lambda: None)
    for _ in range(10 if cfg.compile else 3):  # warm-up (and compilation)
        agent.update(buffer.sample(cfg.batch_size))
    sync()

    done, start = 0, time.perf_counter()
    while done < cfg.updates and time.perf_counter() - start < cfg.seconds:
        for _ in range(10):
            agent.update(buffer.sample(cfg.batch_size))
        done += 10
    sync()
    elapsed = time.perf_counter() - start

    n = cfg.profile_updates
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        wall = time.perf_counter()
        for _ in range(n):
            with record_function("sample_batch"):
                batch = buffer.sample(cfg.batch_size)
            agent.update(batch)
        sync()
        wall = time.perf_counter() - wall
    events = prof.key_averages()
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMUL) / 1e6
    kernels = sum(e.self_cpu_time_total for e in events if e.key.startswith("aten::")) / 1e6
    optim = sum(e.cpu_time_total for e in events if e.key.startswith("Optimizer.step")) / 1e6
    sampling = sum(e.cpu_time_total for e in events if e.key == "sample_batch") / 1e6
    return {"agent": name, "updates": done, "updates_per_s": done / elapsed, "ms_per_update": 1e3 * elapsed / done,
            "matmul": matmul / wall, "kernels": (kernels - matmul) / wall, "outside": max(0.0, 1 - kernels / wall),
            "optimizer": optim / wall, "sampling": sampling / wall}


def compare_with_reference(name: str, buffer: ReplayBuffer, ds: TransitionDataset, cfg: BenchConfig) -> dict:
    """Ours and the CORL-structured loop in alternating blocks of cfg.block updates; updates/s of each."""
    from corl_reference import REFERENCES, ReferenceBuffer

    agent_class, config_class = get_algorithm(name)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    ours = agent_class(config_class(batch_size=cfg.batch_size), cfg.obs_dim, cfg.action_dim, 1.0, cfg.device)
    ref = REFERENCES[name](cfg.obs_dim, cfg.action_dim, device=cfg.device)
    ref_buffer = ReferenceBuffer(buffer.normalize(ds.observations), ds.actions, ds.rewards,
                                 buffer.normalize(ds.next_observations), ds.terminals, cfg.device)
    device = torch.device(cfg.device)

    def ours_update() -> None:
        batch = buffer.sample(cfg.batch_size)
        with update_precision(cfg.precision, device):
            ours.update(batch)

    loops = {"ours": ours_update, "reference": lambda: ref.update(ref_buffer.sample(cfg.batch_size))}
    rates = alternate(loops, {"ours": 1, "reference": 1}, cfg)
    return {"agent": name, **rates, "ratio": rates["ours"] / rates["reference"], "updates": cfg.block * cfg.rounds}


def same_seed_agents(name: str, keys: tuple[str, ...], cfg: BenchConfig) -> dict:
    """One agent per key, each built from cfg.seed: identical starting weights."""
    agent_class, config_class = get_algorithm(name)
    agents = {}
    for key in keys:
        torch.manual_seed(cfg.seed)
        agents[key] = agent_class(config_class(batch_size=cfg.batch_size), cfg.obs_dim, cfg.action_dim, 1.0, cfg.device)
    return agents


def compare_with_graph(name: str, ds: TransitionDataset, cfg: BenchConfig) -> dict:
    """The trainer's eager updates and its --cuda_graph replays, alternating blocks; updates/s of each."""
    from synther.agents.graphs import WARMUP_CYCLES, GraphedUpdates

    agents = same_seed_agents(name, ("eager", "graphed"), cfg)
    if not agents["graphed"].graph_period:
        raise UserError(f"--cuda_graph: {name} declares no CUDA-graph cycle")
    eager_buffer, graph_buffer = (ReplayBuffer(ds, cfg.device, seed=cfg.seed) for _ in range(2))
    graphed = GraphedUpdates(agents["graphed"], graph_buffer, cfg.batch_size)
    for _ in range(WARMUP_CYCLES + 1):  # the capture happens here, untimed
        graphed.run()
    period = graphed.period
    loops = {"eager": lambda: agents["eager"].update(eager_buffer.sample(cfg.batch_size)), "graphed": graphed.run}
    rates = alternate(loops, {"eager": 1, "graphed": period}, cfg)
    return {"agent": name, **rates, "ratio": rates["graphed"] / rates["eager"], "updates": cfg.block * cfg.rounds,
            "captured": graphed.graph is not None}


def compare_threads(name: str, buffer: ReplayBuffer, cfg: BenchConfig) -> dict:
    """One agent updated with 1 thread and with cfg.lent_threads threads, switched between blocks as the trainer
    switches when a sweep lends it cores (synther.utils.threads); updates/s of each."""
    agent_class, config_class = get_algorithm(name)
    torch.manual_seed(cfg.seed)
    agent = agent_class(config_class(batch_size=cfg.batch_size), cfg.obs_dim, cfg.action_dim, 1.0, cfg.device)

    def update_with(threads: int) -> None:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        agent.update(buffer.sample(cfg.batch_size))

    loops = {"one": lambda: update_with(1), "lent": lambda: update_with(cfg.lent_threads)}
    rates = alternate(loops, {"one": 1, "lent": 1}, cfg)
    return {"agent": name, **rates, "ratio": rates["lent"] / rates["one"], "updates": cfg.block * cfg.rounds}


def compare_bf16(name: str, buffer: ReplayBuffer, cfg: BenchConfig) -> dict:
    """Two agents of the same seed, one updated in fp32 and one under --precision bf16, alternating blocks."""
    agents = same_seed_agents(name, ("fp32", "bf16"), cfg)
    device = torch.device(cfg.device)

    def bf16_update() -> None:
        batch = buffer.sample(cfg.batch_size)
        with update_precision("bf16", device):
            agents["bf16"].update(batch)

    loops = {"fp32": lambda: agents["fp32"].update(buffer.sample(cfg.batch_size)), "bf16": bf16_update}
    rates = alternate(loops, {"fp32": 1, "bf16": 1}, cfg)
    return {"agent": name, **rates, "ratio": rates["bf16"] / rates["fp32"], "updates": cfg.block * cfg.rounds}


def alternate(loops: dict, updates_per_call: dict[str, int], cfg: BenchConfig) -> dict[str, float]:
    """Updates/s of each loop over cfg.rounds rounds of about cfg.block updates each, the loops taking turns (ABBA:
    none always goes first), so drifts of the machine's speed hit all alike."""
    sync = torch.cuda.synchronize if cfg.device.startswith("cuda") else (lambda: None)
    seconds = dict.fromkeys(loops, 0.0)
    done = dict.fromkeys(loops, 0)
    for step in loops.values():  # warm-up
        for _ in range(5):
            step()
    for r in range(cfg.rounds):
        for key in (list(loops) if r % 2 == 0 else list(reversed(loops))):
            calls = max(1, cfg.block // updates_per_call[key])
            sync()
            start = time.perf_counter()
            for _ in range(calls):
                loops[key]()
            sync()
            seconds[key] += time.perf_counter() - start
            done[key] += calls * updates_per_call[key]
    return {key: done[key] / seconds[key] for key in loops}


def main() -> None:
    cfg = parse(BenchConfig, description=__doc__)
    names = [a.strip() for a in cfg.agents.split(",") if a.strip()]
    for a in names:
        if a not in ALGORITHMS:
            raise UserError(f"unknown agent '{a}' (choose from: {', '.join(ALGORITHMS)})")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    ds = random_dataset(cfg.rows, cfg.obs_dim, cfg.action_dim, cfg.seed)
    buffer = ReplayBuffer(ds, cfg.device, seed=cfg.seed)
    if cfg.cuda_graph and not cfg.device.startswith("cuda"):
        raise UserError("--cuda_graph true needs --device cuda")
    if cfg.precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}")
    for name in names if cfg.bf16 or cfg.precision != "fp32" else []:
        if "bf16" not in get_algorithm(name)[0].precisions:
            raise UserError(f"bf16: {name} trains in fp32 only (its output layers are not all kept in fp32)")
    if cfg.reference and not set(names) <= {"td3_bc", "iql"}:
        raise UserError(f"--reference covers td3_bc and iql, not '{', '.join(sorted(set(names) - {'td3_bc', 'iql'}))}'")
    # each comparison: the two loops' keys and column titles, and how to run it for one agent
    comparisons = [
        (cfg.cuda_graph, ("eager", "graphed"), ("eager upd/s", "CUDA graph upd/s", "graph / eager"),
         lambda name: compare_with_graph(name, ds, cfg)),
        (cfg.lent_threads, ("one", "lent"), ("1 thread upd/s", f"{cfg.lent_threads} threads upd/s", "ratio"),
         lambda name: compare_threads(name, buffer, cfg)),
        (cfg.bf16, ("fp32", "bf16"), ("fp32 upd/s", "autocast bf16 upd/s", "bf16 / fp32"),
         lambda name: compare_bf16(name, buffer, cfg)),
        (cfg.reference, ("ours", "reference"), (f"ours ({cfg.precision}) upd/s", "CORL-structured reference upd/s",
                                                 "ours / reference"),
         lambda name: compare_with_reference(name, buffer, ds, cfg)),
    ]
    for wanted, (first, second), titles, compare in comparisons:
        if not wanted:
            continue
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {cfg.device}, batch "
              f"{cfg.batch_size}; {cfg.rounds} alternating blocks of about {cfg.block} updates each")
        print(f"| agent | {' | '.join(titles)} |")
        print("|---|---|---|---|")
        for name in names:
            r = compare(name)
            print(f"| {name} | {r[first]:.1f} | {r[second]:.1f} | {r['ratio']:.2f}× |", flush=True)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {cfg.device}, batch {cfg.batch_size}, "
          f"obs {cfg.obs_dim}, action {cfg.action_dim}{', torch.compile' if cfg.compile else ''}")
    header = (f"{'agent':<8} {'upd/s':>8} {'ms/upd':>8} {'updates':>8} | {'matmul':>7} {'kernels':>8} {'outside':>8} "
              f"| {'non-matmul':>10} {'optim':>6} {'sample':>7}")
    print(header)
    print("-" * len(header))
    for name in names:
        r = measure(name, buffer, cfg)
        print(f"{r['agent']:<8} {r['updates_per_s']:>8.1f} {r['ms_per_update']:>8.2f} {r['updates']:>8d} | "
              f"{r['matmul']:>7.0%} {r['kernels']:>8.0%} {r['outside']:>8.0%} | {1 - r['matmul']:>10.0%} "
              f"{r['optimizer']:>6.0%} {r['sampling']:>7.1%}", flush=True)


if __name__ == "__main__":
    run(main)
