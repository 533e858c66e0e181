"""Snapping synthetic actions onto their bounds so that as many sit there as in the public data."""
import numpy as np
import pytest

from synther.diffusion.saturation import saturated_share, snap_to_bounds


def test_the_share_on_a_bound_counts_either_bound_of_each_column():
    low, high = np.array([-1.0, 0.0]), np.array([1.0, 4.0])
    a = np.array([[-1.0, 4.0], [0.5, 0.0], [1.0, 2.0], [0.999, 3.99]])
    assert saturated_share(a, low, high) == pytest.approx(4 / 8)


def test_snapping_moves_the_entries_nearest_a_bound_onto_the_nearer_one_and_no_other():
    rng = np.random.default_rng(0)
    low, high = np.array([-1.0, 0.0]), np.array([1.0, 4.0])
    a = rng.uniform(low, high, size=(10_000, 2)).astype(np.float32)
    snapped, tau, moved = snap_to_bounds(a, low, high, 0.3)
    assert saturated_share(snapped, low, high) == pytest.approx(0.3, abs=1e-3) and moved == pytest.approx(6000, abs=2)
    changed = snapped != a
    gap = np.minimum(a - low, high - a) / ((high - low) / 2)
    assert gap[changed].max() <= tau < gap[~changed].min()  # exactly the nearest ones
    to_high = high - a < a - low
    assert np.array_equal(snapped[changed], np.where(to_high, high, low).astype(np.float32)[changed])
    assert snapped.dtype == np.float32


def test_samples_already_saturated_enough_are_left_alone():
    low, high = np.array([-1.0]), np.array([1.0])
    a = np.array([[-1.0], [1.0], [1.0], [0.9], [0.0]])
    snapped, _, moved = snap_to_bounds(a, low, high, 0.4)
    assert moved == 0 and np.array_equal(snapped, a)
    assert np.array_equal(snap_to_bounds(a, low, high, 0.0)[0], a)
    with pytest.raises(ValueError):
        snap_to_bounds(a, low, high, 1.5)
