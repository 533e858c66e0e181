"""How per-sample clipping re-weights records: per-record gradient norms of the EDM loss, by reward and noise level.

DP-SGD clips each record's gradient to norm C. When every norm exceeds C (the fine-tuning runs log a clipped
fraction of 1.0), a record's pull on the model becomes C·g/‖g‖: records whose gradients are large — rare ones the
model fits badly — lose weight against the bulk in proportion to their norm. This prints, for a checkpoint and a
dataset, the norms grouped by reward quantile and by the training noise level σ, and each group's weight after
clipping relative to the same group without clipping (kept = E[min(‖g‖, C)] / E[‖g‖], then relative to the
lowest-reward group). Run it on PUBLIC data: the norms of sensitive records are not DP.

  python benchmarks/clip_bias.py --checkpoint <pre-trained checkpoint.pt> --data <public dataset or npz>
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from synther.data import load_dataset  # noqa: E402
from synther.diffusion.synthesizer import load_model  # noqa: E402
from synther.privacy.dpsgd import clipping_backend  # noqa: E402


def per_record_norms(model, x: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor, chunk: int = 1024
                     ) -> torch.Tensor:
    """‖∇θ ℓ_i‖ of each row's EDM loss at the given (σ, noise) draw: the norms DP-SGD's clipping acts on, from the
    engine's own ghost-clipping backend (its clipped sum, left in p.grad, is discarded)."""
    norms_of = clipping_backend(model, 1.0, "ghost")
    out = []
    for i in range(0, len(x), chunk):
        rows = slice(i, i + chunk)
        out.append(norms_of(lambda: model.per_sample_loss(x[rows], sigma[rows], noise[rows]))[1])
    model.zero_grad(set_to_none=True)
    return torch.cat(out)


def draw_rows(model, vectors: torch.Tensor, rows: int, gen: torch.Generator
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`rows` random rows of `vectors` with one training (σ, noise) draw each."""
    x = vectors[torch.randint(len(vectors), (rows,), generator=gen)]
    return x, model.draw_sigma(rows, gen), torch.randn(x.shape, generator=gen)


def checkpoint_parser(doc: str) -> argparse.ArgumentParser:
    """A benchmark's parser: its docstring as help, and the --checkpoint it reads."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="a diffusion checkpoint (its EMA weights are used)")
    return ap


def parse_seeded(ap: argparse.ArgumentParser) -> tuple[argparse.Namespace, torch.Generator]:
    """Add --seed and --threads to `ap`, parse, set torch's threads; returns the arguments and a generator seeded
    for the rows and draws (public data only)."""
    ap.add_argument("--seed", type=int, default=0, help="seeds the rows and the (σ, noise) draws (public data only)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    return args, torch.Generator().manual_seed(args.seed)


def weight_kept(groups: list[np.ndarray], norms: np.ndarray, clip: float) -> list[float]:
    """Per group (a boolean mask over rows): E[min(‖g‖, C)] / E[‖g‖], the share of its summed gradient magnitude
    that survives clipping."""
    return [float(np.minimum(norms[m], clip).mean() / norms[m].mean()) for m in groups]


def table(name: str, groups: list[tuple[str, np.ndarray]], norms: np.ndarray, clip: float) -> None:
    print(f"\n| {name} | rows | mean ‖g‖ | median ‖g‖ | clipped | kept after clipping | kept vs first group |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    groups = [(label, mask) for label, mask in groups if mask.sum() >= 10]
    kept = weight_kept([mask for _, mask in groups], norms, clip)
    for (label, mask), k in zip(groups, kept):
        g = norms[mask]
        print(f"| {label} | {mask.sum()} | {g.mean():.2f} | {np.median(g):.2f} | {(g > clip).mean():.2f} | "
              f"{k:.3f} | {k / kept[0]:.2f} |")


def main() -> None:
    ap = checkpoint_parser(__doc__)
    ap.add_argument("--data", required=True, help="a PUBLIC dataset name or npz file, in the checkpoint's space")
    ap.add_argument("--rows", type=int, default=4096, help="rows drawn at random (default 4096)")
    ap.add_argument("--clip_norm", type=float, default=1.0, help="C to evaluate (default 1, the configs')")
    args, gen = parse_seeded(ap)
    model, _, _ = load_model(args.checkpoint)
    data = load_dataset(args.data)
    vectors = torch.as_tensor(data.to_vectors(), dtype=torch.float32)
    x, sigma, noise = draw_rows(model, vectors, args.rows, gen)
    norms = per_record_norms(model, x, sigma, noise).numpy()
    rewards, s = x[:, data.layout.reward].numpy(), sigma.numpy()
    print(f"{args.checkpoint} on {args.data}: {args.rows} rows, one (σ, noise) draw each, C = {args.clip_norm}; "
          f"mean ‖g‖ {norms.mean():.2f}, clipped {(norms > args.clip_norm).mean():.2f}")
    percents = [0, 50, 80, 90, 95, 100]
    q = np.quantile(rewards, np.asarray(percents) / 100)
    reward_groups = []
    for lo, hi, a, b in zip(percents[:-1], percents[1:], q[:-1], q[1:]):
        upper = rewards <= b if hi == 100 else rewards < b  # the top group keeps the maximum
        reward_groups.append((f"r in q{lo}–q{hi} [{a:.2f}, {b:.2f}]", (rewards >= a) & upper))
    table("reward quantile", reward_groups, norms, args.clip_norm)
    edges = [0, 0.02, 0.1, 0.3, 1, 3, np.inf]
    table("noise level σ", [(f"σ in [{a}, {b})", (s >= a) & (s < b)) for a, b in zip(edges[:-1], edges[1:])],
          norms, args.clip_norm)


if __name__ == "__main__":
    main()
