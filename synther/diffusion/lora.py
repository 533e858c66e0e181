"""Low-rank adapters (LoRA) for fine-tuning: every Linear W of the denoiser becomes W x + B A x with W frozen.

Under DP-SGD each step adds noise of the same size to every trained coordinate, while the clipped signal C is shared
by all of them: training r·(in + out) coordinates per layer instead of in·out puts more signal in each. B starts at
zero, so fine-tuning starts from the pre-trained model exactly. A and B are plain nn.Linear layers used once per
forward pass, so fast (ghost) clipping applies unchanged. `merge_adapters` folds B A into W, giving back the plain
architecture: checkpoints record the rank (meta["lora_rank"]) and load_model merges after loading.
"""
from __future__ import annotations

import torch
from torch import nn


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.down = nn.Linear(base.in_features, rank, bias=False, device=base.weight.device)
        self.up = nn.Linear(rank, base.out_features, bias=False, device=base.weight.device)
        nn.init.kaiming_uniform_(self.down.weight, a=5 ** 0.5)  # nn.Linear's own initialization
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.up(self.down(x))

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        out = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None,
                        device=self.base.weight.device)
        out.weight.copy_(self.base.weight + self.up.weight @ self.down.weight)
        if self.base.bias is not None:
            out.bias.copy_(self.base.bias)
        return out


def add_adapters(module: nn.Module, rank: int) -> nn.Module:
    """Replace every nn.Linear under `module` (in place) by a LoRALinear of `rank`; only the adapters train."""
    if rank < 1:
        raise ValueError(f"adapter rank must be at least 1, got {rank}")
    for p in module.parameters():
        p.requires_grad_(False)
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            setattr(module, name, LoRALinear(child, rank))
        else:
            add_adapters(child, rank)
    return module


def merge_adapters(module: nn.Module) -> nn.Module:
    """Fold every LoRALinear under `module` (in place) back into a plain, trainable nn.Linear."""
    for name, child in list(module.named_children()):
        if isinstance(child, LoRALinear):
            setattr(module, name, child.merged())
        else:
            merge_adapters(child)
    return module
