"""Exact linear identities of public data and the projection of synthetic rows onto them."""
import numpy as np
import pytest

from synther.data.dataset import TransitionLayout
from synther.diffusion.identities import count, find_identities, project

from maze_data import shared_maze


def euler_residual(x: np.ndarray, layout: TransitionLayout) -> np.ndarray:
    """PointMaze's step: next position = position + 0.01 · next velocity (obs = x, y, vx, vy)."""
    obs, nxt = x[:, layout.obs], x[:, layout.next_obs]
    return nxt[:, :2] - obs[:, :2] - 0.01 * nxt[:, 2:]


@pytest.fixture(scope="module")
def maze():
    ds = shared_maze("umaze", 2000, 0)
    return ds.to_vectors(), ds.layout


def test_the_maze_step_is_found_and_enforced_on_noisy_rows(maze):
    x, layout = maze
    found = find_identities(x, layout)
    assert count(found) == 2  # one per position coordinate; nothing else holds exactly
    assert layout.terminal not in found["columns"]
    noisy = x + np.random.default_rng(0).normal(0, 0.05, x.shape).astype(x.dtype)
    assert np.abs(euler_residual(noisy, layout)).max() > 0.05
    fixed, worst = project(noisy, found)
    assert worst > 0.1  # in standard deviations (along a unit normal) of the public columns
    assert np.abs(euler_residual(fixed, layout)).max() < 1e-5
    assert np.array_equal(fixed[:, layout.terminal], noisy[:, layout.terminal])
    again, after = project(fixed, found)
    np.testing.assert_allclose(again, fixed, atol=1e-6)
    assert after < 1e-4
    # public rows already satisfy the identities: the projection leaves them where they are
    np.testing.assert_allclose(project(x, found)[0], x, atol=1e-5)


def test_the_projection_is_orthogonal_in_standardised_units(maze):
    x, layout = maze
    found = find_identities(x, layout)
    noisy = x[:500] + np.random.default_rng(1).normal(0, 0.1, x[:500].shape)
    fixed, _ = project(noisy, found)
    cols, scale = found["columns"], np.asarray(found["scale"])
    moved = (fixed[:, cols] - noisy[:, cols]) / scale
    basis = np.asarray(found["basis"])
    # every row moved only along the identities' normals: nothing left after removing that span
    np.testing.assert_allclose(moved - (moved @ basis.T) @ basis, 0, atol=1e-9)


def test_near_identities_and_constant_columns_are_not_taken_for_exact_ones():
    rng = np.random.default_rng(0)
    layout = TransitionLayout(obs_dim=3, action_dim=1)
    x = rng.normal(size=(5000, layout.dim))
    x[:, 1] = x[:, 0] + 2 * x[:, 2] + rng.normal(0, 1e-3, 5000)  # holds to 0.1 %, not exactly
    x[:, layout.reward] = 0.5  # constant: says nothing about the other columns
    x[:, layout.terminal] = 0.0
    found = find_identities(x, layout)
    assert count(found) == 0 and layout.reward not in found["columns"]
    assert np.array_equal(project(x, found)[0], x)
    x[:, 1] = x[:, 0] + 2 * x[:, 2]  # now exact
    assert count(find_identities(x, layout)) == 1
