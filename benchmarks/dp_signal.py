"""Where a DP fine-tune's update goes, and how much signal one clipped record carries (issue 14's diagnostics).

Run on PUBLIC stand-ins only (a public set playing the sensitive one): the gradients read here are not DP.

1. `--finetunes a.pt,b.pt --reference nodp.pt`: how far each fine-tune moved the weights from `--checkpoint` (the
   public pre-trained model they all started from), and how much of that move lies along the move a fine-tune of
   the same data WITHOUT DP made (raw and EMA weights). A DP update that is mostly noise moves far in directions
   the non-private one never takes.
2. `--target <dataset> --draws 1,2,4,8,16`: the mean clipped gradient's component along the target's mean gradient,
   per record at clip norm C, as a function of the diffusion draws averaged in each record's loss before clipping
   (`--dp.draws_per_record`), through the engine's own ghost clipping. When every record is clipped, this is the
   signal that one step's noise σC/B competes with: a lever that raises it acts like a smaller σ. The direction is
   estimated from OTHER records with the most draws (so no record is measured against itself).

  python benchmarks/dp_signal.py --checkpoint <pre-trained.pt> --finetunes <dp.pt,...> --reference <nodp.pt>
  python benchmarks/dp_signal.py --checkpoint <pre-trained.pt> --target <public dataset> --draws 1,2,4,8,16
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from clip_bias import checkpoint_parser, draw_rows, parse_seeded  # noqa: E402
from synther.data import load_dataset  # noqa: E402
from synther.diffusion.synthesizer import load_model  # noqa: E402
from synther.privacy.dpsgd import clipping_backend  # noqa: E402


def flat_weights(path: str, ema: bool) -> torch.Tensor:
    model, _, _ = load_model(path, ema=ema)
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def print_moves(start: str, finetunes: list[str], reference: str) -> None:
    origin = flat_weights(start, ema=True)
    ref = flat_weights(reference, ema=False) - origin
    print(f"the non-private move ({reference}): norm {ref.norm():.3f}\n")
    print("| fine-tune | weights | norm of the move | cosine with the non-private move | component along it | "
          "share of the non-private move |")
    print("| --- | --- | --- | --- | --- | --- |")
    for path in finetunes:
        for ema in (False, True):
            move = flat_weights(path, ema) - origin
            along = float(move @ ref / ref.norm())
            print(f"| {Path(path).parent.name} | {'EMA' if ema else 'raw'} | {move.norm():.3f} | "
                  f"{torch.nn.functional.cosine_similarity(move, ref, dim=0):.3f} | {along:.3f} | "
                  f"{along / ref.norm():.3f} |")


def gradient(params: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in params])


def clipped_signal(model, rows: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor, k: int, clip: float,
                   direction: torch.Tensor) -> tuple[float, torch.Tensor]:
    """⟨(1/R) Σ_i clip(∇ℓ_i, C), direction⟩ over the R = len(rows)/k records whose k consecutive rows each record's
    loss averages (the engine's noise multiplicity), by the engine's ghost clipping; and the records' norms."""
    params = [p for p in model.parameters() if p.requires_grad]
    clipped = clipping_backend(model, clip, "ghost", rows_per_sample=k)
    _, norms = clipped(lambda: model.per_sample_loss(rows, sigma, noise) / k, scale=k / len(rows))
    return float(gradient(params) @ direction), norms


def print_draws(model, target: torch.Tensor, draws: list[int], records: int, clip: float,
                gen: torch.Generator) -> None:
    """Mean clipped gradient along the target's mean gradient direction, per record, for each K in `draws`."""
    params = [p for p in model.parameters() if p.requires_grad]
    most = max(draws)
    # the direction: the plain mean gradient of `records` OTHER records with `most` draws each
    x, sigma, noise = draw_rows(model, target, records * most, gen)
    model.zero_grad(set_to_none=True)
    model.per_sample_loss(x, sigma, noise).mean().backward()
    direction = gradient(params)
    direction /= direction.norm()
    # the measured records: one set, their first K draws for each K
    rows = target[torch.randint(len(target), (records,), generator=gen)].repeat_interleave(most, dim=0)
    sigma, noise = model.draw_sigma(len(rows), gen), torch.randn(rows.shape, generator=gen)
    print(f"{records} records, C = {clip}; direction from {records} other records × {most} draws\n")
    print("| draws per record K | median record gradient norm | clipped signal along the mean gradient | vs K = 1 "
          "| compute per step |")
    print("| --- | --- | --- | --- | --- |")
    first = None
    for k in draws:
        keep = (torch.arange(len(rows)) % most) < k  # each record's first k draws, kept together
        signal, norms = clipped_signal(model, rows[keep], sigma[keep], noise[keep], k, clip, direction)
        first = first or signal
        print(f"| {k} | {norms.median():.3f} | {signal:.4f} | {signal / first:.2f}× | {k / draws[0]:.0f}× |")


def main() -> None:
    ap = checkpoint_parser(__doc__)
    ap.add_argument("--finetunes", default="",
                    help="fine-tuned checkpoints (comma-separated) started from --checkpoint")
    ap.add_argument("--reference", default="", help="a fine-tune of the same data WITHOUT DP (with --finetunes)")
    ap.add_argument("--target", default="", help="a PUBLIC dataset (name or npz) standing in for the sensitive set")
    ap.add_argument("--draws", default="1,2,4,8,16", help="diffusion draws per record to compare (comma-separated)")
    ap.add_argument("--records", type=int, default=64, help="records per measurement (default 64)")
    ap.add_argument("--clip_norm", type=float, default=1.0, help="C (default 1, the configs')")
    args, gen = parse_seeded(ap)
    if not (args.finetunes and args.reference) and not args.target:
        ap.error("give --finetunes with --reference, or --target (or both)")
    if args.finetunes:
        print_moves(args.checkpoint, args.finetunes.split(","), args.reference)
    if args.target:
        model, _, _ = load_model(args.checkpoint)
        target = torch.as_tensor(load_dataset(args.target).to_vectors(), dtype=torch.float32)
        print_draws(model, target, sorted(int(k) for k in args.draws.split(",")), args.records, args.clip_norm, gen)


if __name__ == "__main__":
    main()
