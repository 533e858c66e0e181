"""Conservative Q-Learning (Kumar et al. 2020, https://arxiv.org/abs/2006.04779), following CORL's cql.py
(itself a port of young-geng/CQL): SAC with a tanh-Gaussian actor and automatic entropy tuning, plus the CQL(H)
regulariser: α_cql · (logsumexp over sampled actions of Q − Q(s, a_data)), with importance sampling.

CORL computes every loss from the parameters before the update and then steps alpha, actor and critics; the
losses share no parameters once the cross terms are detached, so here they are summed into ONE backward pass.
All critic evaluations of a step (data, random, current-policy and next-policy actions: batch·(1 + 3n) rows) go
through the two-member critic ensemble in a single call.
"""
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from synther.agents.buffer import Batch
from synther.agents.networks import Agent, adam, EnsembleMLP, critic_input, frozen_copy, soft_update
from synther.agents.trainer import AgentConfig

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0


@dataclass
class CQLConfig(AgentConfig):
    policy_lr: float = 3e-5  # actor (and entropy temperature) learning rate
    qf_lr: float = 3e-4  # critic learning rate
    soft_target_update_rate: float = 5e-3  # target critic update rate τ
    target_update_period: int = 1  # update the target critics every this many steps
    alpha_multiplier: float = 1.0  # multiplier of the SAC temperature α
    use_automatic_entropy_tuning: bool = True  # learn α towards entropy −action_dim
    backup_entropy: bool = False  # subtract α·log π from the TD target
    cql_n_actions: int = 10  # actions sampled per state for the CQL logsumexp
    cql_importance_sample: bool = True  # importance-sample the logsumexp (subtract log densities)
    cql_lagrange: bool = False  # tune the CQL weight with a Lagrange multiplier
    cql_target_action_gap: float = -1.0  # Lagrange version: target of the CQL gap
    cql_temp: float = 1.0  # temperature of the logsumexp
    cql_alpha: float = 10.0  # weight of the CQL (min-Q) term
    cql_max_target_backup: bool = False  # back up the max over n sampled next actions
    cql_clip_diff_min: float = -math.inf  # lower clip of the CQL gap
    cql_clip_diff_max: float = math.inf  # upper clip of the CQL gap
    orthogonal_init: bool = True  # orthogonal initialisation of the critics
    bc_steps: int = 0  # initial steps of behaviour cloning for the actor
    policy_log_std_multiplier: float = 1.0  # initial multiplier of the actor's log-std output
    hidden_dim: int = 256  # width of the hidden layers
    n_hidden: int = 3  # hidden layers of actor and critics (CORL: q_n_hidden_layers 3, actor 3×256)


