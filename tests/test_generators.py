"""Offline generators at tiny budgets: maze2d-like PointMaze data and SAC locomotion data."""
import json
import os
import tempfile

import numpy as np
import pytest

from synther.data import dataset_info, load_dataset
from synther.data.locomotion import KINDS, LocomotionCollectConfig, collect_locomotion
from synther.data.pointmaze import MAZES, MazeCollectConfig, collect_maze2d, dataset_name, rollout_returns
from synther.errors import UserError


@pytest.fixture(scope="module")
def umaze():
    return collect_maze2d(MazeCollectConfig(name="umaze", num_steps=3000), seed=0, progress=False)


def test_maze_dataset_follows_maze2d_semantics(umaze):
    ds = umaze
    assert ds.size == 3000 and ds.obs_dim == 4 and ds.action_dim == 2
    assert ds.name == dataset_name("umaze") == "ptr-maze2d-umaze-dense-v0"
    # one continuous stream: every next observation is the following observation
    np.testing.assert_array_equal(ds.next_observations[:-1], ds.observations[1:])
    assert not ds.terminals.any()
    horizon = MAZES["umaze"].max_episode_steps
    assert np.flatnonzero(ds.timeouts).tolist() == list(range(horizon - 1, 3000, horizon))
    # dense reward to the fixed evaluation goal, computed from the position after the step
    goal = np.array(ds.provenance["evaluation_goal_xy"])
    expected = np.exp(-np.linalg.norm(ds.next_observations[:, :2] - goal, axis=1))
    np.testing.assert_allclose(ds.rewards, expected, rtol=1e-5)
    assert np.abs(ds.actions).max() <= 1.0
    assert np.abs(ds.observations[:, 2:]).max() < 6.0  # PointMaze clips velocity to ±5 before each step
    # the planner keeps reaching goals and covers the maze rather than idling in one cell
    assert ds.provenance["goals_reached"] >= 10
    # umaze is a 5x5 grid of unit cells centred on the origin: row = floor(2.5 - y), col = floor(x + 2.5)
    cells = {(int(np.floor(2.5 - y)), int(np.floor(x + 2.5))) for x, y in ds.observations[:, :2]}
    assert len(cells) >= 6  # umaze has 7 free cells


def test_maze_generation_is_deterministic_under_seed(umaze):
    again = collect_maze2d(MazeCollectConfig(name="umaze", num_steps=3000), seed=0, progress=False)
    other = collect_maze2d(MazeCollectConfig(name="umaze", num_steps=3000), seed=1, progress=False)
    np.testing.assert_array_equal(again.to_vectors(), umaze.to_vectors())
    assert not np.allclose(other.observations, umaze.observations)


@pytest.mark.parametrize("maze", ["umaze", "medium"])
def test_expert_controller_clearly_beats_random(maze):
    score = dataset_info(dataset_name(maze)).score
    expert = score.normalize(rollout_returns(maze, "expert", episodes=5, seed=123).mean())
    random = score.normalize(rollout_returns(maze, "random", episodes=5, seed=123).mean())
    assert expert > 75 and random < 40 and expert - random > 50, (expert, random)


def test_maze_dataset_saves_and_loads_by_registry_name(umaze, tmp_path, monkeypatch):
    monkeypatch.setenv("PRIVTRANR_DATA_DIR", str(tmp_path))
    umaze.save(tmp_path / f"{umaze.name}.npz")
    loaded = load_dataset(umaze.name)
    np.testing.assert_array_equal(loaded.to_vectors(), umaze.to_vectors())
    np.testing.assert_array_equal(loaded.timeouts, umaze.timeouts)
    assert loaded.provenance["config"]["name"] == "umaze" and loaded.provenance["seed"] == 0
    env = dataset_info(loaded.name).env.make()
    obs, _ = env.reset(seed=0)
    steps, done = 0, False
    while not done:
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        steps, done = steps + 1, terminated or truncated
    assert obs.shape == (4,) and 0 < reward <= 1 and not terminated
    assert steps == MAZES["umaze"].max_episode_steps  # D4RL's evaluation horizon


def test_maze_env_leaves_no_temporary_xml_behind():
    # gymnasium-robotics writes a fresh MuJoCo XML into the temp folder for every maze env; we remove it once loaded
    from synther.data.pointmaze import make_maze2d_env
    env = make_maze2d_env("medium")
    assert env.unwrapped.tmp_xml_file_path.startswith(tempfile.gettempdir())
    assert not os.path.exists(env.unwrapped.tmp_xml_file_path)
    obs, _ = env.reset(seed=0)  # the model was loaded before the file went
    assert env.step(env.action_space.sample())[0].shape == obs.shape == (4,)
    env.close()


