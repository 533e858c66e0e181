"""One DP tabular-synthesis baseline run: fit smartnoise-synth's MST, AIM, DP-CTGAN or PATE-CTGAN on the sensitive
dataset's flat transition table at (--dp.epsilon, --dp.delta) and write samples.npz + samples.json (privacy ledger), the
same files the diffusion path writes, so agents, fidelity and MIA code read both the same way.

  python MuJoCo/baselines.py --method mst --dataset ptr-maze2d-umaze-dense-v0 --dp.epsilon 1 --num_samples 100000

- Sensitive data: the train part of TransitionDataset.split(0.8, --seed), like the DP fine-tune.
- Public data (--public_datasets, default config/diffusion/pairs.yaml) gives every preprocessing statistic: MST/AIM
  bin edges (--marginal.edges public_quantiles|public_range), GAN column bounds, action bounds. None is fitted on
  the sensitive data, so the whole (ε, δ) goes to the synthesizer.
- The fit runs in a separate virtualenv (smartnoise-synth needs opacus<0.15): <repo>/.baselines-venv, or
  $PRIVTRANR_BASELINES_VENV, created from requirements-baselines.txt on first use (about a minute, ~2 GB).
- Randomness: every draw inside a mechanism (noise, selections, batch membership, teacher assignment) comes from
  OS entropy that is never saved; --seed only seeds the split and post-processing (sampling rows from the fitted
  model, values inside MST/AIM bins), so a re-run with the same --seed fits a different model.
- DP-CTGAN samples each batch as its RDP accountant assumes (Poisson: every row joins independently with
  probability --gan.batch_size / rows, so batch sizes vary; gradients and noise are divided by the expected size).
- Output: runs/baselines/<method>-<dataset>-eps<ε>-seed<seed>/ ($PRIVTRANR_RUNS_DIR replaces runs/); a run whose
  samples.npz exists is skipped unless --overwrite true.
Budgets for 2 CPU cores (42 columns, 80k rows): AIM uses one round per column by default (--marginal.aim_rounds);
DP-CTGAN --gan.epochs, PATE-CTGAN --gan.pate_iterations. Options may also come from --config_path config/baselines/*.yaml.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from synther.baselines import TARGET_ALIASES, BaselineConfig, synthesize  # noqa: E402
from synther.cli import parse, run  # noqa: E402


def main() -> None:
    cfg = parse(BaselineConfig, description=__doc__, aliases=TARGET_ALIASES)
    out = synthesize(cfg)
    print(f"wrote {out}")


if __name__ == "__main__":
    run(main)
