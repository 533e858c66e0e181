"""TransitionDataset: validation, flat-vector layout, split/subset, atomic save + side-car."""
import json

import numpy as np
import pytest

from synther.data.dataset import TransitionDataset, TransitionLayout, check_compatible, validate_arrays
from synther.data.formats import load_npz
from synther.errors import DatasetError, UserError

FIELDS = ("observations", "actions", "rewards", "next_observations", "terminals")


def assert_same_arrays(a: TransitionDataset, b: TransitionDataset, fields=FIELDS):
    for key in fields:
        x, y = getattr(a, key), getattr(b, key)
        assert x.dtype == y.dtype, key
        np.testing.assert_array_equal(x, y, err_msg=key)


def expect_error(arrays, origin, *fragments, **kw):
    """validate_arrays must raise a DatasetError whose message names the origin and every fragment."""
    with pytest.raises(DatasetError) as info:
        validate_arrays(arrays, origin=origin, **kw)
    message = str(info.value)
    assert origin in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


# --- flat vectors ----------------------------------------------------------------------------------------------
def test_layout_slices_and_dim():
    layout = TransitionLayout(obs_dim=3, action_dim=2)
    assert layout.dim == 2 * 3 + 2 + 2 == 10
    assert layout.obs == slice(0, 3)
    assert layout.action == slice(3, 5)
    assert layout.reward == 5
    assert layout.next_obs == slice(6, 9)
    assert layout.terminal == 9
    # every column is covered exactly once
    cols = [*range(10)[layout.obs], *range(10)[layout.action], layout.reward, *range(10)[layout.next_obs],
            layout.terminal]
    assert sorted(cols) == list(range(layout.dim))


def test_to_vectors_columns_follow_layout(small_dataset):
    x = small_dataset.to_vectors()
    layout = small_dataset.layout
    assert x.shape == (50, layout.dim) and x.dtype == np.float32
    np.testing.assert_array_equal(x[:, layout.obs], small_dataset.observations)
    np.testing.assert_array_equal(x[:, layout.action], small_dataset.actions)
    np.testing.assert_array_equal(x[:, layout.reward], small_dataset.rewards)
    np.testing.assert_array_equal(x[:, layout.next_obs], small_dataset.next_observations)
    np.testing.assert_array_equal(x[:, layout.terminal], small_dataset.terminals)


def test_vector_round_trip_is_exact(small_dataset):
    assert small_dataset.terminals.sum() == 3  # the fixture has a few terminal rows
    back = TransitionDataset.from_vectors(small_dataset.to_vectors(), small_dataset.layout, name="back",
                                          source="vectors-test")
    assert_same_arrays(small_dataset, back)
    assert back.name == "back" and back.source == "vectors-test"
    assert (back.obs_dim, back.action_dim) == (3, 2)


def test_from_vectors_thresholds_terminal_at_half():
    layout = TransitionLayout(obs_dim=1, action_dim=1)
    x = np.zeros((6, layout.dim), dtype=np.float32)
    x[:, layout.terminal] = [-0.3, 0.2, 0.5, 0.51, 0.9, 1.7]
    ds = TransitionDataset.from_vectors(x, layout)
    np.testing.assert_array_equal(ds.terminals, [0, 0, 0, 1, 1, 1])
    assert ds.terminals.dtype == np.float32


@pytest.mark.parametrize("shape", [(4, 9), (4, 11), (10,)])
def test_from_vectors_rejects_wrong_width(shape):
    layout = TransitionLayout(obs_dim=3, action_dim=2)
    with pytest.raises(DatasetError, match=r"samples\.npz: expected vectors of shape \(N, 10\)"):
        TransitionDataset.from_vectors(np.zeros(shape), layout, source="samples.npz")


# --- split / subset --------------------------------------------------------------------------------------------
@pytest.fixture
def indexed(make_arrays):
    """Rewards hold the row number, so every row can be identified after a split."""
    arrays = make_arrays(n=50)
    arrays["rewards"] = np.arange(50, dtype=np.float32)
    return TransitionDataset(**arrays, name="indexed", provenance={"origin": "test"})


def test_split_sizes_disjoint_and_complete(indexed):
    train, held = indexed.split(0.8, seed=0)
    assert train.size + held.size == 50 and 30 <= train.size <= 48  # a coin per record, P(train) = 0.8
    a, b = train.rewards.astype(int), held.rewards.astype(int)
    assert not set(a) & set(b)
    np.testing.assert_array_equal(np.sort(np.concatenate([a, b])), np.arange(50))
    # whole rows travel together
    for part, ids in ((train, a), (held, b)):
        np.testing.assert_array_equal(part.observations, indexed.observations[ids])
        np.testing.assert_array_equal(part.actions, indexed.actions[ids])
        np.testing.assert_array_equal(part.next_observations, indexed.next_observations[ids])
        np.testing.assert_array_equal(part.terminals, indexed.terminals[ids])
        np.testing.assert_array_equal(part.timeouts, indexed.timeouts[ids])
    assert train.name == held.name == "indexed"


