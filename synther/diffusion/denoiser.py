"""Residual-MLP denoiser (SynthER): the network F inside EDM's D(x; σ) = c_skip x + c_out F(c_in x, c_noise).

Only nn.Linear layers carry trainable parameters and every Linear sees (batch, features) inputs, which is what
makes fast per-sample clipping (synther/privacy/clipping.py) exact. The random Fourier features are a fixed buffer.
"""
import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class DenoiserConfig:
    width: int = 1024  # hidden width W of the residual blocks (paper: 2048; SynthER alternate: 1024)
    depth: int = 6  # number of residual blocks
    cond_dim: int = 128  # width of the input projection and of the time embedding
    fourier_dim: int = 16  # random Fourier features of the noise level


# Named profiles: the paper's two configurations and a small one that trains in minutes on a CPU.
PROFILES = {
    "paper": DenoiserConfig(width=2048, depth=6),
    "synther": DenoiserConfig(width=1024, depth=6),
    "cpu-small": DenoiserConfig(width=256, depth=3),
}


class RandomFourierFeatures(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.randn(dim // 2))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = t.unsqueeze(1) * self.freqs.unsqueeze(0) * 2 * math.pi
        return torch.cat([t.unsqueeze(1), angles.sin(), angles.cos()], dim=1)


class ResidualBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.linear(torch.relu(x))


class ResidualMLPDenoiser(nn.Module):
    def __init__(self, dim: int, cfg: DenoiserConfig = DenoiserConfig()) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, cfg.cond_dim)
        self.time_features = RandomFourierFeatures(cfg.fourier_dim)
        self.time_mlp1 = nn.Linear(cfg.fourier_dim + 1, cfg.cond_dim)
        self.time_mlp2 = nn.Linear(cfg.cond_dim, cfg.cond_dim)
        self.inp = nn.Linear(cfg.cond_dim, cfg.width)
        self.blocks = nn.ModuleList(ResidualBlock(cfg.width) for _ in range(cfg.depth))
        self.out = nn.Linear(cfg.width, dim)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        t = self.time_mlp2(nn.functional.silu(self.time_mlp1(self.time_features(c_noise))))
        h = self.inp(self.proj(x) + t)
        for block in self.blocks:
            h = block(h)
        return self.out(torch.relu(h))
