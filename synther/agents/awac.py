"""Advantage-Weighted Actor-Critic (Nair et al. 2020, https://arxiv.org/abs/2006.09359), following CORL's awac.py.

Critic: double-Q TD learning with next actions sampled from the policy. Actor (after the critic step, with the
updated critics, as in CORL): weighted log-likelihood of dataset actions, weights exp(A/λ) clipped at 100 with
A = min Q(s, a) − min Q(s, a~π). Gaussian policy with a state-independent log-std, 3×256 networks.
"""
import math
from dataclasses import dataclass

import torch
from torch import nn

from synther.agents.buffer import Batch
from synther.agents.networks import Agent, adam, EnsembleMLP, critic_input, frozen_copy, mlp, soft_update
from synther.agents.trainer import AgentConfig


@dataclass
class AWACConfig(AgentConfig):
    learning_rate: float = 3e-4  # actor and critic learning rate
    tau: float = 5e-3  # target critic update rate
    awac_lambda: float = 1.0 / 3.0  # λ: temperature of the advantage weights (CORL's locomotion configs: 1/3)
    exp_adv_max: float = 100.0  # clip of the advantage weights
    hidden_dim: int = 256  # width of the hidden layers
    n_hidden: int = 3  # hidden layers of actor and critics


class GaussianActor(nn.Module):
    """Untanhed Gaussian, state-independent log-std clamped to [-20, 2]; sampled actions clipped to [-1, 1]·max."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: list[int], max_action: float) -> None:
        super().__init__()
        self.mlp = mlp([obs_dim, *hidden, action_dim])
        self.log_std = nn.Parameter(torch.zeros(action_dim))
        self.max_action = max_action

    def _log_std(self) -> torch.Tensor:
        return self.log_std.clamp(-20.0, 2.0)

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        mean, log_std = self.mlp(obs), self._log_std()
        z = (actions - mean) * torch.exp(-log_std)
        return (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    def sample(self, obs: torch.Tensor) -> torch.Tensor:
        mean = self.mlp(obs)
        action = mean + torch.exp(self._log_std()) * torch.randn_like(mean)
        return action.clamp(-self.max_action, self.max_action)


class AWAC(Agent):
    name = "awac"
    graph_period = 1  # synther.agents.graphs: the update runs the same kernels every time

    def __init__(self, cfg: AWACConfig, obs_dim: int, action_dim: int, max_action: float,
                 device: torch.device | str = "cpu") -> None:
        self.cfg, self.max_action = cfg, max_action
        hidden = [cfg.hidden_dim] * cfg.n_hidden
        self.actor = GaussianActor(obs_dim, action_dim, hidden, max_action).to(device)
        self.critic = EnsembleMLP(obs_dim + action_dim, 1, cfg.hidden_dim, cfg.n_hidden, members=2).to(device)
        self.critic_target = frozen_copy(self.critic)
        self.actor_optimizer = adam(self.actor.parameters(), lr=cfg.learning_rate)
        self.critic_optimizer = adam(self.critic.parameters(), lr=cfg.learning_rate)

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        obs, actions, rewards, next_obs, dones = batch
        b = obs.shape[0]

        with torch.no_grad():
            next_actions = self.actor.sample(next_obs)
            q_next = self.critic_target(critic_input(next_obs, next_actions)).min(0).values
            q_target = rewards + cfg.discount * (1.0 - dones) * q_next
        q = self.critic(critic_input(obs, actions))
        critic_loss = (q - q_target).pow(2).mean(1).sum()
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_optimizer.step()

        with torch.no_grad():
            pi_actions = self.actor.sample(obs)
            q_both = self.critic(torch.cat([critic_input(obs, actions), critic_input(obs, pi_actions)])).min(0).values
            adv = q_both[:b] - q_both[b:]
            weights = torch.exp(adv / cfg.awac_lambda).clamp(max=cfg.exp_adv_max)
        actor_loss = (-self.actor.log_prob(obs, actions) * weights).mean()
        self.actor_optimizer.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_optimizer.step()

        soft_update(self.critic_target, self.critic, cfg.tau)
        return {"critic_loss": critic_loss.detach(), "actor_loss": actor_loss.detach()}

    @torch.no_grad()
    def act(self, observations: torch.Tensor) -> torch.Tensor:
        return self.actor.mlp(observations).clamp(-self.max_action, self.max_action)
