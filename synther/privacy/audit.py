"""Empirical privacy audit in one training run (Steinke, Nasr & Jagielski, "Privacy Auditing with One (1) Training
Run", NeurIPS 2023).

m canaries are each inserted into the training set independently with probability 1/2. After training, an attacker
scores every canary and guesses "in" for its k highest scores and "out" for its k lowest (abstaining on the rest).
If training is (ε, δ)-DP, the number of correct guesses among r = 2k is dominated by Binomial(r, e^ε/(1+e^ε)) up to
a δ term (their Theorem 3.1 / Proposition 5.7). So if the observed count would be improbable (p < 1 − confidence)
under ε, the run is not ε-DP: the largest such ε is a lower bound that holds with that confidence.

Even a perfect attacker (every guess right) only rejects ε up to a ceiling set by the canary count: about 4.6 for
1000 canaries at δ = 1e-6. That ceiling is reported beside the bound: where it is below the accountant's ε, this
audit cannot detect an implementation that spends more than it claims (synther/privacy/whitebox_audit.py can).

We try a few guess counts k fixed in advance and split the 1 − confidence over them (Bonferroni), so picking the
best k after seeing the scores keeps the bound valid.
"""
from dataclasses import dataclass

import numpy as np
from scipy import stats

from synther.errors import UserError

DEFAULT_GUESS_FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)  # k / m tried, fixed before looking at any score


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P[≥ v correct out of r guesses] under (ε, δ)-DP with m canaries (Steinke et al., Theorem 3.1 with δ)."""
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    q = 1.0 / (1.0 + np.exp(-epsilon))  # accuracy of ε-randomized response
    beta = stats.binom.sf(v - 1, r, q)
    # δ term: 2·m·δ·max_i P[v > Binomial(r, q) ≥ v − i] / i
    alpha = 0.0
    if delta > 0 and v > 0:
        i = np.arange(1, v + 1)
        mass = np.cumsum(stats.binom.pmf(v - i, r, q))
        alpha = float(np.max(mass / i))
    return float(min(1.0, beta + 2 * m * delta * alpha))


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, significance: float) -> float:
    """Largest ε whose p-value for (m, r, v) is below `significance` (0 when no ε is rejected)."""
    if p_value(m, r, v, 0.0, delta) >= significance:
        return 0.0
    lo, hi = 0.0, 1.0
    while p_value(m, r, v, hi, delta) < significance:  # p-value grows with ε
        lo, hi = hi, 2 * hi
        if hi > 1e3:
            return lo
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if p_value(m, r, v, mid, delta) < significance else (lo, mid)
    return lo


@dataclass
class AuditResult:
    epsilon_lower_bound: float
    delta: float
    confidence: float
    canaries: int
    inserted: int
    guesses: int  # r at the best k
    correct: int  # v at the best k
    tried: list[dict]  # every k tried with its (r, v, bound)
    max_attainable_bound: float  # the bound if every guess were right, at the same k's and correction
    method: str = ("one-run audit with inserted canaries (Steinke, Nasr & Jagielski 2023), guesses from the "
                   "membership-inference loss score, Bonferroni over the guess counts tried")


def audit_from_scores(scores: np.ndarray, inserted: np.ndarray, delta: float, confidence: float = 0.95,
                      guess_fractions: tuple[float, ...] = DEFAULT_GUESS_FRACTIONS) -> AuditResult:
    """ε lower bound from canary scores (higher = more likely inserted) and the true inclusion bits."""
    scores, inserted = np.asarray(scores, dtype=np.float64), np.asarray(inserted, dtype=bool)
    if scores.shape != inserted.shape or scores.ndim != 1:
        raise UserError(f"scores and inclusion bits must be 1-D and the same length, got {scores.shape}, "
                        f"{inserted.shape}")
    if not 0 < confidence < 1:
        raise UserError(f"confidence must be in (0, 1), got {confidence}")
    m = len(scores)
    ks = sorted({max(1, int(round(f * m / 2))) for f in guess_fractions})  # k guesses "in", k "out"
    significance = (1 - confidence) / len(ks)
    order = np.argsort(-scores, kind="stable")
    tried, best = [], None
    perfect = max(epsilon_lower_bound(m, 2 * k, 2 * k, delta, significance) for k in ks)
    for k in ks:
        top, bottom = order[:k], order[m - k:]
        v = int(inserted[top].sum() + (~inserted[bottom]).sum())
        bound = epsilon_lower_bound(m, 2 * k, v, delta, significance)
        tried.append({"k": k, "guesses": 2 * k, "correct": v, "epsilon_lower_bound": bound})
        if best is None or bound > best["epsilon_lower_bound"]:
            best = tried[-1]
    return AuditResult(epsilon_lower_bound=best["epsilon_lower_bound"], delta=delta, confidence=confidence,
                       canaries=m, inserted=int(inserted.sum()), guesses=best["guesses"], correct=best["correct"],
                       tried=tried, max_attainable_bound=perfect)


def make_canaries(mean: np.ndarray, std: np.ndarray, count: int, radius: float, rng: np.random.Generator,
                  terminal_column: int | None = -1) -> np.ndarray:
    """`count` raw transition vectors at distance `radius` (in public-normalizer units) from the public mean, in
    random directions: atypical records a model only fits by memorizing them. Built from public statistics and
    a seed only, never from the sensitive data."""
    direction = rng.normal(size=(count, len(mean)))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    x = mean + std * radius * direction * np.sqrt(len(mean))  # radius per dimension on average
    if terminal_column is not None:
        x[:, terminal_column] = 0.0
    return x.astype(np.float32)
