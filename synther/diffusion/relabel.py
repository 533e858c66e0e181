"""Relabel synthetic rows' s′ and r with a dynamics model fitted to the PUBLIC datasets (post-processing).

DP fine-tuning on locomotion learns where the sensitive data lies (s, a) far better than how it moves (s′ and r given
s, a): on the HalfCheetah stand-in the DP samples' s′ disagree with the simulator 1.6× more than the public model's
or the non-private fine-tune's, and TD3+BC trained on the same rows with the simulator's s′ and r reaches real data's
level (README, issue 14). Where public and sensitive data share the physics (the same robot in the same world), a
model of it fitted on the public transitions is a public fact, and replacing every synthetic s′ and r by its
prediction is post-processing of the samples with public information: no privacy cost. Where the worlds differ
(mazes with other walls) the public model is wrong there: leave it off.

The model is an MLP (s, a) → (s′ − s, r) on standardized inputs and outputs, fitted with AdamW and a cosine rate
from --seed (public data: reproducible by design); 1,000 public rows are held out to report its error.

Where the DP model samples an (s, a) the public data never covers, the fitted physics is an extrapolation: on the
HalfCheetah stand-in the relabelled rows' simulator error is heavy-tailed (mean 3× the median). An ensemble of such
models, fitted from different initializations and batch orders, disagrees most there (its disagreement ranks the
rows' error with Spearman ≈ 0.5), so `--relabel_drop f` keeps the rows it agrees on: a function of public data and
the samples only, post-processing again. With an ensemble, s′ and r are the members' mean.

Where the sensitive data lie off the public data, no public model can say how they move: on a 60k-row HalfCheetah
draw the public model's s′ on the real rows cost TD3+BC 0.17 of real. `finetune_dynamics` fine-tunes the public
model on the sensitive training rows with DP-SGD (a mechanism of its own, which the fine-tune charges to the same
accountant as the diffusion model's DP-SGD: --dp.dynamics_steps), for --relabel dp.
"""
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from synther.data.dataset import TransitionDataset, TransitionLayout
from synther.errors import UserError
from synther.privacy.engine import DPSGD, DPSettings
from synther.utils.io import atomic_path
from synther.utils.locks import FolderLock

WIDTH = 256  # hidden units per layer by default (--relabel_width)
BATCH = 512
HELD_OUT = 1000


@dataclass
class FitReport:
    rows: int
    steps: int
    held_out_nmse_next_obs: float  # mean over dimensions of MSE / variance of s′ − s on held-out public rows
    held_out_nmse_reward: float


class PublicDynamics(nn.Module):
    def __init__(self, obs_dim: int, action_dim: int, width: int = WIDTH) -> None:
        super().__init__()
        self.obs_dim = obs_dim
        self.net = nn.Sequential(nn.Linear(obs_dim + action_dim, width), nn.SiLU(), nn.Linear(width, width),
                                 nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, obs_dim + 1))
        for name, size in (("in_mean", obs_dim + action_dim), ("in_std", obs_dim + action_dim),
                           ("out_mean", obs_dim + 1), ("out_std", obs_dim + 1)):
            self.register_buffer(name, torch.zeros(size))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Standardized (s′ − s, r) of standardized (s, a)."""
        return self.net(inputs)

    @torch.no_grad()
    def predict(self, obs: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(s′, r) for raw observations and actions."""
        x = torch.as_tensor(np.concatenate([obs, actions], axis=1), dtype=torch.float32)
        y = self((x - self.in_mean) / self.in_std) * self.out_std + self.out_mean
        y = y.numpy().astype(np.float64)
        return obs + y[:, :self.obs_dim], y[:, self.obs_dim]


