"""Philox4x32-10 Gaussian draws on the CPU, from a small C kernel (csrc/philox_normal.c) built on first use.

torch's CPU normal_ draws from a sequential Mersenne Twister at ≈4 ns per normal; the DP step needs one normal
per parameter, so for the paper's denoisers it cost as much as the forward pass. The kernel is counter-based:
each batch of normals is a pure function of (key, nonce, counter), so it vectorizes and splits over threads
with the same numbers whatever the split. Each Box-Muller pair takes a 64-bit radius uniform, so the draws reach
|z| = 9.42 (a 24-bit one, as in torch's float32 normal_, stops at 5.77: a truncated Gaussian). It is compiled
with the system C compiler for this CPU into a cache folder (keyed by source, flags and CPU) and called through
ctypes (which releases the GIL) from the thread that runs torch's ops, so its OpenMP loop runs on torch's own
thread pool. Where no compiler is found or the build fails, `load_kernel()` returns None and callers fall back to
torch's generator.

Like torch's generators (and opacus outside its secure mode), Philox is a statistical, not a cryptographic,
generator; its 128-bit key + nonce come from OS entropy, so a draw cannot be replayed without them.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import secrets
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).resolve().parent / "csrc" / "philox_normal.c"
# -march=native: AVX-512/AVX2 where the CPU has them (the cache key includes the CPU); -fno-math-errno lets sqrtf
# vectorize; -fopenmp links libgomp, the OpenMP runtime torch's wheels load, so the kernel shares torch's threads.
# Each fallback drops what a compiler may lack.
FLAG_SETS = (["-O3", "-march=native", "-fno-math-errno", "-fopenmp"], ["-O3", "-march=native", "-fno-math-errno"],
             ["-O3", "-fno-math-errno"], ["-O2"])
BUILD_RECIPE = b"v2: compile -c with flags, link -shared [-fopenmp] -lm"  # part of the cache key
GENERATOR_NAME = "philox4x32-10 Box-Muller, 64-bit radius (privtranr CPU kernel)"
# A lower bound of the largest |z| the kernel draws: its smallest radius uniform, 2^-64, and angle 0 give
# sqrt(-2 ln 2^-64) = sqrt(128 ln 2) = 9.41928 (with Philox's words taken as uniform, every word triple occurs),
# rounded down. The ledger charges the tail beyond it to delta, so a smaller value is the conservative side.
Z_MAX = 9.419


def _cache_dir() -> Path:
    """$PRIVTRANR_CACHE, else $XDG_CACHE_HOME/privtranr or ~/.cache/privtranr; a temp folder if not writable."""
    env = os.environ.get("PRIVTRANR_CACHE")
    path = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "privtranr"
    try:
        path.mkdir(parents=True, exist_ok=True)
        if os.access(path, os.W_OK):
            return path
    except OSError:
        pass
    path = Path(tempfile.gettempdir()) / f"privtranr-cache-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _cpu_signature() -> str:
    """What -march=native depends on: a library built on one cluster node must not be loaded on another CPU."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith(("flags", "model name", "Features", "CPU part"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return f"{platform.machine()} {platform.processor()}"


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    u64, i64, ptr, f32 = ctypes.c_uint64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_float
    lib.philox_normal.argtypes = [ptr, i64, f32, f32, u64, u64, u64, ctypes.c_int]
    lib.philox_normal.restype = None
    lib.philox_bits.argtypes = [ptr, i64, u64, u64, u64]
    lib.philox_bits.restype = None
    lib.philox_batch_normals.restype = i64
    lib.philox_batch_blocks.restype = i64
    lib.box_muller_words.argtypes = [ptr, ptr, ptr, ptr, i64]
    lib.box_muller_words.restype = None
    return lib


def _build(cc: str, flags: list[str], target: Path) -> str | None:
    """Compile, then link with none of the compile flags (gcc < 13 links crtfastmath.o, which turns on
    flush-to-zero for the whole process, into any shared library linked with -ffast-math). The library is built
    beside the target and renamed, so concurrent first uses never load a half-written file. Returns an error."""
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        obj, lib = Path(tmp) / "kernel.o", Path(tmp) / "kernel.so"
        link = [f for f in flags if f == "-fopenmp"]
        for cmd in ([cc, *flags, "-fPIC", "-c", str(SOURCE), "-o", str(obj)],
                    [cc, "-shared", *link, str(obj), "-o", str(lib), "-lm"]):
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            except (OSError, subprocess.TimeoutExpired) as e:
                return str(e)
            if proc.returncode != 0:
                return (proc.stderr.strip().splitlines() or ["failed"])[0]
        os.replace(lib, target)
    return None


@functools.cache
def load_kernel() -> ctypes.CDLL | None:
    """The compiled kernel, built on first use; None where it cannot be built (callers use torch's generator).
    PRIVTRANR_NOISE_KERNEL=0 disables it."""
    if os.environ.get("PRIVTRANR_NOISE_KERNEL", "1") == "0":
        return None
    cc = _compiler()
    if cc is None:
        warnings.warn("no C compiler found: DP noise uses torch's (slower) CPU generator", stacklevel=2)
        return None
    source, cpu, cache = SOURCE.read_bytes(), _cpu_signature().encode(), _cache_dir()
    errors = []
    for flags in FLAG_SETS:
        tag = hashlib.sha256(b"\0".join([BUILD_RECIPE, source, cc.encode(), " ".join(flags).encode(),
                                         cpu])).hexdigest()[:16]
        target = cache / f"philox_normal-{tag}.so"
        if not target.exists():
            error = _build(cc, flags, target)
            if error:
                errors.append(error)
                continue
        try:
            return _bind(ctypes.CDLL(str(target)))
        except OSError as e:
            errors.append(str(e))
    warnings.warn(f"could not build the Philox noise kernel ({errors[-1] if errors else '?'}): "
                  "DP noise uses torch's (slower) CPU generator", stacklevel=2)
    return None


class PhiloxNormal:
    """A stream of N(0, std²) float32 draws into CPU tensors. Key and nonce come from OS entropy unless `seed`
    is given (tests only); the block counter moves past every block a draw used, so no draw ever repeats."""

    def __init__(self, kernel: ctypes.CDLL, seed: int | None = None) -> None:
        self.kernel = kernel
        self.batch = kernel.philox_batch_normals()  # normals per kernel batch; thread splits align to it
        self.blocks_per_batch = kernel.philox_batch_blocks()  # Philox blocks (counters) a batch uses
        if seed is None:
            self.key, self.nonce = secrets.randbits(64), secrets.randbits(64)
        else:
            self.key, self.nonce = seed % 2**64, 0
        self.counter = 0

    def fill_(self, out: torch.Tensor, std: float, threads: int | None = None) -> None:
        """out ← N(0, std²) on `threads` threads (default torch's count); the numbers do not depend on it."""
        if out.device.type != "cpu" or out.dtype != torch.float32 or not out.is_contiguous():
            raise ValueError("PhiloxNormal fills contiguous float32 CPU tensors")
        n = out.numel()
        self.kernel.philox_normal(out.data_ptr(), n, 0.0, float(std), self.key, self.counter, self.nonce,
                                  threads or torch.get_num_threads())
        self.counter += -(-n // self.batch) * self.blocks_per_batch
