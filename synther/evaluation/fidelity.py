"""Fidelity scores as sdmetrics defines them (what PrivORL reports); the terminal column is excluded.

Marginal     = mean over columns of 1 − KS(real_j, synthetic_j)
Correlation  = mean over column pairs of 1 − |ρ_real − ρ_syn| / 2   (Pearson)
"""
import numpy as np
from scipy.stats import ks_2samp


def _columns(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)[:, :-1]  # drop the terminal column (last in SynthER order)


def marginal_score(real: np.ndarray, synthetic: np.ndarray) -> float:
    r, s = _columns(real), _columns(synthetic)
    return float(np.mean([1.0 - ks_2samp(r[:, j], s[:, j]).statistic for j in range(r.shape[1])]))


def correlation_score(real: np.ndarray, synthetic: np.ndarray) -> float:
    r, s = _columns(real), _columns(synthetic)
    keep = (r.std(0) > 0) & (s.std(0) > 0)  # a constant column has no correlation to compare
    cr, cs = np.corrcoef(r[:, keep].T), np.corrcoef(s[:, keep].T)
    iu = np.triu_indices(cr.shape[0], 1)
    return float(np.mean(1.0 - np.abs(cr[iu] - cs[iu]) / 2))
