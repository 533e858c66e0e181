"""Plot helpers for evaluation reports: headless (Agg canvas), written atomically.

Figures are built on matplotlib's object API with an Agg canvas, not pyplot, so importing this module changes no
global backend state and works without a display. Add new plots (e.g. an ROC curve for membership inference) as
functions that build a figure with `new_figure` and write it with `save_figure`.
"""
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from synther.utils.io import atomic_path


def new_figure(width: float = 6.0, height: float = 5.0, dpi: int = 120):
    """A matplotlib Figure with its own Agg canvas (no pyplot, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str | Path) -> Path:
    """Write `fig` to `path` atomically; the format follows the suffix (.png, .pdf, .svg)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", bbox_inches="tight")
    return path


def pair_error_heatmap(
    pair_matrix: dict[str, Any] | np.ndarray,
    path: str | Path,
    columns: Sequence[str] | None = None,
    title: str = "|ρ_real − ρ_syn| per column pair",
) -> Path:
    """Heat map of per-pair correlation errors |ρ_real − ρ_syn| (0 = pair trend kept, 2 = sign flipped).

    `pair_matrix` is a fidelity report's `pair_matrix` ({"columns": names, "abs_diff": rows with None for
    undefined pairs}) or a square array with `columns`. Only the lower triangle is drawn; undefined pairs are grey.
    """
    if isinstance(pair_matrix, dict):
        columns = pair_matrix["columns"]
        values = np.array([[np.nan if v is None else v for v in row] for row in pair_matrix["abs_diff"]], dtype=float)
    else:
        values = np.asarray(pair_matrix, dtype=float)
    columns = list(columns or range(values.shape[0]))
    d = len(columns)
    lower = np.tril(np.ones((d, d), dtype=bool), -1)
    shown = np.where(lower, values, np.nan)
    undefined = lower & ~np.isfinite(values)  # e.g. a pair with a constant column

    import matplotlib
    from matplotlib.colors import ListedColormap

    side = min(max(4.0, 0.22 * d + 2.5), 14.0)
    fig = new_figure(side + 1.0, side)
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["magma_r"].with_extremes(bad=(1.0, 1.0, 1.0, 0.0))  # upper triangle stays blank
    vmax = max(0.1, float(np.nanmax(shown)) if np.isfinite(shown).any() else 0.1)
    im = ax.imshow(np.ma.masked_invalid(shown), cmap=cmap, vmin=0.0, vmax=vmax, interpolation="nearest")
    if undefined.any():
        ax.imshow(np.ma.masked_where(~undefined, np.ones((d, d))), cmap=ListedColormap(["#bbbbbb"]),
                  interpolation="nearest")
    fontsize = 8 if d <= 20 else 6 if d <= 45 else 4
    ax.set_xticks(range(d), labels=columns, rotation=90, fontsize=fontsize)
    ax.set_yticks(range(d), labels=columns, fontsize=fontsize)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="|ρ_real − ρ_syn|")
    return save_figure(fig, path)
