"""DP fine-tuning step cost vs a non-private step on the same denoiser, for each clipping backend.

Every (width, batch, mode) cell runs in its own subprocess so peak memory is that cell's alone. Reported:
seconds per step (median), peak RSS, and ratios to the non-private step of the same width and batch, all measured
in this one run. Target (issue 3): ghost ≤ 1.25× time and ≤ 1.3× peak memory of non-private.

  python benchmarks/dp_step.py                      # W ∈ {1024, 2048} × batch ∈ {128, 256}
  python benchmarks/dp_step.py --widths 1024 --batches 128 --steps 3
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DIM = 42  # halfcheetah transition vector: 2·17 + 6 + 2
MODES = ("nonprivate", "ghost", "opacus_ghost", "opacus_hooks")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def cell(width: int, batch: int, mode: str, steps: int, device: str) -> dict:
    import torch

    from synther.diffusion.denoiser import DenoiserConfig
    from synther.diffusion.edm import EDM
    from synther.diffusion.normalizer import Normalizer
    from synther.privacy.dpsgd import ClippedGradient, add_noise

    torch.manual_seed(0)
    model = EDM(DIM, Normalizer.identity(DIM), DenoiserConfig(width=width, depth=6)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.99))
    clipped = None if mode == "nonprivate" else ClippedGradient(model, 1.0, mode)
    x = torch.randn(batch, DIM, device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        if clipped is None:
            model.per_sample_loss(x).mean().backward()
        else:
            clipped(lambda: model.per_sample_loss(x))
            add_noise(clipped.params, 1.0, 1.0, batch)
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up: allocates optimizer state
    base = rss_mb()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {"width": width, "batch": batch, "mode": mode, "s_per_step": statistics.median(times),
           "peak_rss_mb": peak, "steady_rss_mb": base, "params_m": sum(p.numel() for p in model.parameters()) / 1e6}
    if device == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--batches", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per cell (after one warm-up step)")
    ap.add_argument("--max_gb", type=float, default=20.0,
                    help="skip opacus_hooks cells whose per-sample gradients alone would exceed this")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cell", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cell:
        w, b, mode = args.cell.split(":")
        print(json.dumps(cell(int(w), int(b), mode, args.steps, args.device)))
        return
    rows = []
    for w in args.widths:
        for b in args.batches:
            params = 6 * (w * w + w) + 2 * 128 * w + 4 * 128 * 128 + 2 * 42 * 128
            for mode in args.modes:
                need_gb = params * b * 4 / 2**30
                if mode == "opacus_hooks" and need_gb > args.max_gb:
                    rows.append({"width": w, "batch": b, "mode": mode,
                                 "skipped": f"per-sample gradients alone need ≈{need_gb:.0f} GB"})
                    continue
                proc = subprocess.run([sys.executable, __file__, "--cell", f"{w}:{b}:{mode}", "--steps",
                                       str(args.steps if mode != "opacus_hooks" else max(2, args.steps // 2)),
                                       "--device", args.device], capture_output=True, text=True)
                if proc.returncode != 0:
                    rows.append({"width": w, "batch": b, "mode": mode, "skipped": proc.stderr.strip()[-200:]})
                    continue
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
                print(json.dumps(rows[-1]), file=sys.stderr)
    base = {(r["width"], r["batch"]): r for r in rows if r["mode"] == "nonprivate" and "skipped" not in r}
    print(f"\n{'W':>5} {'B':>4} {'mode':<13} {'s/step':>8} {'×time':>6} {'peak MB':>9} {'×mem':>6}")
    for r in rows:
        if "skipped" in r:
            print(f"{r['width']:>5} {r['batch']:>4} {r['mode']:<13} skipped: {r['skipped']}")
            continue
        ref = base.get((r["width"], r["batch"]))
        tr = r["s_per_step"] / ref["s_per_step"] if ref else float("nan")
        mr = r["peak_rss_mb"] / ref["peak_rss_mb"] if ref else float("nan")
        print(f"{r['width']:>5} {r['batch']:>4} {r['mode']:<13} {r['s_per_step']:>8.3f} {tr:>6.2f} "
              f"{r['peak_rss_mb']:>9.0f} {mr:>6.2f}")


if __name__ == "__main__":
    main()
