"""Building blocks shared by the agents: MLPs, a batched critic ensemble, target updates, and the Agent base.

The critic ensemble is ONE module whose layers hold stacked weights (members, in, out) and run as a single
batched matmul (`baddbmm`), instead of a python loop over separate critics: two critics cost about as much as one
wide one, and ten (EDAC) are one call per layer rather than ten.
"""
import math
from abc import ABC, abstractmethod
from typing import Any, Iterable

import torch
from torch import nn

from synther.utils.optim import fused_optimizer


def mlp(dims: list[int], output_activation: type[nn.Module] | None = None) -> nn.Sequential:
    """Linear-ReLU stack over `dims` (input, hidden..., output), optionally ending in `output_activation`."""
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    if output_activation is not None:
        layers.append(output_activation())
    return nn.Sequential(*layers)


class EnsembleLinear(nn.Module):
    """`members` independent Linear layers with stacked parameters: weight (members, in, out), bias (members, 1, out).

    Initialised member by member exactly as nn.Linear is (CORL's VectorizedLinear).
    """

    def __init__(self, in_features: int, out_features: int, members: int) -> None:
        super().__init__()
        self.in_features, self.out_features, self.members = in_features, out_features, members
        self.weight = nn.Parameter(torch.empty(members, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(members, 1, out_features))
        for m in range(members):
            # nn.Linear stores (out, in); initialise that view so fan-in and bounds match nn.Linear's defaults
            nn.init.kaiming_uniform_(self.weight.data[m].T, a=math.sqrt(5))
        bound = 1 / math.sqrt(in_features)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ensemble_linear(x, self.weight, self.bias)


def ensemble_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """x (batch, in) shared by all members, or (members, batch, in) -> (members, batch, out)."""
    if x.dim() == 2:
        x = x.unsqueeze(0).expand(weight.shape[0], -1, -1)
    return torch.baddbmm(bias, x, weight)


class EnsembleMLP(nn.Module):
    """`members` MLPs in lockstep. forward(x) -> (members, batch, out_dim), or (members, batch) when out_dim is 1.

    detach_params=True evaluates the ensemble with its parameters detached: gradients flow to the input (e.g. an
    actor's action) but not into the ensemble, which is how an actor loss uses its critics. `member` picks one
    member (TD3+BC's actor uses the first critic only) and returns (batch, out) / (batch,).

    layer_norm=True puts a LayerNorm (own scale and shift per member) after each hidden ReLU, as ReBRAC's critic
    (Tarasov et al. 2023) does: it bounds how far Q can extrapolate to inputs far from the data.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, n_hidden: int, members: int,
                 layer_norm: bool = False) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * n_hidden + [out_dim]
        self.layers = nn.ModuleList(EnsembleLinear(dims[i], dims[i + 1], members) for i in range(len(dims) - 1))
        self.norms = (nn.ModuleList(EnsembleLayerNorm(hidden_dim, members) for _ in range(n_hidden))
                      if layer_norm else None)
        self.members, self.out_dim = members, out_dim

    def forward(self, x: torch.Tensor, detach_params: bool = False, member: int | None = None) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            w, b = layer.weight, layer.bias
            if detach_params:
                w, b = w.detach(), b.detach()
            if member is not None:
                x = torch.addmm(b[member], x, w[member])
            else:
                x = ensemble_linear(x, w, b)
            if i < last:
                x = torch.relu(x)
                if self.norms is not None:
                    x = self.norms[i](x, detach_params=detach_params, member=member)
        return x.squeeze(-1) if self.out_dim == 1 else x


class EnsembleLayerNorm(nn.Module):
    """LayerNorm over the last dimension with a stacked scale and shift per member: (members, 1, dim)."""

    def __init__(self, dim: int, members: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(members, 1, dim))
        self.bias = nn.Parameter(torch.zeros(members, 1, dim))
        self.eps = eps

    def forward(self, x: torch.Tensor, detach_params: bool = False, member: int | None = None) -> torch.Tensor:
        w, b = (self.weight.detach(), self.bias.detach()) if detach_params else (self.weight, self.bias)
        if member is not None:
            w, b = w[member], b[member]
        return torch.nn.functional.layer_norm(x, x.shape[-1:], eps=self.eps) * w + b


def adam(params, lr: float | None = None) -> torch.optim.Adam:
    """Adam with the fused update where torch supports it: ~20% more updates/s for 256-wide networks on CPU than
    the default foreach implementation (benchmarks/agents.py)."""
    return fused_optimizer(torch.optim.Adam, params, **({} if lr is None else {"lr": lr}))


def critic_input(observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    return torch.cat([observations, actions], dim=-1)


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """target ← (1 − τ)·target + τ·source, for all parameters at once (one fused foreach call)."""
    torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


def return_bounds(reward_low: float, reward_high: float, discount: float) -> tuple[float, float]:
    """The range every discounted return can lie in when each reward lies in [reward_low, reward_high], whether the
    episode terminates after one step or never."""
    low = min(reward_low, reward_low / (1.0 - discount))
    high = max(reward_high, reward_high / (1.0 - discount))
    return low, high


def frozen_copy(module: nn.Module) -> nn.Module:
    """A target network: a copy that takes no gradients."""
    import copy

    return copy.deepcopy(module).requires_grad_(False)


class Agent(ABC):
    """What the shared trainer needs from an algorithm.

    update(batch) -> dict of detached 0-dim loss tensors (no .item(): the trainer reads them every log_every steps)
    act(observations) -> deterministic actions in [-max_action, max_action] for normalized observations (batch, obs)
    state_dict()/load_state_dict(): every nn.Module, optimizer, scheduler, tensor and int/float attribute.
    """

    name = "agent"
    # Updates per CUDA-graph cycle, for agents whose update is capture-safe (synther.agents.graphs); None: not
    graph_period: int | None = None

    @abstractmethod
    def update(self, batch: Any) -> dict[str, torch.Tensor]:
        """One gradient update on `batch`."""

    @abstractmethod
    def act(self, observations: torch.Tensor) -> torch.Tensor:
        """Deterministic actions for normalized observations (implementations run under torch.no_grad)."""

    def device_update(self, batch: Any) -> dict[str, torch.Tensor]:
        """The part of update() a CUDA graph can hold (every kernel of it); update() = device_update + host_update."""
        return self.update(batch)

    def host_update(self) -> None:
        """The part of update() that runs on the host after the kernels (learning-rate schedules): a graph replay
        cannot repeat it, so graphed runs call it once per replayed update."""

    def fit_to_data(self, reward_low: float, reward_high: float) -> None:
        """Told the range of the training rewards (as the buffer holds them) before the first update; agents that
        bound their values by it override this."""

    def modules(self) -> Iterable[nn.Module]:
        return [v for v in vars(self).values() if isinstance(v, nn.Module)]

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in vars(self).items():
            if hasattr(value, "state_dict") and hasattr(value, "load_state_dict"):
                out[key] = value.state_dict()
            elif isinstance(value, (torch.Tensor, int, float)) and not isinstance(value, bool):
                out[key] = value
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            current = getattr(self, key)
            if hasattr(current, "load_state_dict"):
                current.load_state_dict(value)
            elif isinstance(current, torch.Tensor):
                with torch.no_grad():
                    current.copy_(value)
            else:
                setattr(self, key, value)

    def train_mode(self, training: bool) -> None:
        for m in self.modules():
            m.train(training)
