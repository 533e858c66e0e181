"""Sampler speed and fidelity on one trained model, against the paper's sampler (stochastic Heun, 128 steps).

For each sampler: transitions/s, network evaluations per sample, marginal score (1 − KS, DESIGN.md) against the
real training data, and the speed-up / score difference relative to the paper's sampler, all in this one run.
Target (issue 3): ≥ 8× faster at a marginal score within 0.005.

  python benchmarks/sampling.py                              # trains a small maze2d model first (~1 min)
  python benchmarks/sampling.py --checkpoint runs/diffusion/<run>/checkpoint.pt --data <dataset>

--precision true instead times the quickstart's sampler (stochastic Heun, 64 steps) with the denoiser's products in
fp32 against bf16 (--sampler.precision), in --rounds alternating blocks of --n rows from the same seeds, and prints
each one's rows/s, the ratio and both marginal scores.
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from synther.data import load_dataset  # noqa: E402
from synther.data.pointmaze import MazeCollectConfig, collect_maze2d  # noqa: E402
from synther.diffusion import Synthesizer  # noqa: E402
from synther.diffusion.edm import PAPER_SAMPLER, SamplerConfig, network_evaluations  # noqa: E402
from synther.diffusion.synthesizer import DiffusionConfig, pretrain  # noqa: E402
from synther.diffusion.trainer import TrainConfig  # noqa: E402
from synther.evaluation.fidelity import marginal_score  # noqa: E402

CANDIDATES = [SamplerConfig(name="dpm2m", steps=s) for s in (12, 16, 24, 32)] + \
             [SamplerConfig(name="heun", steps=s) for s in (8, 16)] + [SamplerConfig(name="euler", steps=32)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="trained checkpoint; default: train a small maze2d model now")
    ap.add_argument("--data", help="real data to score against (default: the data the model was trained on)")
    ap.add_argument("--n", type=int, default=50_000, help="transitions per sampler")
    ap.add_argument("--train_steps", type=int, default=4000)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--precision", type=lambda v: v.lower() in ("1", "true", "yes"), default=False,
                    help="compare fp32 with bf16 products on the quickstart's sampler instead")
    ap.add_argument("--rounds", type=int, default=3, help="--precision: alternating blocks of each")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-sampling-"))
    if args.checkpoint:
        ckpt, data = Path(args.checkpoint), args.data
    else:
        os.environ["PRIVTRANR_DATA_DIR"] = str(work)
        ds = collect_maze2d(MazeCollectConfig(name="medium", num_steps=200_000), seed=0, progress=False)
        data = str(ds.save(work / "ptr-maze2d-medium-dense-v0.npz"))
        t = time.perf_counter()
        ckpt = pretrain(DiffusionConfig(mode="pretrain", public_datasets=data, run_dir=str(work / "model"),
                                        train=TrainConfig(max_steps=args.train_steps, batch_size=256), progress=False))
        print(f"trained cpu-small model for {args.train_steps} steps in {time.perf_counter() - t:.0f}s")
    real = load_dataset(data).to_vectors()
    syn = Synthesizer.load(ckpt, device="auto")
    if args.precision:
        compare_precisions(syn, real, args.n, args.rounds)
        return
    rows = []
    for cfg in [PAPER_SAMPLER, *CANDIDATES]:
        t = time.perf_counter()
        x = syn.sample(args.n, cfg, batch_size=args.n, seed=1).to_vectors()
        dt = time.perf_counter() - t
        rows.append((cfg, args.n / dt, marginal_score(real, x)))
        print(f"{cfg.name}:{cfg.steps} done in {dt:.1f}s", file=sys.stderr)
    ref_rate, ref_score = rows[0][1], rows[0][2]
    print(f"\n{'sampler':<22} {'NFE':>4} {'rows/s':>9} {'speed-up':>8} {'marginal':>9} {'Δ vs paper':>10}")
    for cfg, rate, score in rows:
        print(f"{cfg.name + ':' + str(cfg.steps):<22} {network_evaluations(cfg):>4} {rate:>9.0f} "
              f"{rate / ref_rate:>7.1f}× {score:>9.4f} {score - ref_score:>+10.4f}")


def compare_precisions(syn: Synthesizer, real, n: int, rounds: int) -> None:
    """fp32 and bf16 blocks alternate, so a drift of the machine's speed hits both alike; block r of each draws
    from seed r."""
    seconds, scores = {"fp32": 0.0, "bf16": 0.0}, {"fp32": [], "bf16": []}
    for r in range(rounds):
        for precision in seconds:
            cfg = SamplerConfig(name="stochastic_heun", steps=64, precision=precision)
            t = time.perf_counter()
            x = syn.sample(n, cfg, seed=r).to_vectors()
            seconds[precision] += time.perf_counter() - t
            scores[precision].append(marginal_score(real, x))
            print(f"round {r} {precision}: {n} rows", file=sys.stderr)
    rate = {p: rounds * n / s for p, s in seconds.items()}
    for p in seconds:
        print(f"stochastic_heun:64 {p}: {rate[p]:.0f} rows/s, marginal {sum(scores[p]) / rounds:.4f}")
    print(f"bf16 / fp32 speed: {rate['bf16'] / rate['fp32']:.2f}×")


if __name__ == "__main__":
    main()
