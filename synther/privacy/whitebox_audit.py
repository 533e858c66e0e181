"""White-box audit of the DP-SGD step: gradient canaries, every noisy update observed (Nasr et al., "Tight
Auditing of Differentially Private Machine Learning", USENIX Security 2023; Steinke, Nasr & Jagielski 2023).

The black-box canary audit (audit.py) sees only the final model; this one gives the attacker everything DP-SGD's
threat model allows, so its ε lower bound can come close to the accountant's ε and exposes a mechanism that
adds too little noise or does not clip. It runs the trainer's own engine, `synther.privacy.engine.DPSGD`
(PoissonSampler, the clipping backend (ghost clipping by default), GaussianNoise, the expected-batch normalisation):
grad = (Σ_{i∈batch} clip(∇ℓ_i, C) + N(0, σ²C²)) / (q·N), σ calibrated to the target ε by the accountant.

The attacker's best case, built into the model and data:
- the model is one bias-free width × width nn.Linear, whose m = width² weights are m canary slots;
- record j has per-sample loss u_jᵀ W x_j with x_j the one-hot of column j % width and u_j = G·C times the
  one-hot of row j // width (G = `canary_norm` ≥ 1), so its gradient u_j x_jᵀ is a Dirac of norm G·C on weight j.
  The loss is linear in W, so gradients do not depend on the weights and they are never stepped: the update the
  optimizer would apply is -lr × the noisy gradient read here;
- slot j holds its canary with probability ½, otherwise a filler record with u_j = 0 (zero gradient, so it
  changes no noisy sum): N = m either way, the public row count the accountant assumes, and the neighbouring
  datasets differ by adding or removing canary j;
- at step t the attacker reads weight j's noisy gradient in units of C, z_t = grad_j·qN/C ~ N(s_t, σ²), where
  s_t = 1 when canary j was sampled (clipped to norm C) and 0 otherwise, and scores the canary by the exact
  log-likelihood ratio of "in" (sampled with probability q at every step) against "out":
  Σ_t log(1 − q + q·exp((z_t − ½)/σ²)).

Why the bound is valid. Given the inclusion bits, the slots' observations are independent and slot j's depends
only on its own bit: PoissonSampler draws one coin per record, GaussianNoise draws every coordinate independently,
the clip factor of a record depends on that record alone, and record j's gradient lies on weight j only. Runs are
repeated with fresh bits, coins and noise (the generators' streams go on), so every slot of every run is an
independent trial of one post-processing of M's output (its coordinate j) on a pair of neighbouring datasets.
If M is (ε, δ)-DP, then for any threshold τ fixed independently of a trial, TPR(τ) ≤ e^ε·FPR(τ) + δ. The
threshold is picked on every other slot (the one whose counts give the best bound there), and on the remaining
slots the numbers of in- and out-slots scoring ≥ τ are binomial: with one-sided Clopper–Pearson bounds, each
failing with probability (1 − confidence)/2, ε ≥ ln((TPR_lo − δ) / FPR_hi) holds with that confidence. What is
assumed is the independence above; it is part of the mechanism the accountant analyses (i.i.d. noise, independent
coins, per-sample clipping), with the generators' outputs taken as random, and what the audit then tests is the
noise scale and the clipping. A perfect attacker (every in-slot above τ, no out-slot) on the same slots at the
same confidence gives the largest bound this many canaries can show, reported beside it.

Defaults (q = 0.5, T = 10, 2M canary slots in 489 runs of a 64 × 64 layer, ~10 s per ε on one core): bounds
0.66 / 1.39 / 3.01 at accountant ε 0.99 / 2.0 / 4.0 (δ = 1e-5); with the noise halved or clipping off they
exceed the accountant's ε.
"""
import math
import time
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
import torch
from scipy import stats
from torch import nn

from synther.errors import UserError
from synther.privacy.accounting import calibrate_noise_multiplier, epsilon_spent
from synther.privacy.dpsgd import CLIPPING_MODES
from synther.privacy.engine import DPSGD, DPSettings


@dataclass
class WhiteboxSetup:
    delta: float = 1e-5  # δ of the accountant and of the bound
    sample_rate: float = 0.5  # Poisson sampling rate q
    steps: int = 10  # DP-SGD steps T per run
    canaries: int = 2_000_000  # canary slots over all runs (rounded up to whole runs), each filled with probability ½
    width: int = 64  # the model is a width × width nn.Linear: width² canary slots per run
    canary_norm: float = 4.0  # a canary's gradient norm, in clip norms (clipping brings it down to 1)
    clip_norm: float = 1.0  # C
    clipping_mode: str = "ghost"  # clipping backend: ghost, opacus_hooks or opacus_ghost
    accountant: str = "rdp"  # rdp or prv