def test_unknown_maze_is_a_user_error():
    with pytest.raises(UserError, match="unknown maze 'tiny'"):
        collect_maze2d(MazeCollectConfig(name="tiny", num_steps=10), progress=False)


TINY_SAC = dict(env="Hopper-v5", total_steps=400, eval_every=200, eval_episodes=1, random_steps=150,
                medium_steps=150, learning_starts=100, batch_size=32, net_width=32, max_episode_steps=60)


def _check_transitions_chain(ds):
    """Within an episode (no terminal/timeout), the next observation is the following row's observation."""
    cont = ~(ds.terminals.astype(bool) | ds.timeouts)[:-1]
    np.testing.assert_allclose(ds.next_observations[:-1][cont], ds.observations[1:][cont])


@pytest.mark.slow
def test_locomotion_run_produces_all_four_kinds(tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # SAC's logger must not leave folders in the temp dir
    paths = collect_locomotion(LocomotionCollectConfig(**TINY_SAC), tmp_path / "out", seed=0, progress=False)
    assert not list(scratch.glob("SB3-*"))
    assert set(paths) == set(KINDS)
    sets = {kind: load_dataset(path) for kind, path in paths.items()}
    for kind, ds in sets.items():
        assert ds.name == f"ptr-hopper-{kind}-v0" and ds.obs_dim == 11 and ds.action_dim == 3
        assert ds.provenance["kind"] == kind and ds.provenance["seed"] == 0
        assert np.all(ds.actions >= -1 - 1e-6) and np.all(ds.actions <= 1 + 1e-6)
        _check_transitions_chain(ds)
        assert dataset_info(ds.name).score.max == 3234.3  # D4RL hopper constants
    assert sets["random"].size == sets["medium"].size == 150
    assert sets["full-replay"].size == 400
    medium = sets["medium"].provenance["medium_policy"]
    assert medium["step"] in (200, 400) and medium["target_reached"] is False  # 400 steps cannot reach 1/3 expert
    assert sets["medium-replay"].size == medium["step"]
    np.testing.assert_array_equal(sets["medium-replay"].to_vectors(), sets["full-replay"].to_vectors()[: medium["step"]])
    assert [e["step"] for e in sets["full-replay"].provenance["evaluations"]] == [200, 400]
    assert sets["random"].provenance["episodes"] >= 1  # 60-step horizon: several episodes in 150 steps
    assert not list(tmp_path.glob(".work-*"))  # training state is cleaned up once everything is written


@pytest.mark.slow
def test_locomotion_resumes_after_a_crash(tmp_path):
    cfg = LocomotionCollectConfig(**TINY_SAC)
    crashed = []

    def save_then_crash(ds, path):
        if ds.provenance["kind"] == "medium":
            crashed.append(path)
            raise RuntimeError("killed")
        ds.save(path)

    with pytest.raises(RuntimeError, match="killed"):
        collect_locomotion(cfg, tmp_path, seed=0, progress=False, save=save_then_crash)
    work = tmp_path / ".work-hopper-seed0"
    state = json.loads((work / "state.json").read_text())
    assert state["checkpoint"] == "ckpt-400" and len(state["evals"]) == 2
    assert not (tmp_path / "ptr-hopper-medium-v0.npz").exists()  # nothing half-written

    # A different configuration must not silently reuse the unfinished run.
    with pytest.raises(UserError, match="different configuration"):
        collect_locomotion(LocomotionCollectConfig(**{**TINY_SAC, "total_steps": 600}), tmp_path, seed=0,
                           progress=False)

    paths = collect_locomotion(cfg, tmp_path, seed=0, progress=False)
    full = load_dataset(paths["full-replay"])
    assert len(full.provenance["evaluations"]) == 2  # training was resumed at its end, not redone
    assert load_dataset(paths["medium"]).size == 150
    assert not work.exists()


def test_locomotion_rejects_bad_options(tmp_path):
    with pytest.raises(UserError, match="unknown locomotion env"):
        collect_locomotion(LocomotionCollectConfig(env="Ant-v5"), tmp_path, progress=False)
    with pytest.raises(UserError, match="total_steps must be positive"):
        collect_locomotion(LocomotionCollectConfig(total_steps=0), tmp_path, progress=False)
