"""Relabel synthetic rows' s′ and r with a dynamics model fitted to the PUBLIC datasets (post-processing).

DP fine-tuning on locomotion learns where the sensitive data lies (s, a) far better than how it moves (s′ and r given
s, a): on the HalfCheetah stand-in the DP samples' s′ disagree with the simulator 1.6× more than the public model's
or the non-private fine-tune's, and TD3+BC trained on the same rows with the simulator's s′ and r reaches real data's
level (README, issue 14). Where public and sensitive data share the physics (the same robot in the same world), a
model of it fitted on the public transitions is a public fact, and replacing every synthetic s′ and r by its
prediction is post-processing of the samples with public information: no privacy cost. Where the worlds differ
(mazes with other walls) the public model is wrong there: leave it off.

The model is an MLP (s, a) → (s′ − s, r) on standardized inputs and outputs, fitted with AdamW and a cosine rate
from --seed (public data: reproducible by design); 1,000 public rows are held out to report its error.
"""
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from synther.data.dataset import TransitionDataset, TransitionLayout
from synther.errors import UserError

HIDDEN = 256
BATCH = 512
HELD_OUT = 1000


@dataclass
class FitReport:
    rows: int
    steps: int
    held_out_nmse_next_obs: float  # mean over dimensions of MSE / variance of s′ − s on held-out public rows
    held_out_nmse_reward: float


class PublicDynamics(nn.Module):
    def __init__(self, obs_dim: int, action_dim: int) -> None:
        super().__init__()
        self.obs_dim = obs_dim
        self.net = nn.Sequential(nn.Linear(obs_dim + action_dim, HIDDEN), nn.SiLU(), nn.Linear(HIDDEN, HIDDEN),
                                 nn.SiLU(), nn.Linear(HIDDEN, HIDDEN), nn.SiLU(), nn.Linear(HIDDEN, obs_dim + 1))
        for name, size in (("in_mean", obs_dim + action_dim), ("in_std", obs_dim + action_dim),
                           ("out_mean", obs_dim + 1), ("out_std", obs_dim + 1)):
            self.register_buffer(name, torch.zeros(size))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Standardized (s′ − s, r) of standardized (s, a)."""
        return self.net(inputs)

    @torch.no_grad()
    def predict(self, obs: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(s′, r) for raw observations and actions."""
        x = torch.as_tensor(np.concatenate([obs, actions], axis=1), dtype=torch.float32)
        y = self((x - self.in_mean) / self.in_std) * self.out_std + self.out_mean
        y = y.numpy().astype(np.float64)
        return obs + y[:, :self.obs_dim], y[:, self.obs_dim]


def fit_public_dynamics(public: list[TransitionDataset], steps: int, seed: int) -> tuple[PublicDynamics, FitReport]:
    """Fit the model on the public datasets' transitions (timeouts left out: their s′ may be a reset)."""
    obs, act, rew, nxt = [], [], [], []
    for ds in public:
        keep = ~ds.timeouts if ds.timeouts is not None else np.ones(ds.size, dtype=bool)
        obs.append(ds.observations[keep]), act.append(ds.actions[keep])
        rew.append(ds.rewards[keep]), nxt.append(ds.next_observations[keep])
    s, a, r, s2 = (np.concatenate(v).astype(np.float64) for v in (obs, act, rew, nxt))
    if len(s) < 2 * HELD_OUT:
        raise UserError(f"relabel 'public' needs at least {2 * HELD_OUT} public transitions to fit a dynamics model, "
                        f"the public datasets have {len(s)}")
    x = np.concatenate([s, a], axis=1)
    y = np.concatenate([s2 - s, r[:, None]], axis=1)
    with torch.random.fork_rng(devices=[]):  # the MLP's initialization from --seed, leaving the caller's stream alone
        torch.manual_seed(seed)
        model = PublicDynamics(s.shape[1], a.shape[1])
    gen = torch.Generator().manual_seed(seed)
    for name, v in (("in_mean", x.mean(0)), ("in_std", x.std(0) + 1e-6), ("out_mean", y.mean(0)),
                    ("out_std", y.std(0) + 1e-6)):
        getattr(model, name).copy_(torch.as_tensor(v, dtype=torch.float32))
    xt = (torch.as_tensor(x, dtype=torch.float32) - model.in_mean) / model.in_std
    yt = (torch.as_tensor(y, dtype=torch.float32) - model.out_mean) / model.out_std
    order = torch.randperm(len(xt), generator=gen)
    held, train = order[:HELD_OUT], order[HELD_OUT:]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-5)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        batch = train[torch.randint(len(train), (BATCH,), generator=gen)]
        loss = (model(xt[batch]) - yt[batch]).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
    model.eval()
    with torch.no_grad():
        err = (model(xt[held]) - yt[held]).pow(2).mean(0)  # standardized outputs: MSE / variance per dimension
    return model, FitReport(len(s), steps, float(err[:-1].mean()), float(err[-1]))


def relabel_rows(x: np.ndarray, layout: TransitionLayout, model: PublicDynamics) -> None:
    """Replace the s′ and r columns of raw transition vectors `x` in place by the model's prediction at (s, a)."""
    next_obs, reward = model.predict(x[:, layout.obs], x[:, layout.action])
    x[:, layout.next_obs] = next_obs
    x[:, layout.reward] = reward