def step_llr(z: torch.Tensor, sample_rate: float, sigma: float) -> torch.Tensor:
    """log-likelihood ratio of one step's observation z ~ N(s, σ²) (units of C) between "sampled with
    probability q" (s = 1) and "absent" (s = 0): log(1 − q + q·exp((z − ½)/σ²))."""
    log_in = math.log(sample_rate) + (z - 0.5) / sigma ** 2
    if sample_rate == 1.0:
        return log_in
    return torch.logaddexp(torch.full_like(z, math.log1p(-sample_rate)), log_in)


def _clopper_pearson(k: int, n: int, alpha: float) -> tuple[float, float]:
    """One-sided (lower, upper) Clopper–Pearson bounds on a binomial p, each failing with probability ≤ alpha."""
    lo = 0.0 if k == 0 else float(stats.beta.ppf(alpha, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - alpha, k + 1, n - k))
    return lo, hi


def _bound(tp: int, n_in: int, fp: int, n_out: int, delta: float, alpha: float) -> float:
    """ln((TPR_lo − δ) / FPR_hi), or 0 where that is not positive."""
    tpr_lo, _ = _clopper_pearson(tp, n_in, alpha)
    _, fpr_hi = _clopper_pearson(fp, n_out, alpha)
    return max(0.0, math.log((tpr_lo - delta) / fpr_hi)) if tpr_lo > delta else 0.0


def _counts(scores_in: np.ndarray, scores_out: np.ndarray, tau: float) -> tuple[int, int, int, int]:
    return int((scores_in >= tau).sum()), len(scores_in), int((scores_out >= tau).sum()), len(scores_out)


def bound_from_scores(select: tuple[np.ndarray, np.ndarray], evaluate: tuple[np.ndarray, np.ndarray],
                      delta: float, confidence: float = 0.95) -> dict:
    """ε lower bound from canary scores (higher: more likely in), each half given as (scores of canaries in,
    scores of canaries out). The threshold τ ("in" when score ≥ τ) is the one that would give the best bound on
    the `select` half; the bound is its Clopper–Pearson bound on the independent `evaluate` half, valid with
    `confidence` whatever τ the first half picked. Also the largest bound a perfect attacker could show there."""
    if not 0 < confidence < 1:
        raise UserError(f"confidence must be in (0, 1), got {confidence}")
    if min(len(a) for a in (*select, *evaluate)) == 0:
        raise UserError("the audit needs canaries both in and out in each half")
    alpha = (1 - confidence) / 2  # TPR_lo and FPR_hi must both hold
    sel_in, sel_out = select
    # candidates: the selection half's out-scores at false-positive rates from 30% down to ~3 false positives,
    # and just above the largest (no false positive there)
    fprs = np.logspace(math.log10(0.3), math.log10(min(0.3, 3 / len(sel_out))), 60)
    candidates = np.r_[np.quantile(sel_out, 1 - fprs), np.nextafter(sel_out.max(), np.inf)]
    # scored as if all candidates were tested at once (Bonferroni), so that the pick is not a lucky small count
    tau = float(max(candidates, key=lambda t: _bound(*_counts(sel_in, sel_out, t), delta, alpha / len(candidates))))
    tp, n_in, fp, n_out = _counts(*evaluate, tau)
    return {"epsilon_lower_bound": _bound(tp, n_in, fp, n_out, delta, alpha),
            "max_attainable_bound": _bound(n_in, n_in, 0, n_out, delta, alpha),
            "threshold": tau, "true_positives": tp, "canaries_in": n_in, "false_positives": fp,
            "canaries_out": n_out}


@lru_cache(maxsize=32)
def _calibrated(epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str) -> tuple[float, float]:
    """(σ, the accountant's ε at σ): the accountant takes seconds, and tests audit one setup several ways."""
    sigma = calibrate_noise_multiplier(epsilon, delta, sample_rate, steps, accountant)
    return sigma, epsilon_spent([(sigma, sample_rate, steps)], delta, accountant)


def _linear_canary_model(width: int) -> nn.Linear:
    model = nn.Linear(width, width, bias=False)
    nn.init.zeros_(model.weight)  # irrelevant (gradients do not depend on it); zero keeps it obvious
    return model