class Scalar(nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.constant = nn.Parameter(torch.tensor(value, dtype=torch.float32))

    def forward(self) -> torch.Tensor:
        return self.constant


class TanhGaussianPolicy(nn.Module):
    """CORL's TanhGaussianPolicy: MLP → (mean, log_std); log_std = m·log_std + b with learnable scalars m, b."""

    def __init__(self, obs_dim: int, action_dim: int, hidden_dim: int, n_hidden: int, max_action: float,
                 log_std_multiplier: float = 1.0, log_std_offset: float = -1.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        dims = [obs_dim] + [hidden_dim] * n_hidden
        for i in range(n_hidden):
            layers += [nn.Linear(dims[i], dims[i + 1]), nn.ReLU()]
        layers.append(nn.Linear(dims[-1], 2 * action_dim))
        self.base_network = nn.Sequential(*layers)
        nn.init.xavier_uniform_(self.base_network[-1].weight, gain=1e-2)
        nn.init.constant_(self.base_network[-1].bias, 0.0)
        self.log_std_multiplier = Scalar(log_std_multiplier)
        self.log_std_offset = Scalar(log_std_offset)
        self.action_dim, self.max_action = action_dim, max_action

    def _mean_log_std(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = torch.split(self.base_network(obs), self.action_dim, dim=-1)
        log_std = self.log_std_multiplier() * log_std + self.log_std_offset()
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    @staticmethod
    def _log_prob(pre_tanh: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
        """log density of tanh(pre_tanh) under tanh(N(mean, std)) (TanhTransform's log|det J|)."""
        z = (pre_tanh - mean) * torch.exp(-log_std)
        normal = -0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)
        log_det = 2.0 * (math.log(2.0) - pre_tanh - F.softplus(-2.0 * pre_tanh))
        return (normal - log_det).sum(-1)

    def forward(self, obs: torch.Tensor, deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(action × max_action, log π(action | obs)); obs may carry extra leading dims (e.g. repeated samples)."""
        mean, log_std = self._mean_log_std(obs)
        pre_tanh = mean if deterministic else mean + torch.exp(log_std) * torch.randn_like(mean)
        return torch.tanh(pre_tanh) * self.max_action, self._log_prob(pre_tanh, mean, log_std)

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        mean, log_std = self._mean_log_std(obs)
        a = (actions / self.max_action).clamp(-1 + 1e-6, 1 - 1e-6)
        return self._log_prob(torch.atanh(a), mean, log_std)


def _orthogonal_init(critic: EnsembleMLP) -> None:
    """CORL init_module_weights(orthogonal_init=True): hidden layers orthogonal(√2), last orthogonal(1e-2), bias 0."""
    last = len(critic.layers) - 1
    for i, layer in enumerate(critic.layers):
        for m in range(layer.members):
            nn.init.orthogonal_(layer.weight.data[m].T, gain=math.sqrt(2) if i < last else 1e-2)
        nn.init.zeros_(layer.bias)


class CQL(Agent):
    name = "cql"

    def __init__(self, cfg: CQLConfig, obs_dim: int, action_dim: int, max_action: float,
                 device: torch.device | str = "cpu") -> None:
        self.cfg, self.max_action, self.action_dim = cfg, max_action, action_dim
        self.actor = TanhGaussianPolicy(obs_dim, action_dim, cfg.hidden_dim, cfg.n_hidden, max_action,
                                        cfg.policy_log_std_multiplier).to(device)
        self.critic = EnsembleMLP(obs_dim + action_dim, 1, cfg.hidden_dim, cfg.n_hidden, members=2)
        if cfg.orthogonal_init:
            _orthogonal_init(self.critic)
        else:
            for layer in self.critic.layers[-1:]:
                for m in range(layer.members):
                    nn.init.xavier_uniform_(layer.weight.data[m].T, gain=1e-2)
                nn.init.zeros_(layer.bias)
        self.critic = self.critic.to(device)
        self.critic_target = frozen_copy(self.critic)
        self.log_alpha = Scalar(0.0).to(device)
        self.log_alpha_prime = Scalar(1.0).to(device)
        self.target_entropy = -float(action_dim)
        groups = [{"params": self.actor.parameters(), "lr": cfg.policy_lr},
                  {"params": self.critic.parameters(), "lr": cfg.qf_lr}]
        if cfg.use_automatic_entropy_tuning:
            groups.append({"params": self.log_alpha.parameters(), "lr": cfg.policy_lr})
        if cfg.cql_lagrange:
            groups.append({"params": self.log_alpha_prime.parameters(), "lr": cfg.qf_lr})
        self.optimizer = adam(groups)
        self.total_it = 0

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        obs, actions, rewards, next_obs, dones = batch
        b, n = obs.shape[0], cfg.cql_n_actions
        self.total_it += 1

        # --- actor and temperature
        new_actions, log_pi = self.actor(obs)
        if cfg.use_automatic_entropy_tuning:
            alpha_loss = -(self.log_alpha() * (log_pi + self.target_entropy).detach()).mean()
            alpha = self.log_alpha().exp().detach() * cfg.alpha_multiplier
        else:
            alpha_loss = obs.new_zeros(())
            alpha = obs.new_tensor(cfg.alpha_multiplier)
        if self.total_it <= cfg.bc_steps:
            policy_loss = (alpha * log_pi - self.actor.log_prob(obs, actions)).mean()
        else:
            q_new = self.critic(critic_input(obs, new_actions), detach_params=True).min(0).values
            policy_loss = (alpha * log_pi - q_new).mean()

        # --- policy samples for the target and the CQL term (no gradient), one actor call
        with torch.no_grad():
            repeat = lambda x: x.unsqueeze(1).expand(b, n, x.shape[-1])  # noqa: E731
            n_target = n if cfg.cql_max_target_backup else 1
            sample_obs = torch.cat([repeat(next_obs)[:, :n_target].reshape(b * n_target, -1),
                                    repeat(obs).reshape(b * n, -1), repeat(next_obs).reshape(b * n, -1)])
            sampled, sampled_log_pi = self.actor(sample_obs)
            next_act, cur_act, nxt_act = torch.split(sampled, [b * n_target, b * n, b * n])
            next_log_pi, cur_log_pi, nxt_log_pi = torch.split(sampled_log_pi, [b * n_target, b * n, b * n])

            target_q = self.critic_target(critic_input(next_obs.repeat_interleave(n_target, 0), next_act))
            target_q = target_q.min(0).values.view(b, n_target)
            next_log_pi = next_log_pi.view(b, n_target)
            if cfg.cql_max_target_backup:
                target_q, idx = target_q.max(-1)
                next_log_pi = next_log_pi.gather(-1, idx.unsqueeze(-1)).squeeze(-1)
            else:
                target_q, next_log_pi = target_q[:, 0], next_log_pi[:, 0]
            if cfg.backup_entropy:
                target_q = target_q - alpha * next_log_pi
            td_target = rewards + (1.0 - dones) * cfg.discount * target_q
            random_actions = torch.empty(b * n, self.action_dim, device=obs.device).uniform_(-1, 1)

        # --- all critic evaluations in one ensemble call: data, random, current-policy, next-policy actions
        obs_rep = obs.repeat_interleave(n, 0)
        q_all = self.critic(torch.cat([critic_input(obs, actions), critic_input(obs_rep, random_actions),
                                       critic_input(obs_rep, cur_act), critic_input(obs_rep, nxt_act)]))
        q_pred = q_all[:, :b]  # (2, b)
        q_rand, q_cur, q_next = (q_all[:, b + i * b * n: b + (i + 1) * b * n].reshape(2, b, n) for i in range(3))
        qf_loss = (q_pred - td_target).pow(2).mean(1)  # (2,)

        if cfg.cql_importance_sample:
            random_density = np.log(0.5 ** self.action_dim)
            cat_q = torch.cat([q_rand - random_density, q_next - nxt_log_pi.view(1, b, n),
                               q_cur - cur_log_pi.view(1, b, n)], dim=2)
        else:
            cat_q = torch.cat([q_rand, q_pred.unsqueeze(2), q_next, q_cur], dim=2)
        ood = torch.logsumexp(cat_q / cfg.cql_temp, dim=2) * cfg.cql_temp  # (2, b)
        cql_diff = (ood - q_pred).clamp(cfg.cql_clip_diff_min, cfg.cql_clip_diff_max).mean(1)  # (2,)

        if cfg.cql_lagrange:
            alpha_prime = self.log_alpha_prime().exp().clamp(0.0, 1e6)
            cql_min_loss = alpha_prime.detach() * cfg.cql_alpha * (cql_diff - cfg.cql_target_action_gap)
            alpha_prime_loss = -(alpha_prime * cfg.cql_alpha * (cql_diff.detach() - cfg.cql_target_action_gap)).mean()
        else:
            cql_min_loss = cql_diff * cfg.cql_alpha
            alpha_prime_loss = obs.new_zeros(())
        critic_loss = (qf_loss + cql_min_loss).sum()

        self.optimizer.zero_grad(set_to_none=True)
        (policy_loss + alpha_loss + critic_loss + alpha_prime_loss).backward()
        self.optimizer.step()
        if self.total_it % cfg.target_update_period == 0:
            soft_update(self.critic_target, self.critic, cfg.soft_target_update_rate)
        return {"policy_loss": policy_loss.detach(), "alpha_loss": alpha_loss.detach(),
                "critic_loss": critic_loss.detach(), "td_loss": qf_loss.sum().detach(),
                "cql_diff": cql_diff.mean().detach(), "alpha": alpha.detach()}

    @torch.no_grad()
    def act(self, observations: torch.Tensor) -> torch.Tensor:
        return self.actor(observations, deterministic=True)[0]
