"""Actions at their bounds: snapping synthetic actions onto them as often as in the public data, and the atanh
representation of tanh-squashed actions."""
import numpy as np
import pytest
import torch

from synther.data import TransitionLayout
from synther.diffusion.normalizer import SQUASH_U, Normalizer
from synther.diffusion.saturation import choose_action_space, saturated_share, snap_to_bounds


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


def test_the_action_space_is_atanh_only_where_no_public_action_sits_on_a_bound():
    low, high = -np.ones(2), np.ones(2)
    assert choose_action_space("auto", 0.0, low, high)[0] == "atanh"
    assert choose_action_space("auto", 5.5e-5, low, high)[0] == "atanh"  # float32 rounding onto ±1 (SAC's data)
    space, why = choose_action_space("auto", 0.35, low, high)
    assert space == "raw" and "0.350" in why  # a saturating controller keeps raw actions (and the snapping)
    assert choose_action_space("auto", 0.0, np.array([-np.inf, -1]), high)[0] == "raw"
    assert choose_action_space("raw", 0.0, low, high)[0] == "raw"
    assert choose_action_space("atanh", 0.35, low, high)[0] == "atanh"  # asked for: taken
    with pytest.raises(ValueError, match="finite"):
        choose_action_space("atanh", 0.0, np.array([-np.inf, -1]), high)
    with pytest.raises(ValueError, match="action_space"):
        choose_action_space("tanh", 0.0, low, high)


def test_squashed_columns_are_modelled_as_atanh_of_their_position_and_map_back_inside_the_bounds():
    rng = np.random.default_rng(0)
    low, high = np.array([-2.0, 0.0]), np.array([2.0, 4.0])
    layout = TransitionLayout(obs_dim=1, action_dim=2)
    x = rng.normal(size=(5000, layout.dim))
    u_true = np.clip(rng.normal(scale=2.0, size=(5000, 2)), -SQUASH_U, SQUASH_U)  # float64 tanh keeps them off ±1
    x[:, layout.action] = (high + low) / 2 + (high - low) / 2 * np.tanh(u_true)  # a tanh-squashed policy
    x[:, layout.terminal] = 0.0
    squash = (layout.action, low, high)
    norm = Normalizer.from_public(x, layout, ["toy"], squash)
    # the statistics are those of atanh(position): u ~ N(0, 2²) here, not of the squashed actions
    assert np.allclose(norm.mean[layout.action].numpy(), u_true.mean(0), atol=1e-4)
    assert np.allclose(norm.std[layout.action].numpy(), u_true.std(0), atol=1e-4)
    plain = Normalizer.from_public(x, layout, ["toy"])
    assert np.array_equal(norm.mean[layout.obs].numpy(), plain.mean[layout.obs].numpy())  # other columns as before
    xt = torch.as_tensor(x)
    assert torch.allclose(norm.unnormalize(norm.normalize(xt)), xt, atol=1e-6)  # inverse inside the bounds
    # any model output maps strictly inside the bounds, also far beyond the data (no entry on a bound)
    far = norm.unnormalize(torch.full((3, layout.dim), 50.0) * torch.tensor([1.0, -1.0, 0.0]).unsqueeze(1))
    a = far[:, layout.action].numpy()
    assert np.all(a > low) and np.all(a < high) and np.allclose(a[0], high, atol=1e-5)
    # the DP estimate works in the same space and keeps the squash
    dp = Normalizer.dp_estimate(x, layout, x.min(0), x.max(0), 1e-6, np.random.default_rng(1), squash)
    assert dp.squash is not None and np.allclose(dp.mean[layout.action].numpy(), u_true.mean(0), atol=0.05)
    assert np.allclose(dp.std[layout.action].numpy(), u_true.std(0), atol=0.05)
