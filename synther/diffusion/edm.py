"""EDM (Karras et al. 2022) for flat transition vectors: preconditioning, loss, and samplers.

Constants follow SynthER/PrivORL (DESIGN.md §3). The model works in normalized space; `Normalizer` maps data in
and out, so callers pass and receive raw transition vectors.
"""
import math
from dataclasses import dataclass

import torch
from torch import nn

from synther.diffusion.denoiser import DenoiserConfig, ResidualMLPDenoiser
from synther.diffusion.normalizer import Normalizer
from synther.errors import UserError


@dataclass
class EDMConfig:
    sigma_min: float = 0.002  # smallest noise level of the sampling schedule
    sigma_max: float = 80.0  # largest noise level of the sampling schedule
    sigma_data: float = 1.0  # data standard deviation assumed by the preconditioning
    rho: float = 7.0  # schedule curvature
    p_mean: float = -1.2  # training: ln σ ~ N(p_mean, p_std²)
    p_std: float = 1.2  # training: the spread of ln σ


@dataclass
class SamplerConfig:
    name: str = "dpm2m"  # 'stochastic_heun' (the paper's), 'heun' (deterministic), 'euler' or 'dpm2m' (DPM-Solver++ 2M)
    steps: int = 16  # number of noise levels; network evaluations: heun 2·steps−1, euler/dpm2m steps
    s_churn: float = 80.0  # stochastic_heun only: amount of noise re-injected per step
    s_tmin: float = 0.05  # stochastic_heun only: churn applies for σ in [s_tmin, s_tmax]
    s_tmax: float = 50.0  # stochastic_heun only: upper end of that range
    s_noise: float = 1.003  # stochastic_heun only: scale of the re-injected noise
    guidance: float = 0.0  # autoguidance weight w (fine-tuned checkpoints): denoise with D + w·(D − D_public), the public pre-trained model as the weak guide, pushing samples toward what fine-tuning learned; post-processing with a public model, no privacy cost (0: off)
    guide_checkpoint: str = ""  # guidance > 0: the public checkpoint to guide with (empty: the one the model was fine-tuned from, checked by its SHA-256); it must never have seen sensitive data
    precision: str = "fp32"  # the denoiser's matrix products in 'fp32' or 'bf16' (torch.autocast; the solver's arithmetic stays float64): bf16 samples about 3 times faster on CPUs with AMX or AVX-512 BF16 and is emulated on others (not measured there; possibly slower); post-processing of the model, no privacy effect


PAPER_SAMPLER = SamplerConfig(name="stochastic_heun", steps=128)
SAMPLERS = ("stochastic_heun", "heun", "euler", "dpm2m")
PRECISIONS = ("fp32", "bf16")


def check_sampler(sampler: SamplerConfig) -> None:
    """Refuse an unknown sampler, too few steps or an unknown precision (callers check before any costly work)."""
    if sampler.name not in SAMPLERS:
        raise UserError(f"unknown sampler '{sampler.name}' (choose from: {', '.join(SAMPLERS)})")
    if sampler.steps < 2:
        raise UserError(f"sampler.steps must be at least 2, got {sampler.steps}")
    if sampler.precision not in PRECISIONS:
        raise UserError(f"unknown sampler.precision '{sampler.precision}' (choose from: {', '.join(PRECISIONS)})")


