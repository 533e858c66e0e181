"""Load a dataset (path or registry name), validate it and print a summary; optionally check that other datasets
share its dimensions (the public/sensitive pairing the pipeline requires).

Examples:
  python MuJoCo/inspect_data.py --dataset data/ptr-maze2d-umaze-dense-v0.npz
  python MuJoCo/inspect_data.py --dataset ptr-maze2d-medium-dense-v0 --compare_with ptr-maze2d-umaze-dense-v0
Exit code 2 with a one-line message when a dataset is missing, malformed or incompatible.
"""
import json
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from synther.cli import parse, run  # noqa: E402
from synther.data import check_compatible, dataset_info, load_dataset  # noqa: E402
from synther.errors import UserError  # noqa: E402
from synther.utils.options import comma_list  # noqa: E402


@dataclass
class InspectConfig:
    dataset: str = ""  # dataset to inspect: .npz / D4RL .hdf5 / Minari folder path, or a registry name
    compare_with: str = ""  # comma-separated datasets that must share its obs/action dimensions
    as_json: bool = False  # print the summary as JSON instead of text


def main() -> None:
    cfg = parse(InspectConfig, description=__doc__)
    if not cfg.dataset:
        raise UserError("--dataset is required (a path or a registry name)")
    ds = load_dataset(cfg.dataset)
    others = comma_list(cfg.compare_with)
    for other in others:
        check_compatible(ds, load_dataset(other))
    info = dataset_info(ds.name)
    summary = {
        **ds.metadata(),
        "reward_mean": float(ds.rewards.mean()),
        "reward_min": float(ds.rewards.min()),
        "reward_max": float(ds.rewards.max()),
        "terminals": int(ds.terminals.sum()),
        "timeouts": None if ds.timeouts is None else int(ds.timeouts.sum()),
        "registry": None if info is None else {"env": vars(info.env) if info.env else None,
                                               "score": vars(info.score) if info.score else None},
        "compatible_with": others,
    }
    if cfg.as_json:
        print(json.dumps(summary, indent=2, default=str))
        return
    print(f"{ds.name or ds.source}: {ds.size} transitions, obs_dim {ds.obs_dim}, action_dim {ds.action_dim}")
    print(f"  source: {ds.source}")
    print(f"  rewards: mean {summary['reward_mean']:.4g}, min {summary['reward_min']:.4g}, "
          f"max {summary['reward_max']:.4g}; terminals {summary['terminals']}; timeouts {summary['timeouts']}")
    if info is not None and info.score is not None:
        print(f"  score constants: min {info.score.min}, max {info.score.max} ({info.score.origin})")
    for other in others:
        print(f"  compatible with {other}")


if __name__ == "__main__":
    run(main)
