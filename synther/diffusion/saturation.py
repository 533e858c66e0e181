"""Actions on their bounds: the public data's share of them, and snapping synthetic actions back onto the bounds.

A controller that saturates puts a large share of its actions exactly on a bound (PointMaze's: 35–38 % of the action
entries at ±1). A diffusion model's samples end just inside instead — the stochastic sampler's churn blurs the spike
(on the public umaze stand-in, 15 % of sampled entries reach a bound after clipping), and the action columns'
marginal scores fall from ~0.96 to ~0.89 (results/issue14-session21.md). Pre-training records the share of PUBLIC
action entries that sit on a bound; sampling moves the same share of synthetic entries, those nearest a bound, onto
it. It reads public facts and the samples only: post-processing, no privacy cost. `--saturated_actions none` turns
it off.
"""
import numpy as np

# an entry within this share of its column's range from a bound counts as on it (float32 data written at ±1 exactly)
ON_BOUND = 1e-6


def saturated_share(actions: np.ndarray, low: np.ndarray, high: np.ndarray) -> float:
    """Share of the entries of `actions` (rows × columns) that sit on their column's bound. Pass PUBLIC data only."""
    tol = ON_BOUND * (np.asarray(high) - np.asarray(low))
    on_bound = (actions <= low + tol) | (actions >= high - tol)
    return float(on_bound.mean()) if on_bound.size else 0.0


def snap_to_bounds(actions: np.ndarray, low: np.ndarray, high: np.ndarray,
                   share: float) -> tuple[np.ndarray, float, int]:
    """Move the `share` of entries nearest a bound onto it: (snapped actions, the threshold τ as a share of the
    half-range, entries moved). `actions` must already lie within [low, high]; entries on a bound count in the
    share, so samples already saturated at least that much are left as they are."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be in [0, 1], got {share}")
    if share == 0.0 or actions.size == 0:
        return actions, 0.0, 0
    low, high = np.asarray(low, dtype=actions.dtype), np.asarray(high, dtype=actions.dtype)
    half = (high - low) / 2
    to_low, to_high = actions - low, high - actions
    # the distance to the nearer bound in half-ranges: 0 on a bound, 1 in the middle (a fixed column counts as on it)
    gap = np.where(half > 0, np.minimum(to_low, to_high) / np.where(half > 0, half, 1), 0.0)
    tau = float(np.quantile(gap, share))
    snap = (gap <= tau) & (gap > 0)
    snapped = np.where(snap, np.where(to_high < to_low, high, low), actions).astype(actions.dtype)
    return snapped, tau, int(snap.sum())


# How a model represents actions (DiffusionConfig.action_space)
ACTION_SPACES = ("auto", "raw", "atanh")
# 'auto' takes atanh below this public share on a bound: a tanh-squashed policy's float32 actions reach ±1 only by
# rounding (HalfCheetah SAC data: 0.001-0.006 % of entries within 1e-6 of a bound), a saturating controller's are
# there by design (PointMaze: 35-38 %)
SQUASHED_MAX_SHARE = 1e-3


def choose_action_space(requested: str, share: float, low: np.ndarray, high: np.ndarray) -> tuple[str, str]:
    """'raw' or 'atanh' for `requested`, and why. A tanh-squashed policy (SAC's) never puts an action exactly on a
    bound but piles many just inside it; a model of the raw actions blurs that pile across the bound, and clipping
    turns the overshoot into a spike on the bound that the data never has (HalfCheetah: 12 % of sampled entries vs
    0 %). Modelling atanh of the position within the bounds puts the pile at a finite distance and maps every sample
    back inside. 'auto' takes it when (almost) no PUBLIC action entry lies on a bound (`share` below
    SQUASHED_MAX_SHARE); a controller that saturates, e.g. PointMaze's, keeps raw actions and the snapping step."""
    if requested not in ACTION_SPACES:
        raise ValueError(f"unknown action_space '{requested}' (choose from: {', '.join(ACTION_SPACES)})")
    bounded = bool(np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and np.all(np.asarray(high) > low))
    if requested == "raw":
        return "raw", "raw actions (action_space 'raw')"
    if not bounded:
        if requested == "atanh":
            raise ValueError("action_space 'atanh' needs finite action bounds with high > low")
        return "raw", "raw actions: the action bounds are not finite"
    if requested == "atanh":
        return "atanh", "atanh of each action's position within its bounds (action_space 'atanh')"
    if share >= SQUASHED_MAX_SHARE:
        return "raw", f"raw actions: {share:.3f} of the public datasets' action entries lie on a bound"
    return "atanh", (f"atanh of each action's position within its bounds: {share:.2g} of the public datasets' action "
                     f"entries lie on a bound (under {SQUASHED_MAX_SHARE:g}: a tanh-squashed policy)")
