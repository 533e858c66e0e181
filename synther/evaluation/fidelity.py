"""Fidelity of synthetic transitions, with the definitions PrivORL reports (sdmetrics' metrics); terminals excluded.

Marginal     = mean over columns j of 1 − KS(real_j, synthetic_j)          (sdmetrics KSComplement)
Correlation  = mean over column pairs of 1 − |ρ_real − ρ_syn| / 2 (Pearson) (sdmetrics CorrelationSimilarity)

Support      = k-NN precision and recall (Kynkäänniemi et al. 2019, https://arxiv.org/abs/1904.06991) on z-scored
               rows: precision = share of synthetic rows inside the real rows' k-NN balls (no off-support rows),
               recall = share of real rows inside the synthetic rows' balls (no dropped regions). The marginal and
               correlation scores see neither: samples that leave out a region of the data, or blur rows off a
               thin support (e.g. between and around the real states), can keep both high.

Columns are the flat SynthER vector [obs, action, reward, next_obs] without the terminal flag (our choice, as the
paper's). Edge cases follow sdmetrics: NaNs are dropped per column (KS) or per pair of columns (correlation); values
are rounded to 14 decimals before KS; a pair involving a column that is constant in either table has no score and
is left out of the mean. sdmetrics loops over columns and pairs with pandas/scipy calls; here KS is one sort per
column plus searchsorted, and all Pearson coefficients come from one float64 corrcoef, so 1M × 42 rows take seconds.

The real reference is the *sensitive* dataset: the report is computed by the data holder, without DP, and is not
itself private (REFERENCE_NOTE is written into every report).
"""
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from synther.data.dataset import TransitionDataset, TransitionLayout, check_compatible
from synther.evaluation.outputs import default_evaluation_dir
from synther.layout import script
from synther.utils.locks import FolderLock

# sdmetrics' KSComplement rounds to sys.float_info.dig - 1 decimals before the test
KS_DECIMALS = 14

REFERENCE_NOTE = (
    "The real reference is the sensitive dataset: this report is for the data holder. It is computed from the "
    "sensitive data without differential privacy and is not itself private; do not release it with the samples."
)


# --- column-level statistics -------------------------------------------------------------------------------
CHUNK_ROWS = 65_536  # rows per block in the correlation sums and KS look-ups: the memory they need beyond the data


def _columns(x: np.ndarray) -> np.ndarray:
    # drop the terminal column (last in SynthER order); a view
    return np.asarray(x)[:, :-1]


class Columns:
    """The scored columns of a table, read in place: an (N, d) matrix, or a TransitionDataset's SynthER columns
    [obs, action, reward, next_obs] (terminal left out). No (N, d) copy is ever made, so scoring 1M-row sets needs
    little beyond the loaded arrays."""

    def __init__(self, table: "np.ndarray | TransitionDataset | Columns") -> None:
        if isinstance(table, Columns):
            self.parts: list[np.ndarray] = table.parts
        elif isinstance(table, TransitionDataset):
            self.parts = [table.observations, table.actions, table.rewards[:, None], table.next_observations]
        else:
            self.parts = [np.asarray(table)]
        self.shape = (len(self.parts[0]), sum(p.shape[1] for p in self.parts))
        self._where = [(p, k) for p in self.parts for k in range(p.shape[1])]
        self.may_have_nan = not isinstance(table, TransitionDataset)  # datasets are validated finite

    def column(self, j: int) -> np.ndarray:
        part, k = self._where[j]
        return part[:, k]

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as a float64 block."""
        return np.hstack([p[start:stop] for p in self.parts], dtype=np.float64)

    def take(self, indices: np.ndarray) -> np.ndarray:
        """The rows at `indices` as a float64 block."""
        return np.hstack([p[indices] for p in self.parts], dtype=np.float64)


def ks_statistics(real: "np.ndarray | Columns", synthetic: "np.ndarray | Columns") -> np.ndarray:
    """Two-sample KS statistic of every column of two (N, d) tables; NaN for a column empty in either.

    Same value as scipy.stats.ks_2samp after sdmetrics' NaN dropping and rounding: D = max_x |F_r(x) − F_s(x)|
    over the pooled sample, with right-continuous empirical CDFs.
    """
    real, synthetic = Columns(real), Columns(synthetic)
    out = np.full(real.shape[1], np.nan)
    for j in range(real.shape[1]):  # one column at a time keeps memory at O(N), not O(N·d)
        r, s = _sorted_finite(real.column(j)), _sorted_finite(synthetic.column(j))
        if len(r) and len(s):
            out[j] = _ks_sorted(r, s)
    return out


def _sorted_finite(col: np.ndarray) -> np.ndarray:
    col = np.array(col, dtype=np.float64)  # a contiguous copy of the (strided) column
    np.round(col, KS_DECIMALS, out=col)
    col.sort()  # NaNs sort last
    return col[: len(col) - int(np.isnan(col).sum())]


def _ks_sorted(r: np.ndarray, s: np.ndarray) -> float:
    """KS statistic of two sorted samples: the largest CDF gap at any pooled value.

    Each CDF is a step at the sample's distinct values, so the gap is checked there only: a sample's own CDF is
    (end of the tie run)/n, the other's one searchsorted (sorted queries: each search starts where the last
    ended), in blocks. The same integer counts divided by n as scipy's searchsorted(..., 'right')/n over the
    pooled sample, so the result equals scipy's to rounding."""
    gap = 0.0
    for own, other in ((r, s), (s, r)):
        ends = np.flatnonzero(np.append(own[1:] != own[:-1], True)) + 1  # count(own ≤ v) at each distinct v
        for start in range(0, len(ends), CHUNK_ROWS):
            count = ends[start:start + CHUNK_ROWS]
            cdf_own = count / len(own)
            cdf_other = np.searchsorted(other, own[count - 1], side="right") / len(other)
            gap = max(gap, float(np.abs(cdf_own - cdf_other).max()))
    return gap


