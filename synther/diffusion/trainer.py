"""The one training loop, used by public pre-training (plain SGD) and DP fine-tuning (DP-SGD).

Each run folder holds checkpoint.pt (model, EMA, optimizer, RNG state, ledger; written atomically),
ledger.json and metrics.jsonl. A killed run restarts from its checkpoint; the ledger's step count, and so ε,
continues from there and is never reset.

Under DP, the randomness the guarantee rests on — which records enter each Poisson batch, the Gaussian noise,
and the diffusion noise levels and draws of each per-sample loss — is drawn from generators seeded with OS entropy,
never from --seed and never saved: anyone who could replay the noise could subtract it, and the diffusion draws
are taken by position in the batch, so known draws would let one record's presence change the others' gradients. And metrics.jsonl records no statistic of the private batches (loss, gradient
norms, realized batch sizes) unless `log_private_diagnostics` is set, in which case the ledger warns that file must
not be released.

A run resumes only from a checkpoint written with the same configuration, data and starting checkpoint: the
configuration hash covers `meta["identity"]` (content hashes of the datasets and of the loaded checkpoint).
"""
import secrets
import copy
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from synther.diffusion.edm import EDM
from synther.errors import UserError
from synther.privacy.dpsgd import ClippedGradient, GaussianNoise, PoissonSampler
from synther.privacy.ledger import PrivacyLedger
from synther.utils.io import atomic_path, atomic_write_json
from synther.utils.locks import FolderLock
from synther.utils.optim import fused_optimizer

CHECKPOINT = "checkpoint.pt"
LR_DECAYS = ("none", "cosine")


@dataclass
class TrainConfig:
    lr: float = 3e-4  # AdamW learning rate (the peak, when lr_decay is set)
    lr_decay: str = "none"  # none | cosine (to 0 over the run's steps; a public schedule, so free under DP)
    adam_beta2: float = 0.99  # AdamW β2 (β1 = 0.9)
    weight_decay: float = 0.0  # AdamW weight decay
    batch_size: int = 128  # batch size; under DP the expected size of each Poisson batch
    epochs: float = 10.0  # passes over the data (paper: 10 for pre-training, 5 for DP fine-tuning)
    max_steps: int = 0  # if > 0, train exactly this many steps instead of epochs·N/batch_size
    ema_decay: float = 0.995  # EMA of the weights used for sampling
    ema_every: int = 10  # steps between EMA updates
    log_every: int = 100  # steps between metrics.jsonl records
    log_private_diagnostics: bool = False  # under DP, also log private-batch loss/grad norms/batch sizes (not DP: never release metrics.jsonl then)
    checkpoint_every: int = 1000  # steps between checkpoints (one is always written at the end)

    def total_steps(self, num_rows: int) -> int:
        if self.max_steps > 0:
            return self.max_steps
        return max(1, math.ceil(self.epochs * num_rows / self.batch_size))


@dataclass
class DPSettings:
    """Resolved DP-SGD parameters for one fine-tuning run (σ already calibrated)."""

    noise_multiplier: float
    clip_norm: float
    sample_rate: float
    clipping_mode: str = "ghost"
    noise_generator: str = "auto"  # GaussianNoise's: auto | philox | torch (same distribution, different speed)
    draws_per_record: int = 1  # noise multiplicity: diffusion draws (σ, n) averaged in each record's loss before clipping


