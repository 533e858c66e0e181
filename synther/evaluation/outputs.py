"""Where evaluation reports go by default: the sweep's evaluation folders, never the release folder.

A release is the folder holding samples.npz + samples.json (next to its checkpoint). Fidelity and membership-
inference reports are computed from the sensitive data without DP, so they must not travel with it.
"""
from pathlib import Path


def default_evaluation_dir(artifact: str | Path, kind: str) -> Path:
    """<runs root>/evaluation/<kind>-<artifact's folder name> ($PRIVTRANR_RUNS_DIR, else runs/), as a sweep names
    it: a fine-tuning folder "finetune-<x>" is read as the method "privtranr", "privtranr-<x>"."""
    from synther.sweep import SweepConfig, layout_dirs

    folder = Path(artifact).resolve().parent.name
    name = "privtranr-" + folder.removeprefix("finetune-") if folder.startswith("finetune-") else folder
    return layout_dirs(SweepConfig())["evaluation"] / f"{kind}-{name}"
