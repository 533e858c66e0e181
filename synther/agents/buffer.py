"""The tensor replay buffer the agents' updates sample from, and the statistics it normalizes with.

DP hygiene: every statistic the agent uses (state mean/std, reward scale) is computed from the data the buffer is
given. When that is synthetic, nothing is computed from, or even read from, the sensitive dataset. Where that data
comes from is synther.agents.data's business.
"""
from typing import Any, NamedTuple

import numpy as np
import torch

from synther.data import TransitionDataset
from synther.errors import UserError

STATE_STD_EPS = 1e-3  # CORL's compute_mean_std(states, eps=1e-3)


class Batch(NamedTuple):
    """One batch of (normalized) transitions; rewards and dones are (batch,)."""

    observations: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_observations: torch.Tensor
    dones: torch.Tensor


def seed_major(batch: Batch) -> Batch:
    """A batch as (seeds, batch, ·) tensors (rewards and dones (seeds, batch)): one seed's batch gains a leading
    seed dimension of 1 (views); a stacked batch is returned as it is."""
    if batch.rewards.dim() == 2:
        return batch
    return Batch(*(t.unsqueeze(0) for t in batch))


def stacked_batch(buffers: list["ReplayBuffer"], batch_size: int) -> Batch:
    """One batch from each seed's buffer (its own rows, drawn by its own generator), stacked (seeds, batch, ·)."""
    return Batch(*(torch.stack(parts) for parts in zip(*(b.sample(batch_size) for b in buffers))))