class DiffusionTrainer:
    def __init__(self, model: EDM, data: torch.Tensor, cfg: TrainConfig, run_dir: Path, ledger: PrivacyLedger,
                 meta: dict[str, Any], seed: int = 0, dp: DPSettings | None = None,
                 augment: Callable[[int, torch.Tensor], torch.Tensor] | None = None, progress: bool = True) -> None:
        """`data`: raw transition vectors (N, d) on the model's device. `augment(step, batch)` may extend a
        public pre-training batch (curiosity); it is refused under DP, where batches must stay Poisson samples."""
        if cfg.lr_decay not in LR_DECAYS:
            raise UserError(f"unknown train.lr_decay '{cfg.lr_decay}' (choose from: {', '.join(LR_DECAYS)})")
        if dp is not None and augment is not None:
            raise UserError("batch augmentation (curiosity) is for public pre-training only, not DP fine-tuning")
        self.model, self.data, self.cfg, self.run_dir = model, data, cfg, Path(run_dir)
        self.ledger, self.meta, self.seed, self.dp, self.augment, self.progress = ledger, meta, seed, dp, augment, progress
        self.total_steps = cfg.total_steps(len(data))
        self.ema = copy.deepcopy(model).requires_grad_(False)
        self.optimizer = fused_optimizer(torch.optim.AdamW, model.parameters(), lr=cfg.lr,
                                         betas=(0.9, cfg.adam_beta2), weight_decay=cfg.weight_decay)
        # Which rows enter each batch, and the DP noise: reproducible for public training, secret under DP.
        self.batch_gen = torch.Generator().manual_seed(secrets.randbits(63) if dp else seed)
        if dp is not None:
            torch.manual_seed(secrets.randbits(63))  # the global generators (CPU and CUDA): the diffusion draws
            self.ledger.statistics["dp_randomness"] = ("Poisson sampling, DP noise and the diffusion noise draws "
                                                       "seeded from OS entropy; not derivable from the seed, never "
                                                       "saved")
            if cfg.log_private_diagnostics:
                self.ledger.statistics["metrics.jsonl"] = ("holds NON-private loss, gradient-norm and batch-size "
                                                           "statistics of the sensitive batches: do not release it")
        self.step = 0
        self.clipped = ClippedGradient(model, dp.clip_norm, dp.clipping_mode, dp.draws_per_record) if dp else None
        self.noise = GaussianNoise(self.clipped.params, generator=dp.noise_generator) if dp else None  # OS entropy
        self._note_noise()
        self.poisson = PoissonSampler(len(data), dp.sample_rate, self.batch_gen) if dp else None
        # the noise generator is left out: it changes speed, not the mechanism, so a run may resume with another
        dp_hashed = {k: v for k, v in asdict(dp).items() if k != "noise_generator"} if dp else None
        if dp_hashed and dp.draws_per_record == 1:  # runs from before the option resume as they were
            del dp_hashed["draws_per_record"]
        cfg_hashed = asdict(cfg)
        if cfg.lr_decay == "none":  # runs from before the option resume as they were
            del cfg_hashed["lr_decay"]
        self.config_hash = hashlib.sha256(json.dumps([cfg_hashed, meta.get("phase"), seed, dp_hashed,
                                                      meta.get("identity")],
                                                     sort_keys=True, default=str).encode()).hexdigest()[:16]

    def _note_noise(self) -> None:
        """Name the noise generator in the ledger and charge its tail cap; refuse a run the tail would spoil.

        A resumed run may use another generator, so the ledger keeps the smallest cap of any segment."""
        if self.noise is None:
            return
        self.ledger.statistics["dp_noise"] = f"N(0, (σC)²) per parameter per step, {self.noise.generator_name}"
        previous = self.ledger.noise_z_max
        self.ledger.noise_z_max = self.noise.z_max if previous is None else min(previous, self.noise.z_max)
        self.ledger.check_tail(self.dp.noise_multiplier, self.dp.sample_rate, self.total_steps, self.ledger.noise_z_max)

    # --- checkpoints -----------------------------------------------------------------------------------
    def _checkpoint(self) -> None:
        self.ledger.steps_taken = self.step if self.dp else 0
        state = {"format": "privtranr-diffusion-v1", "model": self.model.state_dict(),
                 "ema": self.ema.state_dict(), "optimizer": self.optimizer.state_dict(), "step": self.step,
                 "total_steps": self.total_steps, "config_hash": self.config_hash, "meta": self.meta,
                 "ledger": self.ledger.to_dict(), "train_config": asdict(self.cfg), "rng": {}}
        if self.dp is None:  # under DP no generator state is written anywhere
            state["rng"] = {"torch": torch.get_rng_state(), "batch": self.batch_gen.get_state()}
            if self.data.device.type == "cuda":  # the diffusion noise (σ, ε draws) comes from the GPU's generator
                state["rng"]["cuda"] = torch.cuda.get_rng_state(self.data.device)
        with atomic_path(self.run_dir / CHECKPOINT) as tmp:
            torch.save(state, tmp)
        atomic_write_json(self.run_dir / "ledger.json", self.ledger.to_dict())

    def _resume(self) -> None:
        path = self.run_dir / CHECKPOINT
        if not path.exists():
            return
        try:
            state = torch.load(path, map_location=self.data.device, weights_only=False)
        except Exception as e:  # truncated or foreign file: torch raises several types
            raise UserError(f"{path} is unreadable ({type(e).__name__}): delete it to start this run over, or use "
                            "another run folder") from None
        if not isinstance(state, dict) or state.get("config_hash") != self.config_hash:
            raise UserError(f"{path} was written by a run with a different configuration; use a new run folder")
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = state["step"]
        if self.dp is None:  # RNG states are CPU byte tensors, whatever map_location moved them to
            torch.set_rng_state(state["rng"]["torch"].cpu())
            if "cuda" in state["rng"] and self.data.device.type == "cuda":
                torch.cuda.set_rng_state(state["rng"]["cuda"].cpu(), self.data.device)
            self.batch_gen.set_state(state["rng"]["batch"].cpu())
        self.ledger = PrivacyLedger.from_dict(state["ledger"])  # continues the spent budget, never resets it
        self._note_noise()
        metrics = self.run_dir / "metrics.jsonl"
        if metrics.exists():  # drop records a killed run wrote after its last checkpoint
            kept = [line for line in metrics.read_text().splitlines() if json.loads(line)["step"] <= self.step]
            metrics.write_text("".join(line + "\n" for line in kept))

    # --- the loop ----------------------------------------------------------------------------------------
    def _batch(self) -> torch.Tensor:
        if self.poisson is not None:
            idx = self.poisson.sample().to(self.data.device)
        else:
            idx = torch.randint(len(self.data), (self.cfg.batch_size,), generator=self.batch_gen).to(self.data.device)
        return self.data[idx]

    def _set_lr(self) -> None:
        """The learning rate of the coming step: a function of the step count only, never of the data."""
        if self.cfg.lr_decay == "cosine":
            lr = 0.5 * self.cfg.lr * (1 + math.cos(math.pi * self.step / self.total_steps))
            for group in self.optimizer.param_groups:
                group["lr"] = lr

    def _train_step(self, x: torch.Tensor) -> dict[str, float]:
        self._set_lr()
        self.optimizer.zero_grad(set_to_none=True)
        if self.dp is None:
            if self.augment is not None:
                x = self.augment(self.step, x)
            loss = self.model.per_sample_loss(x).mean()
            loss.backward()
            self.optimizer.step()
            return {"loss": loss.detach()}
        expected = self.dp.sample_rate * len(self.data)  # divide by the expected, not the realized, batch size
        std = self.dp.noise_multiplier * self.dp.clip_norm / expected
        if len(x) == 0:  # a Poisson batch can be empty: the update is pure noise
            self.noise.fill_(std)
            losses = norms = torch.zeros(0, device=x.device)
        else:
            k = self.dp.draws_per_record  # each record's loss: the mean over k diffusion draws, rows kept together
            rows = x if k == 1 else x.repeat_interleave(k, dim=0)
            losses, norms = self.clipped(lambda: self.model.per_sample_loss(rows) / k, scale=1.0 / expected,
                                         noise=self.noise, noise_std=std)
        self.optimizer.step()
        if len(x) == 0:
            nan = torch.tensor(float("nan"))
            return {"loss": nan, "batch": 0, "grad_norm": nan, "clipped_fraction": torch.tensor(0.0)}
        return {"loss": losses.mean() * self.dp.draws_per_record, "batch": len(x), "grad_norm": norms.mean(),
                "clipped_fraction": (norms > self.dp.clip_norm).float().mean()}

    @torch.no_grad()
    def _update_ema(self) -> None:
        for e, p in zip(self.ema.parameters(), self.model.parameters()):
            e.lerp_(p, 1 - self.cfg.ema_decay)

    def run(self) -> None:
        with FolderLock(self.run_dir):  # a second process on the same folder is refused, not interleaved
            self._run()

    def _run(self) -> None:
        self._resume()
        phase = self.meta.get("phase", "train")
        bar = tqdm(total=self.total_steps, initial=self.step, desc=phase, unit="step", disable=not self.progress,
                   mininterval=1.0)
        start, logged = time.time(), None
        with open(self.run_dir / "metrics.jsonl", "a") as log:
            while self.step < self.total_steps:
                stats = self._train_step(self._batch())
                self.step += 1
                bar.update(1)
                if self.step % self.cfg.ema_every == 0:
                    self._update_ema()
                if self.step % self.cfg.log_every == 0 or self.step == self.total_steps:
                    # .item() only here: one host sync per log interval, not per step
                    record = {"step": self.step, "time_s": round(time.time() - start, 3)}
                    if self.dp is None or self.cfg.log_private_diagnostics:
                        record.update({k: float(v) for k, v in stats.items()})
                    if self.dp is not None:
                        self.ledger.steps_taken = self.step
                        record["epsilon"] = self.ledger.epsilon_spent()
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                    logged = record
                    if "loss" in record:
                        bar.set_postfix(loss=f"{record['loss']:.3f}")
                if self.step % self.cfg.checkpoint_every == 0 or self.step == self.total_steps:
                    self._checkpoint()
        bar.close()
        if self.step == self.total_steps and not (self.run_dir / CHECKPOINT).exists():
            self._checkpoint()
        self.last_metrics = logged