class EDM(nn.Module):
    def __init__(self, dim: int, normalizer: Normalizer, denoiser: DenoiserConfig = DenoiserConfig(),
                 edm: EDMConfig = EDMConfig()) -> None:
        super().__init__()
        self.dim, self.cfg = dim, edm
        self.normalizer = normalizer
        self.net = ResidualMLPDenoiser(dim, denoiser)
        self.support: nn.Module | None = None  # a fine-tune's DP state histogram (synther.diffusion.support), if any

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """D(x; σ) in normalized space; σ has shape (B,)."""
        sd = self.cfg.sigma_data
        s = sigma.unsqueeze(1)
        c_skip = sd**2 / (s**2 + sd**2)
        c_out = s * sd / (s**2 + sd**2).sqrt()
        c_in = 1 / (s**2 + sd**2).sqrt()
        return c_skip * x + c_out * self.net(c_in * x, sigma.log() / 4)

    def draw_sigma(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n training noise levels, ln σ ~ N(p_mean, p_std²) (on the model's device; torch's global generator unless
        `generator` is given, which must live on that device)."""
        device = next(self.parameters()).device if generator is None else generator.device
        return (torch.randn(n, device=device, generator=generator) * self.cfg.p_std + self.cfg.p_mean).exp()

    def per_sample_loss(self, x_raw: torch.Tensor, sigma: torch.Tensor | None = None,
                        noise: torch.Tensor | None = None) -> torch.Tensor:
        """EDM loss of each row (B,): λ(σ)·mean_j (D(x+σn; σ) − x)²_j, λ(σ) = (σ²+σ_d²)/(σσ_d)².

        σ ~ exp(N(p_mean, p_std²)) and n ~ N(0, I) unless given (the membership-inference attack fixes σ).
        Each row's loss depends only on that row, as per-sample clipping requires.
        """
        x = self.normalizer.normalize(x_raw)
        if sigma is None:
            sigma = self.draw_sigma(len(x)).to(x.device)
        if noise is None:
            noise = torch.randn_like(x)
        sd = self.cfg.sigma_data
        weight = (sigma**2 + sd**2) / (sigma * sd) ** 2
        denoised = self.denoise(x + noise * sigma.unsqueeze(1), sigma)
        return weight * (denoised - x).pow(2).mean(dim=1)

    def sigmas(self, steps: int, device: torch.device) -> torch.Tensor:
        """Karras schedule σ_0 = σ_max > … > σ_{steps−1} = σ_min, followed by σ_steps = 0."""
        c = self.cfg
        i = torch.arange(steps, dtype=torch.float64, device=device)
        ramp = i / max(steps - 1, 1)
        s = (c.sigma_max ** (1 / c.rho) + ramp * (c.sigma_min ** (1 / c.rho) - c.sigma_max ** (1 / c.rho))) ** c.rho
        return torch.cat([s, s.new_zeros(1)])

    @torch.no_grad()
    def sample(self, n: int, sampler: SamplerConfig = SamplerConfig(), generator: torch.Generator | None = None,
               guide: "EDM | None" = None) -> torch.Tensor:
        """n raw transition vectors (unnormalized; terminal column still continuous). With `guide` (a model of the
        same space) and sampler.guidance = w, every denoising step uses D + w·(D − D_guide) (autoguidance)."""
        check_sampler(sampler)
        device = next(self.parameters()).device
        sigmas = self.sigmas(sampler.steps, device)
        x = torch.randn(n, self.dim, generator=generator, device="cpu").to(device, torch.float64) * sigmas[0]
        denoiser = self if not sampler.guidance else _Guided(self, guide, sampler.guidance)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=sampler.precision == "bf16"):
            x = _SOLVERS[sampler.name](denoiser, x, sigmas, sampler, generator)
        return self.normalizer.unnormalize(x.float())

    def _d(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        s = torch.full((len(x),), float(sigma), device=x.device)
        return self.denoise(x.float(), s).double()


class _Guided:
    """Autoguidance (Karras et al. 2024): extrapolate the model's denoised estimate away from a weaker model's."""

    def __init__(self, model: EDM, guide: EDM | None, weight: float) -> None:
        if guide is None:
            raise UserError("sampler.guidance needs a guide model")
        self.model, self.guide, self.weight = model, guide, weight

    def _d(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        d = self.model._d(x, sigma)
        return d + self.weight * (d - self.guide._d(x, sigma))


def _heun(model: EDM, x, sigmas, cfg: SamplerConfig, generator, stochastic: bool = False):
    steps = len(sigmas) - 1
    for i in range(steps):
        s_cur, s_next = float(sigmas[i]), float(sigmas[i + 1])
        if stochastic and cfg.s_tmin <= s_cur <= cfg.s_tmax:
            gamma = min(cfg.s_churn / steps, math.sqrt(2) - 1)
            s_hat = s_cur * (1 + gamma)
            eps = torch.randn(x.shape, generator=generator, device="cpu").to(x) * cfg.s_noise
            x = x + math.sqrt(s_hat**2 - s_cur**2) * eps
        else:
            s_hat = s_cur
        d = (x - model._d(x, s_hat)) / s_hat
        x_next = x + (s_next - s_hat) * d
        if s_next > 0:  # second-order correction, skipped on the last step to σ = 0
            d2 = (x_next - model._d(x_next, s_next)) / s_next
            x_next = x + (s_next - s_hat) * (d + d2) / 2
        x = x_next
    return x


def _euler(model: EDM, x, sigmas, cfg, generator):
    for i in range(len(sigmas) - 1):
        s_cur, s_next = float(sigmas[i]), float(sigmas[i + 1])
        x = x + (s_next - s_cur) * (x - model._d(x, s_cur)) / s_cur
    return x


def _dpm2m(model: EDM, x, sigmas, cfg, generator):
    """DPM-Solver++(2M): second-order multistep in log-σ, one network evaluation per step."""
    old_denoised, h_last = None, None
    for i in range(len(sigmas) - 1):
        s_cur, s_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = model._d(x, s_cur)
        if s_next == 0:
            x = denoised
            break
        h = math.log(s_cur) - math.log(s_next)
        if old_denoised is None:
            d = denoised
        else:
            r = h_last / h
            d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        x = (s_next / s_cur) * x - math.expm1(-h) * d
        old_denoised, h_last = denoised, h
    return x


_SOLVERS = {
    "stochastic_heun": lambda m, x, s, c, g: _heun(m, x, s, c, g, stochastic=True),
    "heun": _heun,
    "euler": _euler,
    "dpm2m": _dpm2m,
}


def network_evaluations(sampler: SamplerConfig) -> int:
    """Denoiser evaluations per sample (guidance adds the guide's)."""
    calls = 2 * sampler.steps - 1 if sampler.name in ("heun", "stochastic_heun") else sampler.steps
    return calls * (2 if sampler.guidance else 1)
