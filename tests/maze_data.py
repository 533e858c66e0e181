"""Generated maze2d-like datasets for tests that need a data folder."""
from pathlib import Path

from synther.data.pointmaze import MazeCollectConfig, collect_maze2d


def write_mazes(root: Path, mazes: dict[str, int], num_steps: int) -> Path:
    """Generated ptr-maze2d-<maze>-dense-v0.npz files in `root`, from a {maze name: collection seed} map."""
    for maze, seed in mazes.items():
        collect_maze2d(MazeCollectConfig(name=maze, num_steps=num_steps), seed=seed, progress=False).save(
            Path(root) / f"ptr-maze2d-{maze}-dense-v0.npz")
    return Path(root)
