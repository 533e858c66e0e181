"""DP fine-tuning step cost vs a non-private step on the same denoiser, for each clipping backend.

Step times come from one process per (width, batch) that runs the modes in alternating blocks of steps, so drift
in machine speed hits them alike (median per mode), with only the running mode's model in memory; peak memory
comes from one process per mode, so it is that mode's alone. Ratios are to the non-private step of the same
width and batch, all measured in this one run. Every mode uses the trainer's optimizer (fused AdamW) and noise
generator (--noise_generator). Target (issue 3): ghost ≤ 1.25× time and ≤ 1.3× peak memory of non-private.

  python benchmarks/dp_step.py                      # W ∈ {1024, 2048} × batch ∈ {128, 256}
  python benchmarks/dp_step.py --widths 1024 --batches 128 --steps 3
"""
import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DIM = 42  # halfcheetah transition vector: 2·17 + 6 + 2
MODES = ("nonprivate", "ghost", "opacus_ghost", "opacus_hooks")


def make_step(width: int, batch: int, mode: str, device: str, noise_generator: str = "auto"):
    import torch

    from synther.diffusion.denoiser import DenoiserConfig
    from synther.diffusion.edm import EDM
    from synther.diffusion.normalizer import Normalizer
    from synther.privacy.dpsgd import GaussianNoise, clipping_backend
    from synther.utils.optim import fused_optimizer

    torch.manual_seed(0)
    model = EDM(DIM, Normalizer.identity(DIM), DenoiserConfig(width=width, depth=6)).to(device)
    opt = fused_optimizer(torch.optim.AdamW, model.parameters(), lr=3e-4, betas=(0.9, 0.99))  # as the trainer
    clipped = None if mode == "nonprivate" else clipping_backend(model, 1.0, mode)
    noise = None if clipped is None else GaussianNoise(clipped.params, generator=noise_generator)
    x = torch.randn(batch, DIM, device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        if clipped is None:
            model.per_sample_loss(x).mean().backward()
        else:
            # σ = 1, C = 1, expected batch = batch; the trainer's call
            clipped(lambda: model.per_sample_loss(x), scale=1.0 / batch, noise=noise, noise_std=1.0 / batch)
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()

    return step, sum(p.numel() for p in model.parameters()) / 1e6


def memory_cell(width: int, batch: int, mode: str, steps: int, device: str, noise_generator: str) -> dict:
    """Peak RSS of a process that only ever runs this one mode."""
    import torch

    step, params_m = make_step(width, batch, mode, device, noise_generator)
    step()  # warm-up: allocates optimizer state
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(steps):
        step()
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "params_m": params_m}
    if device == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def timing_cell(width: int, batch: int, modes: list[str], steps: int, device: str, noise_generator: str,
                block: int = 5) -> dict:
    """Median step time per mode. Modes alternate in blocks of `block` steps, so machine-speed drift hits all
    alike, and only the running mode's model exists (built afresh, 2 warm-up steps), so each step sees the memory
    and cache of a real training run rather than sharing them with the other modes' models and optimizer states."""
    import gc

    times: dict[str, list[float]] = {mode: [] for mode in modes}
    block = min(block, steps)
    for _ in range(-(-steps // block)):
        for mode in modes:
            step = make_step(width, batch, mode, device, noise_generator)[0]
            for _ in range(1 if mode == "opacus_hooks" else 2):  # warm-up (hooks: 5-20 s a step)
                step()
            for _ in range(block):
                t = time.perf_counter()
                step()
                times[mode].append(time.perf_counter() - t)
            del step
            gc.collect()
    return {mode: statistics.median(ts) for mode, ts in times.items()}


def _child(args: list[str]) -> dict | str:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        return "killed by the OS (out of memory?)" if proc.returncode < 0 else \
            (proc.stderr.strip().splitlines() or ["failed"])[-1][-200:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--batches", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--steps", type=int, default=15,
                    help="timed steps per mode, in alternating blocks of 5 (opacus_hooks: 2 steps alone)")
    ap.add_argument("--max_gb", type=float, default=20.0,
                    help="skip opacus_hooks cells whose per-sample gradients alone would exceed this")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--noise_generator", default="auto", choices=("auto", "philox", "torch"),
                    help="DP noise source (torch: torch's own generator, the cost before our Philox kernel)")
    ap.add_argument("--memory_cell", help=argparse.SUPPRESS)
    ap.add_argument("--timing_cell", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_cell:
        w, b, mode = args.memory_cell.split(":")
        print(json.dumps(memory_cell(int(w), int(b), mode, 2, args.device, args.noise_generator)))
        return
    if args.timing_cell:
        w, b, modes = args.timing_cell.split(":")
        print(json.dumps(timing_cell(int(w), int(b), modes.split(","), args.steps, args.device,
                                     args.noise_generator)))
        return
    if "nonprivate" not in args.modes:
        args.modes = ["nonprivate", *args.modes]
    common = ["--device", args.device, "--noise_generator", args.noise_generator]
    print(f"{'W':>5} {'B':>4} {'mode':<13} {'s/step':>8} {'×time':>6} {'peak MB':>9} {'×mem':>6}")
    for w in args.widths:
        for b in args.batches:
            params = 6 * (w * w + w) + 2 * 128 * w + 4 * 128 * 128 + 2 * DIM * 128
            hooks_gb = params * b * 4 / 2**30
            fast = [m for m in args.modes if m != "opacus_hooks"]
            times = _child(["--timing_cell", f"{w}:{b}:{','.join(fast)}", "--steps", str(args.steps), *common])
            if "opacus_hooks" in args.modes and hooks_gb <= args.max_gb:
                hooks = _child(["--timing_cell", f"{w}:{b}:opacus_hooks", "--steps", "2", *common])
                if isinstance(times, dict) and isinstance(hooks, dict):
                    times.update(hooks)
            for mode in args.modes:
                if mode == "opacus_hooks" and hooks_gb > args.max_gb:
                    print(f"{w:>5} {b:>4} {mode:<13} skipped: per-sample gradients alone need ≈{hooks_gb:.0f} GB")
                    continue
                mem = _child(["--memory_cell", f"{w}:{b}:{mode}", *common])
                if not isinstance(times, dict) or mode not in times or not isinstance(mem, dict):
                    why = mem if isinstance(mem, str) else times if isinstance(times, str) else "failed"
                    print(f"{w:>5} {b:>4} {mode:<13} failed: {why}")
                    continue
                peak = mem.get("peak_cuda_mb", mem["peak_rss_mb"])  # on CUDA the GPU's memory is what counts
                if mode == "nonprivate":
                    ref_t, ref_m = times[mode], peak
                print(f"{w:>5} {b:>4} {mode:<13} {times[mode]:>8.3f} {times[mode] / ref_t:>6.2f} "
                      f"{peak:>9.0f} {peak / ref_m:>6.2f}", flush=True)


if __name__ == "__main__":
    main()