def test_split_is_reproducible_per_seed(indexed):
    t1, h1 = indexed.split(0.8, seed=3)
    t2, h2 = indexed.split(0.8, seed=3)
    np.testing.assert_array_equal(t1.rewards, t2.rewards)
    np.testing.assert_array_equal(h1.rewards, h2.rewards)
    t3, _ = indexed.split(0.8, seed=4)
    assert not np.array_equal(t1.rewards, t3.rewards)


def test_split_records_provenance_and_keeps_original(indexed):
    train, held = indexed.split(0.8, seed=7)
    assert train.provenance["origin"] == "test"
    tag = "split(train_fraction=0.8, seed=7; a coin per record)"
    assert train.provenance["selection"] == [f"{tag}: train part"]
    assert held.provenance["selection"] == [f"{tag}: held-out part"]
    assert "selection" not in indexed.provenance  # the source dataset is not modified
    # a second split appends to the record
    tt, _ = train.split(0.5, seed=0)
    assert tt.provenance["selection"][0].endswith("train part")
    assert tt.provenance["selection"][1] == "split(train_fraction=0.5, seed=0; a coin per record): train part"


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.2, 1.5])
def test_split_rejects_bad_fraction(indexed, fraction):
    with pytest.raises(DatasetError, match="train_fraction must be in"):
        indexed.split(fraction)


def test_split_refuses_to_leave_a_part_empty(make_arrays):
    one = TransitionDataset(**make_arrays(n=1, n_terminals=0), source="one-row")
    with pytest.raises(DatasetError, match="one-row: the per-record split .* left the .* part empty"):
        one.split(0.5)


def test_subset_selects_rows_and_notes(indexed):
    sub = indexed.subset(np.array([4, 0, 7]), note="first few")
    np.testing.assert_array_equal(sub.rewards, [4, 0, 7])
    np.testing.assert_array_equal(sub.observations, indexed.observations[[4, 0, 7]])
    assert sub.provenance["selection"] == ["first few"]
    assert sub.size == len(sub) == 3
    plain = indexed.subset(np.arange(5))
    assert "selection" not in plain.provenance and plain.size == 5


def test_subset_keeps_action_bounds_and_missing_timeouts(make_arrays):
    arrays = make_arrays()
    del arrays["timeouts"]
    ds = TransitionDataset(**arrays, action_low=[-2, -2], action_high=[2, 2])
    sub = ds.subset(np.arange(10))
    assert sub.timeouts is None
    np.testing.assert_array_equal(sub.action_low, [-2, -2])
    np.testing.assert_array_equal(sub.action_high, [2, 2])


# --- save / side-car -------------------------------------------------------------------------------------------
def test_save_writes_npz_and_sidecar_atomically(small_dataset, tmp_path):
    out = tmp_path / "out"
    path = small_dataset.save(out / "tiny.npz", extra_metadata={"note": "hello"})
    assert path == out / "tiny.npz"
    assert sorted(p.name for p in out.iterdir()) == ["tiny.json", "tiny.npz"]  # no temp files left
    side = json.loads((out / "tiny.json").read_text())
    assert side["name"] == "tiny"
    assert side["size"] == 50
    assert (side["obs_dim"], side["action_dim"]) == (3, 2)
    assert side["env_id"] == "Pendulum-v1"
    assert side["action_low"] == [-1.0, -1.0] and side["action_high"] == [1.0, 1.0]
    assert side["provenance"] == {"generator": "unit-test", "seed": 0}
    assert side["note"] == "hello"
    with np.load(path) as f:
        assert sorted(f.files) == sorted([*FIELDS, "timeouts"])


def test_save_then_load_npz_is_identical(small_dataset, tmp_path):
    path = small_dataset.save(tmp_path / "tiny.npz")
    back = load_npz(path)
    assert_same_arrays(small_dataset, back, (*FIELDS, "timeouts"))
    assert back.name == "tiny"
    assert back.env_id == "Pendulum-v1"
    assert back.source == str(path)
    assert back.provenance == {"generator": "unit-test", "seed": 0}
    np.testing.assert_array_equal(back.action_low, small_dataset.action_low)
    np.testing.assert_array_equal(back.action_high, small_dataset.action_high)
    assert back.metadata() == {**small_dataset.metadata(), "source": str(path)}


