"""Dataset registry (config/datasets.yaml) and the one entry point that turns a dataset spec into data.

A spec is either a path (.npz, D4RL .hdf5, or a Minari dataset folder) or a name: a registry name, or a Minari id
already present under the local Minari root. Nothing is ever downloaded.
"""
from __future__ import annotations

import difflib
import importlib
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from synther.data.dataset import TransitionDataset
from synther.data.formats import d4rl_dataset_dir, load_d4rl_hdf5, load_minari, load_npz, minari_root
from synther.errors import DatasetError, UserError

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_REGISTRY = REPO_ROOT / "config" / "datasets.yaml"
SOURCE_KINDS = ("generated", "d4rl", "minari", "npz")
LOADABLE_SUFFIXES = (".npz", ".hdf5", ".h5")


def data_dir() -> Path:
    """Where generated datasets live: $PRIVTRANR_DATA_DIR, else ./data."""
    return Path(os.environ.get("PRIVTRANR_DATA_DIR", "data")).expanduser()


@dataclass(frozen=True)
class EnvSpec:
    """How to build the evaluation environment: a gymnasium id, or a factory 'module:function' with kwargs."""

    gym_id: str | None = None
    entry_point: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    max_episode_steps: int | None = None

    def make(self, **overrides: Any):
        """Build the env; `overrides` (e.g. max_episode_steps for quick tests) win over the registry."""
        import gymnasium as gym

        max_steps = overrides.pop("max_episode_steps", None) or self.max_episode_steps
        if self.gym_id:
            return gym.make(self.gym_id, max_episode_steps=max_steps, **{**self.kwargs, **overrides})
        module, _, fn = (self.entry_point or "").partition(":")
        factory = getattr(importlib.import_module(module), fn)
        return factory(**{**self.kwargs, **overrides}, max_episode_steps=max_steps)


@dataclass(frozen=True)
class ScoreRef:
    """Normalized score = 100 · (return − min) / (max − min), with where min and max came from."""

    min: float
    max: float
    origin: str

    def normalize(self, returns: float | np.ndarray) -> float | np.ndarray:
        return 100.0 * (np.asarray(returns) - self.min) / (self.max - self.min)


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    kind: str  # one of SOURCE_KINDS
    location: str  # file name (generated/d4rl), Minari id, or npz path
    env: EnvSpec | None
    score: ScoreRef | None
    note: str = ""

    def path(self) -> Path:
        if self.kind == "generated":
            return data_dir() / self.location
        if self.kind == "d4rl":
            return d4rl_dataset_dir() / self.location
        if self.kind == "minari":
            return minari_root() / self.location
        return Path(self.location).expanduser()

    def missing_hint(self) -> str:
        if self.kind == "generated":
            return f"generate it with: python MuJoCo/collect_data.py {self.note}".rstrip()
        if self.kind == "d4rl":
            return "D4RL downloads are not available offline: place the file there or set D4RL_DATASET_DIR"
        if self.kind == "minari":
            return "Minari downloads are disabled: copy the dataset folder there or set MINARI_DATASETS_PATH"
        return "check the path in config/datasets.yaml"


class Registry:
    def __init__(self, entries: dict[str, DatasetEntry]) -> None:
        self.entries = entries

    @classmethod
    def from_yaml(cls, path: str | Path = DEFAULT_REGISTRY) -> "Registry":
        path = Path(path)
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise UserError(f"{path}: cannot read dataset registry ({e})") from None
        entries = {}
        for name, raw in (doc.get("datasets") or {}).items():
            entries[name] = _parse_entry(path, name, raw)
        return cls(entries)

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def get(self, name: str) -> DatasetEntry:
        try:
            return self.entries[name]
        except KeyError:
            raise DatasetError(f"'{name}' is not in the dataset registry ({len(self.entries)} names are registered)")


def _parse_entry(path: Path, name: str, raw: dict[str, Any]) -> DatasetEntry:
    where = f"{path}: dataset '{name}'"
    try:
        src = raw["source"]
        kind = src["kind"]
        location = src.get("file") or src.get("id") or src.get("path")
    except (KeyError, TypeError):
        raise UserError(f"{where}: needs source.kind and source.file/id/path") from None
    if kind not in SOURCE_KINDS or not location:
        raise UserError(f"{where}: source.kind must be one of {SOURCE_KINDS} with a file/id/path")
    env = EnvSpec(**raw["env"]) if raw.get("env") else None
    score = ScoreRef(**raw["score"]) if raw.get("score") else None
    return DatasetEntry(name, kind, str(location), env, score, raw.get("note", ""))


@lru_cache(maxsize=None)
def default_registry() -> Registry:
    return Registry.from_yaml(DEFAULT_REGISTRY)


def load_dataset(
    spec: str | os.PathLike, registry: Registry | None = None, max_episode_steps: int | None = None
) -> TransitionDataset:
    """Load a dataset from a path or a name, offline. Raises DatasetError with a fix-it hint on failure.

    The returned dataset's `name` is its registry name when it has one, so `dataset_info(ds.name)` finds its
    evaluation env and score constants. `max_episode_steps` only matters for D4RL files without timeouts.
    """
    registry = registry or default_registry()
    spec_str = os.fspath(spec)
    path = Path(spec_str).expanduser()
    if path.exists():
        return _load_path(path, max_episode_steps)
    if spec_str in registry:
        entry = registry.get(spec_str)
        target = entry.path()
        if not target.exists():
            raise DatasetError(f"dataset '{entry.name}' not found at {target}; {entry.missing_hint()}")
        if entry.kind == "minari":
            ds = load_minari(target)
        else:
            steps = max_episode_steps or (entry.env.max_episode_steps if entry.env else None)
            ds = _load_path(target, steps)
        ds.name = entry.name
        return ds
    if "/" in spec_str and not path.suffix and (minari_root() / spec_str / "data").is_dir():
        return load_minari(spec_str)
    if path.suffix.lower() in LOADABLE_SUFFIXES:
        raise DatasetError(f"{spec_str}: file not found")
    close = difflib.get_close_matches(spec_str, list(registry.entries), n=3)
    hint = f"did you mean {', '.join(close)}?" if close else f"see {DEFAULT_REGISTRY.name} for registered names"
    raise DatasetError(
        f"unknown dataset '{spec_str}': not an existing file, not a registered name, and not a Minari id under "
        f"{minari_root()} ({hint})"
    )


def _load_path(path: Path, max_episode_steps: int | None) -> TransitionDataset:
    if path.is_dir():
        return load_minari(path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return load_npz(path)
    if suffix in LOADABLE_SUFFIXES:
        return load_d4rl_hdf5(path, max_episode_steps=max_episode_steps)
    raise DatasetError(f"{path}: unsupported file type '{suffix}' (expected .npz, .hdf5/.h5 or a Minari folder)")


def dataset_info(name: str | None, registry: Registry | None = None) -> DatasetEntry | None:
    """Registry entry (evaluation env, score constants) for a dataset name, or None when it is not registered."""
    registry = registry or default_registry()
    return registry.entries.get(name) if name else None
