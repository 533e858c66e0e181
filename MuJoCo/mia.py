"""Membership-inference attack on a fine-tuned diffusion model, the canary privacy audit, and the paper's MIA
experiment.

  --mode attack      attack --checkpoint (a fine-tuned model) with its own split: members = fine-tuning rows,
                     non-members = held-out rows. Writes <out_dir>/mia.json (AUC, TPR at 0.1/1/10% FPR, bootstrap
                     intervals, accountant ε) and mia_roc.png. --audit true also repeats that fine-tuning with
                     canaries inserted and writes audit.json: an empirical lower bound on ε beside the accountant's
                     and the largest bound --canaries allow (≈4.6 for 1000).
  --mode experiment  PrivORL's setup: from a --pretrained checkpoint, fine-tune on --members records of
                     --dataset (as many held out) without DP (long) and with DP at each --epsilons, attack all,
                     print one table (and audit each with --audit true). Finished runs are reused.
  --mode audit_dpsgd white-box audit of the DP-SGD step itself (no data, no checkpoint): gradient canaries, every
                     noisy update observed, on the real clipping, sampling and noise code, calibrated to each
                     --epsilons (default 1,2,4) and --dpsgd.* (q, steps, canaries, ...). Writes
                     <out_dir>/audit_dpsgd.json: accountant ε, lower bound, the largest bound attainable with that
                     many canaries, and the setup. About 12 s per ε on one core with the default 2M canaries.

The attack scores a record by minus its EDM denoising loss at σ ∈ --sigmas, averaged over --draws fixed noise
draws. It reads the sensitive data: the results are for the data holder and are not themselves private, so by
default they go under <runs root>/evaluation/, never into the checkpoint's folder, where the samples are released.

  python MuJoCo/mia.py --checkpoint runs/diffusion/finetune-ptr-maze2d-medium-dense-v0-eps10-seed0/checkpoint.pt
  python MuJoCo/mia.py --mode experiment --dataset ptr-maze2d-medium-dense-v0 --epsilons 1,10 \\
      --pretrained runs/diffusion/pretrain-...-seed0/checkpoint.pt --out_dir runs/mia/maze2d-medium
  python MuJoCo/mia.py --mode audit_dpsgd --epsilons 1,2,4 --dpsgd.sample_rate 0.5 --dpsgd.steps 10
"""
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import pyrallis  # noqa: E402

from synther.cli import parse, run  # noqa: E402
from synther.diffusion.synthesizer import DiffusionConfig  # noqa: E402
from synther.errors import UserError  # noqa: E402
from synther.layout import repo_path, runs_root  # noqa: E402
from synther.privacy.whitebox_audit import WhiteboxSetup, audit_dpsgd, summary_table  # noqa: E402
from synther.utils.io import atomic_write_json  # noqa: E402
from synther.utils.locks import FolderLock  # noqa: E402
from synther.evaluation.mia import (AttackSettings, attack_checkpoint, finetune_config, format_table,  # noqa: E402
                                    run_audit, run_experiment, write_result)
from synther.evaluation.outputs import default_evaluation_dir  # noqa: E402
from synther.utils.options import comma_list  # noqa: E402


@dataclass
class MIAConfig:
    mode: str = "attack"  # attack | experiment | audit_dpsgd
    checkpoint: str = ""  # attack: the fine-tuned checkpoint to attack
    dataset: str = ""  # attack: the sensitive dataset (default: the one recorded in the checkpoint); experiment: required
    out_dir: str = ""  # default: attack <runs root>/evaluation/mia-<checkpoint folder> (never the release folder); experiment runs/mia/<dataset>-seed<seed>; audit_dpsgd <runs root>/mia/audit-dpsgd-seed<seed>
    members: int = 1000  # members and non-members attacked (paper: 1000 each)
    sigmas: str = "0.10,0.11,0.12,0.13"  # fixed noise levels σ of the loss score (paper: 0.10-0.13)
    draws: int = 64  # noise draws averaged per record and σ (paper: 64)
    bootstrap: int = 1000  # bootstrap resamples for the confidence intervals (0: none)
    audit: bool = False  # also run the one-run canary audit (a second fine-tuning run with canaries)
    canaries: int = 1000  # audit (attack and experiment): canaries, each inserted with probability 1/2
    canary_radius: float = 2.0  # audit: canary distance from the public mean, in public standard deviations per dimension
    confidence: float = 0.95  # audit and audit_dpsgd: confidence of the ε lower bound
    pretrained: str = ""  # experiment: the pre-trained (public) checkpoint to fine-tune from (alias --load_checkpoint)
    base_config: str = "config/diffusion/maze2d-quickstart.yaml"  # experiment: DiffusionConfig YAML for the fine-tuning runs
    epsilons: str = ""  # experiment: ε of the DP runs (default 1,10); audit_dpsgd: ε the audited DP-SGD is calibrated to (default 1,2,4)
    nodp_epochs: float = 1000.0  # experiment: epochs of the non-private run (long, so it over-fits as in the paper)
    seed: int = 0  # noise draws, member sampling, canaries; experiment: also the split and fine-tuning seed
    dpsgd: WhiteboxSetup = field(default_factory=WhiteboxSetup)  # audit_dpsgd: the audited DP-SGD and its canaries
    device: str = "auto"  # auto (CUDA when available), cpu or cuda
    progress: bool = True  # progress bars


