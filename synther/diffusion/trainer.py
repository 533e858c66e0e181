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
from synther.privacy.engine import DPSGD, DPSettings
from synther.privacy.ledger import PrivacyLedger
from synther.privacy.preconditioning import PublicPreconditioner
from synther.privacy.projection import PublicSubspaceProjector
from synther.privacy.randomness import reseed_torch_globally
from synther.utils.io import atomic_path, atomic_write_json
from synther.utils.locks import FolderLock
from synther.utils.optim import fused_optimizer
from synther.utils.tracking import Tracker, WandbConfig

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


class PublicStep:
    """Non-private training: uniform batches from a generator seeded by --seed (reproducible), the mean loss."""

    def __init__(self, model: EDM, optimizer: torch.optim.Optimizer, num_records: int, batch_size: int, seed: int,
                 augment: Callable[[int, torch.Tensor], torch.Tensor] | None = None) -> None:
        self.model, self.optimizer, self.num_records, self.batch_size = model, optimizer, num_records, batch_size
        self.augment, self.generator = augment, torch.Generator().manual_seed(seed)

    def hash_key(self) -> None:
        return None

    def note_in_ledger(self, ledger: PrivacyLedger, total_steps: int, log_private: bool) -> None:
        pass

    def sample(self) -> torch.Tensor:
        return torch.randint(self.num_records, (self.batch_size,), generator=self.generator)

    def step(self, x: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        self.optimizer.zero_grad(set_to_none=True)
        if self.augment is not None:
            x = self.augment(step, x)
        loss = self.model.per_sample_loss(x).mean()
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.detach()}

    def log_record(self, stats: dict[str, Any], ledger: PrivacyLedger, log_private: bool) -> dict[str, float]:
        return {k: float(v) for k, v in stats.items()}

    def ledger_steps(self, step: int) -> int:
        return 0  # public training spends no privacy budget

    def rng_state(self, device: torch.device) -> dict[str, torch.Tensor]:
        state = {"torch": torch.get_rng_state(), "batch": self.generator.get_state()}
        if device.type == "cuda":  # the diffusion noise (σ, ε draws) comes from the GPU's generator
            state["cuda"] = torch.cuda.get_rng_state(device)
        return state

    def set_rng_state(self, state: dict[str, torch.Tensor], device: torch.device, step: int) -> None:
        torch.set_rng_state(state["torch"].cpu())  # RNG states are CPU byte tensors, whatever map_location did
        if "cuda" in state and device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda"].cpu(), device)
        self.generator.set_state(state["batch"].cpu())


class PrivateStep:
    """DP fine-tuning through the DP-SGD engine (synther.privacy.engine): Poisson batches, clipped per-record
    gradients, Gaussian noise, all from OS entropy and never saved; the ledger counts the engine's steps."""

    def __init__(self, model: EDM, optimizer: torch.optim.Optimizer, num_records: int, settings: DPSettings,
                 public_rows: torch.Tensor | None = None, seed: int = 0) -> None:
        reseed_torch_globally()  # the diffusion draws (σ, noise) inside each per-sample loss are secret too
        self.model, self.settings = model, settings
        self.projector = self.preconditioner = None
        if (settings.subspace_rank or settings.precondition) and public_rows is None:
            raise UserError("the public gradient subspace and preconditioner need public rows")
        if settings.subspace_rank:
            # public rows and draws from the public seed: the subspace is a function of public data and the
            # current (already private) weights, so projecting the noisy gradient onto it is post-processing
            self.projector = PublicSubspaceProjector(
                model, public_rows, settings.subspace_rank, settings.subspace_rows, settings.subspace_every, seed,
                model.per_sample_loss, model.draw_sigma)
        if settings.precondition:  # likewise: public rows, draws from the public seed, the current weights
            self.preconditioner = PublicPreconditioner(
                model, public_rows, settings.precondition_floor, settings.precondition_rows,
                settings.precondition_every, seed, model.per_sample_loss, model.draw_sigma)
        self.engine = DPSGD(model, optimizer, num_records, settings, project=self.projector,
                            precondition=self.preconditioner)

    def hash_key(self) -> dict[str, Any]:
        # the noise generator is left out: it changes speed, not the mechanism, so a run may resume with another
        hashed = {k: v for k, v in asdict(self.settings).items() if k != "noise_generator"}
        if self.settings.draws_per_record == 1:  # runs from before the option resume as they were
            del hashed["draws_per_record"]
        if not self.settings.subspace_rank:  # likewise
            for k in ("subspace_rank", "subspace_rows", "subspace_every"):
                del hashed[k]
        if not self.settings.precondition:  # likewise
            for k in ("precondition", "precondition_floor", "precondition_rows", "precondition_every"):
                del hashed[k]
        return hashed

    def note_in_ledger(self, ledger: PrivacyLedger, total_steps: int, log_private: bool) -> None:
        """Say where the randomness came from and charge the noise generator's tail cap; refuse a run the tail
        would spoil. A resumed run may use another generator, so the ledger keeps the smallest cap of any segment."""
        ledger.statistics["dp_randomness"] = ("Poisson sampling, DP noise and the diffusion noise draws seeded from "
                                              "OS entropy; not derivable from the seed, never saved")
        if log_private:
            ledger.statistics["metrics.jsonl"] = ("holds NON-private loss, gradient-norm and batch-size statistics "
                                                  "of the sensitive batches (so does its W&B copy, if any): do not "
                                                  "release it")
        ledger.statistics["dp_noise"] = f"N(0, (σC)²) per parameter per step, {self.engine.generator_name}"
        previous = ledger.noise_z_max
        ledger.noise_z_max = self.engine.z_max if previous is None else min(previous, self.engine.z_max)
        ledger.check_tail(self.settings.noise_multiplier, self.settings.sample_rate, total_steps, ledger.noise_z_max)

    def sample(self) -> torch.Tensor:
        return self.engine.sample()

    def step(self, x: torch.Tensor, step: int) -> dict[str, Any]:
        for refit in (self.projector, self.preconditioner):
            if refit is not None:
                refit.before_step(step)
        return self.engine.step(x, self.model.per_sample_loss)

    def log_record(self, stats: dict[str, Any], ledger: PrivacyLedger, log_private: bool) -> dict[str, float]:
        """ε so far; the private batch's statistics only if asked (they are not DP)."""
        ledger.steps_taken = self.engine.steps_taken
        record = {k: float(v) for k, v in stats.items()} if log_private else {}
        if self.projector is not None:  # public rows at the (private) current weights: not a sensitive statistic
            record["subspace_share"] = round(self.projector.held_share, 4)
        if self.preconditioner is not None:  # likewise
            record["precondition_spread"] = round(self.preconditioner.spread, 2)
        return {**record, "epsilon": ledger.epsilon_spent()}

    def ledger_steps(self, step: int) -> int:
        return self.engine.steps_taken

    def rng_state(self, device: torch.device) -> dict[str, torch.Tensor]:
        return {}  # under DP no generator state is written anywhere

    def set_rng_state(self, state: dict[str, torch.Tensor], device: torch.device, step: int) -> None:
        self.engine.steps_taken = step  # the randomness restarts from fresh OS entropy; the count continues


