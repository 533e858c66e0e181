"""Readers (npz, D4RL hdf5, Minari) and the registry entry point load_dataset, all offline."""
import socket
import warnings

import gymnasium
import h5py
import numpy as np
import pytest

from synther.data.formats import load_d4rl_hdf5, load_minari, load_npz, read_sidecar
from synther.data.registry import Registry, ScoreRef, dataset_info, load_dataset
from synther.errors import DatasetError, UserError

FIELDS = ("observations", "actions", "rewards", "next_observations", "terminals")


def assert_same(a, b, fields=FIELDS):
    for key in fields:
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=key)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection (e.g. a Minari download) fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    import minari

    monkeypatch.setattr(minari, "download_dataset", refuse)


# --- npz -------------------------------------------------------------------------------------------------------
def test_load_plain_npz_without_sidecar(make_arrays, tmp_path):
    arrays = make_arrays(n=20)
    path = tmp_path / "plain.npz"
    np.savez(path, **arrays)
    ds = load_npz(path)
    for key in (*FIELDS, "timeouts"):
        np.testing.assert_array_equal(getattr(ds, key), arrays[key], err_msg=key)
    assert ds.size == 20 and ds.source == str(path)
    assert ds.name is None and ds.env_id is None and ds.action_low is None and ds.provenance == {}
    assert read_sidecar(path) == {}


def test_load_npz_written_by_save(small_dataset, tmp_path):
    path = small_dataset.save(tmp_path / "saved.npz")
    ds = load_npz(path)
    assert_same(small_dataset, ds, (*FIELDS, "timeouts"))
    assert ds.name == "tiny" and ds.env_id == "Pendulum-v1"
    assert ds.provenance == small_dataset.provenance
    np.testing.assert_array_equal(ds.action_low, [-1, -1])
    assert read_sidecar(path)["size"] == 50


def test_load_npz_missing_file(tmp_path):
    path = tmp_path / "absent.npz"
    with pytest.raises(DatasetError, match="file not found") as info:
        load_npz(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("content", [b"this is not a zip file", b"PK\x03\x04truncated zip", b""])
def test_corrupt_npz_names_the_path(tmp_path, content):
    path = tmp_path / "broken.npz"
    path.write_bytes(content)
    with pytest.raises(DatasetError, match="not an npz file") as info:  # not numpy's "contains pickled data"
        load_npz(path)
    assert str(path) in str(info.value) and "pickle" not in str(info.value)


def test_pickled_npz_is_refused(make_arrays, tmp_path):
    arrays = make_arrays(n=5)
    arrays["rewards"] = np.array([None] * 5, dtype=object)
    path = tmp_path / "pickled.npz"
    np.savez(path, **arrays)
    with pytest.raises(DatasetError, match="not a readable .npz file") as info:
        load_npz(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("key", ["actions", "terminals", "next_observations"])
def test_npz_missing_key_names_file_and_key(make_arrays, tmp_path, key):
    arrays = make_arrays(n=10)
    del arrays[key]
    path = tmp_path / "partial.npz"
    np.savez(path, **arrays)
    with pytest.raises(DatasetError, match=f"missing field\\(s\\) '{key}'") as info:
        load_npz(path)
    assert str(path) in str(info.value)


def test_npz_bad_values_name_the_file(make_arrays, tmp_path):
    arrays = make_arrays(n=10)
    arrays["observations"][2, 0] = np.inf
    path = tmp_path / "inf.npz"
    np.savez(path, **arrays)
    with pytest.raises(DatasetError, match="field 'observations' contains NaN or Inf") as info:
        load_npz(path)
    assert str(path) in str(info.value)


def test_invalid_sidecar(make_arrays, tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, **make_arrays(n=5))
    path.with_suffix(".json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"d\.json: side-car is not valid JSON"):
        load_npz(path)
    path.with_suffix(".json").write_text("[1, 2]")
    with pytest.raises(DatasetError, match="side-car must hold a JSON object"):
        load_npz(path)


# --- D4RL hdf5 ---------------------------------------------------------------------------------------------------
def reference_qlearning_dataset(raw, max_episode_steps=None):
    """D4RL's qlearning_dataset (terminate_on_end=False), transcribed as the plain loop it is."""
    n = raw["rewards"].shape[0]
    use_timeouts = "timeouts" in raw
    obs_, next_obs_, action_, reward_, done_ = [], [], [], [], []
    episode_step = 0
    for i in range(n - 1):
        obs = raw["observations"][i].astype(np.float32)
        new_obs = raw["observations"][i + 1].astype(np.float32)
        action = raw["actions"][i].astype(np.float32)
        reward = raw["rewards"][i].astype(np.float32)
        done_bool = bool(raw["terminals"][i])
        if use_timeouts:
            final_timestep = raw["timeouts"][i]
        else:
            final_timestep = episode_step == max_episode_steps - 1
        if final_timestep:
            # skip this transition and don't apply terminals on the last step of an episode
            episode_step = 0
            continue
        if done_bool or final_timestep:
            episode_step = 0
        obs_.append(obs)
        next_obs_.append(new_obs)
        action_.append(action)
        reward_.append(reward)
        done_.append(done_bool)
        episode_step += 1
    return {
        "observations": np.array(obs_),
        "actions": np.array(action_),
        "next_observations": np.array(next_obs_),
        "rewards": np.array(reward_),
        "terminals": np.array(done_),
    }


def raw_d4rl_arrays(n=40, obs_dim=4, action_dim=2, seed=0):
    """Observations hold the row number in column 0, so a wrong successor is easy to spot."""
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, obs_dim)).astype(np.float32)
    obs[:, 0] = np.arange(n)
    return {
        "observations": obs,
        "actions": rng.uniform(-1, 1, size=(n, action_dim)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),  # shape (N,), as D4RL stores it
        "terminals": np.zeros(n, dtype=bool),
    }


def write_hdf5(path, arrays, attrs=None):
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v)
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
    return path


