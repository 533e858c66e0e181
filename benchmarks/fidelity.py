"""Fidelity scoring speed on 1M × 42 rows (HalfCheetah's layout: 17 obs + 6 actions + reward + 17 next obs +
terminal), ours against sdmetrics' own metrics and a plain scipy loop, all measured in this one run.

- ours:     synther.evaluation.fidelity.marginal_score + correlation_score (one sort + merge per column for KS,
            one float64 corrcoef for all pairs);
- sdmetrics: KSComplement.compute per column and CorrelationSimilarity.compute (Pearson) per column pair, as its
            quality report runs them (41 + 820 calls on pandas objects);
- scipy:    scipy.stats.ks_2samp per column and scipy.stats.pearsonr per pair, on numpy arrays.
It prints each one's seconds, the speed-up, and the largest score differences (ours vs each reference).

  python benchmarks/fidelity.py                          # full 1M rows; sdmetrics takes several minutes here
  python benchmarks/fidelity.py --rows 100000 --reference scipy
  python benchmarks/fidelity.py --pair_sample 100        # time sdmetrics on 100 random pairs, extrapolate (marked)
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from synther.evaluation.fidelity import correlation_score, ks_statistics, marginal_score  # noqa: E402


def make_data(rows: int, cols: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Correlated, skewed float32 columns (as to_vectors gives) plus a 0/1 terminal column; the synthetic table
    has shifted means, scaled spreads and a perturbed mixing matrix, so both scores are below 1."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(cols, cols)) / np.sqrt(cols)
    real = rng.standard_normal((rows, cols)) @ mix
    real[:, ::3] = np.exp(0.5 * real[:, ::3])  # some skewed columns
    syn = rng.standard_normal((rows, cols)) @ (mix + 0.1 * rng.normal(size=mix.shape) / np.sqrt(cols))
    syn[:, ::3] = np.exp(0.5 * syn[:, ::3])
    syn = syn * rng.uniform(0.9, 1.1, cols) + rng.normal(0, 0.05, cols)
    term_r, term_s = (rng.random((rows, 1)) < 0.01, rng.random((rows, 1)) < 0.02)
    return (np.hstack([real, term_r]).astype(np.float32), np.hstack([syn, term_s]).astype(np.float32))


def sdmetrics_scores(real: np.ndarray, syn: np.ndarray, pairs: list[tuple[int, int]]) -> tuple:
    """(per-column scores, per-pair scores, seconds for the columns, seconds for the pairs)."""
    import pandas as pd
    from sdmetrics.column_pairs import CorrelationSimilarity
    from sdmetrics.errors import ConstantInputError
    from sdmetrics.single_column import KSComplement

    r, s = pd.DataFrame(real), pd.DataFrame(syn)
    t = time.perf_counter()
    ks = np.array([KSComplement.compute(r[j], s[j]) for j in r.columns])
    t_cols = time.perf_counter() - t
    out = []
    for i, j in pairs:
        try:
            out.append(CorrelationSimilarity.compute(r[[i, j]], s[[i, j]], coefficient="Pearson"))
        except ConstantInputError:  # constant column: the quality report records NaN
            out.append(np.nan)
    return ks, np.array(out), t_cols, time.perf_counter() - t - t_cols


def scipy_scores(real: np.ndarray, syn: np.ndarray, pairs: list[tuple[int, int]]) -> tuple:
    """Same as sdmetrics_scores with plain scipy calls on numpy arrays."""
    from scipy.stats import ks_2samp, pearsonr

    t = time.perf_counter()
    ks = np.array([1.0 - ks_2samp(real[:, j], syn[:, j]).statistic for j in range(real.shape[1])])
    t_cols = time.perf_counter() - t
    out = [1.0 - abs(pearsonr(real[:, i], real[:, j])[0] - pearsonr(syn[:, i], syn[:, j])[0]) / 2 for i, j in pairs]
    return ks, np.array(out), t_cols, time.perf_counter() - t - t_cols


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows in each table")
    ap.add_argument("--cols", type=int, default=41, help="scored columns (the terminal column is added)")
    ap.add_argument("--reference", default="sdmetrics,scipy", help="comma-separated: sdmetrics, scipy")
    ap.add_argument("--pair_sample", type=int, default=0,
                    help="time the references on this many random pairs and extrapolate to all (0: all pairs)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    real, syn = make_data(args.rows, args.cols, args.seed)
    print(f"data: {args.rows} × {args.cols + 1} rows per table (float32, terminal column excluded from scores)")
    t = time.perf_counter()
    ours_m, ours_c = marginal_score(real, syn), correlation_score(real, syn)
    t_ours = time.perf_counter() - t
    print(f"ours       {t_ours:8.1f}s   marginal {ours_m:.6f}   correlation {ours_c:.6f}")

    r64, s64 = real[:, :-1].astype(np.float64), syn[:, :-1].astype(np.float64)
    ks_ours = 1.0 - ks_statistics(r64, s64)
    cr, cs = np.corrcoef(r64, rowvar=False), np.corrcoef(s64, rowvar=False)
    all_pairs = [(i, j) for i in range(args.cols) for j in range(i + 1, args.cols)]
    pairs = all_pairs
    if args.pair_sample and args.pair_sample < len(all_pairs):
        idx = np.random.default_rng(args.seed).choice(len(all_pairs), args.pair_sample, replace=False)
        pairs = [all_pairs[k] for k in sorted(idx)]
    pair_ours = np.array([1.0 - abs(cr[i, j] - cs[i, j]) / 2 for i, j in pairs])

    for name in [x.strip() for x in args.reference.split(",") if x.strip()]:
        fn = {"sdmetrics": sdmetrics_scores, "scipy": scipy_scores}[name]
        ks_ref, pair_ref, t_cols, t_pairs = fn(r64, s64, pairs)  # float64, as ours (pearsonr keeps float32 precision)
        scale = len(all_pairs) / len(pairs)
        dt = t_cols + t_pairs * scale  # the column part always runs in full; only the pair part may be extrapolated
        note = f"  (pairs timed on {len(pairs)} of {len(all_pairs)}, extrapolated)" if scale > 1 else ""
        print(f"{name:<10} {dt:8.1f}s   speed-up {dt / t_ours:6.1f}×   max |Δ| per column "
              f"{np.nanmax(np.abs(ks_ref - ks_ours)):.1e}   per pair "
              f"{np.nanmax(np.abs(pair_ref - pair_ours)):.1e}{note}")


if __name__ == "__main__":
    main()