class PublicDynamicsEnsemble:
    """Members fitted alike on the same public rows (same standardization), from different seeds."""

    def __init__(self, members: list[PublicDynamics]) -> None:
        self.members = members

    @torch.no_grad()
    def predict(self, obs: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The members' mean (s′, r) for raw observations and actions."""
        next_obs, reward = zip(*(m.predict(obs, actions) for m in self.members))
        return np.mean(next_obs, axis=0), np.mean(reward, axis=0)

    @torch.no_grad()
    def disagreement(self, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """Per row: the variance across members of the standardized s′ − s prediction, averaged over dimensions."""
        first = self.members[0]
        x = (torch.as_tensor(np.concatenate([obs, actions], axis=1), dtype=torch.float32) - first.in_mean) / first.in_std
        preds = torch.stack([m(x)[:, :first.obs_dim] for m in self.members])
        return preds.var(dim=0, unbiased=False).mean(dim=1).numpy().astype(np.float64)


RELABEL_REWARDS = ("model", "ranked")


def check_relabel(relabel: str, members: int, drop: float, width: int = WIDTH, steps: int = 1,
                  reward: str = "model") -> None:
    """The model, ensemble and filter settings, before anything is loaded or drawn."""
    if reward not in RELABEL_REWARDS:
        raise UserError(f"unknown relabel_reward '{reward}' (choose from: {', '.join(RELABEL_REWARDS)})")
    if relabel == "none" and reward != "model":
        raise UserError("relabel_reward applies to --relabel public or dp only")
    if relabel == "public" and steps < 1:
        raise UserError(f"relabel_steps must be at least 1, got {steps}")
    if members < 1:
        raise UserError(f"relabel_models must be at least 1, got {members}")
    if width < 1:
        raise UserError(f"relabel_width must be at least 1, got {width}")
    if not 0.0 <= drop < 1.0:
        raise UserError(f"relabel_drop must be a fraction in [0, 1), got {drop}")
    if relabel != "public" and (members > 1 or drop > 0 or width != WIDTH):
        raise UserError("relabel_models, relabel_width and relabel_drop apply to --relabel public only")
    if drop > 0 and members < 2:
        raise UserError(f"relabel_drop needs an ensemble to measure disagreement: --relabel_models ≥ 2, got {members}")


MEMBER_SEED_STRIDE = 1_000_003  # member k is fitted from seed + k × this (member 0 from the seed itself)


def fit_public_dynamics(public: list[TransitionDataset], steps: int, seed: int, members: int = 1,
                        width: int = WIDTH) -> tuple[PublicDynamicsEnsemble, FitReport]:
    """Fit `members` models on the public datasets' transitions (timeouts left out: their s′ may be a reset).

    The held-out rows are drawn from `seed` and left out of every member's training; the report gives the
    ensemble mean's error on them."""
    check_relabel("public", members, 0.0, width, steps)
    obs, act, rew, nxt = [], [], [], []
    for ds in public:
        keep = ~ds.timeouts if ds.timeouts is not None else np.ones(ds.size, dtype=bool)
        obs.append(ds.observations[keep]), act.append(ds.actions[keep])
        rew.append(ds.rewards[keep]), nxt.append(ds.next_observations[keep])
    s, a, r, s2 = (np.concatenate(v).astype(np.float64) for v in (obs, act, rew, nxt))
    if len(s) < 2 * HELD_OUT:
        raise UserError(f"relabel 'public' needs at least {2 * HELD_OUT} public transitions to fit a dynamics model, "
                        f"the public datasets have {len(s)}")
    x = np.concatenate([s, a], axis=1)
    y = np.concatenate([s2 - s, r[:, None]], axis=1)
    stats = {"in_mean": x.mean(0), "in_std": x.std(0) + 1e-6, "out_mean": y.mean(0), "out_std": y.std(0) + 1e-6}
    stats = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in stats.items()}
    xt = (torch.as_tensor(x, dtype=torch.float32) - stats["in_mean"]) / stats["in_std"]
    yt = (torch.as_tensor(y, dtype=torch.float32) - stats["out_mean"]) / stats["out_std"]
    order = torch.randperm(len(xt), generator=torch.Generator().manual_seed(seed))
    held, train = order[:HELD_OUT], order[HELD_OUT:]
    fitted = [_fit_member(xt, yt, train, stats, steps, seed + k * MEMBER_SEED_STRIDE, s.shape[1], a.shape[1], width)
              for k in range(members)]
    with torch.no_grad():  # standardized outputs: MSE / variance per dimension
        err = (torch.stack([m(xt[held]) for m in fitted]).mean(0) - yt[held]).pow(2).mean(0)
    return PublicDynamicsEnsemble(fitted), FitReport(len(s), steps, float(err[:-1].mean()), float(err[-1]))


FIT_FORMAT = "privtranr-public-dynamics-v1"  # change it when the fit changes, so that older cached fits are not used


def cached_public_dynamics(cache_dir: Path, public_sha256: list[str], public: list[TransitionDataset], steps: int,
                           seed: int, members: int = 1, width: int = WIDTH
                           ) -> tuple[PublicDynamicsEnsemble, FitReport, bool]:
    """fit_public_dynamics, kept in `cache_dir` under a key of all it depends on (the public datasets' content
    hashes, the settings, FIT_FORMAT and torch's version), so that every sample job drawn from one pre-training
    shares one fit; a job that finds its fit under way waits for it. The fit is a function of public data and
    --seed only, so the cache holds nothing private. Returns (model, report, whether the fit was reused)."""
    key = hashlib.sha256(json.dumps([FIT_FORMAT, torch.__version__, public_sha256, steps, seed, members, width,
                                     BATCH, HELD_OUT]).encode()).hexdigest()[:20]
    path = cache_dir / f"{key}.pt"
    with FolderLock(cache_dir, name=f"{key}.lock", what="public dynamics cache", wait=True):
        if path.exists():
            try:
                state = torch.load(path, weights_only=True)
                fitted = [PublicDynamics(state["obs_dim"], state["action_dim"], width) for _ in state["members"]]
                for model, weights in zip(fitted, state["members"]):
                    model.load_state_dict(weights)
                return PublicDynamicsEnsemble([m.eval() for m in fitted]), FitReport(**state["report"]), True
            except Exception:  # truncated or foreign file: fit again and replace it
                pass
        model, report = fit_public_dynamics(public, steps, seed, members, width)
        first = model.members[0]
        with atomic_path(path) as tmp:
            torch.save({"members": [m.state_dict() for m in model.members], "report": asdict(report),
                        "obs_dim": first.obs_dim, "action_dim": first.net[0].in_features - first.obs_dim}, tmp)
        return model, report, False


def _fit_member(xt: torch.Tensor, yt: torch.Tensor, train: torch.Tensor, stats: dict[str, torch.Tensor], steps: int,
                seed: int, obs_dim: int, action_dim: int, width: int) -> PublicDynamics:
    with torch.random.fork_rng(devices=[]):  # the MLP's initialization from the seed, leaving the caller's stream alone
        torch.manual_seed(seed)
        model = PublicDynamics(obs_dim, action_dim, width)
    for name, v in stats.items():
        getattr(model, name).copy_(v)
    gen = torch.Generator().manual_seed(seed)
    torch.randperm(len(xt), generator=gen)  # the held-out split's draw, so that member 0 draws as a single model did
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-5)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        batch = train[torch.randint(len(train), (BATCH,), generator=gen)]
        loss = (model(xt[batch]) - yt[batch]).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
    return model.eval()