def assert_matches_reference(ds, ref):
    assert ds.size == len(ref["rewards"])
    for key in FIELDS:
        got = getattr(ds, key)
        assert got.shape == ref[key].shape, key
        np.testing.assert_array_equal(got, ref[key].astype(np.float32), err_msg=key)
    assert not ds.timeouts.any()


def test_d4rl_with_timeouts_matches_qlearning_dataset(tmp_path):
    raw = raw_d4rl_arrays(n=40)
    raw["timeouts"] = np.zeros(40, dtype=bool)
    raw["timeouts"][[9, 19, 39]] = True  # three 10-step episodes truncated by the time limit...
    raw["terminals"][[24, 33]] = True  # ...then two episodes that end in a terminal state
    path = write_hdf5(tmp_path / "walker_like-v2.hdf5", raw, attrs={"name": "walker-like"})

    ds = load_d4rl_hdf5(path)
    ref = reference_qlearning_dataset(raw)
    assert_matches_reference(ds, ref)
    # the rows kept are exactly those that are neither timeouts nor the last row; terminal rows are kept
    kept = ds.observations[:, 0].astype(int)
    np.testing.assert_array_equal(kept, [i for i in range(39) if i not in (9, 19)])
    np.testing.assert_array_equal(ds.next_observations[:, 0], kept + 1)
    assert ds.terminals[kept == 24] == 1 and ds.terminals[kept == 33] == 1 and ds.terminals.sum() == 2
    assert ds.name == "walker-like" and ds.source == str(path)
    assert ds.provenance["rows_in_file"] == 40 and ds.provenance["rows_dropped"] == 3
    assert ds.provenance["episode_boundaries"] == "timeouts field"
    assert ds.provenance["file_attrs"] == {"name": "walker-like"}


