"""Generated maze2d-like datasets for tests: one shared generator call per (maze, size, seed) in a test process."""
from functools import lru_cache
from pathlib import Path

from synther.data.dataset import TransitionDataset
from synther.data.pointmaze import MazeCollectConfig, collect_maze2d


@lru_cache(maxsize=None)
def shared_maze(name: str = "umaze", num_steps: int = 1000, seed: int = 0) -> TransitionDataset:
    """A generated maze2d-like dataset, shared by every test that asks for the same one (do not modify it in place:
    take copies, as `arrays()[k][idx]` or `x + shift` do)."""
    return collect_maze2d(MazeCollectConfig(name=name, num_steps=num_steps), seed=seed, progress=False)


def write_mazes(root: Path, mazes: dict[str, int], num_steps: int) -> Path:
    """Generated ptr-maze2d-<maze>-dense-v0.npz files in `root`, from a {maze name: collection seed} map."""
    for name, seed in mazes.items():
        shared_maze(name, num_steps, seed).save(Path(root) / f"ptr-maze2d-{name}-dense-v0.npz")
    return Path(root)