@dataclass
class SensitiveFit:
    """A dynamics model's fine-tune on the sensitive training split: DP-SGD (noise_multiplier set) or not."""
    steps: int
    batch_size: float  # expected (Poisson) batch size under DP, the fixed batch size without
    lr: float
    noise_multiplier: float | None = None
    clip_norm: float | None = None
    sample_rate: float | None = None
    z_max: float | None = None  # a lower bound of the noise generator's cap on |z| (the ledger charges the tail)
    noise_generator: str = "auto"  # synther.privacy.dpsgd.GaussianNoise's
    train_layers: int = 0  # train only the last this many linear layers, the others kept as fitted (0: all)


def finetune_dynamics(model: PublicDynamics, x: np.ndarray, layout: TransitionLayout, fit: SensitiveFit, seed: int,
                      progress: bool = True) -> PublicDynamics:
    """Fine-tune `model` (in place; its public standardization kept) on the raw transition vectors `x` of the
    sensitive training split: one record = one row, loss = squared error of the standardized (s′ − s, r).

    With fit.noise_multiplier set this is DP-SGD (synther.privacy.engine): Poisson batches at fit.sample_rate,
    per-record clipping to fit.clip_norm, Gaussian noise, all from OS entropy (`seed` is not used); the caller
    charges (σ, q, steps) to the release's accountant. Without it, a non-private fit from `seed` (a reference
    that is not DP). With fit.train_layers the earlier layers stay as they are: fewer coordinates carry noise.
    Returns the model in eval mode."""
    s, a = torch.as_tensor(x[:, layout.obs]), torch.as_tensor(x[:, layout.action])
    y = torch.cat([torch.as_tensor(x[:, layout.next_obs]) - s, torch.as_tensor(x[:, [layout.reward]])], dim=1)
    inputs = ((torch.cat([s, a], dim=1).float() - model.in_mean) / model.in_std)
    targets = (y.float() - model.out_mean) / model.out_std
    model.train()
    linears = [m for m in model.net if isinstance(m, nn.Linear)]
    for frozen in linears[:len(linears) - fit.train_layers] if fit.train_layers else []:
        frozen.requires_grad_(False)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=fit.lr)

    def per_row_loss(rows: torch.Tensor) -> torch.Tensor:
        return (model(inputs[rows]) - targets[rows]).pow(2).mean(dim=1)

    engine = None
    if fit.noise_multiplier is not None:
        engine = DPSGD(model, opt, len(inputs), DPSettings(
            noise_multiplier=fit.noise_multiplier, clip_norm=float(fit.clip_norm), sample_rate=float(fit.sample_rate),
            noise_generator=fit.noise_generator))
        fit.z_max = engine.z_max
    gen = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(fit.steps), desc="dynamics fine-tune", unit="step", disable=not progress, mininterval=1.0):
        if engine is not None:
            engine.step(engine.sample(), per_row_loss)
        else:
            loss = per_row_loss(torch.randint(len(inputs), (int(fit.batch_size),), generator=gen)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    fitted = PublicDynamics(model.obs_dim, model.net[0].in_features - model.obs_dim, model.net[0].out_features)
    fitted.load_state_dict(model.state_dict())  # a clean module: the clipper's hooks stay on the trained copy
    return fitted.eval()


def least_disputed(disagreement: np.ndarray, keep: int) -> np.ndarray:
    """Indices (in their original order) of the `keep` rows the ensemble disagrees on least."""
    if keep >= len(disagreement):
        return np.arange(len(disagreement))
    return np.sort(np.argsort(disagreement, kind="stable")[:keep])


def ranked_rewards(model_rewards: np.ndarray, sampled_rewards: np.ndarray) -> np.ndarray:
    """The sampled rewards' values handed out in the order of the model's: the row the model rates k-th lowest gets
    the k-th lowest sampled reward (a quantile mapping; ties keep row order)."""
    out = np.empty_like(sampled_rewards)
    out[np.argsort(model_rewards, kind="stable")] = np.sort(sampled_rewards, kind="stable")
    return out


def relabel_rows(x: np.ndarray, layout: TransitionLayout, model: PublicDynamicsEnsemble, reward: str = "model"
                 ) -> None:
    """Replace the s′ and r columns of raw transition vectors `x` in place by the model's prediction at (s, a).

    reward 'ranked' keeps the rows' sampled reward values and only re-assigns them in the model's order: a model's
    small absolute errors blur a reward whose mass sits near zero (a maze's exp(−distance)), while the sampled
    column carries the generator's estimate of the reward distribution; the model still decides which rows pay."""
    next_obs, predicted = model.predict(x[:, layout.obs], x[:, layout.action])
    x[:, layout.next_obs] = next_obs
    x[:, layout.reward] = predicted if reward == "model" else ranked_rewards(predicted, x[:, layout.reward])
