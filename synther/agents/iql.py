"""Implicit Q-Learning (Kostrikov et al. 2021, https://arxiv.org/abs/2110.06169), following CORL's iql.py.

V: expectile regression (τ = iql_tau) of min(Q1, Q2)_target(s, a). Q: r + γ·(1 − d)·V(s'). Actor: advantage-weighted
regression, weights exp(β·(Q − V)) clipped at 100, on a tanh-mean Gaussian with a state-independent log-std;
its learning rate follows a cosine schedule over max_timesteps.

All three losses depend only on the parameters from before the update (every cross term is detached, exactly as
in CORL's three sequential steps), so they are summed and take one backward pass.

Tensors carry a leading seed dimension (Agent's stacked seeds): batches are (seeds, batch, ·); V and the actor are
ensembles of one member per seed, Q of two per seed (seed k's are members 2k and 2k + 1).
"""
import math
from dataclasses import dataclass

import torch
from torch import nn

from synther.agents.buffer import Batch, seed_major
from synther.agents.networks import Agent, adam, EnsembleMLP, frozen_copy, seed_critic_input, soft_update
from synther.agents.trainer import AgentConfig

EXP_ADV_MAX = 100.0
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0


@dataclass
class IQLConfig(AgentConfig):
    actor_lr: float = 3e-4  # actor learning rate (cosine-annealed to 0 over max_timesteps)
    qf_lr: float = 3e-4  # Q-network learning rate
    vf_lr: float = 3e-4  # value-network learning rate
    tau: float = 0.005  # target Q update rate
    beta: float = 3.0  # inverse temperature of the advantage weights (small: BC, large: greedy on Q)
    iql_tau: float = 0.7  # expectile of the value regression
    iql_deterministic: bool = False  # deterministic actor (MSE) instead of the Gaussian policy
    hidden_dim: int = 256  # width of all hidden layers
    n_hidden: int = 2  # hidden layers of actor, Q and V networks


class GaussianPolicy(nn.Module):
    """Tanh-squashed mean, state-independent log-std (CORL's IQL GaussianPolicy), one per seed."""

    def __init__(self, obs_dim: int, action_dim: int, hidden_dim: int, n_hidden: int, seeds: int) -> None:
        super().__init__()
        self.net = EnsembleMLP(obs_dim, action_dim, hidden_dim, n_hidden, members=seeds)
        self.log_std = nn.Parameter(torch.zeros(seeds, 1, action_dim))

    def mean(self, obs: torch.Tensor, seed_index: int | None = None) -> torch.Tensor:
        """(seeds, batch, obs) -> (seeds, batch, act); with seed_index, that seed's for (batch, obs)."""
        return torch.tanh(self.net(obs, member=seed_index))

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """(seeds, batch, ·) -> (seeds, batch)."""
        log_std = self.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
        z = (actions - self.mean(obs)) * torch.exp(-log_std)
        return (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


class IQL(Agent):
    name = "iql"
    graph_period = 1  # synther.agents.graphs: the update runs the same kernels every time
    stackable = True
    precisions = ("fp32", "bf16")

    def __init__(self, cfg: IQLConfig, obs_dim: int, action_dim: int, max_action: float,
                 device: torch.device | str = "cpu", seeds: int = 1) -> None:
        self.cfg, self.max_action, self.seeds = cfg, max_action, seeds
        self.qf = EnsembleMLP(obs_dim + action_dim, 1, cfg.hidden_dim, cfg.n_hidden, members=2 * seeds).to(device)
        self.q_target = frozen_copy(self.qf)
        self.vf = EnsembleMLP(obs_dim, 1, cfg.hidden_dim, cfg.n_hidden, members=seeds).to(device)
        if cfg.iql_deterministic:
            self.actor = EnsembleMLP(obs_dim, action_dim, cfg.hidden_dim, cfg.n_hidden, members=seeds).to(device)
        else:
            self.actor = GaussianPolicy(obs_dim, action_dim, cfg.hidden_dim, cfg.n_hidden, seeds).to(device)
        # one Adam, one parameter group per network (Adam is per-parameter: same as CORL's three optimizers)
        self.optimizer = adam([
            {"params": self.vf.parameters(), "lr": cfg.vf_lr},
            {"params": self.qf.parameters(), "lr": cfg.qf_lr},
            {"params": self.actor.parameters(), "lr": cfg.actor_lr},
        ])
        steps = max(cfg.max_timesteps, 1)
        cosine = lambda t: 0.5 * (1.0 + math.cos(math.pi * min(t, steps) / steps))  # noqa: E731 (CosineAnnealingLR)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, [lambda t: 1.0, lambda t: 1.0, cosine])

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        losses = self.device_update(batch)
        self.host_update()
        return losses

    def host_update(self) -> None:
        self.scheduler.step()  # a float on the host; a graphed run's Adam reads it from a device tensor it fills

    def device_update(self, batch: Batch) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        obs, actions, rewards, next_obs, dones = seed_major(batch)  # (seeds, batch, ·)
        seeds = obs.shape[0]
        critic_in = seed_critic_input(obs, actions, 2)
        with torch.no_grad():
            target_q = self.q_target(critic_in).view(seeds, 2, -1).min(1).values
            next_v = self.vf(next_obs)

        v = self.vf(obs)  # (seeds, batch)
        adv = target_q - v
        value_loss = (torch.abs(cfg.iql_tau - (adv < 0).float()) * adv.pow(2)).mean(-1)

        q_target = rewards + (1.0 - dones) * cfg.discount * next_v
        qs = self.qf(critic_in).view(seeds, 2, -1)
        q_loss = (qs - q_target.unsqueeze(1)).pow(2).mean(-1).mean(1)  # CORL: sum of the two MSEs / 2

        exp_adv = torch.exp(cfg.beta * adv.detach()).clamp(max=EXP_ADV_MAX)
        if cfg.iql_deterministic:
            bc_losses = (torch.tanh(self.actor(obs)) * self.max_action - actions).pow(2).sum(-1)
        else:
            bc_losses = -self.actor.log_prob(obs, actions / self.max_action)
        actor_loss = (exp_adv * bc_losses).mean(-1)  # each loss (seeds,)

        self.optimizer.zero_grad(set_to_none=True)
        # seeds share no parameter: each gets its own losses' gradient
        (value_loss + q_loss + actor_loss).sum().backward()
        self.optimizer.step()
        soft_update(self.q_target, self.qf, cfg.tau)
        return {"value_loss": value_loss.detach(), "q_loss": q_loss.detach(), "actor_loss": actor_loss.detach()}

    @torch.no_grad()
    def act(self, observations: torch.Tensor, seed_index: int | None = 0) -> torch.Tensor:
        """Seed `seed_index`'s actions for (batch, obs); seed_index None: every seed's, (seeds, batch, obs) ->
        (seeds, batch, act)."""
        mean = (torch.tanh(self.actor(observations, member=seed_index)) if self.cfg.iql_deterministic
                else self.actor.mean(observations, seed_index))
        return (mean * self.max_action).clamp(-self.max_action, self.max_action)
