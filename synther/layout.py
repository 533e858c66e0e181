"""Where things are: the repository's files, the runs root, and each sensitive dataset's public datasets.

One place for what every script, the sweep and the report would otherwise each decide for themselves.
"""
import os
from pathlib import Path

import yaml

from synther.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
RUNS_ENV = "PRIVTRANR_RUNS_DIR"
PAIRS = "config/diffusion/pairs.yaml"  # sensitive dataset -> its public datasets


def runs_root(explicit: "str | os.PathLike" = "") -> Path:
    """`explicit` when given, else $PRIVTRANR_RUNS_DIR, else runs/ (relative to the working directory)."""
    return Path(explicit or os.environ.get(RUNS_ENV, "runs"))


def repo_path(path: "str | os.PathLike") -> Path:
    """An absolute path: `path` as given when it is absolute or exists from here, else relative to the repository
    (so config/... works from any working directory, and jobs started from the repository root find it)."""
    p = Path(path).expanduser()
    return (p if p.is_absolute() or p.exists() else ROOT / p).resolve()


def runs_path(path: str) -> Path:
    """repo_path, except that a leading runs/ means the runs root (so $PRIVTRANR_RUNS_DIR moves it)."""
    if path.startswith("runs/") and os.environ.get(RUNS_ENV):
        return runs_root() / path[len("runs/"):]
    return repo_path(path)


def public_datasets_for(dataset: str, pairs: "str | os.PathLike" = PAIRS, or_else: str = "") -> list[str]:
    """The public datasets paired with `dataset` in the pairs file (by its name, else its file's stem); `or_else`
    says in the error how else the caller accepts them."""
    path = repo_path(pairs)
    table = (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}
    key = dataset if dataset in table else Path(dataset).stem
    if key not in table:
        raise UserError(f"no public datasets for '{dataset}' in {path.name}: add '{key}: [...]' there"
                        + (f", or {or_else}" if or_else else "") + " (only public data may shape the model)")
    return list(table[key])
