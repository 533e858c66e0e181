"""Readers for the on-disk dataset formats: npz (D4RL keys), D4RL hdf5, Minari. All strictly offline."""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from synther.data.dataset import TransitionDataset, sidecar_path, validate_arrays
from synther.errors import DatasetError


# --- npz ---------------------------------------------------------------------------------------------------
def load_npz(path: str | Path) -> TransitionDataset:
    """Read an .npz with D4RL keys (the samples.npz format); metadata comes from its side-car when present."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        if not zipfile.is_zipfile(path):  # numpy reads any non-zip file as a pickle and says so: not the point
            raise DatasetError(f"{path}: not an npz file (an .npz is a zip archive of arrays)") from None
        raise DatasetError(f"{path}: not a readable .npz file ({e})") from None
    meta = read_sidecar(path)
    kwargs = _meta_kwargs(meta)
    kwargs["source"] = str(path)
    ds = TransitionDataset(**validate_arrays(arrays, origin=str(path)), **kwargs)
    for what in ("obs_dim", "action_dim"):  # a side-car describing other arrays belongs to another file
        if meta.get(what) is not None and meta[what] != getattr(ds, what):
            raise DatasetError(f"{path}: its side-car {sidecar_path(path).name} says {what}={meta[what]} but the "
                               f"arrays have {what}={getattr(ds, what)}")
    return ds


def read_sidecar(path: str | Path) -> dict[str, Any]:
    side = sidecar_path(path)
    if not side.exists():
        return {}
    try:
        meta = json.loads(side.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f"{side}: side-car is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise DatasetError(f"{side}: side-car must hold a JSON object")
    return meta


def _meta_kwargs(meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": meta.get("name"),
        "env_id": meta.get("env_id"),
        "action_low": meta.get("action_low"),
        "action_high": meta.get("action_high"),
        "provenance": meta.get("provenance") or {},
    }


# --- D4RL hdf5 ---------------------------------------------------------------------------------------------
def d4rl_dataset_dir() -> Path:
    """Where D4RL keeps downloaded files: $D4RL_DATASET_DIR or ~/.d4rl/datasets (as D4RL itself does)."""
    return Path(os.environ.get("D4RL_DATASET_DIR", Path.home() / ".d4rl" / "datasets")).expanduser()


def load_d4rl_hdf5(path: str | Path, max_episode_steps: int | None = None) -> TransitionDataset:
    """Read a D4RL .hdf5 file and build transitions the way D4RL's `qlearning_dataset` does.

    next_observations[i] = observations[i+1]; row i is dropped when timeouts[i] is set (its successor belongs to
    the next episode), and the last row is dropped (it has no successor). Terminal rows are kept. Files without a
    'timeouts' field need `max_episode_steps` to place the boundaries, exactly as qlearning_dataset falls back to
    the env's limit; without either, every row but the last is kept and the provenance says so.
    """
    import h5py

    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: file not found")
    try:
        with h5py.File(path, "r") as f:
            raw = {k: f[k][()] for k in ("observations", "actions", "rewards", "terminals", "timeouts") if k in f}
            attrs = {k: _attr(v) for k, v in f.attrs.items()}
    except OSError as e:
        raise DatasetError(f"{path}: not a readable HDF5 file ({e})") from None
    raw = validate_arrays(raw, origin=str(path), required=("observations", "actions", "rewards", "terminals"))
    n = len(raw["rewards"])
    if n < 2:
        raise DatasetError(f"{path}: need at least 2 rows to form a transition, found {n}")

    if "timeouts" in raw:
        boundary = raw["timeouts"].copy()
        boundary_rule = "timeouts field"
    elif max_episode_steps:
        # qlearning_dataset's fallback, step counter quirks included (a terminal restarts the count at 1).
        boundary = np.zeros(n, dtype=bool)
        step = 0
        for i in range(n - 1):
            if step == max_episode_steps - 1:
                boundary[i] = True
                step = 0
                continue
            if raw["terminals"][i]:
                step = 0
            step += 1
        boundary_rule = f"every {max_episode_steps} steps (no timeouts field)"
    else:
        boundary = np.zeros(n, dtype=bool)
        boundary_rule = "none (no timeouts field and no max_episode_steps): rows treated as one stream"
    keep = ~boundary[:-1]
    idx = np.flatnonzero(keep)
    return TransitionDataset(
        observations=raw["observations"][idx],
        actions=raw["actions"][idx],
        rewards=raw["rewards"][idx],
        next_observations=raw["observations"][idx + 1],
        terminals=raw["terminals"][idx],
        timeouts=np.zeros(len(idx), dtype=bool),  # boundary rows were dropped: no kept row is a truncation
        name=attrs.get("name") or path.stem,
        source=str(path),
        provenance={
            "format": "d4rl-hdf5",
            "conversion": "qlearning_dataset (next obs = following row, boundary rows dropped)",
            "episode_boundaries": boundary_rule,
            "rows_in_file": n,
            "rows_dropped": n - len(idx),
            "file_attrs": attrs,
        },
    )


def _attr(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode(errors="replace")
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


# --- Minari ------------------------------------------------------------------------------------------------
def minari_root() -> Path:
    """Minari's local root: $MINARI_DATASETS_PATH or ~/.minari/datasets (Minari's own rule)."""
    return Path(os.environ.get("MINARI_DATASETS_PATH", Path.home() / ".minari" / "datasets")).expanduser()


def load_minari(id_or_path: str | Path) -> TransitionDataset:
    """Read a Minari dataset already on disk, by id (under the local root) or by its directory. Never downloads.

    Dict observations (PointMaze's observation/achieved_goal/desired_goal) keep the 'observation' entry, which is
    D4RL's maze2d state [x, y, vx, vy]; other dict spaces are flattened key by key in sorted order.
    """
    path = Path(id_or_path)
    if not (path / "data").is_dir():
        path = minari_root() / str(id_or_path)
    if not (path / "data").is_dir():
        raise DatasetError(
            f"Minari dataset '{id_or_path}' not found locally (looked in {path}; set MINARI_DATASETS_PATH to its "
            f"root). Downloads are disabled: copy the dataset folder there first."
        )
    try:
        from minari import MinariDataset
    except ImportError as e:  # pragma: no cover - minari is a hard requirement
        raise DatasetError(f"reading Minari datasets needs the 'minari' package ({e})") from None
    try:
        ds = MinariDataset(path / "data")
    except Exception as e:  # minari raises assorted errors on a broken folder; turn them into one clear line
        raise DatasetError(f"{path}: not a readable Minari dataset ({type(e).__name__}: {e})") from None

    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("obs", "next", "act", "rew", "term", "trunc")}
    obs_note = None
    for ep in ds.iterate_episodes():
        obs, obs_note = _minari_obs(ep.observations)
        parts["obs"].append(obs[:-1])
        parts["next"].append(obs[1:])  # Minari stores the final observation, so every step has its true successor
        parts["act"].append(np.asarray(ep.actions).reshape(len(ep.actions), -1))
        parts["rew"].append(np.asarray(ep.rewards))
        parts["term"].append(np.asarray(ep.terminations))
        parts["trunc"].append(np.asarray(ep.truncations))
    if not parts["obs"]:
        raise DatasetError(f"{path}: Minari dataset has no episodes")
    space = ds.action_space
    low = getattr(space, "low", None)
    high = getattr(space, "high", None)
    env_spec = ds.env_spec
    return TransitionDataset(
        observations=np.concatenate(parts["obs"]),
        actions=np.concatenate(parts["act"]),
        rewards=np.concatenate(parts["rew"]),
        next_observations=np.concatenate(parts["next"]),
        terminals=np.concatenate(parts["term"]),
        timeouts=np.concatenate(parts["trunc"]),
        name=ds.id,
        env_id=env_spec.id if env_spec is not None else None,
        source=str(path),
        action_low=low,
        action_high=high,
        provenance={
            "format": "minari",
            "dataset_id": ds.id,
            "episodes": int(ds.total_episodes),
            "observation_handling": obs_note,
        },
    )


def _minari_obs(obs: Any) -> tuple[np.ndarray, str]:
    if isinstance(obs, dict):
        if "observation" in obs:
            return np.asarray(obs["observation"]), "dict observation: kept the 'observation' entry"
        keys = sorted(obs)
        flat = [np.asarray(obs[k]).reshape(len(obs[k]), -1) for k in keys]
        return np.concatenate(flat, axis=1), f"dict observation flattened in key order {keys}"
    obs = np.asarray(obs)
    return obs.reshape(len(obs), -1), "array observation"
