"""Plain-PyTorch reference loops for the speed comparison in benchmarks/agents.py, written here after the structure
of CORL's single-file TD3+BC and IQL (https://github.com/tinkoff-ai/CORL): one nn.Sequential per network, one
default torch.optim.Adam per network, a replay buffer of five tensors indexed with numpy random indices every step,
the losses computed and stepped one network at a time, targets updated parameter by parameter, and every loss read
back with .item() for logging, as CORL's training loops do. Not used by the package: it is the yardstick.
"""
import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _mlp(sizes: list[int], tanh_output: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    if tanh_output:
        layers.append(nn.Tanh())
    return nn.Sequential(*layers)


def _soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    for t, s in zip(target.parameters(), source.parameters()):
        t.data.copy_((1 - tau) * t.data + tau * s.data)


class ReferenceBuffer:
    """Five tensors; a batch is five fancy-indexing gathers with indices from np.random.randint."""

    def __init__(self, observations, actions, rewards, next_observations, dones, device: str = "cpu") -> None:
        as_t = lambda x: torch.as_tensor(np.asarray(x, dtype=np.float32), device=device)  # noqa: E731
        self.observations, self.actions = as_t(observations), as_t(actions)
        self.rewards, self.dones = as_t(rewards)[:, None], as_t(dones)[:, None]
        self.next_observations = as_t(next_observations)
        self.size = len(self.observations)

    def sample(self, batch_size: int) -> list[torch.Tensor]:
        idx = np.random.randint(0, self.size, size=batch_size)
        return [self.observations[idx], self.actions[idx], self.rewards[idx], self.next_observations[idx],
                self.dones[idx]]


class ReferenceTD3BC:
    def __init__(self, obs_dim: int, action_dim: int, max_action: float = 1.0, hidden: int = 256,
                 device: str = "cpu") -> None:
        self.actor = _mlp([obs_dim, hidden, hidden, action_dim], tanh_output=True).to(device)
        self.actor_target = copy.deepcopy(self.actor)
        self.critic_1 = _mlp([obs_dim + action_dim, hidden, hidden, 1]).to(device)
        self.critic_2 = _mlp([obs_dim + action_dim, hidden, hidden, 1]).to(device)
        self.critic_1_target, self.critic_2_target = copy.deepcopy(self.critic_1), copy.deepcopy(self.critic_2)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=3e-4)
        self.critic_1_optimizer = torch.optim.Adam(self.critic_1.parameters(), lr=3e-4)
        self.critic_2_optimizer = torch.optim.Adam(self.critic_2.parameters(), lr=3e-4)
        self.max_action, self.discount, self.tau, self.alpha = max_action, 0.99, 0.005, 2.5
        self.policy_noise, self.noise_clip, self.policy_freq = 0.2 * max_action, 0.5 * max_action, 2
        self.total_it = 0

    def _q(self, net: nn.Module, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return net(torch.cat([obs, act], 1))

    def update(self, batch: list[torch.Tensor]) -> dict[str, float]:
        log: dict[str, float] = {}
        self.total_it += 1
        obs, act, rew, next_obs, done = batch
        with torch.no_grad():
            noise = (torch.randn_like(act) * self.policy_noise).clamp(-self.noise_clip, self.noise_clip)
            next_act = (self.actor_target(next_obs) * self.max_action + noise).clamp(-self.max_action,
                                                                                     self.max_action)
            target_q = torch.min(self._q(self.critic_1_target, next_obs, next_act),
                                 self._q(self.critic_2_target, next_obs, next_act))
            target_q = rew + (1 - done) * self.discount * target_q
        critic_loss = (F.mse_loss(self._q(self.critic_1, obs, act), target_q)
                       + F.mse_loss(self._q(self.critic_2, obs, act), target_q))
        log["critic_loss"] = critic_loss.item()
        self.critic_1_optimizer.zero_grad()
        self.critic_2_optimizer.zero_grad()
        critic_loss.backward()
        self.critic_1_optimizer.step()
        self.critic_2_optimizer.step()
        if self.total_it % self.policy_freq == 0:
            pi = self.actor(obs) * self.max_action
            q = self._q(self.critic_1, obs, pi)
            actor_loss = -self.alpha / q.abs().mean().detach() * q.mean() + F.mse_loss(pi, act)
            log["actor_loss"] = actor_loss.item()
            self.actor_optimizer.zero_grad()
            actor_loss.backward()
            self.actor_optimizer.step()
            _soft_update(self.critic_1_target, self.critic_1, self.tau)
            _soft_update(self.critic_2_target, self.critic_2, self.tau)
            _soft_update(self.actor_target, self.actor, self.tau)
        return log


class _ReferenceGaussianPolicy(nn.Module):
    def __init__(self, obs_dim: int, action_dim: int, hidden: int) -> None:
        super().__init__()
        self.net = _mlp([obs_dim, hidden, hidden, action_dim], tanh_output=True)
        self.log_std = nn.Parameter(torch.zeros(action_dim))

    def forward(self, obs: torch.Tensor) -> torch.distributions.Distribution:
        std = torch.exp(self.log_std.clamp(-20.0, 2.0))
        return torch.distributions.MultivariateNormal(self.net(obs), scale_tril=torch.diag(std))


class ReferenceIQL:
    def __init__(self, obs_dim: int, action_dim: int, max_steps: int = 1_000_000, hidden: int = 256,
                 device: str = "cpu") -> None:
        self.q1 = _mlp([obs_dim + action_dim, hidden, hidden, 1]).to(device)
        self.q2 = _mlp([obs_dim + action_dim, hidden, hidden, 1]).to(device)
        self.q1_target, self.q2_target = copy.deepcopy(self.q1), copy.deepcopy(self.q2)
        self.vf = _mlp([obs_dim, hidden, hidden, 1]).to(device)
        self.actor = _ReferenceGaussianPolicy(obs_dim, action_dim, hidden).to(device)
        self.v_optimizer = torch.optim.Adam(self.vf.parameters(), lr=3e-4)
        self.q_optimizer = torch.optim.Adam([*self.q1.parameters(), *self.q2.parameters()], lr=3e-4)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=3e-4)
        self.actor_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(self.actor_optimizer, max_steps)
        self.discount, self.tau, self.beta, self.iql_tau = 0.99, 0.005, 3.0, 0.7

    def update(self, batch: list[torch.Tensor]) -> dict[str, float]:
        log: dict[str, float] = {}
        obs, act, rew, next_obs, done = batch
        rew, done = rew.squeeze(-1), done.squeeze(-1)
        with torch.no_grad():
            next_v = self.vf(next_obs).squeeze(-1)
            x = torch.cat([obs, act], 1)
            target_q = torch.min(self.q1_target(x), self.q2_target(x)).squeeze(-1)
        v = self.vf(obs).squeeze(-1)
        adv = target_q - v
        v_loss = torch.mean(torch.abs(self.iql_tau - (adv < 0).float()) * adv ** 2)
        log["value_loss"] = v_loss.item()
        self.v_optimizer.zero_grad()
        v_loss.backward()
        self.v_optimizer.step()
        targets = rew + (1.0 - done) * self.discount * next_v.detach()
        x = torch.cat([obs, act], 1)
        qs = [self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)]
        q_loss = sum(F.mse_loss(q, targets) for q in qs) / len(qs)
        log["q_loss"] = q_loss.item()
        self.q_optimizer.zero_grad()
        q_loss.backward()
        self.q_optimizer.step()
        _soft_update(self.q1_target, self.q1, self.tau)
        _soft_update(self.q2_target, self.q2, self.tau)
        exp_adv = torch.exp(self.beta * adv.detach()).clamp(max=100.0)
        bc_losses = -self.actor(obs).log_prob(act)
        actor_loss = torch.mean(exp_adv * bc_losses)
        log["actor_loss"] = actor_loss.item()
        self.actor_optimizer.zero_grad()
        actor_loss.backward()
        self.actor_optimizer.step()
        self.actor_schedule.step()
        return log


REFERENCES = {"td3_bc": ReferenceTD3BC, "iql": ReferenceIQL}