def test_d4rl_without_timeouts_uses_max_episode_steps(tmp_path):
    raw = raw_d4rl_arrays(n=40, seed=1)
    raw["terminals"][10] = True  # a terminal in the middle of the second 7-step episode restarts the count
    raw["terminals"][30] = True
    path = write_hdf5(tmp_path / "maze_like.hdf5", raw)

    ds = load_d4rl_hdf5(path, max_episode_steps=7)
    ref = reference_qlearning_dataset(raw, max_episode_steps=7)
    assert_matches_reference(ds, ref)
    kept = set(ds.observations[:, 0].astype(int))
    dropped = sorted(set(range(40)) - kept)
    # a boundary every 7 steps; the terminal at row 10 restarts the count at 1 (the qlearning_dataset quirk), and
    # the terminal at row 30 falls on a boundary, so that row is dropped like any final timestep; 39 is the last row
    assert dropped == [6, 16, 23, 30, 37, 39]
    assert ds.terminals.sum() == 1 and ds.terminals[ds.observations[:, 0] == 10] == 1
    assert ds.name == "maze_like"
    assert ds.provenance["episode_boundaries"] == "every 7 steps (no timeouts field)"


def test_d4rl_without_timeouts_terminal_shifts_boundaries(tmp_path):
    raw = raw_d4rl_arrays(n=30, seed=2)
    raw["terminals"][3] = True  # terminal at step 3 of the first episode: the next episode starts at row 4
    path = write_hdf5(tmp_path / "t.hdf5", raw)
    ds = load_d4rl_hdf5(path, max_episode_steps=5)
    ref = reference_qlearning_dataset(raw, max_episode_steps=5)
    assert_matches_reference(ds, ref)
    dropped = sorted(set(range(30)) - set(ds.observations[:, 0].astype(int)))
    assert dropped[0] == 7  # rows 4..8 would be a 5-step episode; the count restarting at 1 drops row 7
    assert dropped == [7, 12, 17, 22, 27, 29]


def test_d4rl_without_timeouts_or_limit_keeps_one_stream(tmp_path):
    raw = raw_d4rl_arrays(n=12)
    path = write_hdf5(tmp_path / "stream.hdf5", raw)
    ds = load_d4rl_hdf5(path)
    assert ds.size == 11
    np.testing.assert_array_equal(ds.next_observations, raw["observations"][1:])
    assert "one stream" in ds.provenance["episode_boundaries"]


def test_d4rl_column_rewards_and_int_terminals(tmp_path):
    raw = raw_d4rl_arrays(n=20)
    raw["terminals"] = np.zeros((20, 1), dtype=np.int64)
    raw["terminals"][5] = 1
    raw["rewards"] = raw["rewards"].reshape(-1, 1).astype(np.float64)
    raw["timeouts"] = np.zeros(20, dtype=np.uint8)
    raw["timeouts"][9] = 1
    path = write_hdf5(tmp_path / "cols.hdf5", raw)
    ds = load_d4rl_hdf5(path)
    flat = {**raw, "terminals": raw["terminals"][:, 0], "rewards": raw["rewards"][:, 0]}
    assert_matches_reference(ds, reference_qlearning_dataset(flat))
    assert ds.size == 18


def test_d4rl_missing_actions_names_file_and_field(tmp_path):
    raw = raw_d4rl_arrays(n=10)
    del raw["actions"]
    path = write_hdf5(tmp_path / "no_actions.hdf5", raw)
    with pytest.raises(DatasetError, match=r"missing field\(s\) 'actions'") as info:
        load_d4rl_hdf5(path)
    assert str(path) in str(info.value)


def test_d4rl_nan_reward(tmp_path):
    raw = raw_d4rl_arrays(n=10)
    raw["rewards"][4] = np.nan
    path = write_hdf5(tmp_path / "nan.hdf5", raw)
    with pytest.raises(DatasetError, match="field 'rewards' contains NaN or Inf") as info:
        load_d4rl_hdf5(path)
    assert str(path) in str(info.value) and "row 4" in str(info.value)


