"""Privacy accounting on opacus' accountants: ε for a history of Gaussian mechanisms, σ calibrated to a target.

A history is a list of (noise_multiplier, sample_rate, steps): DP-SGD contributes (σ, q, T); a one-shot Gaussian
mechanism on the sensitive data (e.g. a DP normalizer estimate) contributes (σ_stat, 1.0, 1). Both accountants
compose such histories, so every use of the sensitive data is charged to the same (ε, δ).

ε is accounted under add/remove-one neighbours with the row count N treated as public (q = batch / N), as opacus
and TF Privacy do; `epsilon_replace_one` gives the same history's ε under replace-one neighbours (one record
swapped, N unchanged), from dp-accounting's PLD accountant, for users who cannot treat N as public.
`tail_delta` is the δ a noise generator with a capped tail adds on top of the accountant's.
"""
from __future__ import annotations

import math
import warnings
from functools import lru_cache
from typing import Sequence

from scipy.stats import norm

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


@lru_cache(maxsize=64)
def _epsilon_replace_one(steps: tuple[tuple[float, float, int], ...], delta: float) -> float:
    from dp_accounting import NeighboringRelation, dp_event
    from dp_accounting.pld import PLDAccountant

    # a 1e-3 grid keeps it ~0.1 s per call; the PLD is rounded pessimistically, so ε stays an upper bound
    acc = PLDAccountant(NeighboringRelation.REPLACE_ONE, value_discretization_interval=1e-3)
    acc.compose(dp_event.ComposedDpEvent([dp_event.SelfComposedDpEvent(
        dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(s)), t) for s, q, t in steps]))
    return float(acc.get_epsilon(delta))


def epsilon_replace_one(history: History, delta: float) -> float:
    """ε of `history` at `delta` under replace-one neighbours (one record swapped for another, N unchanged).

    In units of the clip norm C a swapped record moves a Poisson-sampled clipped sum from one point at distance
    ≤ 1 of the rest to another (PLD 'REPLACE' adjacency, sensitivity 1 each way); for a one-shot mechanism with
    add/remove sensitivity 1 this is the triangle-inequality bound (distance ≤ 2)."""
    steps = tuple((float(s), float(q), int(t)) for s, q, t in history if t > 0)
    return _epsilon_replace_one(steps, float(delta)) if steps else 0.0


# A noise generator whose |z| never exceeds a cap lets an output land where the neighbouring run's noise cannot
# reach: for a record whose clipped gradient (norm ≤ C) lies along one coordinate, with probability
# P(N(0,1) > cap − 1/σ) each time it is sampled. Over a history that is at most Σ q·T·P(N > z_max − 1/σ) in
# expectation (a union bound) for any z_max ≤ cap, added to δ. It must stay negligible next to δ.
TAIL_DELTA_FRACTION = 1e-3  # tail term allowed, as a fraction of δ


def tail_delta(history: Sequence[tuple[float, float, int, float]]) -> float:
    """Σ q·T·P(N > z_max − 1/σ) over (σ, q, T, z_max) entries: the δ a tail capped at z_max·σC or beyond adds
    (z_max is a lower bound of the cap: a smaller one only overstates this term)."""
    return float(sum(q * t * norm.sf(z - 1.0 / s) for s, q, t, z in history if t > 0))


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
        raise UserError(f"the budget is already spent before training: the mechanisms already run on sensitive data "
                        f"(a DP normalizer, earlier DP fine-tunes of the loaded checkpoint) reach ε ≥ {target_epsilon}")

    def eps(sigma: float) -> float:
        with warnings.catch_warnings():  # opacus warns while the search visits σ far from the answer
            warnings.simplefilter("ignore")
            return epsilon_spent([*prior, (sigma, sample_rate, steps)], delta, accountant)

    lo, hi = 0.0, 1.0
    while eps(hi) > target_epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e4:
            raise UserError(f"cannot reach ε={target_epsilon:g} at δ={delta:g} with q={sample_rate:.4g} and {steps} "
                            "steps even at noise multiplier 1e4: raise --dp.epsilon")
    while eps(hi) < target_epsilon - tolerance and hi - lo > 1e-4:
        mid = (lo + hi) / 2
        if eps(mid) > target_epsilon:
            lo = mid
        else:
            hi = mid
    return hi
