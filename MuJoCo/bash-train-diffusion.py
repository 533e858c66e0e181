"""Sweep the diffusion synthesizer over sensitive datasets × ε × seeds (a front-end of MuJoCo/sweep.py's engine).

For each seed and sensitive dataset: pre-train once on its public datasets (config/diffusion/pairs.yaml), then for
each ε fine-tune with DP and sample samples.npz. Each step is a job (a train_diffuser.py subprocess logging to
<run folder>/job-<mode>.log) run on a local process pool (--workers, default all cores) or a Ray cluster
(--executor ray [--ray_address host:port]). Finished steps are skipped and unfinished ones resume from their
checkpoints, so the sweep can be re-run after an interruption; a failed step blocks only the steps after it and is
recorded in <runs_dir>/sweep_state.json. Run folders: <runs_dir>/pretrain-<public>-seed<s>,
<runs_dir>/finetune-<dataset>-eps<ε>-seed<s>/{checkpoint.pt, ledger.json, metrics.jsonl, samples.npz, samples.json}.
For whole grids with agents, baselines, fidelity and MIA, see MuJoCo/sweep.py.

  python MuJoCo/bash-train-diffusion.py --datasets ptr-maze2d-medium-dense-v0 --epsilons 1,10 --seeds 0,1
"""
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from synther.cli import parse, run  # noqa: E402
from synther.errors import UserError  # noqa: E402
from synther.sweep import Budgets, KindResources, Layout, Resources, SweepConfig, execute, plan  # noqa: E402
from synther.utils.options import comma_list  # noqa: E402


@dataclass
class DiffusionSweepConfig:
    datasets: str = "ptr-maze2d-medium-dense-v0"  # comma-separated sensitive datasets (paper: --dataset)
    epsilons: str = "1,5,10,15,20"  # comma-separated target ε values (paper: --dp_epsilon)
    seeds: str = "0"  # comma-separated seeds
    base_config: str = "config/diffusion/maze2d-quickstart.yaml"  # YAML of DiffusionConfig applied to every run (its num_samples is sampled)
    pairs: str = "config/diffusion/pairs.yaml"  # sensitive dataset -> its public datasets
    pretrain_epochs: float = 10.0  # epochs of public pre-training (paper: 10)
    finetune_epochs: float = 5.0  # epochs of DP fine-tuning (paper: 5)
    runs_dir: str = "runs/diffusion"  # where run folders go
    device: str = "auto"  # --device of every run: auto (CUDA when available), cpu or cuda
    cpus: int = 1  # CPU cores per run (its torch threads)
    gpus: float = 0.0  # GPUs per run (Ray: num_gpus)
    executor: str = "local"  # local (process pool on this machine) or ray
    ray_address: str = ""  # Ray cluster to join, host:port (empty with --executor ray: start a local Ray)
    workers: int = 0  # local: CPU slots, runs in parallel = workers / cpus (0: all cores)
    dry_run: bool = False  # print the plan without running it


def sweep_config(cfg: DiffusionSweepConfig) -> SweepConfig:
    try:
        epsilons = [float(e) for e in comma_list(cfg.epsilons)]
        seeds = [int(s) for s in comma_list(cfg.seeds)]
    except ValueError as e:
        raise UserError(f"--epsilons and --seeds must be comma-separated numbers ({e})") from None
    base = Path(cfg.base_config)
    if not (base.exists() or (Path(__file__).resolve().parents[1] / base).exists()):
        raise UserError(f"{cfg.base_config}: base config not found")
    runs = Path(cfg.runs_dir).expanduser().resolve()
    res = Resources(cpus=cfg.cpus, gpus=cfg.gpus)
    return SweepConfig(
        name="bash-train-diffusion", datasets=comma_list(cfg.datasets), pairs=cfg.pairs, methods=["privtranr"],
        epsilons=epsilons, seeds=seeds, agents=[], real_reference=False, evaluations=[],
        diffusion_config=cfg.base_config, device=cfg.device,
        budgets=Budgets(pretrain_epochs=cfg.pretrain_epochs, finetune_epochs=cfg.finetune_epochs, num_samples=0),
        resources=KindResources(pretrain=res, finetune=res, sample=res),
        layout=Layout(diffusion=str(runs), state=str(runs / "sweep_state.json")), runs_dir=str(runs.parent),
        executor=cfg.executor, ray_address=cfg.ray_address, workers=cfg.workers, dry_run=cfg.dry_run)


def main() -> None:
    cfg = sweep_config(parse(DiffusionSweepConfig, description=__doc__))
    result = execute(plan(cfg), cfg.executor, cfg.ray_address, cfg.workers, Path(cfg.layout.state), cfg.name,
                     cfg.dry_run)
    if result is not None and not result.ok:
        sys.exit(1)


if __name__ == "__main__":
    run(main)