def test_d4rl_not_hdf5(tmp_path):
    path = tmp_path / "fake.hdf5"
    path.write_text("definitely not HDF5")
    with pytest.raises(DatasetError, match="not a readable HDF5 file") as info:
        load_d4rl_hdf5(path)
    assert str(path) in str(info.value)


def test_d4rl_missing_file_and_single_row(tmp_path):
    with pytest.raises(DatasetError, match="file not found"):
        load_d4rl_hdf5(tmp_path / "absent.hdf5")
    path = write_hdf5(tmp_path / "one.hdf5", raw_d4rl_arrays(n=1))
    with pytest.raises(DatasetError, match="need at least 2 rows"):
        load_d4rl_hdf5(path)


# --- Minari ------------------------------------------------------------------------------------------------------
MINARI_ID = "test/pendulum-v0"
EPISODES, STEPS = 3, 20


@pytest.fixture(scope="module")
def minari_data(tmp_path_factory):
    """A real Minari dataset written by Minari's own DataCollector (built once), plus what was recorded."""
    from minari import DataCollector

    root = tmp_path_factory.mktemp("minari_root")
    episodes = []
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Minari warns about missing author / permalink metadata
        mp.setenv("MINARI_DATASETS_PATH", str(root))
        env = DataCollector(gymnasium.make("Pendulum-v1", max_episode_steps=STEPS), data_format="hdf5")
        env.action_space.seed(0)
        for ep in range(EPISODES):
            obs, _ = env.reset(seed=ep)
            rec = {"obs": [obs], "act": [], "rew": [], "trunc": []}
            for _ in range(STEPS):
                action = env.action_space.sample()
                obs, reward, terminated, truncated, _ = env.step(action)
                rec["obs"].append(obs)
                rec["act"].append(action)
                rec["rew"].append(reward)
                rec["trunc"].append(truncated)
                assert not terminated
            episodes.append(rec)
        env.create_dataset(dataset_id=MINARI_ID, algorithm_name="random")
        env.close()
    return {"root": root, "folder": root / "test" / "pendulum-v0", "episodes": episodes}


@pytest.fixture
def minari_root(minari_data, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari_data["root"]))
    return minari_data["root"]


def check_pendulum(ds, episodes):
    assert ds.size == EPISODES * STEPS
    assert (ds.obs_dim, ds.action_dim) == (3, 1)
    expected_obs = np.concatenate([np.array(e["obs"][:-1]) for e in episodes])
    expected_next = np.concatenate([np.array(e["obs"][1:]) for e in episodes])
    np.testing.assert_allclose(ds.observations, expected_obs, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ds.next_observations, expected_next, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ds.actions, np.concatenate([np.array(e["act"]) for e in episodes]), atol=1e-6)
    np.testing.assert_allclose(ds.rewards, np.concatenate([e["rew"] for e in episodes]), rtol=1e-6, atol=1e-6)
    # within an episode the successor is the next row's observation; across episodes it is not
    for ep in range(EPISODES):
        lo, hi = ep * STEPS, (ep + 1) * STEPS
        np.testing.assert_array_equal(ds.next_observations[lo:hi - 1], ds.observations[lo + 1:hi])
    assert not np.array_equal(ds.next_observations[STEPS - 1], ds.observations[STEPS])
    assert not ds.terminals.any()
    np.testing.assert_array_equal(np.flatnonzero(ds.timeouts), [STEPS - 1, 2 * STEPS - 1, 3 * STEPS - 1])
    space = gymnasium.make("Pendulum-v1").action_space
    np.testing.assert_array_equal(ds.action_low, space.low)
    np.testing.assert_array_equal(ds.action_high, space.high)
    np.testing.assert_array_equal(ds.action_low, [-2.0])
    assert ds.env_id == "Pendulum-v1"
    assert ds.provenance["format"] == "minari" and ds.provenance["episodes"] == EPISODES


def test_minari_by_id(minari_root, minari_data, no_network):
    ds = load_minari(MINARI_ID)
    check_pendulum(ds, minari_data["episodes"])
    assert ds.name == MINARI_ID
    assert ds.source == str(minari_data["folder"])