def correlation_matrices(real: "np.ndarray | Columns", synthetic: "np.ndarray | Columns"
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Pearson correlation matrices of two (N, d) tables, NaN where sdmetrics gives no score.

    A column that is constant in either table (one distinct value) makes its pairs undefined, as sdmetrics'
    ConstantInputError does. Without NaNs the coefficients come from float64 sums over blocks of rows; with NaNs,
    pairs use pairwise-complete rows.
    """
    real, synthetic = Columns(real), Columns(synthetic)
    constant = _constant(real) | _constant(synthetic)
    cr, cs = _pearson(real), _pearson(synthetic)
    cr[constant, :] = cr[:, constant] = np.nan
    cs[constant, :] = cs[:, constant] = np.nan
    return cr, cs


def _constant(x: Columns) -> np.ndarray:
    # exact test: a constant column can have a tiny nonzero np.std from rounding in the mean
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: undefined, hence "constant"
        return np.array([not np.nanmax(c) > np.nanmin(c) for c in map(x.column, range(x.shape[1]))])


def _pearson(x: Columns) -> np.ndarray:
    n, d = x.shape
    with np.errstate(invalid="ignore", divide="ignore"):
        if x.may_have_nan and any(np.isnan(x.column(j)).any() for j in range(d)):
            return _pearson_pairwise(x.rows(0, n))
        # two passes (mean, then centred products) as np.corrcoef computes it, without its centred (N, d) copy
        mean = sum(x.rows(a, a + CHUNK_ROWS).sum(axis=0) for a in range(0, n, CHUNK_ROWS)) / n
        cov = np.zeros((d, d))
        for a in range(0, n, CHUNK_ROWS):
            block = x.rows(a, a + CHUNK_ROWS) - mean
            cov += block.T @ block
        std = np.sqrt(np.diag(cov))
        corr = cov / std[:, None] / std[None, :]
        return np.clip(corr, -1, 1, out=corr)


def _pearson_pairwise(x: np.ndarray) -> np.ndarray:
    d = x.shape[1]
    out = np.full((d, d), np.nan)
    for i in range(d):
        for j in range(i + 1, d):
            ok = ~(np.isnan(x[:, i]) | np.isnan(x[:, j]))
            if ok.sum() >= 2:
                out[i, j] = out[j, i] = np.corrcoef(x[ok, i], x[ok, j])[0, 1]
    return out


# --- the two scores on flat SynthER vectors (terminal last) ----------------------------------------------------
def marginal_score(real: np.ndarray, synthetic: np.ndarray) -> float:
    """Mean over columns of 1 − KS; `real`/`synthetic` are flat SynthER vectors with the terminal column last."""
    return float(np.nanmean(1.0 - ks_statistics(_columns(real), _columns(synthetic))))


def correlation_score(real: np.ndarray, synthetic: np.ndarray) -> float:
    """Mean over column pairs of 1 − |ρ_real − ρ_syn| / 2 (Pearson), terminal column excluded."""
    cr, cs = correlation_matrices(_columns(real), _columns(synthetic))
    iu = np.triu_indices(cr.shape[0], 1)
    return float(np.nanmean(1.0 - np.abs(cr[iu] - cs[iu]) / 2))


# --- names and the full report --------------------------------------------------------------------------------
def _kth_neighbour_radii(x: "torch.Tensor", k: int, chunk: int = 2048) -> "torch.Tensor":
    """Distance from each row of x to its k-th nearest other row of x."""
    import torch

    out = torch.empty(len(x), dtype=x.dtype)
    for i in range(0, len(x), chunk):
        d = torch.cdist(x[i:i + chunk], x)
        out[i:i + chunk] = d.kthvalue(k + 1, dim=1).values  # +1: the row itself is at distance 0
    return out


def _inside(points: "torch.Tensor", centres: "torch.Tensor", radii: "torch.Tensor", chunk: int = 2048
            ) -> "torch.Tensor":
    """For each point: does it lie within radii[j] of some centre j?"""
    import torch

    out = torch.empty(len(points), dtype=torch.bool)
    for i in range(0, len(points), chunk):
        out[i:i + chunk] = (torch.cdist(points[i:i + chunk], centres) <= radii).any(dim=1)
    return out


def support_scores(real: np.ndarray, synthetic: np.ndarray, k: int = 5) -> dict[str, Any]:
    """k-NN precision and recall of `synthetic` against `real` (rows × columns), columns z-scored with the real
    rows' mean and std (a constant column is only centred). See the module docstring."""
    import torch

    mean, std = real.mean(0), real.std(0)
    std = np.where(std > 0, std, 1.0)
    r = torch.from_numpy(((real - mean) / std).astype(np.float32))
    s = torch.from_numpy(((synthetic - mean) / std).astype(np.float32))
    precision = _inside(s, r, _kth_neighbour_radii(r, k)).float().mean().item()
    recall = _inside(r, s, _kth_neighbour_radii(s, k)).float().mean().item()
    return {"precision": precision, "recall": recall, "k": k, "rows": {"real": len(r), "synthetic": len(s)}}


def column_names(layout: TransitionLayout) -> list[str]:
    """Names of the scored columns, in SynthER order without the terminal: obs[i], action[i], reward, next_obs[i]."""
    return ([f"obs[{i}]" for i in range(layout.obs_dim)] + [f"action[{i}]" for i in range(layout.action_dim)]
            + ["reward"] + [f"next_obs[{i}]" for i in range(layout.obs_dim)])


def _subsample(ds: TransitionDataset, max_rows: int | None, rng: np.random.Generator) -> TransitionDataset:
    if max_rows and ds.size > max_rows:
        return ds.subset(np.sort(rng.choice(ds.size, size=max_rows, replace=False)))
    return ds


def _num(v: float) -> float | None:
    return None if not np.isfinite(v) else float(v)


def evaluate_fidelity(
    real: TransitionDataset,
    synthetic: TransitionDataset,
    max_rows: int | None = None,
    seed: int = 0,
    top_pairs: int = 20,
    dynamics: bool = False,
    dynamics_rows: int = 10_000,
    support_rows: int = 10_000,
) -> dict[str, Any]:
    """Marginal and correlation scores with per-column and per-pair breakdowns, and optionally the dynamics error.

    `max_rows` subsamples each table to at most that many rows (None/0: all rows). `per_pair` lists the
    `top_pairs` worst pairs; `pair_matrix` holds every pair's |ρ_real − ρ_syn| (for the heat map). `dynamics` asks
    for synther.evaluation.dynamics.dynamics_error on `dynamics_rows` synthetic rows (null when unsupported, with
    the reason in `dynamics_note`). `support` holds support_scores on `support_rows` random rows of each (0: not
    computed; its time grows with the square of the rows: ≈ 10 s for 10k on one core). Keys `real`/`synthetic`
    describe the two inputs; callers may overwrite them with the spec and path they loaded.
    """
    check_compatible(real, synthetic)
    t_start = time.perf_counter()
    rng = np.random.default_rng(seed)
    names = column_names(real.layout)
    r, s = Columns(_subsample(real, max_rows, rng)), Columns(_subsample(synthetic, max_rows, rng))

    t = time.perf_counter()
    ks = ks_statistics(r, s)
    t_marginal = time.perf_counter() - t
    t = time.perf_counter()
    cr, cs = correlation_matrices(r, s)
    t_corr = time.perf_counter() - t

    diff = np.abs(cr - cs)
    iu = np.triu_indices(len(names), 1)
    pair_scores = 1.0 - diff[iu] / 2
    order = [k for k in np.argsort(-diff[iu], kind="stable") if np.isfinite(diff[iu][k])]
    per_pair = [{"columns": [names[iu[0][k]], names[iu[1][k]]], "real_corr": float(cr[iu][k]),
                 "synthetic_corr": float(cs[iu][k]), "abs_diff": float(diff[iu][k]), "score": float(pair_scores[k])}
                for k in order[:top_pairs]]
    per_column = [{"column": name, "score": _num(1.0 - ks[j]), "ks": _num(ks[j]),
                   "real_mean": float(np.mean(r.column(j), dtype=np.float64)),
                   "synthetic_mean": float(np.mean(s.column(j), dtype=np.float64)),
                   "real_std": float(np.std(r.column(j), dtype=np.float64)),
                   "synthetic_std": float(np.std(s.column(j), dtype=np.float64))}
                  for j, name in enumerate(names)]
    undefined = [names[j] for j in range(len(names)) if np.isnan(cr[j]).all()]

    report: dict[str, Any] = {
        "marginal_score": float(np.nanmean(1.0 - ks)),
        "correlation_score": float(np.nanmean(pair_scores)) if np.isfinite(pair_scores).any() else None,
        "definitions": {
            "marginal_score": "mean over columns of 1 - KS statistic (sdmetrics KSComplement)",
            "correlation_score": "mean over column pairs of 1 - |pearson_real - pearson_synthetic| / 2 "
                                 "(sdmetrics CorrelationSimilarity); pairs with a constant column are left out",
            "columns": "[obs, action, reward, next_obs]; the terminal flag is excluded",
        },
        "per_column": per_column,
        "worst_columns": [c["column"] for c in sorted(per_column, key=lambda c: c["score"] if c["score"] is not None
                                                       else 2.0)[:5]],
        "per_pair": per_pair,
        "pairs_scored": int(np.isfinite(pair_scores).sum()),
        "pairs_total": len(pair_scores),
        "columns_without_correlation": undefined,
        "pair_matrix": {"columns": names, "abs_diff": [[_num(v) for v in row] for row in diff]},
        "rows": {"real": r.shape[0], "synthetic": s.shape[0], "real_total": real.size, "synthetic_total": synthetic.size,
                 "max_rows": max_rows or None, "seed": seed},
        "dynamics": None,
        "real": real.name or real.source,
        "synthetic": synthetic.source,
        "reference_note": REFERENCE_NOTE,
        "seconds": {"marginal": t_marginal, "correlation": t_corr},
    }
    report["support"] = None
    if support_rows > 0:
        t = time.perf_counter()
        real_rows, synthetic_rows = (x.take(rng.choice(x.shape[0], min(support_rows, x.shape[0]), replace=False))
                                     for x in (r, s))
        report["support"] = support_scores(real_rows[np.isfinite(real_rows).all(1)],
                                           synthetic_rows[np.isfinite(synthetic_rows).all(1)])
        report["definitions"]["support"] = ("k-NN precision (share of synthetic rows inside the real rows' k-th "
                                            "neighbour balls) and recall (the converse), z-scored columns "
                                            "(Kynkäänniemi et al. 2019)")
        report["seconds"]["support"] = time.perf_counter() - t
    if dynamics:
        from synther.evaluation.dynamics import DynamicsUnsupported, dynamics_error

        t = time.perf_counter()
        try:
            report["dynamics"] = dynamics_error(synthetic, reference=real, max_rows=dynamics_rows, seed=seed)
        except DynamicsUnsupported as e:
            report["dynamics_note"] = f"dynamics error not computed: {e}"
        report["seconds"]["dynamics"] = time.perf_counter() - t
    else:
        report["dynamics_note"] = "dynamics error not requested"
    report["seconds"]["total"] = time.perf_counter() - t_start
    return report


def fidelity_command(python: str, real: str, synthetic: str | Path, out_dir: str | Path, dynamics: bool) -> list[str]:
    """The command line of MuJoCo/marginal.py (its MarginalConfig): score `synthetic` against `real`."""
    return [python, script("marginal.py"), "--real", real, "--synthetic", str(synthetic), "--out_dir", str(out_dir),
            "--dynamics", str(dynamics).lower()]


def default_out_dir(synthetic_path: str | Path) -> Path:
    """Where a fidelity report on `synthetic_path` goes unless told: <runs root>/evaluation/fidelity-<samples'
    folder>, never the samples' own folder (the release)."""
    return default_evaluation_dir(synthetic_path, "fidelity")


def write_fidelity_report(
    real_spec: str,
    synthetic_path: str | Path,
    out_dir: str | Path | None = None,
    plot: bool = True,
    real: TransitionDataset | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Load both datasets, evaluate, and write <out_dir>/fidelity.json (+ fidelity_pairs.png) atomically.

    `out_dir` defaults to default_out_dir(synthetic_path); `real` may pass an already loaded reference (sweeps load
    it once). Extra keyword arguments go to evaluate_fidelity. Raises UserError for missing or mismatched inputs.
    """
    from synther.errors import UserError

    synthetic_path = Path(synthetic_path)
    if not synthetic_path.is_file():
        raise UserError(f"{synthetic_path}: sample file not found (expected a samples.npz with D4RL keys)")
    out = Path(out_dir) if out_dir else default_out_dir(synthetic_path)
    with FolderLock(out, what="output folder"):  # one scorer per folder
        return _score_and_write(real_spec, synthetic_path, out, plot, real, **kwargs)


def _score_and_write(real_spec: str, synthetic_path: Path, out: Path, plot: bool, real: TransitionDataset | None,
                     **kwargs: Any) -> dict[str, Any]:
    from synther.data.registry import load_dataset
    from synther.utils.io import atomic_write_json

    t = time.perf_counter()
    real = real if real is not None else load_dataset(real_spec)
    synthetic = load_dataset(synthetic_path)
    t_load = time.perf_counter() - t
    report = evaluate_fidelity(real, synthetic, **kwargs)
    report["real"], report["synthetic"] = str(real_spec), str(synthetic_path)
    report["seconds"]["load"] = t_load
    if plot:
        from synther.evaluation.plots import pair_error_heatmap

        t = time.perf_counter()
        report["plot"] = str(pair_error_heatmap(
            report["pair_matrix"], out / "fidelity_pairs.png",
            title=f"|ρ_real − ρ_syn| — {synthetic_path.parent.name} vs {real_spec}"))
        report["seconds"]["plot"] = time.perf_counter() - t
    atomic_write_json(out / "fidelity.json", report)
    return report


def summary_lines(report: dict[str, Any]) -> list[str]:
    """A short human-readable summary of a fidelity report."""
    corr = report["correlation_score"]
    lines = [(f"marginal {report['marginal_score']:.4f}   correlation "
              f"{'n/a' if corr is None else f'{corr:.4f}'}   "
              f"({report['rows']['real']} real vs {report['rows']['synthetic']} synthetic rows)"),
             "worst columns: " + ", ".join(
                 f"{c['column']} {c['score']:.3f}" for c in report["per_column"]
                 if c["column"] in report["worst_columns"][:3] and c["score"] is not None)]
    if report["per_pair"]:
        p = report["per_pair"][0]
        lines.append(f"worst pair: {p['columns'][0]} × {p['columns'][1]}: ρ_real {p['real_corr']:+.3f} vs "
                     f"ρ_syn {p['synthetic_corr']:+.3f}")
    sup = report.get("support")
    if sup:
        lines.append(f"support (k-NN, k={sup['k']}): precision {sup['precision']:.3f} (synthetic rows on the real "
                     f"data's support), recall {sup['recall']:.3f} (real rows covered by the synthetic ones)")
    dyn = report.get("dynamics")
    if dyn:
        lines.append(f"dynamics ({dyn['env']}, {dyn['rows']} rows): next_obs NMSE {dyn['next_obs_nmse']:.4g}, "
                     f"reward NMSE {dyn['reward_nmse']:.4g}  (0 = simulator-consistent, ~2 = unrelated)")
        if dyn.get("rows_velocity_clipped") and dyn.get("next_obs_nmse_reconstructible") is not None:
            lines.append(f"  {dyn['rows_velocity_clipped']} rows start from a clipped velocity; without them: next_obs "
                         f"NMSE {dyn['next_obs_nmse_reconstructible']:.4g}, reward NMSE "
                         f"{dyn['reward_nmse_reconstructible']:.4g}")
    elif report.get("dynamics_note"):
        lines.append(report["dynamics_note"])
    lines.append("note: " + report["reference_note"])
    return lines
