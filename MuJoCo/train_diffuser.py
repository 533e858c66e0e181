"""Train the diffusion synthesizer and sample from it.

  --mode pretrain   EDM on the union of public datasets (no privacy needed; normalizer from public data)
  --mode finetune   DP-SGD on the sensitive dataset to (--dp.epsilon, --dp.delta), from --checkpoint
  --mode sample     --num_samples transitions from --checkpoint to samples.npz (+ samples.json ledger)

Each run writes checkpoint.pt, ledger.json and metrics.jsonl into its run folder and resumes if restarted.
Options can also come from YAML: --config_path config/diffusion/maze2d-quickstart.yaml.

Example (maze2d-like, CPU, minutes):
  python MuJoCo/train_diffuser.py --mode pretrain --public_datasets ptr-maze2d-open-dense-v0,ptr-maze2d-umaze-dense-v0
  python MuJoCo/train_diffuser.py --mode finetune --dataset ptr-maze2d-medium-dense-v0 --dp.epsilon 10 \\
      --checkpoint runs/diffusion/pretrain-ptr-maze2d-open-dense-v0+ptr-maze2d-umaze-dense-v0-seed0/checkpoint.pt
  python MuJoCo/train_diffuser.py --mode sample --checkpoint runs/diffusion/finetune-...-eps10-seed0/checkpoint.pt
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from synther.cli import parse, run  # noqa: E402
from synther.diffusion.synthesizer import DIFFUSION_ALIASES, DiffusionConfig, finetune, pretrain, sample  # noqa: E402
from synther.errors import UserError  # noqa: E402


def main() -> None:
    cfg = parse(DiffusionConfig, description=__doc__, aliases=DIFFUSION_ALIASES)
    modes = {"pretrain": pretrain, "finetune": finetune, "sample": sample}
    if cfg.mode not in modes:
        raise UserError(f"unknown --mode '{cfg.mode}' (choose from: {', '.join(modes)})")
    out = modes[cfg.mode](cfg)
    print(f"wrote {out}")
    ledger = out.parent / "ledger.json"
    if cfg.mode == "finetune" and ledger.exists():
        import json

        print(json.loads(ledger.read_text())["guarantee"])


if __name__ == "__main__":
    run(main)
