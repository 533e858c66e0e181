"""TD3+BC (Fujimoto & Gu 2021, https://arxiv.org/abs/2106.06860), following CORL's td3_bc.py.

Critic: clipped double-Q with target policy smoothing. Actor (every `policy_freq` updates): maximise
λ·Q1(s, π(s)) with λ = α / mean|Q1|, plus behaviour cloning ‖π(s) − a‖². Targets move only on actor updates.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from synther.agents.buffer import Batch
from synther.agents.networks import Agent, adam, EnsembleMLP, critic_input, frozen_copy, mlp, return_bounds, soft_update
from synther.agents.trainer import AgentConfig


@dataclass
class TD3BCConfig(AgentConfig):
    actor_lr: float = 3e-4  # actor learning rate
    critic_lr: float = 3e-4  # critic learning rate
    tau: float = 0.005  # target network update rate
    policy_noise: float = 0.2  # std of the noise added to target actions (× max_action)
    noise_clip: float = 0.5  # range the target noise is clipped to (× max_action)
    policy_freq: int = 2  # actor and targets are updated every this many critic updates
    alpha: float = 2.5  # α: weight of the Q term against behaviour cloning
    hidden_dim: int = 256  # width of actor and critic hidden layers
    n_hidden: int = 2  # hidden layers of actor and critics
    critic_layer_norm: bool = False  # LayerNorm after each critic hidden layer (ReBRAC's critic; bounds extrapolation)
    bound_targets: bool = False  # clip TD targets to the returns the training rewards allow, [r_min, r_max]/(1 − γ)


class TD3BC(Agent):
    name = "td3_bc"

    def __init__(self, cfg: TD3BCConfig, obs_dim: int, action_dim: int, max_action: float,
                 device: torch.device | str = "cpu") -> None:
        self.cfg, self.max_action = cfg, max_action
        hidden = [cfg.hidden_dim] * cfg.n_hidden
        self.actor = mlp([obs_dim, *hidden, action_dim], output_activation=nn.Tanh).to(device)
        self.actor_target = frozen_copy(self.actor)
        self.critic = EnsembleMLP(obs_dim + action_dim, 1, cfg.hidden_dim, cfg.n_hidden, members=2,
                                  layer_norm=cfg.critic_layer_norm).to(device)
        self.critic_target = frozen_copy(self.critic)
        self.actor_optimizer = adam(self.actor.parameters(), lr=cfg.actor_lr)
        self.critic_optimizer = adam(self.critic.parameters(), lr=cfg.critic_lr)
        self.total_it = 0
        self.target_low, self.target_high = -float("inf"), float("inf")
        self._actor_loss = torch.zeros((), device=device)

    @property
    def graph_period(self) -> int:
        """Updates per CUDA-graph cycle (synther.agents.graphs): which branches run depends only on total_it mod
        policy_freq."""
        return self.cfg.policy_freq

    def fit_to_data(self, reward_low: float, reward_high: float) -> None:
        if self.cfg.bound_targets:
            self.target_low, self.target_high = return_bounds(reward_low, reward_high, self.cfg.discount)

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        obs, actions, rewards, next_obs, dones = batch
        self.total_it += 1

        with torch.no_grad():
            noise = (torch.randn_like(actions) * cfg.policy_noise).clamp(-cfg.noise_clip, cfg.noise_clip)
            next_actions = (self.actor_target(next_obs) * self.max_action + noise * self.max_action).clamp(
                -self.max_action, self.max_action)
            target_q = self.critic_target(critic_input(next_obs, next_actions)).min(0).values
            target_q = rewards + (1.0 - dones) * cfg.discount * target_q
            if cfg.bound_targets:  # no return can leave this range: growth beyond it is extrapolation feeding itself
                target_q = target_q.clamp(self.target_low, self.target_high)

        q = self.critic(critic_input(obs, actions))  # (2, batch)
        critic_loss = F.mse_loss(q, target_q.expand_as(q), reduction="none").mean(1).sum()
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_optimizer.step()

        if self.total_it % cfg.policy_freq == 0:
            pi = self.actor(obs) * self.max_action
            q1 = self.critic(critic_input(obs, pi), detach_params=True, member=0)
            lmbda = cfg.alpha / q1.abs().mean().detach()
            actor_loss = -lmbda * q1.mean() + F.mse_loss(pi, actions)
            self.actor_optimizer.zero_grad(set_to_none=True)
            actor_loss.backward()
            self.actor_optimizer.step()
            soft_update(self.critic_target, self.critic, cfg.tau)
            soft_update(self.actor_target, self.actor, cfg.tau)
            self._actor_loss = actor_loss.detach()

        return {"critic_loss": critic_loss.detach(), "actor_loss": self._actor_loss}

    @torch.no_grad()
    def act(self, observations: torch.Tensor) -> torch.Tensor:
        return self.actor(observations) * self.max_action
