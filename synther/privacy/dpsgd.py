"""DP-SGD engine pieces: Poisson subsampling, clipped-sum backends (one class each behind `ClippingBackend`),
Gaussian noise. synther.privacy.engine.DPSGD assembles them into one step.

One DP step (as opacus does it with Poisson sampling):
    batch  = each training record independently with probability q           (PoissonSampler)
    grad   = Σ_{i∈batch} clip(∇ℓ_i, C) / (q·N)                               (the clipping backends)
    grad  += N(0, (σC / (q·N))²·I)                                           (GaussianNoise)
i.e. (Σ clip + N(0, σ²C²)) / (q·N), with the division folded into the clip factors to save a pass over the
gradients. Dividing by the *expected* batch size q·N (not the realized one) keeps the sensitivity at C.
"""
from __future__ import annotations

import math
import secrets
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Mapping, Protocol

import torch
from torch import nn

from synther.errors import UserError
from synther.privacy.clipping import LayerScales, LinearGhostClipper
from synther.privacy.philox import GENERATOR_NAME as PHILOX_NAME, Z_MAX as PHILOX_Z_MAX, PhiloxNormal, load_kernel

NOISE_GENERATORS = ("auto", "philox", "torch")
# torch's own normal_ stops at 5.77σ in float32 (24-bit uniforms) and 8.57σ in float64 (53-bit ones). The torch
# path below runs Box–Muller itself on a radius uniform made of two float64 uniforms a, b (53-bit grids):
# u1 = (1 − a) − b·2⁻⁵³ ∈ [2⁻¹⁰⁶, 1], so with the angle 0 |z| reaches √(212 ln 2) = 12.1222; rounded down, a lower
# bound of the cap (the ledger charges the Gaussian tail beyond it to δ).
TORCH_Z_MAX = 12.122


def long_tailed_normal_(out: torch.Tensor, std: float, generator: torch.Generator, chunk: int = 1 << 21) -> None:
    """Contiguous float64 `out` ← N(0, std²) by Box–Muller on a 106-bit radius uniform (see TORCH_Z_MAX), `chunk`
    normals at a time on the CPU so the temporaries stay small (on a GPU, one piece: kernel launches cost more)."""
    flat = out.view(-1)
    chunk = max(flat.numel(), 1) if out.is_cuda else chunk
    for start in range(0, flat.numel(), chunk):
        piece = flat[start: start + chunk]
        n = piece.numel()
        m = (n + 1) // 2
        u = torch.rand(3, m, dtype=torch.float64, device=out.device, generator=generator)
        # (1 − a) is exact on a 53-bit grid and ≥ 2⁻⁵³, so u1 > 0; the clamp only guards a device whose rand reached 1
        radius = ((1.0 - u[0]) - u[1] * 2.0**-53).clamp_min_(2.0**-106).log_().mul_(-2.0).sqrt_().mul_(std)
        angle = u[2].mul_(2 * math.pi)
        torch.mul(radius, torch.cos(angle), out=piece[:m])
        torch.mul(radius[: n - m], torch.sin(angle[: n - m]), out=piece[m:])


class PoissonSampler:
    """Indices of a Poisson-subsampled batch: every record is included independently with probability q."""

    def __init__(self, num_records: int, sample_rate: float, generator: torch.Generator) -> None:
        if not 0 < sample_rate <= 1:
            raise UserError(f"sample rate must be in (0, 1], got {sample_rate}")
        self.num_records = num_records
        self.sample_rate = sample_rate
        self.generator = generator

    def sample(self) -> torch.Tensor:
        mask = torch.rand(self.num_records, generator=self.generator) < self.sample_rate
        return mask.nonzero().squeeze(1)


