"""Sweep the diffusion synthesizer over sensitive datasets × ε × seeds.

For each seed and sensitive dataset: pre-train once on its public datasets (config/diffusion/pairs.yaml), then for
each ε fine-tune with DP and sample samples.npz. Finished steps are skipped, unfinished ones resume, so the sweep
can be re-run after an interruption. Run folders: <runs_dir>/pretrain-<public>-seed<s>,
<runs_dir>/finetune-<dataset>-eps<ε>-seed<s>/{checkpoint.pt, ledger.json, metrics.jsonl, samples.npz, samples.json}.

  python MuJoCo/bash-train-diffusion.py --datasets ptr-maze2d-medium-dense-v0 --epsilons 1,10 --seeds 0,1
"""
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import pyrallis  # noqa: E402
import yaml  # noqa: E402

from synther.cli import parse, run  # noqa: E402
from synther.diffusion.synthesizer import DiffusionConfig, finetune, pretrain, sample  # noqa: E402
from synther.errors import UserError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class SweepConfig:
    datasets: str = "ptr-maze2d-medium-dense-v0"  # comma-separated sensitive datasets (paper: --dataset)
    epsilons: str = "1,5,10,15,20"  # comma-separated target ε values (paper: --dp_epsilon)
    seeds: str = "0"  # comma-separated seeds
    base_config: str = "config/diffusion/maze2d-quickstart.yaml"  # YAML of DiffusionConfig applied to every run
    pairs: str = "config/diffusion/pairs.yaml"  # sensitive dataset -> its public datasets
    pretrain_epochs: float = 10.0  # epochs of public pre-training (paper: 10)
    finetune_epochs: float = 5.0  # epochs of DP fine-tuning (paper: 5)
    runs_dir: str = "runs/diffusion"  # where run folders go
    dry_run: bool = False  # print the plan without running it


def _split(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def plan(cfg: SweepConfig) -> list[tuple[str, DiffusionConfig]]:
    base_path = ROOT / cfg.base_config if not Path(cfg.base_config).is_absolute() else Path(cfg.base_config)
    if not base_path.exists():
        raise UserError(f"{cfg.base_config}: base config not found")
    base = pyrallis.parse(config_class=DiffusionConfig, config_path=str(base_path), args=[])
    pairs_path = ROOT / cfg.pairs if not Path(cfg.pairs).is_absolute() else Path(cfg.pairs)
    pairs = yaml.safe_load(pairs_path.read_text()) or {}
    runs = Path(cfg.runs_dir)
    steps: list[tuple[str, DiffusionConfig]] = []
    try:
        epsilons = [float(e) for e in _split(cfg.epsilons)]
        seeds = [int(s) for s in _split(cfg.seeds)]
    except ValueError as e:
        raise UserError(f"--epsilons and --seeds must be comma-separated numbers ({e})") from None
    for seed in seeds:
        for dataset in _split(cfg.datasets):
            if dataset not in pairs:
                raise UserError(f"no public datasets for '{dataset}' in {cfg.pairs}; add a line '{dataset}: [...]'")
            public = ",".join(pairs[dataset])
            tag = "+".join(pairs[dataset])
            pre_dir = runs / f"pretrain-{tag}-seed{seed}"
            train = dataclasses.replace(base.train, epochs=cfg.pretrain_epochs)
            steps.append(("pretrain", dataclasses.replace(base, mode="pretrain", public_datasets=public, seed=seed,
                                                          run_dir=str(pre_dir), train=train)))
            for eps in epsilons:
                ft_dir = runs / f"finetune-{dataset}-eps{eps:g}-seed{seed}"
                dp = dataclasses.replace(base.dp, epsilon=eps)
                train = dataclasses.replace(base.train, epochs=cfg.finetune_epochs)
                ft = dataclasses.replace(base, mode="finetune", dataset=dataset, seed=seed, dp=dp, train=train,
                                         load_checkpoint=str(pre_dir / "checkpoint.pt"), run_dir=str(ft_dir))
                steps.append(("finetune", ft))
                steps.append(("sample", dataclasses.replace(ft, mode="sample",
                                                            load_checkpoint=str(ft_dir / "checkpoint.pt"))))
    return steps


def main() -> None:
    cfg = parse(SweepConfig, description=__doc__)
    steps = plan(cfg)
    for i, (mode, run_cfg) in enumerate(steps, 1):
        where = Path(run_cfg.run_dir)
        label = f"[{i}/{len(steps)}] {mode:<8} {where}"
        if mode == "sample" and (where / "samples.npz").exists():
            print(f"{label}: done, skipped")
            continue
        if cfg.dry_run:
            print(label)
            continue
        print(label, flush=True)
        {"pretrain": pretrain, "finetune": finetune, "sample": sample}[mode](run_cfg)


if __name__ == "__main__":
    run(main)
