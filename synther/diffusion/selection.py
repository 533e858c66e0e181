"""A public warm-up toward the sensitive set: public rows chosen by a small DP statistic, before DP fine-tuning.

DP-SGD moves the pre-trained weights mostly along noise: on the HalfCheetah stand-in only 2-8 % of a DP fine-tune's
move lies along the non-private one (benchmarks/dp_signal.py). The less distance the private steps must cover, the
less that matters. The public data already hold rows like the sensitive ones, in other proportions (on the stand-in
the public and sensitive mixes over 20 public clusters differ by a total variation of 0.38), so this asks the
sensitive data, through the Gaussian mechanism, which public rows to train on first:

    clusters   k-means of the PUBLIC rows as the model sees them (normalized), seeded by --seed
    release    the count of sensitive training records nearest each centroid + N(0, σ²) per cluster (numpy, OS
               entropy, never saved)
    warm-up    plain (non-private) training steps on public rows, each drawn with probability proportional to
               max(noisy count, 0) / public count of its cluster: the public mix re-weighted toward the sensitive one

One record adds 1 to one count: L2 sensitivity 1 under add/remove neighbours, one accountant entry (σ, 1.0, 1)
composed with DP-SGD, so the fine-tune's total stays at its target ε. The warm-up reads public rows and the noisy
counts only: post-processing of the release.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from synther.diffusion.edm import EDM
from synther.errors import UserError
from synther.utils.optim import fused_optimizer

KMEANS_ITERATIONS = 25
CHUNK = 65_536  # rows per distance block: 65k × 256 clusters of float32 is 64 MB


def nearest(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Each row's nearest centroid (squared Euclidean distance), in blocks so memory stays bounded."""
    return torch.cat([torch.cdist(x[i:i + CHUNK], centroids).argmin(dim=1) for i in range(0, len(x), CHUNK)])


def kmeans(x: torch.Tensor, k: int, seed: int, iterations: int = KMEANS_ITERATIONS) -> torch.Tensor:
    """Lloyd's k-means from k distinct rows drawn with `seed`; an emptied cluster keeps its centroid."""
    generator = torch.Generator().manual_seed(seed)
    centroids = x[torch.randperm(len(x), generator=generator)[:k].to(x.device)].clone()
    for _ in range(iterations):
        assign = nearest(x, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        sizes = torch.bincount(assign, minlength=k).unsqueeze(1).to(x.dtype)
        centroids = torch.where(sizes > 0, sums / sizes.clamp(min=1), centroids)
    return centroids


class PublicSelection:
    """Centroids fitted on public rows, the public rows' clusters, and (after `release`) the noisy counts of the
    sensitive records per cluster: what the warm-up draws from."""

    def __init__(self, centroids: torch.Tensor, public_clusters: torch.Tensor) -> None:
        self.centroids, self.public_clusters = centroids, public_clusters
        self.public_counts = torch.bincount(public_clusters, minlength=len(centroids)).cpu().numpy()
        self.noisy_counts: np.ndarray | None = None
        self.noise_multiplier: float | None = None

    @classmethod
    def fit(cls, public_z: torch.Tensor, clusters: int, seed: int) -> "PublicSelection":
        """k-means of the public rows (in the model's normalized space); nothing sensitive is read."""
        if not 2 <= clusters <= len(public_z):
            raise UserError(f"dp.public_warmup_clusters must be between 2 and the {len(public_z)} public rows, got "
                            f"{clusters}")
        centroids = kmeans(public_z, clusters, seed)
        return cls(centroids, nearest(public_z, centroids))

    def release(self, sensitive_z: torch.Tensor, noise_multiplier: float, rng: np.random.Generator) -> None:
        """The Gaussian mechanism on the sensitive records: per-cluster counts plus N(0, σ²) on every cluster.
        `rng` must come from OS entropy (synther.privacy.randomness.secret_numpy_rng): replayable noise can be
        subtracted."""
        if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
            raise UserError(f"dp.public_warmup_noise_multiplier must be a positive number, got {noise_multiplier}")
        k = len(self.centroids)
        counts = np.bincount(nearest(sensitive_z, self.centroids).cpu().numpy(), minlength=k).astype(np.float64)
        self.noisy_counts = counts + rng.normal(0.0, noise_multiplier, size=k)
        self.noise_multiplier = float(noise_multiplier)

    def row_probabilities(self) -> torch.Tensor:
        """Each public row's chance of entering a warm-up batch: its cluster's noisy sensitive share over the
        cluster's public size (clusters with a non-positive noisy count get none)."""
        if self.noisy_counts is None:
            raise RuntimeError("release() the noisy counts first")
        target = np.clip(self.noisy_counts, 0.0, None)
        if target.sum() <= 0:
            raise UserError("every cluster's noisy count is ≤ 0: the sensitive set is too small for this noise "
                            "(lower dp.public_warmup_noise_multiplier or dp.public_warmup_clusters)")
        per_row = target / np.maximum(self.public_counts, 1) / target.sum()
        return torch.as_tensor(per_row, device=self.public_clusters.device)[self.public_clusters].float()

    def spec(self) -> dict[str, Any]:
        """What the checkpoint keeps: the release (noisy counts, a DP output) and the public facts beside it."""
        return {"clusters": len(self.centroids), "noise_multiplier": self.noise_multiplier,
                "noisy_counts": None if self.noisy_counts is None else self.noisy_counts.tolist(),
                "public_counts": self.public_counts.tolist()}

    def effective_share(self) -> float:
        """The share of the public rows the re-weighted draws are worth (Kish's effective sample size over N)."""
        p = self.row_probabilities().double()
        return float(1.0 / (len(p) * (p * p).sum()))


def warm_up(model: EDM, public_rows: torch.Tensor, probabilities: torch.Tensor, steps: int, batch_size: int,
            lr: float, adam_beta2: float, seed: int, progress: bool = True) -> float:
    """`steps` non-private AdamW steps of the model's loss on public rows drawn with `probabilities` (with
    replacement; draws from --seed: public rows, public choices). Returns the mean loss of the last 100 steps."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = fused_optimizer(torch.optim.AdamW, model.parameters(), lr=lr, betas=(0.9, adam_beta2),
                                weight_decay=0.0)
    probabilities = probabilities.cpu()
    losses = []
    for _ in tqdm(range(steps), desc="public warm-up", unit="step", disable=not progress, mininterval=1.0):
        rows = torch.multinomial(probabilities, batch_size, replacement=True, generator=generator)
        optimizer.zero_grad(set_to_none=True)
        loss = model.per_sample_loss(public_rows[rows.to(public_rows.device)]).mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return float(torch.stack(losses[-100:]).mean()) if losses else float("nan")