class GaussianNoise:
    """Draws i.i.d. N(0, std²) for every parameter's gradient (DP-SGD: std = σC / expected batch size).

    `fill_(std)` makes each p.grad a fresh draw, so a clipped sum can then be accumulated onto it in the same
    pass that computes it (ghost clipping's addmm); `add_(std)` adds a draw to gradients already there. The draws
    go into gradient buffers kept across steps (a fresh multi-MB tensor per parameter per step costs page faults).
    Generators (`generator`):
      philox: on the CPU, our vectorized Philox4x32-10 kernel (synther.privacy.philox), faster than torch's;
              on CUDA, torch's generator, which is Philox4x32-10 too.
      torch:  torch's generator (on the CPU a sequential Mersenne Twister) for float64 uniforms, turned into
              normals by `long_tailed_normal_` and cast: torch's own normal_ cuts the Gaussian off at 5.77σ
              (float32) or 8.57σ (float64); this reaches 12.12σ.
      auto:   philox where the kernel builds (float32 parameters), else torch.
    `z_max` is a lower bound of the largest |z| (in units of std) the generator in use can draw, for the
    ledger's account of the Gaussian tail beyond it.
    On the CPU the work is split across `workers` threads (default torch's count): the Philox kernel runs them
    in torch's own OpenMP pool, torch's generator on a thread pool with one generator per thread. Drawing the
    next step's noise in the background during the forward pass was tried and is slower on 2 cores: it competes
    with the matrix products.
    Generators are seeded from OS entropy unless `seed` is given (tests only): noise that can be replayed can be
    subtracted. Nothing here is ever saved.
    """

    def __init__(self, params: list[nn.Parameter], workers: int | None = None, seed: int | None = None,
                 generator: str = "auto") -> None:
        if generator not in NOISE_GENERATORS:
            raise UserError(f"unknown noise generator '{generator}' (choose from: {', '.join(NOISE_GENERATORS)})")
        self.params = list(params)
        device = self.params[0].device if self.params else torch.device("cpu")
        dtype = self.params[0].dtype if self.params else torch.float32
        workers = 1 if device.type == "cuda" else max(1, workers or torch.get_num_threads())
        self.workers = workers
        kernel = None
        if generator != "torch" and device.type == "cpu":
            kernel = load_kernel() if all(p.dtype == torch.float32 for p in self.params) else None
            if kernel is None and generator == "philox":
                raise UserError("the Philox noise kernel is unavailable here (no C compiler, a failed build, or "
                                "non-float32 parameters): use noise generator 'torch' or 'auto'")
        self.philox = PhiloxNormal(kernel, seed) if kernel is not None else None
        if self.philox is not None:
            self.generator_name, self.z_max = PHILOX_NAME, PHILOX_Z_MAX
        else:
            self.generator_name = ("torch CUDA (philox4x32-10" if device.type == "cuda" else "torch CPU (mt19937") \
                + " uniforms, float64 Box-Muller with a 106-bit radius)"
            self.z_max = TORCH_Z_MAX
            self.generators = [torch.Generator(device=device).manual_seed(
                secrets.randbits(63) if seed is None else seed + k) for k in range(workers)]
            # balance the parameters across workers by size (largest first, into the emptiest group)
            self.groups: list[list[nn.Parameter]] = [[] for _ in range(workers)]
            sizes = [0] * workers
            for p in sorted(self.params, key=lambda q: q.numel(), reverse=True):
                k = sizes.index(min(sizes))
                self.groups[k].append(p)
                sizes[k] += p.numel()
        self.pool = ThreadPoolExecutor(workers) if workers > 1 and self.philox is None else None
        # One flat buffer viewed as every parameter's gradient: one kernel draws it in a few large pieces, and on
        # a GPU (where the cost is kernel launches, not the draws) a step is one draw for all parameters.
        self._flat = torch.empty(sum(p.numel() for p in self.params), device=device, dtype=dtype)
        # torch's draws land in one float64 buffer, kept across steps, and are cast into the gradient buffers
        self._scratch = torch.empty(self._flat.numel(), device=device, dtype=torch.float64) \
            if self.philox is None and dtype != torch.float64 else None
        self._grads, self._draws, offset = {}, {}, 0
        for p in self.params:
            self._grads[p] = self._flat[offset: offset + p.numel()].view_as(p)
            self._draws[p] = self._grads[p] if self._scratch is None else \
                self._scratch[offset: offset + p.numel()].view_as(p)
            offset += p.numel()

    def _draw(self, std: float) -> None:
        """The gradient buffers ← N(0, std²)."""
        if self.philox is not None:
            self.philox.fill_(self._flat, std, self.workers)
            return
        draws = self._flat if self._scratch is None else self._scratch
        if self.pool is None:
            long_tailed_normal_(draws, std, self.generators[0])
        else:
            def fill(k: int) -> None:
                for p in self.groups[k]:
                    long_tailed_normal_(self._draws[p], std, self.generators[k])

            list(self.pool.map(fill, range(len(self.groups))))
        if self._scratch is not None:  # on the calling thread: the cast runs on torch's own threads
            self._flat.copy_(self._scratch)

    def fill_(self, std: float) -> None:
        """p.grad ← N(0, std²) for every parameter (zero when std = 0); what was in p.grad is discarded."""
        if std > 0:
            self._draw(std)
        else:
            self._flat.zero_()
        for p in self.params:
            p.grad = self._grads[p]

    def add_(self, std: float) -> None:
        """p.grad += N(0, std²) for every parameter (p.grad must be set)."""
        if std <= 0:
            return
        grads = [p.grad for p in self.params]
        if any(g is None for g in grads):
            raise RuntimeError("add_ needs every parameter's .grad; use fill_ to start from noise")
        if any(g is self._grads[p] for g, p in zip(grads, self.params)):
            raise RuntimeError("the gradients are the noise buffers themselves: draw them with fill_ instead")
        self._draw(std)
        torch._foreach_add_(grads, [self._grads[p] for p in self.params])