def test_minari_by_folder_path(minari_data, no_network):
    # no MINARI_DATASETS_PATH needed: the folder itself is given (the autouse root is an empty folder)
    ds = load_minari(minari_data["folder"])
    check_pendulum(ds, minari_data["episodes"])
    ds2 = load_minari(str(minari_data["folder"]))
    assert_same(ds, ds2)


def test_minari_through_registry(minari_root, minari_data, no_network, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # so the id cannot be mistaken for a relative path
    ds = load_dataset(MINARI_ID)
    check_pendulum(ds, minari_data["episodes"])
    assert ds.name == MINARI_ID
    assert dataset_info(ds.name) is None  # not a registered name, found via the Minari root


def test_minari_missing_id_is_not_downloaded(no_network, data_roots):
    with pytest.raises(DatasetError, match="'test/absent-v0' not found locally") as info:
        load_minari("test/absent-v0")
    message = str(info.value)
    assert "Downloads are disabled" in message
    assert str(data_roots["MINARI_DATASETS_PATH"]) in message


def test_minari_missing_id_when_others_exist(minari_root, no_network):
    with pytest.raises(DatasetError, match="not found locally"):
        load_minari("test/pendulum-v1")


def test_minari_broken_folder(tmp_path, no_network):
    folder = tmp_path / "broken-v0"
    (folder / "data").mkdir(parents=True)
    with pytest.raises(DatasetError, match="not a readable Minari dataset") as info:
        load_minari(folder)
    assert str(folder) in str(info.value)


def test_registered_minari_name_missing(no_network):
    with pytest.raises(DatasetError, match="Minari downloads are disabled") as info:
        load_dataset("mujoco/hopper/medium-v0")
    assert "dataset 'mujoco/hopper/medium-v0' not found at" in str(info.value)


# --- registry ------------------------------------------------------------------------------------------------------
def test_load_dataset_by_npz_path(small_dataset, tmp_path):
    path = small_dataset.save(tmp_path / "mine.npz")
    for spec in (path, str(path)):
        ds = load_dataset(spec)
        assert_same(small_dataset, ds)
        assert ds.name == "tiny"  # a path keeps the name from its side-car


def test_load_dataset_by_hdf5_path(tmp_path):
    raw = raw_d4rl_arrays(n=20)
    path = write_hdf5(tmp_path / "hc.hdf5", raw)
    ds = load_dataset(path, max_episode_steps=6)
    assert_matches_reference(ds, reference_qlearning_dataset(raw, max_episode_steps=6))
    h5 = write_hdf5(tmp_path / "hc.h5", raw)
    assert load_dataset(h5).size == 19


def test_load_dataset_by_minari_folder(minari_data, no_network):
    ds = load_dataset(minari_data["folder"])
    check_pendulum(ds, minari_data["episodes"])


def test_load_registered_name_from_data_dir(make_dataset, data_roots, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    name = "ptr-maze2d-umaze-dense-v0"
    saved = make_dataset(n=30, obs_dim=4, action_dim=2, name="something-else")
    saved.save(data_roots["PRIVTRANR_DATA_DIR"] / f"{name}.npz")
    ds = load_dataset(name)
    assert ds.name == name
    assert ds.source == str(data_roots["PRIVTRANR_DATA_DIR"] / f"{name}.npz")
    assert_same(saved, ds)
    info = dataset_info(ds.name)
    assert info.kind == "generated"
    assert (info.score.min, info.score.max) == (52.56, 243.46)
    assert "uniform-random policy" in info.score.origin
    assert info.env.entry_point == "synther.data.pointmaze:make_maze2d_env"
    assert info.env.kwargs == {"maze": "umaze"} and info.env.max_episode_steps == 300
    assert info.env.gym_id is None


def test_dataset_info_for_locomotion_and_unknown():
    info = dataset_info("hopper-medium-v2")
    assert info.kind == "d4rl" and info.env.gym_id == "Hopper-v5" and info.env.max_episode_steps == 1000
    assert (info.score.min, info.score.max) == (-20.272305, 3234.3)
    assert dataset_info("maze2d-umaze-dense-v1").env is None
    assert dataset_info("no-such-dataset") is None
    assert dataset_info(None) is None


def test_registered_name_missing_file_gives_collect_hint(data_roots, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetError, match="collect_data.py") as info:
        load_dataset("ptr-maze2d-umaze-dense-v0")
    message = str(info.value)
    assert "dataset 'ptr-maze2d-umaze-dense-v0' not found at" in message
    assert str(data_roots["PRIVTRANR_DATA_DIR"]) in message
    assert "--maze.name umaze" in message


def test_registered_d4rl_name_missing(data_roots, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetError, match="D4RL downloads are not available offline") as info:
        load_dataset("hopper-medium-v2")
    assert str(data_roots["D4RL_DATASET_DIR"] / "hopper_medium-v2.hdf5") in str(info.value)


def test_registered_d4rl_name_found(data_roots, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = raw_d4rl_arrays(n=20, obs_dim=11, action_dim=3)
    raw["timeouts"] = np.zeros(20, dtype=bool)
    raw["timeouts"][9] = True
    write_hdf5(data_roots["D4RL_DATASET_DIR"] / "hopper_medium-v2.hdf5", raw)
    ds = load_dataset("hopper-medium-v2")
    assert ds.name == "hopper-medium-v2"
    assert_matches_reference(ds, reference_qlearning_dataset(raw))


def test_unknown_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetError, match="unknown dataset 'no-such-thing'"):
        load_dataset("no-such-thing")
    with pytest.raises(DatasetError, match="did you mean ptr-maze2d-umaze-dense-v0"):
        load_dataset("ptr-maze2d-umaze-dense-v9")


@pytest.mark.parametrize("suffix", [".npz", ".hdf5", ".h5"])
def test_missing_path_with_dataset_suffix(tmp_path, suffix):
    path = tmp_path / f"absent{suffix}"
    with pytest.raises(DatasetError, match="file not found") as info:
        load_dataset(str(path))
    assert str(path) in str(info.value)


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "table.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(DatasetError, match=r"unsupported file type '\.csv'") as info:
        load_dataset(path)
    assert str(path) in str(info.value)


def test_score_ref_normalize():
    ref = ScoreRef(min=-20.0, max=180.0, origin="test")
    assert ref.normalize(-20.0) == pytest.approx(0.0)
    assert ref.normalize(180.0) == pytest.approx(100.0)
    assert ref.normalize(80.0) == pytest.approx(50.0)
    np.testing.assert_allclose(ref.normalize(np.array([-20.0, 80.0, 180.0, 380.0])), [0, 50, 100, 200])
    info = dataset_info("ptr-maze2d-umaze-dense-v0")
    assert info.score.normalize(info.score.min) == pytest.approx(0.0)
    assert info.score.normalize(info.score.max) == pytest.approx(100.0)


CUSTOM_YAML = """
datasets:
  my-npz:
    source: {kind: npz, path: PATH}
    env: {gym_id: Pendulum-v1, max_episode_steps: 200}
    score: {min: -1500.0, max: 0.0, origin: "made up"}
  my-d4rl:
    source: {kind: d4rl, file: mine.hdf5}
    env: {gym_id: Pendulum-v1, max_episode_steps: 7}
  my-minari:
    source: {kind: minari, id: test/pendulum-v0}
"""


def test_registry_from_custom_yaml(small_dataset, make_arrays, data_roots, tmp_path, monkeypatch, minari_root,
                                   no_network):
    monkeypatch.chdir(tmp_path)
    npz = small_dataset.save(tmp_path / "elsewhere" / "d.npz")
    yml = tmp_path / "reg.yaml"
    yml.write_text(CUSTOM_YAML.replace("PATH", str(npz)))
    reg = Registry.from_yaml(yml)
    assert set(reg.entries) == {"my-npz", "my-d4rl", "my-minari"} and "my-npz" in reg and "other" not in reg
    entry = reg.get("my-npz")
    assert entry.kind == "npz" and entry.path() == npz
    assert entry.env.gym_id == "Pendulum-v1" and entry.score.normalize(-1500.0) == 0.0
    assert reg.get("my-d4rl").score is None and reg.get("my-minari").env is None

    ds = load_dataset("my-npz", registry=reg)
    assert ds.name == "my-npz"  # the registry name wins over the side-car's
    assert_same(small_dataset, ds)
    assert dataset_info("my-npz", registry=reg) is entry
    assert dataset_info("my-npz") is None  # not in the default registry

    raw = raw_d4rl_arrays(n=20)
    write_hdf5(data_roots["D4RL_DATASET_DIR"] / "mine.hdf5", raw)
    d4 = load_dataset("my-d4rl", registry=reg)  # no timeouts: the registry's max_episode_steps places boundaries
    assert_matches_reference(d4, reference_qlearning_dataset(raw, max_episode_steps=7))
    assert d4.provenance["episode_boundaries"] == "every 7 steps (no timeouts field)"

    mi = load_dataset("my-minari", registry=reg)
    assert mi.name == "my-minari" and mi.size == EPISODES * STEPS

    with pytest.raises(DatasetError, match="'other' is not in the dataset registry"):
        reg.get("other")


@pytest.mark.parametrize(
    "entry",
    [
        "{env: {gym_id: Pendulum-v1}}",  # no source
        "{source: {kind: npz}}",  # no file/id/path
        "{source: {kind: bogus, file: x.npz}}",  # unknown kind
        "{source: 'x.npz'}",  # source is not a mapping
        "[1, 2]",  # entry is not a mapping
    ],
)
def test_registry_malformed_entry(tmp_path, entry):
    yml = tmp_path / "bad.yaml"
    yml.write_text(f"datasets:\n  broken: {entry}\n")
    with pytest.raises(UserError, match="dataset 'broken'") as info:
        Registry.from_yaml(yml)
    assert str(yml) in str(info.value)


def test_registry_unreadable_yaml(tmp_path):
    with pytest.raises(UserError, match="cannot read dataset registry"):
        Registry.from_yaml(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets: [unclosed\n")
    with pytest.raises(UserError, match="cannot read dataset registry"):
        Registry.from_yaml(bad)


def test_default_registry_parses():
    reg = Registry.from_yaml()
    assert "ptr-maze2d-umaze-dense-v0" in reg and "mujoco/hopper/medium-v0" in reg
    assert all(e.kind in ("generated", "d4rl", "minari", "npz") for e in reg.entries.values())


def test_a_sidecar_that_describes_other_arrays_is_refused(make_arrays, tmp_path):
    import json

    path = tmp_path / "data.npz"
    np.savez(path, **make_arrays(n=10, obs_dim=3, action_dim=2))
    path.with_suffix(".json").write_text(json.dumps({"name": "x", "obs_dim": 5, "action_dim": 2}))
    with pytest.raises(DatasetError, match=r"data.npz: its side-car data.json says obs_dim=5 but the arrays have "
                                           r"obs_dim=3"):
        load_npz(path)
    path.with_suffix(".json").write_text(json.dumps({"name": "x", "obs_dim": 3, "action_dim": 2}))
    assert load_npz(path).obs_dim == 3


def test_dimension_mismatch_names_the_files(make_arrays, tmp_path):
    from synther.data import check_compatible

    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    np.savez(a, **make_arrays(n=10, obs_dim=3))
    np.savez(b, **make_arrays(n=10, obs_dim=4))
    b.with_suffix(".json").write_text('{"name": "ptr-maze2d-open-dense-v0"}')
    with pytest.raises(DatasetError, match="dimension mismatch") as info:
        check_compatible(load_npz(a), load_npz(b))
    assert str(b) in str(info.value) and "ptr-maze2d-open-dense-v0" in str(info.value) and str(a) in str(info.value)
