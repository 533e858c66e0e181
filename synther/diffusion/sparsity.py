"""Drop the synthetic rows that lie alone: a post-processing filter on the samples themselves.

A diffusion model, more so one fitted with DP-SGD, puts part of its mass between the modes of the data: rows from
states the real data never visits (on the umaze proxy, 15 % of the non-private samples and ~40 % of the ε = 10 ones
lie off the real states' support). An offline Q-learner trusts those rows, and its policy falls
(results/issue14-session10.md; dropping 10 % brings the non-private samples' TD3+BC agents to real data's level, but
not the ε = 10 ones', results/issue14-session11.md). Such rows are isolated among the synthetic rows too, so they can
be found without the real data: a row's sparsity is the distance from its observation to its k-th nearest synthetic
neighbour (observations standardised by the samples' own mean and std). Sampling draws n / (1 − f) rows and keeps the
n densest. It reads nothing but the model's output: post-processing, no privacy cost.
"""
import math

import numpy as np
import torch
from scipy.spatial import cKDTree

from synther.errors import UserError


def check_settings(fraction: float, k: int) -> None:
    if not 0.0 <= fraction < 1.0:
        raise UserError(f"drop_sparse must be a fraction in [0, 1), got {fraction}")
    if k < 1:
        raise UserError(f"sparse_k must be at least 1, got {k}")


def oversampled(n: int, fraction: float) -> int:
    """Rows to draw so that n remain after dropping `fraction` of them."""
    return math.ceil(n / (1.0 - fraction) - 1e-9)


KD_TREE_MAX_DIM = 8  # a k-d tree answers in seconds in a few dimensions and degrades to worse than brute force above


def sparsity(points: np.ndarray, k: int = 20, device: str | torch.device = "cpu") -> np.ndarray:
    """Distance from each row (standardised by the rows' own mean and std) to its k-th nearest other row.

    Up to KD_TREE_MAX_DIM columns a k-d tree (100k maze rows: seconds); above, exact chunked brute force on `device`
    (quadratic: about 2 min for 100k rows on one CPU core)."""
    if len(points) <= k:
        raise UserError(f"kNN sparsity needs more than k = {k} rows, got {len(points)}")
    x = np.asarray(points, dtype=np.float64)
    x = (x - x.mean(0)) / np.maximum(x.std(0), 1e-8)
    # k + 1 neighbours: the nearest is the row itself (or an exact copy, at the same distance 0)
    if x.shape[1] <= KD_TREE_MAX_DIM:
        return cKDTree(x).query(x, k=k + 1, workers=-1)[0][:, -1]
    xt = torch.as_tensor(x, dtype=torch.float32, device=device)
    return torch.cat([torch.cdist(xt[i:i + 1024], xt).topk(k + 1, dim=1, largest=False).values[:, -1]
                      for i in range(0, len(xt), 1024)]).cpu().numpy()


def keep_densest(points: np.ndarray, n: int, k: int = 20, device: str | torch.device = "cpu") -> np.ndarray:
    """Indices (in their original order) of the n rows with the smallest kNN sparsity."""
    if n >= len(points):
        return np.arange(len(points))
    return np.sort(np.argsort(sparsity(points, k, device), kind="stable")[:n])