def test_save_overwrites_in_place(make_dataset, tmp_path):
    path = tmp_path / "d.npz"
    make_dataset(n=20, seed=1).save(path)
    second = make_dataset(n=30, seed=2)
    second.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.json", "d.npz"]
    back = load_npz(path)
    assert back.size == 30 and json.loads(path.with_suffix(".json").read_text())["size"] == 30
    assert_same_arrays(second, back)


def test_failed_sidecar_write_leaves_no_temp_file(small_dataset, tmp_path):
    path = small_dataset.save(tmp_path / "d.npz")
    before = path.with_suffix(".json").read_text()
    with pytest.raises(TypeError):
        small_dataset.save(path, extra_metadata={"bad": object()})  # not JSON serializable
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.json", "d.npz"]
    assert path.with_suffix(".json").read_text() == before  # the old side-car is intact


def test_save_rejects_other_suffix(small_dataset, tmp_path):
    with pytest.raises(DatasetError, match=r"d\.csv: datasets are saved as \.npz"):
        small_dataset.save(tmp_path / "d.csv")
    assert not list(tmp_path.iterdir())


# --- validation --------------------------------------------------------------------------------------------------
def test_dataset_error_is_a_user_error():
    assert issubclass(DatasetError, UserError)


def test_valid_arrays_are_cast(make_arrays):
    arrays = make_arrays()
    arrays["observations"] = arrays["observations"].astype(np.float64)
    arrays["terminals"] = arrays["terminals"].astype(bool)
    arrays["timeouts"] = arrays["timeouts"].astype(np.int64)
    out = validate_arrays(arrays, origin="x")
    assert out["observations"].dtype == np.float32
    assert out["terminals"].dtype == np.float32 and set(np.unique(out["terminals"])) == {0.0, 1.0}
    assert out["timeouts"].dtype == bool and out["timeouts"].sum() == 1


@pytest.mark.parametrize("key", FIELDS)
def test_missing_field(make_arrays, key):
    arrays = make_arrays()
    del arrays[key]
    expect_error(arrays, "/data/a.npz", "missing field", f"'{key}'")


def test_missing_field_via_constructor(make_arrays):
    arrays = make_arrays()
    arrays["rewards"] = None  # the constructor skips None fields, so 'rewards' is missing
    with pytest.raises(DatasetError, match=r"my-source: missing field\(s\) 'rewards'"):
        TransitionDataset(**arrays, source="my-source")


@pytest.mark.parametrize(
    "key, bad, shape",
    [
        ("observations", np.zeros(50), "(N, dim)"),
        ("actions", np.zeros((50, 2, 1)), "(N, dim)"),
        ("next_observations", np.zeros(50), "(N, dim)"),
        ("rewards", np.zeros((50, 2)), "(N,)"),
        ("terminals", np.zeros((50, 3)), "(N,)"),
        ("timeouts", np.zeros((5, 10)), "(N,)"),
    ],
)
def test_wrong_ndim(make_arrays, key, bad, shape):
    arrays = make_arrays()
    arrays[key] = bad
    expect_error(arrays, "file.npz", f"field '{key}' must have shape {shape}", str(bad.shape))


@pytest.mark.parametrize("key", ["actions", "rewards", "next_observations", "terminals", "timeouts"])
def test_length_mismatch(make_arrays, key):
    arrays = make_arrays()
    arrays[key] = arrays[key][:-1]
    expect_error(arrays, "file.npz", f"field '{key}' has 49 rows but 'observations' has 50")


def test_length_mismatch_via_constructor(make_arrays):
    arrays = make_arrays()
    arrays["actions"] = arrays["actions"][:10]
    with pytest.raises(DatasetError, match=r"ctor-src: field 'actions' has 10 rows"):
        TransitionDataset(**arrays, source="ctor-src")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("key", ["observations", "actions", "rewards", "next_observations"])
def test_non_finite_values(make_arrays, key, value):
    arrays = make_arrays()
    if arrays[key].ndim == 1:
        arrays[key][7] = value
    else:
        arrays[key][7, -1] = value
    expect_error(arrays, "file.npz", f"field '{key}' contains NaN or Inf", "row 7")


def test_nan_via_constructor(make_arrays):
    arrays = make_arrays()
    arrays["rewards"][3] = np.nan
    with pytest.raises(DatasetError, match="'rewards'") as info:
        TransitionDataset(**arrays, source="nan-src")
    assert "nan-src" in str(info.value) and "row 3" in str(info.value)


