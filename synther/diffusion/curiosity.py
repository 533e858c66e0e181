"""Curiosity-driven pre-training: random network distillation (RND) novelty feeds synthetic samples back in.

RND: a fixed random target f (d→128→64→32) and a trained predictor f̂ (d→64→32); the predictor learns on real
public batches, so novelty c(x) = ‖f̂(x) − f(x)‖² is high where the model generates unlike the data seen so far.
Every `refresh_every` steps a pool of synthetic transitions is sampled from the model being trained, and
  reweight (the paper): a share p of every batch is replaced by pool draws with probability ∝ exp(β·c(x));
  topk (the repo):      the top p fraction of the pool by c(x) is kept and `append` of them join every batch.
Public pre-training only: the trainer refuses batch augmentation under DP.
"""
from dataclasses import dataclass

import torch
from torch import nn

from synther.diffusion.edm import EDM, SamplerConfig
from synther.errors import UserError

CURIOSITY_MODES = ("off", "reweight", "topk")


@dataclass
class CuriosityConfig:
    mode: str = "off"  # off | reweight (paper: replace a share p of each batch, draws ∝ exp(β·novelty)) | topk (repo: keep the top p of the pool, append a few per batch)
    rate: float = 0.3  # p: share of each batch replaced (reweight) or share of the pool kept (topk); paper flag --curiosity_driven_rate
    beta: float = 1.0  # β of the exp(β·novelty) weights (reweight)
    append: int = 16  # synthetic rows appended to each batch (topk)
    pool_size: int = 1000  # synthetic transitions sampled per refresh
    refresh_every: int = 0  # steps between pool refreshes; 0 = once per epoch
    sampler_steps: int = 16  # DPM-Solver++ steps used to sample the pool
    lr: float = 3e-4  # Adam learning rate of the RND predictor


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


class Curiosity:
    def __init__(self, model: EDM, cfg: CuriosityConfig, steps_per_epoch: int, seed: int = 0) -> None:
        if cfg.mode not in CURIOSITY_MODES[1:]:
            raise UserError(f"unknown curiosity mode '{cfg.mode}' (choose from: {', '.join(CURIOSITY_MODES)})")
        if not 0 < cfg.rate <= 1:
            raise UserError(f"curiosity.rate must be in (0, 1], got {cfg.rate}")
        self.model, self.cfg = model, cfg
        device = next(model.parameters()).device
        with torch.random.fork_rng():  # reproducible networks without disturbing the trainer's RNG stream
            torch.manual_seed(seed + 99)
            self.target = _mlp([model.dim, 128, 64, 32]).requires_grad_(False).to(device)
            self.predictor = _mlp([model.dim, 64, 32]).to(device)
        self.optimizer = torch.optim.Adam(self.predictor.parameters(), lr=cfg.lr)
        self.refresh_every = cfg.refresh_every or max(1, steps_per_epoch)
        self.gen = torch.Generator().manual_seed(seed + 100)
        self.pool: torch.Tensor | None = None
        self.weights: torch.Tensor | None = None

    def novelty(self, x_raw: torch.Tensor) -> torch.Tensor:
        x = self.model.normalizer.normalize(x_raw)
        return (self.predictor(x) - self.target(x)).pow(2).sum(dim=1)

    def _refresh(self) -> None:
        pool = self.model.sample(self.cfg.pool_size, SamplerConfig(name="dpm2m", steps=self.cfg.sampler_steps),
                                 generator=self.gen)
        pool = pool[torch.isfinite(pool).all(dim=1)]
        with torch.no_grad():
            c = self.novelty(pool)
        if self.cfg.mode == "topk":
            keep = max(1, int(round(self.cfg.rate * len(pool))))
            self.pool, self.weights = pool[c.topk(keep).indices], None
        else:
            self.pool, self.weights = pool, torch.softmax(self.cfg.beta * c, dim=0)

    def __call__(self, step: int, batch: torch.Tensor) -> torch.Tensor:
        """The trainer's augment hook: train the predictor on the real batch, then mix in synthetic rows."""
        loss = self.novelty(batch).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if step % self.refresh_every == 0 or self.pool is None:
            self._refresh()
        if len(self.pool) == 0:
            return batch
        device = batch.device
        if self.cfg.mode == "topk":
            idx = torch.randint(len(self.pool), (self.cfg.append,), generator=self.gen).to(device)
            return torch.cat([batch, self.pool[idx]])
        k = int(round(self.cfg.rate * len(batch)))
        idx = torch.multinomial(self.weights.cpu(), k, replacement=True, generator=self.gen).to(device)
        return torch.cat([batch[k:], self.pool[idx]])
