"""Where a fine-tune falls short: the denoising error of several checkpoints at fixed noise levels σ, on one dataset.

For each σ every checkpoint denoises the same rows with the same noise; the table gives the mean squared error of
D(x + σn; σ) against x in the normalized space (the EDM loss without its weight λ(σ)). With the public pre-trained
model first and a reference (e.g. the same data fine-tuned without DP) last, each checkpoint in between also gets
its share of the reference's improvement over the pre-trained model, per σ: 1 means it learned what the
non-private fine-tune learned at that noise level, 0 nothing, below 0 that it got worse than where it started.

Run it on PUBLIC data (a public stand-in for the sensitive set): these errors are not DP.

  python benchmarks/loss_by_noise.py --data <public dataset or npz> \\
      --checkpoints <pre-trained.pt>,<DP fine-tune.pt>,<non-private fine-tune.pt>
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from synther.data import load_dataset  # noqa: E402
from synther.diffusion.synthesizer import load_model  # noqa: E402

LEVELS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


@torch.no_grad()
def denoising_error(model, x_raw: torch.Tensor, sigmas: tuple[float, ...], noise: torch.Tensor) -> np.ndarray:
    """Mean squared error of D(x + σ·noise; σ) against x, normalized space, one value per σ: the model's own EDM
    loss with its weight λ(σ) = (σ² + σ_d²)/(σσ_d)² divided out."""
    sd = model.cfg.sigma_data
    return np.asarray([float(model.per_sample_loss(x_raw, torch.full((len(x_raw),), float(s)), noise).mean())
                       * (s * sd) ** 2 / (s**2 + sd**2) for s in sigmas])


def gain_shares(errors: np.ndarray) -> np.ndarray:
    """errors (checkpoints, levels), first row the starting point, last the reference -> each row's improvement
    over the first as a share of the last's, per level."""
    return (errors[0] - errors) / (errors[0] - errors[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoints", required=True,
                    help="comma-separated diffusion checkpoints (EMA weights): the pre-trained model first, the "
                         "reference last")
    ap.add_argument("--data", required=True, help="a PUBLIC dataset name or npz file, in the checkpoints' space")
    ap.add_argument("--rows", type=int, default=8192, help="rows drawn at random (default 8192)")
    ap.add_argument("--seed", type=int, default=0, help="seeds the rows and the noise")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    paths = [p for p in args.checkpoints.split(",") if p]
    if len(paths) < 2:
        ap.error("--checkpoints needs at least two checkpoints (the pre-trained model and a reference)")
    ds = load_dataset(args.data)
    rng = np.random.default_rng(args.seed)
    rows = rng.permutation(ds.size)[:args.rows]
    x = torch.as_tensor(ds.to_vectors()[rows], dtype=torch.float32)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(args.seed))
    errors = np.stack([denoising_error(load_model(p, "cpu")[0], x, LEVELS, noise) for p in paths])
    shares = gain_shares(errors)
    print(f"{args.data}: {len(x)} rows; mean squared denoising error per σ (normalized space); in brackets the share "
          f"of the last checkpoint's gain over the first")
    print("| checkpoint | " + " | ".join(f"σ={s:g}" for s in LEVELS) + " |")
    print("|---|" + "---|" * len(LEVELS))
    for i, p in enumerate(paths):
        cells = [f"{e:.2e}" + (f" [{g:.2f}]" if 0 < i < len(paths) - 1 else "") for e, g in zip(errors[i], shares[i])]
        print(f"| {Path(p).parent.name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
