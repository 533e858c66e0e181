"""EDAC (An et al. 2021, https://arxiv.org/abs/2110.01548), following CORL's edac.py: SAC-N with N critics in one
batched ensemble, plus the ensemble-diversity loss η · mean over pairs of the cosine similarity of the critics'
action-gradients. Updates in EDAC's order: temperature α, then actor, then critics.
"""
import math
from dataclasses import dataclass

import torch
from torch import nn

from synther.agents.buffer import Batch
from synther.agents.networks import Agent, adam, EnsembleMLP, critic_input, frozen_copy, soft_update
from synther.agents.trainer import AgentConfig


@dataclass
class EDACConfig(AgentConfig):
    actor_learning_rate: float = 3e-4  # actor learning rate
    critic_learning_rate: float = 3e-4  # critic ensemble learning rate
    alpha_learning_rate: float = 3e-4  # entropy temperature learning rate
    num_critics: int = 10  # N: critics in the ensemble
    eta: float = 1.0  # η: weight of the ensemble-diversity loss
    tau: float = 5e-3  # target critic update rate
    hidden_dim: int = 256  # width of the hidden layers
    n_hidden: int = 3  # hidden layers of actor and critics


class TanhGaussianActor(nn.Module):
    """CORL's EDAC actor: trunk → separate mean and log-σ heads (log σ clipped to [-5, 2]), tanh squashing."""

    def __init__(self, obs_dim: int, action_dim: int, hidden_dim: int, n_hidden: int, max_action: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        dims = [obs_dim] + [hidden_dim] * n_hidden
        for i in range(n_hidden):
            layers += [nn.Linear(dims[i], dims[i + 1]), nn.ReLU()]
        self.trunk = nn.Sequential(*layers)
        self.mu = nn.Linear(hidden_dim, action_dim)
        self.log_sigma = nn.Linear(hidden_dim, action_dim)
        for layer in self.trunk[::2]:  # init as in the EDAC paper
            nn.init.constant_(layer.bias, 0.1)
        for head in (self.mu, self.log_sigma):
            nn.init.uniform_(head.weight, -1e-3, 1e-3)
            nn.init.uniform_(head.bias, -1e-3, 1e-3)
        self.max_action = max_action

    def forward(self, obs: torch.Tensor, deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.trunk(obs)
        mu, log_sigma = self.mu(hidden), self.log_sigma(hidden).clamp(-5.0, 2.0)
        eps = torch.zeros_like(mu) if deterministic else torch.randn_like(mu)
        action = mu + torch.exp(log_sigma) * eps
        tanh_action = torch.tanh(action)
        log_prob = (-0.5 * eps.pow(2) - log_sigma - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_prob = log_prob - torch.log(1 - tanh_action.pow(2) + 1e-6).sum(-1)  # SAC appendix C
        return tanh_action * self.max_action, log_prob


class EDAC(Agent):
    name = "edac"
    graph_period = 1  # synther.agents.graphs: the update runs the same kernels every time

    def __init__(self, cfg: EDACConfig, obs_dim: int, action_dim: int, max_action: float,
                 device: torch.device | str = "cpu") -> None:
        self.cfg, self.max_action, self.action_dim = cfg, max_action, action_dim
        self.actor = TanhGaussianActor(obs_dim, action_dim, cfg.hidden_dim, cfg.n_hidden, max_action).to(device)
        self.critic = EnsembleMLP(obs_dim + action_dim, 1, cfg.hidden_dim, cfg.n_hidden, cfg.num_critics)
        for layer in self.critic.layers:  # init as in the EDAC paper
            nn.init.constant_(layer.bias, 0.1)
        nn.init.uniform_(self.critic.layers[-1].weight, -3e-3, 3e-3)
        nn.init.uniform_(self.critic.layers[-1].bias, -3e-3, 3e-3)
        self.critic = self.critic.to(device)
        self.critic_target = frozen_copy(self.critic)
        self.log_alpha = torch.zeros(1, device=device, requires_grad=True)
        self.target_entropy = -float(action_dim)
        self.actor_optimizer = adam(self.actor.parameters(), lr=cfg.actor_learning_rate)
        self.critic_optimizer = adam(self.critic.parameters(), lr=cfg.critic_learning_rate)
        self.alpha_optimizer = adam([self.log_alpha], lr=cfg.alpha_learning_rate)

    def _diversity_loss(self, action_grads: torch.Tensor) -> torch.Tensor:
        """Mean over the batch of Σ_{i≠j} cos(∇_a Q_i, ∇_a Q_j) / (N − 1); grads are (N, batch, action_dim)."""
        g = action_grads / (action_grads.norm(dim=2, keepdim=True) + 1e-10)
        # Σ_{i≠j} g_i·g_j = ‖Σ_i g_i‖² − Σ_i ‖g_i‖²  (same value as EDAC's masked bmm, without the N×N matrices)
        pair_sum = g.sum(0).pow(2).sum(-1) - g.pow(2).sum((0, 2))
        return pair_sum.mean() / (self.cfg.num_critics - 1)

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        obs, actions, rewards, next_obs, dones = batch
        n = cfg.num_critics

        # temperature (with the actor's current log-probs)
        pi, log_pi = self.actor(obs)
        alpha_loss = (-self.log_alpha * (log_pi.detach() + self.target_entropy)).mean()
        self.alpha_optimizer.zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.alpha_optimizer.step()
        alpha = self.log_alpha.detach().exp()

        # actor
        q_pi = self.critic(critic_input(obs, pi), detach_params=True)  # (N, batch)
        actor_loss = (alpha * log_pi - q_pi.min(0).values).mean()
        self.actor_optimizer.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_optimizer.step()

        # critics: TD to min over the target ensemble with the entropy bonus, plus diversity
        with torch.no_grad():
            next_actions, next_log_pi = self.actor(next_obs)
            q_next = self.critic_target(critic_input(next_obs, next_actions)).min(0).values - alpha * next_log_pi
            q_target = rewards + cfg.discount * (1.0 - dones) * q_next
        ens_actions = actions.unsqueeze(0).expand(n, -1, -1).clone().requires_grad_(True)
        q = self.critic(critic_input(obs.unsqueeze(0).expand(n, -1, -1), ens_actions))  # (N, batch)
        td_loss = (q - q_target).pow(2).mean(1).sum()
        action_grads, = torch.autograd.grad(q.sum(), ens_actions, create_graph=True)
        diversity_loss = self._diversity_loss(action_grads)
        critic_loss = td_loss + cfg.eta * diversity_loss
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_optimizer.step()

        soft_update(self.critic_target, self.critic, cfg.tau)
        return {"alpha_loss": alpha_loss.detach(), "actor_loss": actor_loss.detach(),
                "critic_loss": critic_loss.detach(), "td_loss": td_loss.detach(),
                "diversity_loss": diversity_loss.detach(), "alpha": alpha.squeeze(0)}

    @torch.no_grad()
    def act(self, observations: torch.Tensor) -> torch.Tensor:
        return self.actor(observations, deterministic=True)[0]
