"""Opt-in Weights & Biases logging, as the paper repo, SynthER and CORL do. The run folder's JSONL files stay the
record of a run: W&B receives a copy of the same rows, and nothing at all unless --wandb.project is given.

Offline mode (the default once a project is set) writes the W&B run under <run folder>/wandb and sends nothing;
`wandb sync <that folder>` uploads it later from a machine with network. Online mode sends as it goes.
"""

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synther.errors import UserError

WANDB_MODES = ("offline", "online")


@dataclass
class WandbConfig:
    project: str = ""  # Weights & Biases project to copy the metrics to; empty: no W&B at all (the JSONL files are the record either way)
    mode: str = "offline"  # offline: write the W&B run under the run folder and send nothing (upload later with `wandb sync`); online: send as it goes
    entity: str = ""  # W&B user or team (empty: your default)
    group: str = ""  # W&B group, e.g. one per sweep


class Tracker:
    """Copies logged rows to a W&B run when `cfg.project` is set; a no-op otherwise."""

    def __init__(self, cfg: WandbConfig, run_dir: "str | os.PathLike", name: str, config: dict[str, Any]) -> None:
        self.run = None
        if not cfg.project:
            return
        if cfg.mode not in WANDB_MODES:
            raise UserError(f"unknown wandb.mode '{cfg.mode}' (choose from: {', '.join(WANDB_MODES)})")
        try:
            import wandb
        except ImportError:
            raise UserError("--wandb.project needs the wandb package (pip install wandb)") from None
        run_dir = Path(run_dir)
        # one W&B run per run folder: a resumed run appends to the same one; stacked agent seeds (one process) keep
        # one run each, open side by side
        run_id = hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:16]
        self.run = wandb.init(project=cfg.project, entity=cfg.entity or None, group=cfg.group or None, name=name,
                              config=config, dir=str(run_dir), id=run_id, resume="allow", mode=cfg.mode,
                              reinit="create_new", settings=wandb.Settings(silent=True))

    def log(self, row: dict[str, Any], step: int) -> None:
        if self.run is not None:
            self.run.log({k: v for k, v in row.items() if k != "step"}, step=step)

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
