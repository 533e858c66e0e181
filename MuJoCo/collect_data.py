"""Generate offline-RL datasets without any download.

  pointmaze   maze2d-like data on gymnasium-robotics PointMaze (planner + PD controller, D4RL semantics)
  locomotion  random / medium / medium-replay / full-replay data from SAC on a MuJoCo locomotion task

Outputs go to --out_dir (default $PRIVTRANR_DATA_DIR or ./data) as <name>.npz with D4RL keys plus a <name>.json
side-car recording provenance; <name> is the dataset's registry name (config/datasets.yaml), e.g.
ptr-maze2d-umaze-dense-v0. Existing outputs are not overwritten unless --overwrite true.

Examples:
  python MuJoCo/collect_data.py --generator pointmaze --maze.name medium
  python MuJoCo/collect_data.py --generator locomotion --locomotion.env Hopper-v5 --locomotion.total_steps 50000
"""

import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from synther.cli import parse, run  # noqa: E402
from synther.data.locomotion import LocomotionCollectConfig, collect_locomotion  # noqa: E402
from synther.data.pointmaze import MazeCollectConfig, collect_maze2d, dataset_name  # noqa: E402
from synther.data.registry import data_dir  # noqa: E402
from synther.errors import UserError  # noqa: E402


@dataclass
class CollectConfig:
    generator: str = "pointmaze"  # what to generate: 'pointmaze' (maze2d-like) or 'locomotion' (SAC on MuJoCo)
    out_dir: str = ""  # output folder; empty means $PRIVTRANR_DATA_DIR, else ./data
    seed: int = 0  # seeds numpy, torch and the environments
    overwrite: bool = False  # regenerate outputs that already exist (otherwise they are kept and skipped)
    progress: bool = True  # show progress bars
    maze: MazeCollectConfig = field(default_factory=MazeCollectConfig)  # options of --generator pointmaze
    locomotion: LocomotionCollectConfig = field(default_factory=LocomotionCollectConfig)  # options of --generator locomotion


def main() -> None:
    cfg = parse(CollectConfig, description=__doc__)
    out_dir = Path(cfg.out_dir) if cfg.out_dir else data_dir()
    if cfg.generator == "pointmaze":
        path = out_dir / f"{dataset_name(cfg.maze.name)}.npz"
        if path.exists() and not cfg.overwrite:
            print(f"{path} exists; keeping it (pass --overwrite true to regenerate)")
            return
        ds = collect_maze2d(cfg.maze, seed=cfg.seed, progress=cfg.progress)
        ds.save(path)
        print(f"wrote {path} ({ds.size} transitions, {ds.provenance['goals_reached']} goals reached)")
    elif cfg.generator == "locomotion":
        from synther.data.locomotion import KINDS, dataset_name as loco_name

        if cfg.overwrite:
            for kind in KINDS:
                (out_dir / f"{loco_name(cfg.locomotion.env, kind)}.npz").unlink(missing_ok=True)
        paths = collect_locomotion(cfg.locomotion, out_dir, seed=cfg.seed, progress=cfg.progress)
        for kind, path in paths.items():
            print(f"{kind:>13}: {path}")
    else:
        raise UserError(f"unknown --generator '{cfg.generator}' (choose 'pointmaze' or 'locomotion')")


if __name__ == "__main__":
    run(main)