class ClippingBackend(Protocol):
    """Σ_i clip(∇ℓ_i, C) into p.grad for every trainable parameter of a model.

    `loss_fn()` runs the forward pass of the model and returns per-row losses (B·K,), K = `rows_per_sample`: sample
    i owns rows iK … iK+K−1 and its loss is their sum (noise multiplicity: K diffusion draws of one record, each
    row's loss divided by K). Clipping bounds each sample's summed gradient, so K changes nothing in the privacy
    analysis. Calling it sets p.grad = scale·Σ clip(∇ℓ_i) (+ N(0, noise_std²) drawn by `noise`, which must cover
    `params`) and returns (per-row losses, per-sample norms before clipping)."""

    params: list[nn.Parameter]

    def __call__(self, loss_fn: Callable[[], torch.Tensor], scale: float = 1.0, noise: GaussianNoise | None = None,
                 noise_std: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]: ...


class GhostClipping:
    """Ours (LinearGhostClipper): per-sample norms from activations × output-gradients, one product per layer, and
    the clipped sum accumulated onto the noise by the same products. The only backend that takes `layer_scales`
    (a factored diagonal preconditioner applied to every per-sample gradient before clipping)."""

    def __init__(self, model: nn.Module, clip_norm: float, rows_per_sample: int = 1) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.rows_per_sample = rows_per_sample
        self._ghost = LinearGhostClipper(model, clip_norm)

    def __call__(self, loss_fn: Callable[[], torch.Tensor], scale: float = 1.0, noise: GaussianNoise | None = None,
                 noise_std: float = 0.0, layer_scales: Mapping[nn.Linear, LayerScales] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        with self._ghost.capture():
            losses = loss_fn()
        if noise is not None:  # the clipped sum is then accumulated onto the noise by the same products
            noise.fill_(noise_std)
        return losses.detach(), self._ghost.backward(losses, scale, accumulate=noise is not None,
                                                     rows_per_sample=self.rows_per_sample, layer_scales=layer_scales)


class OpacusHooksClipping:
    """opacus' GradSampleModule: materializes every per-sample gradient, then clips (the reference backend)."""

    def __init__(self, model: nn.Module, clip_norm: float, rows_per_sample: int = 1) -> None:
        from opacus import GradSampleModule

        self.params = [p for p in model.parameters() if p.requires_grad]
        self.clip_norm, self.rows_per_sample = float(clip_norm), rows_per_sample
        self._wrapped = GradSampleModule(model, loss_reduction="sum")

    def __call__(self, loss_fn: Callable[[], torch.Tensor], scale: float = 1.0, noise: GaussianNoise | None = None,
                 noise_std: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        for p in self.params:
            p.grad_sample = None
        losses = loss_fn()
        losses.sum().backward()
        k = self.rows_per_sample
        per_sample = [p.grad_sample.reshape(len(losses) // k, k, -1).sum(1) for p in self.params]
        # parameter by parameter: concatenating would double the (already huge) per-sample gradient memory
        norms = torch.stack([g.pow(2).sum(dim=1) for g in per_sample]).sum(dim=0).sqrt()
        coef = (self.clip_norm / (norms + 1e-6)).clamp(max=1.0) * scale
        for p, g in zip(self.params, per_sample):
            p.grad = (coef @ g).view_as(p)
            p.grad_sample = None
        if noise is not None:
            noise.add_(noise_std)
        return losses.detach(), norms.detach()


class OpacusGhostClipping:
    """opacus' fast gradient clipping: norms by ghost clipping, then a second, reweighted backward pass. It clips
    rows, not records, so it refuses noise multiplicity."""

    def __init__(self, model: nn.Module, clip_norm: float, rows_per_sample: int = 1) -> None:
        if rows_per_sample > 1:
            raise UserError("noise multiplicity > 1 needs clipping 'ghost' or 'opacus_hooks' (opacus' ghost "
                            "clipping clips rows, not records)")
        from opacus.grad_sample import GradSampleModuleFastGradientClipping

        self.params = [p for p in model.parameters() if p.requires_grad]
        self._wrapped = GradSampleModuleFastGradientClipping(
            model, max_grad_norm=clip_norm, use_ghost_clipping=True, loss_reduction="sum"
        )

    def __call__(self, loss_fn: Callable[[], torch.Tensor], scale: float = 1.0, noise: GaussianNoise | None = None,
                 noise_std: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        wrapped = self._wrapped
        wrapped.enable_hooks()
        losses = loss_fn()
        losses.sum().backward(retain_graph=True)
        norms = wrapped.get_norm_sample()
        coef = wrapped.get_clipping_coef()
        wrapped.disable_hooks()
        for p in self.params:
            p.grad = None
        (losses * coef * scale).sum().backward()
        wrapped.enable_hooks()
        if noise is not None:
            noise.add_(noise_std)
        return losses.detach(), norms.detach()


CLIPPING_BACKENDS: dict[str, type] = {"ghost": GhostClipping, "opacus_hooks": OpacusHooksClipping,
                                      "opacus_ghost": OpacusGhostClipping}
CLIPPING_MODES = tuple(CLIPPING_BACKENDS)


def clipping_backend(model: nn.Module, clip_norm: float, mode: str = "ghost",
                     rows_per_sample: int = 1) -> ClippingBackend:
    """The clipping backend called `mode` (CLIPPING_MODES) for `model`'s trainable parameters."""
    if mode not in CLIPPING_BACKENDS:
        raise UserError(f"unknown clipping mode '{mode}' (choose from: {', '.join(CLIPPING_MODES)})")
    if rows_per_sample < 1:
        raise UserError(f"rows per sample (noise multiplicity) must be at least 1, got {rows_per_sample}")
    return CLIPPING_BACKENDS[mode](model, clip_norm, rows_per_sample)
