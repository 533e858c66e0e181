"""Shared fixtures: small D4RL-keyed arrays, small TransitionDatasets, and isolated data folders."""
import numpy as np
import pytest

from synther.data.dataset import TransitionDataset


def _make_arrays(n=50, obs_dim=3, action_dim=2, seed=0, n_terminals=3):
    """Small random float32 transitions with D4RL keys; a few rows are terminal, the last row is a timeout."""
    rng = np.random.default_rng(seed)
    terminals = np.zeros(n, dtype=np.float32)
    if n_terminals:
        terminals[rng.choice(n, size=min(n_terminals, n), replace=False)] = 1.0
    timeouts = np.zeros(n, dtype=bool)
    if n:
        timeouts[-1] = True
    return {
        "observations": rng.normal(size=(n, obs_dim)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(n, action_dim)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "next_observations": rng.normal(size=(n, obs_dim)).astype(np.float32),
        "terminals": terminals,
        "timeouts": timeouts,
    }


@pytest.fixture
def make_arrays():
    """Factory: make_arrays(n=50, obs_dim=3, action_dim=2, seed=0) -> dict of D4RL-keyed arrays."""
    return _make_arrays


@pytest.fixture
def make_dataset():
    """Factory: make_dataset(n=50, obs_dim=3, action_dim=2, seed=0, **meta) -> TransitionDataset."""

    def make(n=50, obs_dim=3, action_dim=2, seed=0, **meta):
        meta.setdefault("name", "tiny")
        meta.setdefault("source", "tiny-source")
        return TransitionDataset(**_make_arrays(n, obs_dim, action_dim, seed), **meta)

    return make


@pytest.fixture
def small_dataset(make_dataset):
    """50 transitions, obs_dim 3, action_dim 2, with action bounds, env id and provenance."""
    return make_dataset(
        env_id="Pendulum-v1",
        action_low=[-1.0, -1.0],
        action_high=[1.0, 1.0],
        provenance={"generator": "unit-test", "seed": 0},
    )


@pytest.fixture(autouse=True)
def data_roots(tmp_path_factory, monkeypatch):
    """Point every dataset root at fresh per-test temp folders: no test reads or writes ~ or ./data.

    The folders sit next to the test's tmp_path rather than inside it, so tests that check tmp_path holds only
    what they wrote (no temp files left behind) still see an empty folder. Returns {env var: folder}.
    """
    base = tmp_path_factory.mktemp("roots")
    roots = {
        "PRIVTRANR_DATA_DIR": base / "privtranr_data",
        "D4RL_DATASET_DIR": base / "d4rl",
        "MINARI_DATASETS_PATH": base / "minari",
    }
    for var, path in roots.items():
        path.mkdir()
        monkeypatch.setenv(var, str(path))
    return roots


@pytest.fixture
def two_lent_threads(tmp_path, monkeypatch):
    """A sweep's thread file lending this process 2 threads (synther.utils.threads); torch's count restored after."""
    import torch

    from synther.utils.threads import THREADS_FILE_ENV, lend_threads

    path = tmp_path / "job.threads"
    lend_threads(path, 2)
    monkeypatch.setenv(THREADS_FILE_ENV, str(path))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield path
    torch.set_num_threads(before)
