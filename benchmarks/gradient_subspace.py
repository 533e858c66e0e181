"""How much of a dataset's clipped gradient lies in the public gradient subspace: choosing `--dp.public_subspace k`.

DP-SGD's noise has norm σC√d over a model's d coordinates; projected onto a k-dimensional subspace it keeps √(k/d)
of that (synther.privacy.projection). What the projection costs is the part of the signal outside the subspace.
This prints, for a checkpoint, the share ‖P ḡ‖/‖ḡ‖ of a stand-in dataset's mean clipped gradient ḡ that the top-k
subspace of public rows' per-sample gradients keeps, for several k, and the resulting gain in the signal-to-noise
ratio of one step, (‖P ḡ‖/‖ḡ‖)/√(k/d). Run it with a PUBLIC stand-in (`--target`), never the sensitive set: its
gradients are not DP.

  python benchmarks/gradient_subspace.py --checkpoint <pre-trained checkpoint.pt> --target <public dataset>
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from clip_bias import checkpoint_parser, draw_rows, parse_seeded  # noqa: E402
from synther.data import load_dataset  # noqa: E402
from synther.diffusion.synthesizer import load_model, public_datasets  # noqa: E402
from synther.privacy.dpsgd import clipping_backend  # noqa: E402
from synther.privacy.projection import PublicGradientSubspace  # noqa: E402


def mean_clipped_gradient(model, x, sigma, noise, clip: float, chunk: int = 1024) -> list[torch.Tensor]:
    """(1/n) Σ_i clip(∇ℓ_i, C) per parameter, by the engine's ghost-clipping backend."""
    clipped = clipping_backend(model, clip, "ghost")
    total = [torch.zeros_like(p) for p in clipped.params]
    for i in range(0, len(x), chunk):
        rows = slice(i, i + chunk)
        clipped(lambda: model.per_sample_loss(x[rows], sigma[rows], noise[rows]), scale=1.0 / len(x))
        for t, p in zip(total, clipped.params):
            t += p.grad
    return total


def main() -> None:
    ap = checkpoint_parser(__doc__)
    ap.add_argument("--target", required=True, help="a PUBLIC dataset (name or npz) standing in for the sensitive set")
    ap.add_argument("--rows", type=int, default=4096, help="target rows for the mean clipped gradient (default 4096)")
    ap.add_argument("--public_rows", type=int, default=512, help="public rows per subspace fit (default 512)")
    ap.add_argument("--ranks", default="8,32,128,256,512", help="subspace ranks k to report (comma-separated)")
    ap.add_argument("--clip_norm", type=float, default=1.0, help="C (default 1, the configs')")
    args, gen = parse_seeded(ap)
    model, _, ledger = load_model(args.checkpoint)
    recorded, public = public_datasets(ledger, args.checkpoint, "this benchmark")
    public_vectors = torch.as_tensor(np.concatenate([ds.to_vectors() for ds in public]), dtype=torch.float32)
    target = torch.as_tensor(load_dataset(args.target).to_vectors(), dtype=torch.float32)
    d = sum(p.numel() for p in model.parameters() if p.requires_grad)
    mean = mean_clipped_gradient(model, *draw_rows(model, target, args.rows, gen), args.clip_norm)
    norm = torch.sqrt(sum(g.square().sum() for g in mean))
    fit_rows = draw_rows(model, public_vectors, args.public_rows, gen)
    names = ", ".join(str(r.get("name") or r.get("source")) for r in recorded)
    print(f"{args.checkpoint}: d = {d}; target {args.target} ({args.rows} rows), mean clipped gradient norm "
          f"{norm:.4f} at C = {args.clip_norm}; subspace from {args.public_rows} rows of {names}\n")
    print("| k | public gradients' squared norm held | target's clipped gradient kept ‖Pḡ‖/‖ḡ‖ | noise kept √(k/d) | "
          "signal-to-noise gain |")
    print("| --- | --- | --- | --- | --- |")
    for k in (int(v) for v in args.ranks.split(",")):
        subspace = PublicGradientSubspace(model, k)
        held = subspace.fit(lambda: model.per_sample_loss(*fit_rows))
        for p, g in zip(subspace.params, mean):
            p.grad = g.clone()
        subspace.project_()
        kept = float(torch.sqrt(sum(p.grad.square().sum() for p in subspace.params)) / norm)
        print(f"| {k} | {held:.3f} | {kept:.3f} | {np.sqrt(k / d):.4f} | {kept / np.sqrt(k / d):.1f}× |")


if __name__ == "__main__":
    main()
