"""TransitionDataset: the one in-memory type for offline-RL transitions (s, a, r, s', done).

Every loader and generator produces one; everything downstream (diffusion, agents, evaluation) consumes one.
Arrays are validated on construction, so a dataset that exists is a dataset that is usable.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from synther.errors import DatasetError
from synther.utils.io import atomic_path, json_default

# D4RL / samples.npz keys. Order matters only for messages.
REQUIRED_FIELDS = ("observations", "actions", "rewards", "next_observations", "terminals")
OPTIONAL_FIELDS = ("timeouts",)
_FIELD_NDIM = {"observations": 2, "actions": 2, "next_observations": 2, "rewards": 1, "terminals": 1, "timeouts": 1}
_BINARY_FIELDS = ("terminals", "timeouts")


def validate_arrays(
    arrays: Mapping[str, Any],
    origin: str,
    required: tuple[str, ...] = REQUIRED_FIELDS,
) -> dict[str, np.ndarray]:
    """Check raw arrays and return them cast to the canonical dtypes.

    Raises DatasetError naming `origin` (a file or a description) and the offending field.
    1-D fields stored as (N, 1) columns are accepted and flattened, as D4RL files sometimes do.
    """
    missing = [k for k in required if k not in arrays]
    if missing:
        raise DatasetError(
            f"{origin}: missing field(s) {', '.join(repr(k) for k in missing)} "
            f"(expected keys: {', '.join(required)})"
        )
    present = [k for k in (*required, *OPTIONAL_FIELDS) if k in arrays]
    out: dict[str, np.ndarray] = {}
    for key in present:
        arr = np.asarray(arrays[key])
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise DatasetError(f"{origin}: field '{key}' must be numeric, got dtype {arr.dtype}")
        want = _FIELD_NDIM[key]
        if want == 1 and arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != want:
            shape = "(N,)" if want == 1 else "(N, dim)"
            raise DatasetError(f"{origin}: field '{key}' must have shape {shape}, got {arr.shape}")
        out[key] = arr

    first = present[0]
    n = len(out[first])
    if n == 0:
        raise DatasetError(f"{origin}: dataset is empty (field '{first}' has 0 rows)")
    for key in present[1:]:
        if len(out[key]) != n:
            raise DatasetError(f"{origin}: field '{key}' has {len(out[key])} rows but '{first}' has {n}")
    if "observations" in out and "next_observations" in out:
        if out["next_observations"].shape[1] != out["observations"].shape[1]:
            raise DatasetError(
                f"{origin}: field 'next_observations' has dimension {out['next_observations'].shape[1]} "
                f"but 'observations' has {out['observations'].shape[1]}"
            )
    for key in present:
        arr = out[key]
        if key in _BINARY_FIELDS:
            bad = ~np.isin(arr, (0, 1))
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise DatasetError(f"{origin}: field '{key}' must be 0/1, found {arr[row]!r} at row {row}")
            out[key] = np.ascontiguousarray(arr, dtype=np.float32 if key == "terminals" else bool)
            continue
        arr = np.ascontiguousarray(arr, dtype=np.float32)  # no copy when it already is (1M-row sets: 50+ MB each)
        finite = np.isfinite(arr)
        if not finite.all():
            row = int(np.flatnonzero(~finite.reshape(len(arr), -1).all(axis=1))[0])
            raise DatasetError(f"{origin}: field '{key}' contains NaN or Inf (first at row {row})")
        out[key] = arr
    return out


@dataclass(frozen=True)
class TransitionLayout:
    """Where each part of a transition sits in the flat vector [obs, action, reward, next_obs, terminal]."""

    obs_dim: int
    action_dim: int

    @property
    def dim(self) -> int:
        return 2 * self.obs_dim + self.action_dim + 2

    @property
    def obs(self) -> slice:
        return slice(0, self.obs_dim)

    @property
    def action(self) -> slice:
        return slice(self.obs_dim, self.obs_dim + self.action_dim)

    @property
    def reward(self) -> int:
        return self.obs_dim + self.action_dim

    @property
    def next_obs(self) -> slice:
        start = self.obs_dim + self.action_dim + 1
        return slice(start, start + self.obs_dim)

    @property
    def terminal(self) -> int:
        return self.dim - 1


@dataclass
class TransitionDataset:
    """Transitions plus what is known about where they came from.

    `env_id` records the environment the data came from, as its source knows it (a gymnasium id or factory), and
    may be None. Evaluation envs and score constants come from the registry, by `name` (see registry.dataset_info). `provenance` is a free-form, JSON-serializable record (generator, config, versions,
    split, ...) that travels into every side-car written from this dataset.
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray | None = None
    name: str | None = None
    env_id: str | None = None
    source: str = "memory"
    action_low: np.ndarray | None = None
    action_high: np.ndarray | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        arrays = {k: getattr(self, k) for k in (*REQUIRED_FIELDS, *OPTIONAL_FIELDS) if getattr(self, k) is not None}
        for key, arr in validate_arrays(arrays, origin=self.source).items():
            setattr(self, key, arr)
        for key in ("action_low", "action_high"):
            bound = getattr(self, key)
            if bound is not None:
                bound = np.asarray(bound, dtype=np.float32).reshape(-1)
                if bound.shape != (self.action_dim,):
                    raise DatasetError(
                        f"{self.source}: {key} has {bound.size} entries but actions have dimension {self.action_dim}"
                    )
                setattr(self, key, bound)

    # --- shape -------------------------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return len(self.rewards)

    def __len__(self) -> int:
        return self.size

    @property
    def obs_dim(self) -> int:
        return self.observations.shape[1]

    @property
    def action_dim(self) -> int:
        return self.actions.shape[1]

    @property
    def layout(self) -> TransitionLayout:
        return TransitionLayout(self.obs_dim, self.action_dim)

    # --- conversions -------------------------------------------------------------------------------------
    def to_vectors(self) -> np.ndarray:
        """Flat float32 matrix (N, 2*obs_dim + action_dim + 2) in SynthER order."""
        return np.concatenate(
            [self.observations, self.actions, self.rewards[:, None], self.next_observations, self.terminals[:, None]],
            axis=1,
        ).astype(np.float32)

    @classmethod
    def from_vectors(cls, x: np.ndarray, layout: TransitionLayout, **meta: Any) -> "TransitionDataset":
        """Inverse of to_vectors. The terminal column is thresholded at 0.5 (sampled values are continuous)."""
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != layout.dim:
            raise DatasetError(
                f"{meta.get('source', 'vectors')}: expected vectors of shape (N, {layout.dim}) for obs_dim "
                f"{layout.obs_dim} and action_dim {layout.action_dim}, got {x.shape}"
            )
        return cls(
            observations=x[:, layout.obs],
            actions=x[:, layout.action],
            rewards=x[:, layout.reward],
            next_observations=x[:, layout.next_obs],
            terminals=(x[:, layout.terminal] > 0.5).astype(np.float32),
            **meta,
        )

    def arrays(self) -> dict[str, np.ndarray]:
        """The D4RL-keyed arrays (the samples.npz format); timeouts only when known."""
        out = {k: getattr(self, k) for k in REQUIRED_FIELDS}
        if self.timeouts is not None:
            out["timeouts"] = self.timeouts
        return out

    def metadata(self) -> dict[str, Any]:
        """JSON-serializable description written into the side-car next to every saved dataset."""
        return {
            "name": self.name,
            "env_id": self.env_id,
            "source": self.source,
            "size": self.size,
            "obs_dim": self.obs_dim,
            "action_dim": self.action_dim,
            "action_low": None if self.action_low is None else self.action_low.tolist(),
            "action_high": None if self.action_high is None else self.action_high.tolist(),
            "provenance": self.provenance,
        }

    # --- selection ---------------------------------------------------------------------------------------
    def subset(self, indices: np.ndarray, note: str | None = None) -> "TransitionDataset":
        idx = np.asarray(indices)
        arrays = {k: v[idx] for k, v in self.arrays().items()}
        provenance = dict(self.provenance)
        if note:
            provenance["selection"] = [*provenance.get("selection", []), note]
        return dataclasses.replace(self, **arrays, provenance=provenance)

    def content_sha256(self) -> str:
        """SHA-256 of the transition arrays (not of metadata): the dataset's identity in ledgers and resume hashes."""
        digest = hashlib.sha256()
        for key, value in sorted(self.arrays().items()):
            arr = np.ascontiguousarray(value)
            digest.update(f"{key}:{arr.dtype.str}:{arr.shape}".encode())
            digest.update(arr.tobytes())
        return digest.hexdigest()

    def identity(self) -> dict[str, Any]:
        """What a ledger records of a dataset it was trained on."""
        return {"name": self.name, "source": self.source, "rows": self.size, "sha256": self.content_sha256()}

    def record_coins(self, seed: int, salt: str) -> np.ndarray:
        """One pseudo-random number in [0, 1) per record, a function of the record's own values, `seed` and `salt`
        only: adding or removing another record changes no other record's coin (see `split`)."""
        words = np.ascontiguousarray(self.to_vectors()).view(np.uint32)
        key = int.from_bytes(hashlib.sha256(f"{salt}:{seed}".encode()).digest()[:8], "little")
        h = np.full(len(words), key, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for col in words.T:  # a keyed splitmix64-style hash over the record's 32-bit words, a column at a time
                h = _mix64(h ^ col.astype(np.uint64))
        return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53

    def split(self, train_fraction: float = 0.8, seed: int = 0) -> tuple["TransitionDataset", "TransitionDataset"]:
        """(train, held_out): each record goes to train iff its own coin (`record_coins`) is < train_fraction.

        The paper fine-tunes on 80% of the sensitive set and keeps 20% as membership-inference non-members. A
        permutation of all N rows would let one added record reshuffle who is trained on; with a coin per record,
        adding or removing one record adds or removes at most that record from the training part, so DP of the
        training part is DP of the whole dataset. Identical rows get identical coins.
        """
        if not 0.0 < train_fraction < 1.0:
            raise DatasetError(f"train_fraction must be in (0, 1), got {train_fraction}")
        train = self.record_coins(seed, "split") < train_fraction
        tag = f"split(train_fraction={train_fraction}, seed={seed}; a coin per record)"
        if train.all() or not train.any():
            raise DatasetError(f"{self.source}: the per-record split of its {self.size} transitions left the "
                               f"{'held-out' if train.all() else 'training'} part empty; use a larger dataset")
        return (
            self.subset(np.flatnonzero(train), note=f"{tag}: train part"),
            self.subset(np.flatnonzero(~train), note=f"{tag}: held-out part"),
        )

    # --- persistence -------------------------------------------------------------------------------------
    def save(self, path: str | Path, extra_metadata: Mapping[str, Any] | None = None) -> Path:
        """Write `path` (.npz, D4RL keys) and its side-car `path.with_suffix('.json')`, both atomically."""
        path = Path(path)
        if path.suffix != ".npz":
            raise DatasetError(f"{path}: datasets are saved as .npz files")
        meta = json.dumps({**self.metadata(), **(extra_metadata or {})}, indent=2, sort_keys=True, default=json_default)
        # both files are written to temporaries first; neither replaces its target unless both were written
        with atomic_path(path) as tmp_npz, atomic_path(sidecar_path(path)) as tmp_json:
            with open(tmp_npz, "wb") as f:
                np.savez(f, **self.arrays())
            tmp_json.write_text(meta + "\n")
        return path


def sidecar_path(path: str | Path) -> Path:
    return Path(path).with_suffix(".json")


def _where(ds: TransitionDataset) -> str:
    """A dataset as an error message should name it: its file (when it has one) and its registry name."""
    if ds.source and ds.name and ds.name not in ds.source:
        return f"{ds.source} ({ds.name})"
    return ds.source or ds.name or "a dataset"


def check_compatible(reference: TransitionDataset, other: TransitionDataset) -> None:
    """Public and sensitive datasets must share observation and action dimensions."""
    for what in ("obs_dim", "action_dim"):
        a, b = getattr(reference, what), getattr(other, what)
        if a != b:
            raise DatasetError(
                f"dimension mismatch: {_where(other)} has {what}={b} but {_where(reference)} has {what}={a}"
            )


def _mix64(h: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer (uint64 arithmetic wraps)."""
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def public_action_bounds(public: list[TransitionDataset]) -> tuple[np.ndarray, np.ndarray, str]:
    """Action bounds for synthetic data, from PUBLIC datasets only: the env's declared action space recorded in one
    of them, else the range of their actions; with a description of which."""
    for ds in public:
        if ds.action_low is not None and ds.action_high is not None:
            return ds.action_low, ds.action_high, f"env action space recorded in public dataset {ds.name or ds.source}"
    acts = np.concatenate([ds.actions for ds in public])
    return acts.min(0), acts.max(0), "range of the public datasets' actions"
