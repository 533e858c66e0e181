"""Optimizers with torch's fused (single-kernel) update where it has one for the parameters' device and dtype."""
from typing import Any, Iterable

import torch


def fused_optimizer(cls: type[torch.optim.Optimizer], params: Iterable[Any], **kwargs: Any) -> torch.optim.Optimizer:
    """`cls(params, fused=True, **kwargs)`, else `cls(params, **kwargs)`: the same algorithm and defaults, one
    pass over the parameters per step instead of several (memory traffic dominates an Adam step on a CPU)."""
    params = [{**p, "params": list(p["params"])} if isinstance(p, dict) else p for p in params]
    try:
        return cls(params, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):  # a device or dtype without a fused kernel
        return cls(params, **kwargs)
