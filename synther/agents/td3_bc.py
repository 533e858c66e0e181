"""TD3+BC (Fujimoto & Gu 2021, https://arxiv.org/abs/2106.06860), following CORL's td3_bc.py.

Critic: clipped double-Q with target policy smoothing. Actor (every `policy_freq` updates): maximise
λ·Q1(s, π(s)) with λ = α / mean|Q1|, plus behaviour cloning ‖π(s) − a‖². Targets move only on actor updates.

Tensors carry a leading seed dimension (Agent's stacked seeds): batches are (seeds, batch, ·), the actor an
ensemble of one member per seed, the critic of two per seed (seed k's are members 2k and 2k + 1).
"""
from dataclasses import dataclass

import torch

from synther.agents.buffer import Batch, seed_major
from synther.agents.networks import (Agent, adam, critic_input, EnsembleMLP, frozen_copy, return_bounds,
                                     seed_critic_input, soft_update)
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
    stackable = True
    precisions = ("fp32", "bf16")

    def __init__(self, cfg: TD3BCConfig, obs_dim: int, action_dim: int, max_action: float,
                 device: torch.device | str = "cpu", seeds: int = 1) -> None:
        self.cfg, self.max_action, self.seeds = cfg, max_action, seeds
        self.actor = EnsembleMLP(obs_dim, action_dim, cfg.hidden_dim, cfg.n_hidden, members=seeds).to(device)
        self.actor_target = frozen_copy(self.actor)
        self.critic = EnsembleMLP(obs_dim + action_dim, 1, cfg.hidden_dim, cfg.n_hidden, members=2 * seeds,
                                  layer_norm=cfg.critic_layer_norm).to(device)
        self.critic_target = frozen_copy(self.critic)
        self.actor_optimizer = adam(self.actor.parameters(), lr=cfg.actor_lr)
        self.critic_optimizer = adam(self.critic.parameters(), lr=cfg.critic_lr)
        self.total_it = 0
        # each seed's TD-target range (seeds, 1): its own training rewards' (bound_targets), else unbounded
        self.target_low = torch.full((seeds, 1), -float("inf"), device=device)
        self.target_high = torch.full((seeds, 1), float("inf"), device=device)
        self._actor_loss = torch.zeros(seeds, device=device)

    @property
    def graph_period(self) -> int:
        """Updates per CUDA-graph cycle (synther.agents.graphs): which branches run depends only on total_it mod
        policy_freq."""
        return self.cfg.policy_freq

    def fit_to_data(self, reward_low: float, reward_high: float) -> None:
        if self.cfg.bound_targets:
            low, high = return_bounds(reward_low, reward_high, self.cfg.discount)
            self.target_low.fill_(low)
            self.target_high.fill_(high)

    def policy(self, observations: torch.Tensor, target: bool = False) -> torch.Tensor:
        """(seeds, batch, obs) -> each seed's actions (seeds, batch, act) in [-max_action, max_action]."""
        return torch.tanh((self.actor_target if target else self.actor)(observations)) * self.max_action

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        obs, actions, rewards, next_obs, dones = seed_major(batch)  # (seeds, batch, ·)
        seeds = obs.shape[0]
        self.total_it += 1

        with torch.no_grad():
            noise = (self.normal_like(actions) * cfg.policy_noise).clamp(-cfg.noise_clip, cfg.noise_clip)
            next_actions = (self.policy(next_obs, target=True) + noise * self.max_action).clamp(
                -self.max_action, self.max_action)
            target_q = self.critic_target(seed_critic_input(next_obs, next_actions, 2)).view(seeds, 2, -1)
            target_q = rewards + (1.0 - dones) * cfg.discount * target_q.min(1).values
            if cfg.bound_targets:  # no return can leave this range: growth beyond it is extrapolation feeding itself
                target_q = target_q.clamp(self.target_low, self.target_high)

        q = self.critic(seed_critic_input(obs, actions, 2)).view(seeds, 2, -1)
        critic_loss = (q - target_q.unsqueeze(1)).pow(2).mean(-1).sum(1)  # (seeds,): each seed's two MSEs
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.sum().backward()  # seeds share no parameter: each gets its own loss's gradient
        self.critic_optimizer.step()

        if self.total_it % cfg.policy_freq == 0:
            pi = self.policy(obs)
            # each seed's first critic (members 0, 2, 4, ...), parameters detached: the gradient flows to π only
            q1 = self.critic(critic_input(obs, pi), detach_params=True, member=slice(0, None, 2))
            lmbda = cfg.alpha / q1.abs().mean(-1).detach()
            actor_loss = -lmbda * q1.mean(-1) + (pi - actions).pow(2).mean((-2, -1))  # (seeds,)
            self.actor_optimizer.zero_grad(set_to_none=True)
            actor_loss.sum().backward()
            self.actor_optimizer.step()
            soft_update(self.critic_target, self.critic, cfg.tau)
            soft_update(self.actor_target, self.actor, cfg.tau)
            self._actor_loss = actor_loss.detach()

        return {"critic_loss": critic_loss.detach(), "actor_loss": self._actor_loss}

    @torch.no_grad()
    def act(self, observations: torch.Tensor, seed_index: int | None = 0) -> torch.Tensor:
        """Seed `seed_index`'s actions for (batch, obs); seed_index None: every seed's, (seeds, batch, obs) ->
        (seeds, batch, act)."""
        return torch.tanh(self.actor(observations, member=seed_index)) * self.max_action
