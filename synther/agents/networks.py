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
    member, (batch, in) -> (batch, out) / (batch,), or a slice of members (TD3+BC's actor uses each seed's first
    critic only), (len, batch, in) -> (len, batch, out).

    layer_norm=True puts a LayerNorm (own scale and shift per member) after each hidden ReLU, as ReBRAC's critic
    (Tarasov et al. 2023) does: it bounds how far Q can extrapolate to inputs far from the data.

    Under torch.autocast (an agent's --precision bf16) the hidden layers multiply in bfloat16 and the output layer
    in float32: a Q value of ≈ 300 resolves only to ≈ 2 in bfloat16's 8 mantissa bits.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, n_hidden: int, members: int,
                 layer_norm: bool = False) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * n_hidden + [out_dim]
        self.layers = nn.ModuleList(EnsembleLinear(dims[i], dims[i + 1], members) for i in range(len(dims) - 1))
        self.norms = (nn.ModuleList(EnsembleLayerNorm(hidden_dim, members) for _ in range(n_hidden))
                      if layer_norm else None)
        self.members, self.out_dim = members, out_dim

    def forward(self, x: torch.Tensor, detach_params: bool = False, member: int | slice | None = None
                ) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            w, b = layer.weight, layer.bias
            if detach_params:
                w, b = w.detach(), b.detach()
            if member is not None:
                w, b = w[member], b[member]
            if i == last and torch.is_autocast_enabled(x.device.type):
                with torch.autocast(x.device.type, enabled=False):
                    x = _linear(x.float(), w, b, member)
            else:
                x = _linear(x, w, b, member)
            if i < last:
                x = torch.relu(x)
                if self.norms is not None:
                    x = self.norms[i](x, detach_params=detach_params, member=member)
        return x.squeeze(-1) if self.out_dim == 1 else x


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, member: int | slice | None) -> torch.Tensor:
    return torch.addmm(b, x, w) if isinstance(member, int) else ensemble_linear(x, w, b)


class EnsembleLayerNorm(nn.Module):
    """LayerNorm over the last dimension with a stacked scale and shift per member: (members, 1, dim)."""

    def __init__(self, dim: int, members: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(members, 1, dim))
        self.bias = nn.Parameter(torch.zeros(members, 1, dim))
        self.eps = eps

    def forward(self, x: torch.Tensor, detach_params: bool = False, member: int | slice | None = None
                ) -> torch.Tensor:
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


def seed_critic_input(observations: torch.Tensor, actions: torch.Tensor, critics: int) -> torch.Tensor:
    """(seeds, batch, ·) observations and actions -> (seeds·critics, batch, obs + act): each seed's rows once for
    each of its critics, as a critic ensemble of seeds·critics members (seed-major) takes them. One seed: a view."""
    x = critic_input(observations, actions)
    seeds = x.shape[0]
    return x.unsqueeze(1).expand(seeds, critics, *x.shape[1:]).reshape(seeds * critics, *x.shape[1:])


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

    update(batch) -> dict of detached loss tensors (no .item(): the trainer reads them every log_every steps):
        0-dim, or (seeds,) for an agent that trains several seeds at once
    act(observations) -> deterministic actions in [-max_action, max_action] for normalized observations (batch, obs)
        (a stackable agent: act(observations, seed_index) for one seed, seed_index None for all at once)
    state_dict()/load_state_dict(): every nn.Module, optimizer, scheduler, tensor and int/float attribute.

    Stacked seeds: an agent class with `stackable = True` takes `seeds=K` and trains K seeds as one network whose
    every parameter, optimizer moment and per-seed tensor has a leading dimension of K × (members per seed), seed
    by seed, and whose batches are (K, batch, ·). Each seed's update is the one it has alone (its losses are summed
    over seeds, so each parameter gets its own seed's gradient, and Adam works element by element); `stack_states`
    and `seed_state` turn K one-seed states into the stacked one and back, so a stacked run writes K ordinary
    one-seed checkpoints. `generators`: one torch generator per seed for the random draws of its update (one seed
    alone draws from torch's global generator, as before).
    """

    name = "agent"
    # Updates per CUDA-graph cycle, for agents whose update is capture-safe (synther.agents.graphs); None: not
    graph_period: int | None = None
    stackable = False  # takes seeds=K (see above)
    # --precision values it is tested under: bf16 needs every output layer to be an EnsembleMLP's (kept in float32)
    precisions: tuple[str, ...] = ("fp32",)
    seeds = 1
    generators: list[torch.Generator] | None = None

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
            if key in ("seeds", "generators"):  # how the seeds are laid out, not the state of any of them
                continue
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

    def seed_state(self, seed_index: int) -> dict[str, Any]:
        """The state_dict a one-seed agent of seed `seed_index` would have (for a one-seed agent, its own)."""
        state = self.state_dict()
        return state if self.seeds == 1 else _select_seed(state, seed_index, self.seeds)

    def normal_like(self, x: torch.Tensor) -> torch.Tensor:
        """Standard normal noise shaped like x (seeds, ...): seed k's from its own generator."""
        if self.generators is None:
            return torch.randn_like(x)
        return torch.stack([torch.randn(x.shape[1:], generator=g, device=x.device, dtype=x.dtype)
                            for g in self.generators])


def stack_states(states: list[Any]) -> Any:
    """K one-seed agent states -> the stacked agent's: tensors with a leading dimension are concatenated along it
    (seed by seed); everything else (update counts, Adam's step, learning rates, schedules) must be equal."""
    first = states[0]
    if isinstance(first, dict):
        if any(set(s) != set(first) for s in states):
            raise ValueError("the seeds' states hold different entries")
        return {key: stack_states([s[key] for s in states]) for key in first}
    if isinstance(first, (list, tuple)) and not isinstance(first, str):
        if any(len(s) != len(first) for s in states):
            raise ValueError("the seeds' states hold lists of different lengths")
        return type(first)(stack_states(list(items)) for items in zip(*states))
    if isinstance(first, torch.Tensor) and first.dim() > 0:
        return torch.cat(states)
    if any(not _same(s, first) for s in states[1:]):
        raise ValueError(f"the seeds differ in a value that cannot be stacked ({first!r} vs others)")
    return first


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and bool(torch.equal(a, b))
    return a == b


def _select_seed(state: Any, index: int, seeds: int) -> Any:
    if isinstance(state, dict):
        return {key: _select_seed(value, index, seeds) for key, value in state.items()}
    if isinstance(state, (list, tuple)) and not isinstance(state, str):
        return type(state)(_select_seed(value, index, seeds) for value in state)
    if isinstance(state, torch.Tensor) and state.dim() > 0:
        per_seed = state.shape[0] // seeds
        return state[index * per_seed:(index + 1) * per_seed].clone()
    return state