def audit_dpsgd(epsilon: float, setup: WhiteboxSetup = WhiteboxSetup(), confidence: float = 0.95, seed: int = 0,
                *, noise_scale: float = 1.0, clip_norm_override: float | None = None) -> dict:
    """Audit DP-SGD calibrated to (`epsilon`, setup.delta): the accountant's ε beside the white-box lower bound.

    `noise_scale` and `clip_norm_override` break the mechanism on purpose, for tests only: the noise drawn is
    noise_scale × the calibrated one, and clipping uses clip_norm_override (inf: off) instead of C, while the
    attacker and the accountant still assume the calibrated σ and C.
    """
    start = time.time()
    s = setup
    if s.width < 1 or s.steps < 1 or s.canaries < 1 or s.canary_norm < 1 or s.clip_norm <= 0:
        raise UserError("width, steps and canaries must be ≥ 1, canary_norm ≥ 1 and clip_norm > 0")
    if s.clipping_mode not in CLIPPING_MODES:
        raise UserError(f"unknown clipping mode '{s.clipping_mode}' (choose from: {', '.join(CLIPPING_MODES)})")
    sigma, accountant_eps = _calibrated(epsilon, s.delta, s.sample_rate, s.steps, s.accountant)

    m = s.width ** 2
    runs = -(-s.canaries // m)
    model = _linear_canary_model(s.width)
    clip = s.clip_norm if clip_norm_override is None else clip_norm_override
    # the trainer's engine, seeded (an audit replays its runs; nothing here is released), no optimizer: every noisy
    # gradient is observed before any step would use it
    engine = DPSGD(model, None, m, DPSettings(sigma, clip, s.sample_rate, s.clipping_mode), seed=seed)
    engine.noise_std = noise_scale * sigma * s.clip_norm / engine.expected_batch  # as calibrated, unless broken
    rng = np.random.default_rng([seed, 0xCA7A])
    slot = torch.arange(m)
    x = nn.functional.one_hot(slot % s.width, s.width).float()  # record j's input: column j % width
    row = nn.functional.one_hot(slot // s.width, s.width).float()  # record j's output direction: row j // width
    to_units = engine.expected_batch / s.clip_norm  # the noisy clipped sum, in units of C

    scores, inserted = [], []
    for _ in range(runs):
        bits = rng.random(m) < 0.5
        u = row * (s.canary_norm * s.clip_norm * torch.from_numpy(bits).float())[:, None]  # fillers: u = 0
        score = torch.zeros(m, dtype=torch.float64)
        for _ in range(s.steps):
            batch = engine.sample()
            engine.step(batch, lambda rows: (model(x[rows]) * u[rows]).sum(1))
            z = model.weight.grad.reshape(-1).double() * to_units  # weight j = slot j (row-major)
            score += step_llr(z, s.sample_rate, sigma)
        scores.append(score.numpy())
        inserted.append(bits)
    scores, inserted = np.concatenate(scores), np.concatenate(inserted)
    half = np.arange(len(scores)) % 2 == 0  # every other slot picks the threshold, the rest are scored
    result = bound_from_scores((scores[half & inserted], scores[half & ~inserted]),
                               (scores[~half & inserted], scores[~half & ~inserted]), s.delta, confidence)
    return {"accountant_epsilon": accountant_eps, "target_epsilon": epsilon, **result, "delta": s.delta,
            "confidence": confidence, "noise_multiplier": sigma, "canaries": runs * m, "runs": runs,
            "setup": asdict(s), "seed": seed, "noise_generator": engine.generator_name,
            "broken_on_purpose": {"noise_scale": noise_scale, "clip_norm": str(clip)}
            if noise_scale != 1.0 or clip_norm_override is not None else None,
            "method": "white-box DP-SGD audit: gradient canaries on their own weights, every noisy update observed, "
                      "likelihood-ratio score over the Poisson-sampled steps; threshold picked on half of the "
                      "canaries, Clopper–Pearson bounds on the other half",
            "seconds": round(time.time() - start, 2)}


def summary_table(results: list[dict]) -> str:
    """Markdown table of audit_dpsgd results, one row per ε."""
    lines = ["| target ε | accountant ε | σ | ε lower bound | bound / ε | max attainable | canaries | seconds |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        lines.append(f"| {r['target_epsilon']:g} | {r['accountant_epsilon']:.3f} | {r['noise_multiplier']:.3f} | "
                     f"{r['epsilon_lower_bound']:.3f} | {r['epsilon_lower_bound'] / r['accountant_epsilon']:.2f} | "
                     f"{r['max_attainable_bound']:.2f} | {r['canaries']} | {r['seconds']:.1f} |")
    return "\n".join(lines)
