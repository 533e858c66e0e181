"""Privacy accounting on opacus' accountants: ε for a history of Gaussian mechanisms, σ calibrated to a target.

A history is a list of (noise_multiplier, sample_rate, steps): DP-SGD contributes (σ, q, T); a one-shot Gaussian
mechanism on the sensitive data (e.g. a DP normalizer estimate) contributes (σ_stat, 1.0, 1). Both accountants
compose such histories, so every use of the sensitive data is charged to the same (ε, δ).
"""
from __future__ import annotations

import math
from typing import Sequence

from synther.errors import UserError

ACCOUNTANTS = ("rdp", "prv")
History = Sequence[tuple[float, float, int]]
# opacus' default RDP orders stop at 63; one-shot mechanisms with large σ are tightest at higher orders.
RDP_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [80, 96, 128, 192, 256, 384, 512, 1024]


def _accountant(name: str):
    from opacus.accountants import PRVAccountant, RDPAccountant

    if name == "rdp":
        return RDPAccountant()
    if name == "prv":
        return PRVAccountant()
    raise UserError(f"unknown accountant '{name}' (choose from: {', '.join(ACCOUNTANTS)})")


def epsilon_spent(history: History, delta: float, accountant: str = "rdp") -> float:
    """ε of the composition of `history` at `delta` (0 for an empty history)."""
    steps = [(float(s), float(q), int(t)) for s, q, t in history if t > 0]
    if not steps:
        return 0.0
    acc = _accountant(accountant)
    acc.history = steps
    if accountant == "rdp":
        return float(acc.get_epsilon(delta=delta, alphas=RDP_ORDERS))
    return float(acc.get_epsilon(delta=delta))


def validate_target(epsilon: float, delta: float) -> None:
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise UserError(f"target ε must be a positive number, got {epsilon}")
    if not (0 < delta < 1):
        raise UserError(f"δ must be in (0, 1), got {delta}")


def calibrate_noise_multiplier(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "rdp",
    prior: History = (),
    tolerance: float = 0.01,
) -> float:
    """Smallest σ (within `tolerance` in ε) such that ε(prior + [(σ, q, steps)]) ≤ target_epsilon."""
    validate_target(target_epsilon, delta)
    if not 0 < sample_rate <= 1:
        raise UserError(f"sample rate must be in (0, 1], got {sample_rate}")
    if steps <= 0:
        raise UserError(f"DP training needs at least one step, got {steps}")
    if prior and epsilon_spent(prior, delta, accountant) >= target_epsilon:
        raise UserError(f"the budget is already spent before training (ε ≥ {target_epsilon}); lower the statistic's share")

    def eps(sigma: float) -> float:
        return epsilon_spent([*prior, (sigma, sample_rate, steps)], delta, accountant)

    lo, hi = 0.0, 1.0
    while eps(hi) > target_epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e4:
            raise UserError(f"cannot reach ε={target_epsilon} at δ={delta} with q={sample_rate} and {steps} steps")
    while eps(hi) < target_epsilon - tolerance and hi - lo > 1e-4:
        mid = (lo + hi) / 2
        if eps(mid) > target_epsilon:
            lo = mid
        else:
            hi = mid
    return hi
