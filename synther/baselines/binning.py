"""Column discretisation for the marginal baselines (MST, AIM) and column bounds for the GAN baselines.

Everything here is computed from PUBLIC information only: the public datasets paired with the sensitive one
(config/diffusion/pairs.yaml) and the env's declared action bounds. No function in this module takes the
sensitive data as an argument except `discretize`/`clip_to_bounds`, which only apply fixed, already-computed
edges to it (a data-independent map, so no privacy cost). Bin edges fitted on the sensitive data would leak it
(DESIGN.md §4: SynMeter's binning).
"""
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from synther.data.dataset import TransitionLayout
from synther.errors import UserError

EDGE_SOURCES = ("public_quantiles", "public_range")


@dataclass
class ColumnBins:
    """Per-column bin edges of the flat transition vector (SynthER order, terminal last) and where they came from."""

    edges: list[np.ndarray]  # column j has len(edges[j]) - 1 bins; outer edges are the public bounds
    source: str  # what the edges were computed from (recorded in the ledger)
    binary: list[int] = field(default_factory=list)  # declared 0/1 columns: bin k maps back to the value k
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def cardinalities(self) -> list[int]:
        return [len(e) - 1 for e in self.edges]

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "cardinalities": self.cardinalities, "binary_columns": self.binary,
                "edges": [e.tolist() for e in self.edges], **self.details}


@dataclass
class ColumnBounds:
    """Per-column [lower, upper] of the flat transition vector, from public information, and where they came from."""

    lower: np.ndarray
    upper: np.ndarray
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "lower": self.lower.tolist(), "upper": self.upper.tolist()}


def public_bounds(public_vectors: np.ndarray, layout: TransitionLayout, action_low: np.ndarray | None = None,
                  action_high: np.ndarray | None = None, action_source: str = "") -> ColumnBounds:
    """Column bounds from the public vectors' range; actions from the env's declared bounds when given.

    The terminal column is declared binary, so its bounds are [0, 1] whatever the data.
    """
    x = _check_public(public_vectors, layout)
    lower, upper = x.min(0).astype(np.float64), x.max(0).astype(np.float64)
    source = "range of the public datasets' columns"
    if action_low is not None and action_high is not None:
        lower[layout.action] = np.asarray(action_low, dtype=np.float64)
        upper[layout.action] = np.asarray(action_high, dtype=np.float64)
        source += f"; actions: {action_source or 'declared action bounds'}"
    lower[layout.terminal], upper[layout.terminal] = 0.0, 1.0
    flat = upper <= lower  # a constant public column still needs a non-empty interval
    lower[flat] -= 0.5
    upper[flat] += 0.5
    return ColumnBounds(lower, upper, source + "; terminal: declared binary {0, 1}")


def public_bin_edges(public_vectors: np.ndarray, layout: TransitionLayout, bins: int, source: str = "public_quantiles",
                     action_low: np.ndarray | None = None, action_high: np.ndarray | None = None,
                     action_source: str = "") -> ColumnBins:
    """Bin edges per column from public data only.

    public_quantiles: edges at the public column's quantiles 0, 1/bins, ..., 1 (duplicates merged, so a column
                      with few distinct public values gets fewer bins).
    public_range:     `bins` equal-width bins over the public column's range (actions: over the declared bounds).
    The terminal column always gets the two bins {0} and {1}.
    """
    if source not in EDGE_SOURCES:
        raise UserError(f"unknown bin-edge source '{source}' (choose from: {', '.join(EDGE_SOURCES)})")
    if bins < 2:
        raise UserError(f"bins must be at least 2, got {bins}")
    x = _check_public(public_vectors, layout).astype(np.float64)
    bounds = public_bounds(x, layout, action_low, action_high, action_source)
    edges = []
    for j in range(layout.dim):
        lo, hi = bounds.lower[j], bounds.upper[j]
        if j == layout.terminal:
            edges.append(np.array([-0.5, 0.5, 1.5]))
            continue
        if source == "public_quantiles":
            inner = np.quantile(np.clip(x[:, j], lo, hi), np.linspace(0, 1, bins + 1)[1:-1])
            e = np.unique(np.concatenate([[lo], inner, [hi]]))
        else:
            e = np.linspace(lo, hi, bins + 1)
        if len(e) < 2:  # a constant public column: one bin around it
            e = np.array([lo, hi])
        edges.append(e)
    return ColumnBins(edges, f"{source} of the public datasets ({bounds.source})", [layout.terminal],
                      {"bins_requested": bins, "public_rows": len(x)})


def discretize(x: np.ndarray, bins: ColumnBins) -> np.ndarray:
    """Bin index of each value (values outside the public bounds go to the end bins). Fixed edges: no privacy cost."""
    x = np.asarray(x, dtype=np.float64)
    codes = np.empty(x.shape, dtype=np.int64)
    for j, e in enumerate(bins.edges):
        codes[:, j] = np.clip(np.searchsorted(e, x[:, j], side="right") - 1, 0, len(e) - 2)
    return codes


def undiscretize(codes: np.ndarray, bins: ColumnBins, rng: np.random.Generator) -> np.ndarray:
    """Continuous values, uniform within each sampled bin (the public edges only); bin codes of a binary column
    map back to 0/1 exactly."""
    codes = np.asarray(codes).astype(np.int64)
    out = np.empty(codes.shape, dtype=np.float64)
    for j, e in enumerate(bins.edges):
        k = np.clip(codes[:, j], 0, len(e) - 2)
        if j in bins.binary:
            out[:, j] = k
        else:
            out[:, j] = rng.uniform(e[k], e[k + 1])
    return out


def clip_to_bounds(x: np.ndarray, bounds: ColumnBounds) -> np.ndarray:
    return np.clip(np.asarray(x, dtype=np.float64), bounds.lower, bounds.upper)


def _check_public(x: np.ndarray, layout: TransitionLayout) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != layout.dim or len(x) == 0:
        raise UserError(f"public vectors must have shape (N>0, {layout.dim}), got {x.shape}")
    return x
