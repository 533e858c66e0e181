"""Exact linear identities of the public data, and the projection of synthetic rows onto them.

A simulator leaves exact linear relations between the columns of every transition it writes: PointMaze's
semi-implicit Euler step gives x′ = x + dt·v′ for each position coordinate. DP fine-tuning blurs them (the noisy
model's rows miss them by far more than the data's rounding), and an offline agent learns the blurred dynamics.
Pre-training finds the relations the PUBLIC rows satisfy to rounding precision (the null directions of their
standardised covariance) and stores them in the checkpoint; sampling projects each synthetic row orthogonally (in
standardised units) onto the affine set where they hold. The identities are facts of public data only, so the
projection is post-processing: no privacy cost. It assumes the sensitive data comes from the same simulator (the
premise of public pre-training); `--identities none` turns it off.
"""
from typing import Any

import numpy as np

from synther.data.dataset import TransitionLayout

# an eigenvalue of the standardised covariance at most this share of its trace is an exact identity. Float32
# rounding of a true identity leaves ~1e-14; near-identities of real data (a random Hopper policy's) start ~1e-9.
EXACT = 1e-11


def _columns(layout: TransitionLayout) -> np.ndarray:
    """Every column but the terminal flag, which sampling thresholds at 0.5."""
    return np.arange(layout.terminal)


def find_identities(x: np.ndarray, layout: TransitionLayout) -> dict[str, Any]:
    """The exact linear identities of PUBLIC rows `x` (never pass sensitive data here), as a JSON-able record.

    Constant columns are left out: a column the public sets never vary says nothing about how it relates to others.
    """
    cols = _columns(layout)
    z = x[:, cols].astype(np.float64)
    mean, scale = z.mean(0), z.std(0)
    varying = scale > 1e-12 * max(1.0, float(np.abs(mean).max()))
    cols, mean, scale = cols[varying], mean[varying], scale[varying]
    z = (z[:, varying] - mean) / scale
    eigenvalues, vectors = np.linalg.eigh(z.T @ z / len(z))
    exact = eigenvalues <= EXACT * eigenvalues.sum()
    return {"columns": cols.tolist(), "mean": mean.tolist(), "scale": scale.tolist(),
            "basis": vectors[:, exact].T.tolist(), "eigenvalues": eigenvalues[: int(exact.sum()) + 1].tolist(),
            "source": "public datasets (found at pre-training)"}


def count(identities: dict[str, Any] | None) -> int:
    return len(identities["basis"]) if identities else 0


def project(x: np.ndarray, identities: dict[str, Any]) -> tuple[np.ndarray, float]:
    """Rows `x` moved to the nearest point (standardised units) where every identity holds, and the largest
    violation before the move, in standardised units."""
    basis = np.asarray(identities["basis"], dtype=np.float64).reshape(-1, len(identities["columns"]))
    if len(basis) == 0:
        return x, 0.0
    cols, mean, scale = identities["columns"], np.asarray(identities["mean"]), np.asarray(identities["scale"])
    z = (x[:, cols].astype(np.float64) - mean) / scale
    residual = z @ basis.T
    out = x.copy()
    out[:, cols] = (mean + scale * (z - residual @ basis)).astype(x.dtype)
    return out, float(np.abs(residual).max(initial=0.0))