def state_statistics(observations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CORL's state normalization: mean and std (+1e-3) of the observations given."""
    obs = observations.astype(np.float64)
    return obs.mean(0).astype(np.float32), (obs.std(0) + STATE_STD_EPS).astype(np.float32)


def reward_scale_from_returns(ds: TransitionDataset, max_episode_steps: int) -> float:
    """CORL's reward normalization for locomotion: max_episode_steps / (max return − min return) over the episodes
    of `ds` (split at terminals, timeouts and every max_episode_steps rows). Needs data with episode structure."""
    if ds.timeouts is None and not ds.terminals.any():
        raise UserError(
            f"{ds.source}: --normalize_reward needs episode boundaries (terminals or timeouts) to compute the return "
            "range; unordered transitions such as synthetic samples have none (use --normalize_reward false)"
        )
    ends = ds.terminals.astype(bool) | (ds.timeouts if ds.timeouts is not None else False)
    returns, ret, length = [], 0.0, 0
    for r, end in zip(ds.rewards.tolist(), ends.tolist()):
        ret += r
        length += 1
        if end or length == max_episode_steps:
            returns.append(ret)
            ret, length = 0.0, 0
    if len(returns) < 2 or max(returns) == min(returns):
        raise UserError(f"{ds.source}: --normalize_reward needs at least two episodes with different returns")
    return max_episode_steps / (max(returns) - min(returns))


class ReplayBuffer:
    """All transitions as ONE (N, 2·obs + act + 2) tensor on the training device, normalized once up front.

    A batch is one gather (`index_select`) of rows whose indices were drawn in bulk, `chunk` batches at a time,
    from a generator seeded by the run's seed; the pieces are views into it. State statistics come from the data
    passed in (see module docstring).
    """

    def __init__(
        self,
        ds: TransitionDataset,
        device: torch.device | str = "cpu",
        normalize_states: bool = True,
        reward_scale: float = 1.0,
        reward_bias: float = 0.0,
        seed: int = 0,
        chunk: int = 1000,
    ) -> None:
        self.device = torch.device(device)
        self.size, self.obs_dim, self.action_dim = ds.size, ds.obs_dim, ds.action_dim
        if normalize_states:
            self.state_mean, self.state_std = state_statistics(ds.observations)
        else:
            self.state_mean = np.zeros(ds.obs_dim, np.float32)
            self.state_std = np.ones(ds.obs_dim, np.float32)
        self.reward_scale, self.reward_bias = float(reward_scale), float(reward_bias)
        rows = np.concatenate(
            [
                self.normalize(ds.observations),
                ds.actions,
                (ds.rewards * self.reward_scale + self.reward_bias)[:, None],
                self.normalize(ds.next_observations),
                ds.terminals[:, None],
            ],
            axis=1,
        ).astype(np.float32)
        self.data = torch.from_numpy(rows).to(self.device)
        s, a = self.obs_dim, self.action_dim
        self._splits = (s, a, 1, s, 1)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        self.chunk = chunk
        self._indices: torch.Tensor | None = None
        self._batch_size = 0
        self._next = 0
        self._chunk_state: torch.Tensor | None = None  # the generator's state before the current chunk was drawn
        self._resume_at = 0  # set_rng_state's cursor, applied when the chunk is drawn again
        self._graph_indices: torch.Tensor | None = None  # graph_sample's chunk and cursor (see draw_graph_chunk)
        self._graph_cursor = torch.zeros(1, dtype=torch.long, device=self.device)

    def normalize(self, observations: np.ndarray) -> np.ndarray:
        return (observations - self.state_mean) / self.state_std

    def sample(self, batch_size: int) -> Batch:
        if self._indices is None or self._next == self.chunk or batch_size != self._batch_size:
            self._chunk_state = self.generator.get_state()
            self._indices = torch.randint(self.size, (self.chunk, batch_size), generator=self.generator,
                                          device=self.device)
            self._batch_size, self._next, self._resume_at = batch_size, self._resume_at, 0
        rows = self.data.index_select(0, self._indices[self._next])
        self._next += 1
        obs, act, rew, next_obs, done = torch.split(rows, self._splits, dim=1)
        return Batch(obs, act, rew.squeeze(1), next_obs, done.squeeze(1))

    def draw_graph_chunk(self, batch_size: int) -> None:
        """Start a new chunk for `graph_sample`: the same draw `sample` makes (same generator, same shape), written
        into a fixed tensor so that a captured CUDA graph keeps reading it; the cursor on the device goes back to 0."""
        indices = torch.randint(self.size, (self.chunk, batch_size), generator=self.generator, device=self.device)
        if self._graph_indices is None or self._graph_indices.shape != indices.shape:
            self._graph_indices = indices
        else:
            self._graph_indices.copy_(indices)
        self._graph_cursor.zero_()

    def graph_sample(self) -> Batch:
        """The next batch of the current graph chunk, read at a cursor that lives on the device (no host sync, so a
        CUDA graph can capture it): the batches `sample` would give, in the same order. The caller starts a new chunk
        (`draw_graph_chunk`) every `chunk` batches."""
        rows = self.data.index_select(0, self._graph_indices.index_select(0, self._graph_cursor).squeeze(0))
        self._graph_cursor.add_(1)
        obs, act, rew, next_obs, done = torch.split(rows, self._splits, dim=1)
        return Batch(obs, act, rew.squeeze(1), next_obs, done.squeeze(1))

    def reward_range(self) -> tuple[float, float]:
        """Smallest and largest reward in the buffer (after scaling)."""
        rewards = self.data[:, self.obs_dim + self.action_dim]
        return float(rewards.min()), float(rewards.max())

    def statistics(self) -> dict[str, Any]:
        return {"state_mean": self.state_mean.tolist(), "state_std": self.state_std.tolist(),
                "reward_scale": self.reward_scale, "reward_bias": self.reward_bias}

    def rng_state(self) -> tuple[torch.Tensor, int]:
        """Where sampling stands: the generator's state before the current chunk, and the batches taken from it
        (a checkpoint keeps both, so a resumed run draws the batches the uninterrupted one would)."""
        if self._indices is None:
            return self.generator.get_state(), 0
        return self._chunk_state, self._next

    def set_rng_state(self, state: torch.Tensor, cursor: int = 0) -> None:
        self.generator.set_state(state)
        self._indices = None  # the next sample draws the chunk again from the restored generator ...
        self._resume_at = cursor  # ... and continues it where it stood