def _floats(spec: str, flag: str) -> tuple[float, ...]:
    try:
        return tuple(float(s) for s in comma_list(spec))
    except ValueError:
        raise UserError(f"--{flag} must be comma-separated numbers, got '{spec}'") from None


def main() -> None:
    cfg = parse(MIAConfig, description=__doc__, aliases={"--load_checkpoint": "--pretrained"})
    sigmas = _floats(cfg.sigmas, "sigmas")
    if not sigmas or min(sigmas) <= 0:
        raise UserError(f"--sigmas must be positive noise levels, got '{cfg.sigmas}'")
    if cfg.members < 2 or cfg.draws < 1 or cfg.bootstrap < 0:
        raise UserError("--members must be ≥ 2, --draws ≥ 1 and --bootstrap ≥ 0")
    settings = AttackSettings(sigmas=sigmas, draws=cfg.draws, seed=cfg.seed)
    if cfg.mode == "attack":
        if not cfg.checkpoint:
            raise UserError("--mode attack needs --checkpoint (a fine-tuned checkpoint.pt)")
        out_dir = Path(cfg.out_dir) if cfg.out_dir else default_evaluation_dir(cfg.checkpoint, "mia")
        with FolderLock(out_dir, what="output folder"):
            result = attack_checkpoint(cfg.checkpoint, cfg.members, settings, cfg.bootstrap, cfg.device, cfg.dataset,
                                       cfg.progress)
            result["label"] = Path(cfg.checkpoint).parent.name
            if cfg.audit:
                ft = finetune_config(cfg.checkpoint)
                if cfg.dataset:
                    ft.dataset = cfg.dataset
                ft.device = cfg.device
                result["audit"] = run_audit(ft, out_dir, cfg.canaries, cfg.canary_radius, cfg.confidence, settings,
                                            cfg.progress)
            path = write_result(result, out_dir)
        print(format_table([result]))
        print(f"wrote {path}")
    elif cfg.mode == "experiment":
        if not cfg.dataset or not cfg.pretrained:
            raise UserError("--mode experiment needs --dataset (sensitive) and --pretrained (a public pre-trained checkpoint)")
        base_path = repo_path(cfg.base_config)
        if not base_path.exists():
            raise UserError(f"{cfg.base_config}: base config not found")
        base = pyrallis.parse(config_class=DiffusionConfig, config_path=str(base_path), args=[])
        base.seed, base.device = cfg.seed, cfg.device
        out_dir = Path(cfg.out_dir) if cfg.out_dir else Path("runs/mia") / f"{Path(cfg.dataset).stem}-seed{cfg.seed}"
        epsilons = _floats(cfg.epsilons or "1,10", "epsilons")
        with FolderLock(out_dir, what="output folder"):  # its fine-tunes lock their own sub-folders too
            rows = run_experiment(base, cfg.pretrained, cfg.dataset, out_dir, cfg.members, epsilons,
                                  cfg.nodp_epochs, settings, cfg.bootstrap, cfg.audit, cfg.canaries,
                                  cfg.canary_radius, cfg.confidence, cfg.progress)
        print(format_table(rows))
        print(f"wrote {out_dir / 'mia_experiment.md'}")
    elif cfg.mode == "audit_dpsgd":
        epsilons = _floats(cfg.epsilons or "1,2,4", "epsilons")
        runs = runs_root()
        out_dir = Path(cfg.out_dir) if cfg.out_dir else runs / "mia" / f"audit-dpsgd-seed{cfg.seed}"
        results = []
        with FolderLock(out_dir, what="output folder"):
            for eps in epsilons:
                results.append(audit_dpsgd(eps, cfg.dpsgd, cfg.confidence, cfg.seed))
                print(f"ε = {eps:g}: lower bound {results[-1]['epsilon_lower_bound']:.3f} "
                      f"in {results[-1]['seconds']:.1f}s", flush=True)
            atomic_write_json(out_dir / "audit_dpsgd.json", {"results": results})
        print(summary_table(results))
        print(f"wrote {out_dir / 'audit_dpsgd.json'}")
    else:
        raise UserError(f"unknown --mode '{cfg.mode}' (choose from: attack, experiment, audit_dpsgd)")


if __name__ == "__main__":
    run(main)
