"""Whole agent updates replayed as one CUDA graph.

On a GPU, an update of CORL-sized networks at batch 256 is bound by kernel launches, not arithmetic: on an H200 one
TD3+BC seed ran 7.35× faster when its updates were captured once and replayed (results/issue17-gpu-session19.md).

A graph holds one cycle of `agent.graph_period` consecutive updates: an agent opts in by declaring that period,
promising that the Python side of its update (which branches run) depends only on the update count modulo it
(TD3+BC: the actor and targets move every policy_freq-th update), so one capture serves every cycle. Each update's
batch is read inside the graph from the replay buffer's index chunk at a cursor on the device, so a graphed run
trains on exactly the rows, in the order, that the eager loop draws. What an update does on the host
(`agent.host_update`: IQL's learning-rate schedule) stays outside the graph and runs once per replayed update, after
the replay (with a cycle of one update, as IQL's, each update reads the lr the eager loop would give it). The
agent's optimizers are switched to capturable=True, their step counts and learning rates moved into device tensors
that the graph reads at each replay (a schedule fills its tensor in place). With capture=False the same cycle runs
eagerly: that is how the CPU tests check the cycle against the plain loop (optimizers are then left as they are:
capturable steps need a GPU).
"""
from typing import Any

import torch

from synther.agents.buffer import ReplayBuffer
from synther.agents.networks import Agent

WARMUP_CYCLES = 3  # eager cycles before capture: optimizer state and cuBLAS workspaces exist before recording


def capturable_optimizers(agent: Agent, capturable: bool = True) -> None:
    """Set capturable on every optimizer of `agent` in place, state kept. On: step counts and learning rates move
    into tensors on the parameters' device, where a replayed graph reads and advances them (a float lr would be
    frozen into the graph at capture). Off: for an eager run resumed from a graphed run's checkpoint (capturable
    steps need a GPU); learning rates become floats again."""
    for value in vars(agent).values():
        if isinstance(value, torch.optim.Optimizer):
            for group in value.param_groups:
                group["capturable"] = capturable
                device = group["params"][0].device
                group["lr"] = (torch.tensor(float(group["lr"]), dtype=torch.float32, device=device) if capturable
                               else float(group["lr"]))
                for param in group["params"] if capturable else []:
                    state = value.state.get(param, {})
                    if "step" in state:
                        state["step"] = torch.as_tensor(state["step"], dtype=torch.float32, device=param.device)


class GraphedUpdates:
    """`run()` performs one cycle of `period` updates, replayed from a CUDA graph after WARMUP_CYCLES eager ones."""

    def __init__(self, agent: Agent, buffer: ReplayBuffer, batch_size: int, capture: bool = True) -> None:
        period = agent.graph_period
        if not period or buffer.chunk % period:
            raise ValueError(f"{agent.name}: no CUDA-graph cycle, or the buffer's chunk ({buffer.chunk}) is not a "
                             f"multiple of it ({period})")
        self.agent, self.buffer, self.batch_size, self.period = agent, buffer, batch_size, period
        self.capture = capture
        # TD3+BC counts updates on the host (its branches follow the count): a replay runs no Python, so the count
        # is advanced here, and a capture (which records without training) must not advance it
        self.counts_updates = hasattr(agent, "total_it")
        self.graph: torch.cuda.CUDAGraph | None = None
        self.losses: dict[str, torch.Tensor] = {}
        self._cycles, self._left_in_chunk = 0, 0
        if capture:
            capturable_optimizers(agent)

    def _cycle(self, host: bool = True) -> dict[str, torch.Tensor]:
        losses: dict[str, torch.Tensor] = {}
        for _ in range(self.period):
            losses = self.agent.device_update(self.buffer.graph_sample())
            if host:
                self.agent.host_update()
        return losses

    def run(self) -> dict[str, torch.Tensor]:
        """`period` updates; returns the last one's losses (0-dim device tensors, overwritten by the next run)."""
        if self._left_in_chunk == 0:
            self.buffer.draw_graph_chunk(self.batch_size)
            self._left_in_chunk = self.buffer.chunk
        self._left_in_chunk -= self.period
        if self.graph is None and self.capture and self._cycles >= WARMUP_CYCLES:
            self._capture()
        if self.graph is not None:
            self.graph.replay()
            if self.counts_updates:
                self.agent.total_it += self.period
            for _ in range(self.period):  # the host's share (a schedule's next lr), queued after the replay
                self.agent.host_update()
            return self.losses
        self._cycles += 1
        if not self.capture:
            return self._cycle()
        side = torch.cuda.Stream()  # torch's capture recipe: warm up on a side stream
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            losses = self._cycle()
        torch.cuda.current_stream().wait_stream(side)
        return losses

    def _capture(self) -> None:
        total_it = self.agent.total_it if self.counts_updates else None  # recording trains nothing: no count
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.losses = self._cycle(host=False)
        if self.counts_updates:
            self.agent.total_it = total_it
        self.graph = graph

    def describe(self) -> dict[str, Any]:
        return {"period": self.period, "captured": self.graph is not None, "warmup_cycles": WARMUP_CYCLES}
