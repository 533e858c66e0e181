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
from torch.func import functional_call, grad, vmap  # noqa: E402

from synther.data import load_dataset  # noqa: E402
from synther.diffusion.synthesizer import load_model  # noqa: E402


def per_record_norms(model, x: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor, chunk: int = 256
                     ) -> torch.Tensor:
    """‖∇θ ℓ_i‖ of each row's EDM loss at the given (σ, noise) draw."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, xi, si, ni):
        return functional_call(model, p, (xi[None], si[None], ni[None])).sum()

    per_row = vmap(grad(loss), in_dims=(None, 0, 0, 0))
    out = []
    for i in range(0, len(x), chunk):
        g = per_row(params, x[i:i + chunk], sigma[i:i + chunk], noise[i:i + chunk])
        out.append(torch.sqrt(sum(v.flatten(1).pow(2).sum(1) for v in g.values())))
    return torch.cat(out)


class EDMLoss(torch.nn.Module):
    """The EDM model as a module of (rows, σ, noise) → per-row losses, for torch.func."""

    def __init__(self, edm) -> None:
        super().__init__()
        self.edm = edm

    def forward(self, x, sigma, noise):
        return self.edm.per_sample_loss(x, sigma, noise)


def table(name: str, groups: list[tuple[str, np.ndarray]], norms: np.ndarray, clip: float) -> None:
    print(f"\n| {name} | rows | mean ‖g‖ | median ‖g‖ | clipped | kept after clipping | kept vs first group |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    base = None
    for label, mask in groups:
        if mask.sum() < 10:
            continue
        g = norms[mask]
        kept = np.minimum(g, clip).mean() / g.mean()
        base = kept if base is None else base
        print(f"| {label} | {mask.sum()} | {g.mean():.2f} | {np.median(g):.2f} | {(g > clip).mean():.2f} | "
              f"{kept:.3f} | {kept / base:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="a diffusion checkpoint (its EMA weights are used)")
    ap.add_argument("--data", required=True, help="a PUBLIC dataset name or npz file, in the checkpoint's space")
    ap.add_argument("--rows", type=int, default=4096, help="rows drawn at random (default 4096)")
    ap.add_argument("--clip_norm", type=float, default=1.0, help="C to evaluate (default 1, the configs')")
    ap.add_argument("--seed", type=int, default=0, help="seeds the rows and the (σ, noise) draws (public data only)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    model, _, _ = load_model(args.checkpoint)
    data = load_dataset(args.data)
    vectors = torch.as_tensor(data.to_vectors(), dtype=torch.float32)
    x = vectors[torch.randint(len(vectors), (args.rows,), generator=gen)]
    cfg = model.cfg
    sigma = (torch.randn(args.rows, generator=gen) * cfg.p_std + cfg.p_mean).exp()
    noise = torch.randn(x.shape, generator=gen)
    norms = per_record_norms(EDMLoss(model), x, sigma, noise).numpy()
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
