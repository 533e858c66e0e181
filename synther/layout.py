"""Where runs go: the one runs root every script, the sweep and the report share."""
import os
from pathlib import Path

RUNS_ENV = "PRIVTRANR_RUNS_DIR"


def runs_root(explicit: "str | os.PathLike" = "") -> Path:
    """`explicit` when given, else $PRIVTRANR_RUNS_DIR, else runs/ (relative to the working directory)."""
    return Path(explicit or os.environ.get(RUNS_ENV, "runs"))