def test_empty_dataset(make_arrays):
    arrays = make_arrays(n=0, n_terminals=0)
    expect_error(arrays, "empty.npz", "dataset is empty", "'observations' has 0 rows")
    with pytest.raises(DatasetError, match="empty-src: dataset is empty"):
        TransitionDataset(**arrays, source="empty-src")


@pytest.mark.parametrize("key", ["terminals", "timeouts"])
@pytest.mark.parametrize("value", [0.5, 2, -1])
def test_binary_fields_must_be_0_or_1(make_arrays, key, value):
    arrays = make_arrays()
    arrays[key] = arrays[key].astype(np.float32)
    arrays[key][11] = value
    expect_error(arrays, "file.npz", f"field '{key}' must be 0/1", "row 11", str(float(value)))


def test_terminal_not_binary_via_constructor(make_arrays):
    arrays = make_arrays()
    arrays["terminals"][0] = 0.5
    with pytest.raises(DatasetError, match="'terminals'") as info:
        TransitionDataset(**arrays, source="bin-src")
    assert "bin-src" in str(info.value)


@pytest.mark.parametrize(
    "key, bad",
    [
        ("observations", np.array([["a", "b", "c"]] * 50)),
        ("rewards", np.array([None] * 50, dtype=object)),
        ("terminals", np.array(["0"] * 50)),
        ("actions", np.array([[b"x", b"y"]] * 50)),
    ],
)
def test_non_numeric_dtype(make_arrays, key, bad):
    arrays = make_arrays()
    arrays[key] = bad
    expect_error(arrays, "file.npz", f"field '{key}' must be numeric", str(bad.dtype))


def test_next_observation_dim_differs(make_arrays):
    arrays = make_arrays()
    arrays["next_observations"] = np.zeros((50, 4), dtype=np.float32)
    expect_error(arrays, "file.npz", "field 'next_observations' has dimension 4 but 'observations' has 3")


@pytest.mark.parametrize("key", ["action_low", "action_high"])
def test_action_bound_wrong_size(make_arrays, key):
    with pytest.raises(DatasetError, match=f"bounds-src: {key} has 3 entries but actions have dimension 2"):
        TransitionDataset(**make_arrays(), source="bounds-src", **{key: [-1.0, -1.0, -1.0]})


def test_action_bounds_are_flattened_float32(make_arrays):
    ds = TransitionDataset(**make_arrays(), action_low=[[-1, -2]], action_high=np.array([1, 2]))
    assert ds.action_low.dtype == np.float32 and ds.action_low.shape == (2,)
    np.testing.assert_array_equal(ds.action_high, [1.0, 2.0])


def test_column_shaped_1d_fields_are_flattened(make_arrays):
    arrays = make_arrays()
    expected = {k: arrays[k].copy() for k in ("rewards", "terminals", "timeouts")}
    for k in expected:
        arrays[k] = arrays[k].reshape(-1, 1)
    ds = TransitionDataset(**arrays)
    for k, v in expected.items():
        assert getattr(ds, k).shape == (50,), k
        np.testing.assert_array_equal(getattr(ds, k), v)
    assert ds.size == 50 and ds.to_vectors().shape == (50, 10)


def test_validate_respects_required(make_arrays):
    arrays = make_arrays()
    del arrays["next_observations"]
    out = validate_arrays(arrays, origin="raw.hdf5", required=("observations", "actions", "rewards", "terminals"))
    assert "next_observations" not in out and out["timeouts"].dtype == bool


# --- compatibility -----------------------------------------------------------------------------------------------
def test_check_compatible_accepts_same_dims(make_dataset):
    check_compatible(make_dataset(n=10, name="public"), make_dataset(n=20, seed=1, name="sensitive"))


def test_check_compatible_obs_dim_mismatch(make_dataset):
    public = make_dataset(obs_dim=3, name="public")
    sensitive = make_dataset(obs_dim=4, name="sensitive")
    with pytest.raises(DatasetError, match=r"tiny-source \(sensitive\) has obs_dim=4 but tiny-source \(public\) has "
                                           r"obs_dim=3"):  # the file and the registry name, not the name alone
        check_compatible(public, sensitive)


def test_check_compatible_action_dim_mismatch(make_dataset):
    public = make_dataset(action_dim=2, name=None, source="pub.npz")
    sensitive = make_dataset(action_dim=1, name=None, source="sens.npz")
    with pytest.raises(DatasetError, match=r"sens\.npz has action_dim=1 but pub\.npz has action_dim=2"):
        check_compatible(public, sensitive)