def step_strategy(model: EDM, optimizer: torch.optim.Optimizer, num_records: int, batch_size: int, seed: int,
                  dp: DPSettings | None, augment: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
                  public_rows: torch.Tensor | None = None) -> PublicStep | PrivateStep:
    """The step a run takes: DP-SGD when `dp` is given, else the public step (which alone may augment batches)."""
    if dp is None:
        return PublicStep(model, optimizer, num_records, batch_size, seed, augment)
    if augment is not None:
        raise UserError("batch augmentation (curiosity) is for public pre-training only, not DP fine-tuning")
    return PrivateStep(model, optimizer, num_records, dp, public_rows, seed)


def read_run_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A run folder's own checkpoint, to resume from (a clear error when it is unreadable)."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # truncated or foreign file: torch raises several types
        raise UserError(f"{path} is unreadable ({type(e).__name__}): delete it to start this run over, or use "
                        "another run folder") from None
    if not isinstance(state, dict):
        raise different_configuration(path)
    return state


def different_configuration(path: Path) -> UserError:
    return UserError(f"{path} was written by a run with a different configuration; use a new run folder")


class DiffusionTrainer:
    def __init__(self, model: EDM, data: torch.Tensor, cfg: TrainConfig, run_dir: Path, ledger: PrivacyLedger,
                 meta: dict[str, Any], seed: int = 0, dp: DPSettings | None = None,
                 augment: Callable[[int, torch.Tensor], torch.Tensor] | None = None, progress: bool = True,
                 wandb: WandbConfig | None = None, public_rows: torch.Tensor | None = None,
                 attachments: dict[str, Any] | None = None) -> None:
        """`data`: raw transition vectors (N, d) on the model's device. `augment(step, batch)` may extend a
        public pre-training batch (curiosity); it is refused under DP, where batches must stay Poisson samples.
        `wandb`: an opt-in copy of the metrics.jsonl records to Weights & Biases. `public_rows`: raw public
        vectors, for DP fine-tuning's public gradient subspace and preconditioner (dp.public_subspace,
        dp.public_precondition). `attachments`: saved with every checkpoint as they are (e.g. a model trained
        beside this one: the fine-tune's dynamics model)."""
        if cfg.lr_decay not in LR_DECAYS:
            raise UserError(f"unknown train.lr_decay '{cfg.lr_decay}' (choose from: {', '.join(LR_DECAYS)})")
        self.model, self.data, self.cfg, self.run_dir = model, data, cfg, Path(run_dir)
        self.ledger, self.meta, self.seed, self.progress = ledger, meta, seed, progress
        self.attachments = attachments
        self.wandb = wandb or WandbConfig()
        if dp is not None and cfg.log_private_diagnostics and self.wandb.project and self.wandb.mode == "online":
            raise UserError("--train.log_private_diagnostics writes NON-private statistics of the sensitive batches: "
                            "they may not be sent to W&B online (use --wandb.mode offline, or no diagnostics)")
        self.total_steps = cfg.total_steps(len(data))
        self.ema = copy.deepcopy(model).requires_grad_(False)
        self.optimizer = fused_optimizer(torch.optim.AdamW, model.parameters(), lr=cfg.lr,
                                         betas=(0.9, cfg.adam_beta2), weight_decay=cfg.weight_decay)
        self.stepper = step_strategy(model, self.optimizer, len(data), cfg.batch_size, seed, dp, augment, public_rows)
        self.stepper.note_in_ledger(self.ledger, self.total_steps, cfg.log_private_diagnostics)
        self.step = 0
        cfg_hashed = asdict(cfg)
        if cfg.lr_decay == "none":  # runs from before the option resume as they were
            del cfg_hashed["lr_decay"]
        self.config_hash = hashlib.sha256(json.dumps([cfg_hashed, meta.get("phase"), seed, self.stepper.hash_key(),
                                                      meta.get("identity")],
                                                     sort_keys=True, default=str).encode()).hexdigest()[:16]

    # --- checkpoints -----------------------------------------------------------------------------------
    def _checkpoint(self) -> None:
        self.ledger.steps_taken = self.stepper.ledger_steps(self.step)
        state = {"format": "privtranr-diffusion-v1", "model": self.model.state_dict(),
                 "ema": self.ema.state_dict(), "optimizer": self.optimizer.state_dict(), "step": self.step,
                 "total_steps": self.total_steps, "config_hash": self.config_hash, "meta": self.meta,
                 "ledger": self.ledger.to_dict(), "train_config": asdict(self.cfg),
                 "rng": self.stepper.rng_state(self.data.device),
                 **({"attachments": self.attachments} if self.attachments else {})}
        with atomic_path(self.run_dir / CHECKPOINT) as tmp:
            torch.save(state, tmp)
        atomic_write_json(self.run_dir / "ledger.json", self.ledger.to_dict())

    def _resume(self) -> None:
        path = self.run_dir / CHECKPOINT
        if not path.exists():
            return
        state = read_run_checkpoint(path, self.data.device)
        if state.get("config_hash") != self.config_hash:
            raise different_configuration(path)
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = state["step"]
        self.stepper.set_rng_state(state["rng"], self.data.device, self.step)
        self.ledger = PrivacyLedger.from_dict(state["ledger"])  # continues the spent budget, never resets it
        self.stepper.note_in_ledger(self.ledger, self.total_steps, self.cfg.log_private_diagnostics)
        metrics = self.run_dir / "metrics.jsonl"
        if metrics.exists():  # drop records a killed run wrote after its last checkpoint
            kept = [line for line in metrics.read_text().splitlines() if json.loads(line)["step"] <= self.step]
            metrics.write_text("".join(line + "\n" for line in kept))

    # --- the loop ----------------------------------------------------------------------------------------
    def _batch(self) -> torch.Tensor:
        return self.data[self.stepper.sample().to(self.data.device)]

    def _set_lr(self) -> None:
        """The learning rate of the coming step: a function of the step count only, never of the data."""
        if self.cfg.lr_decay == "cosine":
            lr = 0.5 * self.cfg.lr * (1 + math.cos(math.pi * self.step / self.total_steps))
            for group in self.optimizer.param_groups:
                group["lr"] = lr

    def _train_step(self, x: torch.Tensor) -> dict[str, Any]:
        self._set_lr()
        return self.stepper.step(x, self.step)

    @torch.no_grad()
    def _update_ema(self) -> None:
        for e, p in zip(self.ema.parameters(), self.model.parameters()):
            e.lerp_(p, 1 - self.cfg.ema_decay)

    def run(self) -> None:
        with FolderLock(self.run_dir):  # a second process on the same folder is refused, not interleaved
            self.tracker = Tracker(self.wandb, self.run_dir, self.run_dir.name, self.meta.get("config") or {})
            try:
                self._run()
            finally:
                self.tracker.close()

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
                    record = {"step": self.step, "time_s": round(time.time() - start, 3),
                              **self.stepper.log_record(stats, self.ledger, self.cfg.log_private_diagnostics)}
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                    self.tracker.log(record, self.step)
                    logged = record
                    if "loss" in record:
                        bar.set_postfix(loss=f"{record['loss']:.3f}")
                if self.step % self.cfg.checkpoint_every == 0 or self.step == self.total_steps:
                    self._checkpoint()
        bar.close()
        if self.step == self.total_steps and not (self.run_dir / CHECKPOINT).exists():
            self._checkpoint()
        self.last_metrics = logged
