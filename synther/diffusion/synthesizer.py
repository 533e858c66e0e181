"""The DP diffusion synthesizer: public pre-training, DP fine-tuning, sampling, and the Python API.

    pretrain(cfg)  public datasets -> normalizer (public stats) + EDM trained without privacy
    finetune(cfg)  pre-trained checkpoint + sensitive dataset -> DP-SGD to (ε, δ), ledger (composed with every
                   earlier use of sensitive data by the loaded checkpoint)
    sample(cfg)    checkpoint -> samples.npz (D4RL keys) + samples.json (provenance + ledger)
    Synthesizer.load(path).sample(n) -> TransitionDataset, for use from Python.
"""
import dataclasses
import hashlib
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from synther.data import TransitionDataset, TransitionLayout, check_compatible, load_dataset, public_action_bounds
from synther.diffusion.curiosity import Curiosity, CuriosityConfig
from synther.diffusion.denoiser import PROFILES, DenoiserConfig
from synther.diffusion.edm import EDM, EDMConfig, SamplerConfig, check_sampler, network_evaluations
from synther.diffusion.floor import FloorModel
from synther.diffusion.identities import count, find_identities, project
from synther.diffusion.lora import add_adapters, merge_adapters
from synther.diffusion.normalizer import NUMPY_NORMAL_Z_MAX, Normalizer
from synther.diffusion.relabel import (HELD_OUT, WIDTH, PublicDynamics, PublicDynamicsEnsemble, SensitiveFit,
                                      cached_public_dynamics, check_relabel, finetune_dynamics, least_disputed,
                                      relabel_rows)
from synther.diffusion.saturation import choose_action_space, saturated_share, snap_to_bounds
from synther.diffusion.selection import PublicSelection, warm_up
from synther.diffusion.sparsity import check_settings, keep_densest, oversampled
from synther.diffusion.support import MAX_DRAWS_PER_ROW, StateSupport, check_threshold, parse_widths
from synther.diffusion.trainer import (CHECKPOINT, DiffusionTrainer, TrainConfig, different_configuration,
                                      read_run_checkpoint)
from synther.errors import UserError
from synther.layout import dataset_tag, diffusion_run_name, runs_root, script
from synther.privacy.accounting import ACCOUNTANTS, calibrate_noise_multiplier, epsilon_spent, validate_target
from synther.privacy.dpsgd import CLIPPING_MODES, NOISE_GENERATORS
from synther.privacy.engine import DPSettings
from synther.privacy.ledger import LEGACY_Z_MAX, PrivacyLedger
from synther.privacy.randomness import secret_numpy_rng
from synther.utils.device import resolve_device
from synther.utils.io import file_sha256
from synther.utils.locks import FolderLock
from synther.utils.options import comma_list
from synther.utils.provenance import package_versions
from synther.utils.threads import follow_lent_threads
from synther.utils.tracking import WandbConfig


@dataclass
class DPConfig:
    epsilon: float = 10.0  # target ε for the sensitive dataset (aliases: --epsilon, the paper's --dp_epsilon)
    delta: float = 1e-6  # target δ (aliases: --delta, --dp_delta)
    clip_norm: float = 1.0  # per-sample gradient clip norm C (alias: the paper's --dp_max_grad_norm)
    accountant: str = "rdp"  # privacy accountant: rdp or prv (alias: the paper's --accountant)
    clipping: str = "ghost"  # per-sample clipping backend: ghost (fast, ours), opacus_hooks or opacus_ghost
    noise_generator: str = "auto"  # Gaussian noise source: philox (our vectorized CPU kernel; torch's Philox on CUDA), torch, or auto (philox where the kernel builds)
    lora_rank: int = 0  # fine-tune low-rank adapters of this rank on every weight matrix instead of the weights themselves (0: all weights); fewer noisy coordinates per step, but on the umaze proxy at ε = 10 its agents scored far below full fine-tuning's (README)
    public_subspace: int = 0  # > 0: project every noisy gradient onto the top-k directions (k = this value) of public rows' per-sample gradients at the current weights (rows of the pre-training datasets, refit every public_subspace_every steps): DP noise in k of the model's coordinates' worth instead of all; post-processing, no privacy cost (0: off; on the maze proxy k = 128 halved support precision: README)
    public_subspace_rows: int = 512  # public rows per subspace fit (at least the rank)
    public_subspace_every: int = 100  # DP steps between subspace fits, each on fresh public rows and draws from --seed
    public_precondition: bool = False  # scale every per-sample gradient, BEFORE clipping and noise, by a diagonal preconditioner fitted on public rows' per-sample gradients at the current weights (AdaDPS; RMSProp's inverse root of the second moment, Adafactor-factored per layer; rows of the pre-training datasets, refit every public_precondition_every steps): under DP, Adam's own second moment sees mostly noise; sensitivity C, σ and ε unchanged (off by default: on the HalfCheetah stand-in it moved no fidelity score and did not lift TD3+BC: README)
    public_precondition_floor: float = 0.01  # each factored second moment is raised to at least this fraction of its layer's mean first, so no factor exceeds 1/sqrt(floor) times a typical one
    public_precondition_rows: int = 512  # public rows per preconditioner fit
    public_precondition_every: int = 100  # DP steps between preconditioner fits, each on fresh public rows and draws from --seed
    draws_per_record: int = 1  # noise multiplicity K: each record's loss averages K diffusion draws (σ, n) before clipping; less gradient variance at the same ε, K× the compute
    normalizer: str = "public"  # 'public': keep the pre-trained model's public statistics; 'dp': re-estimate them on the sensitive data with the Gaussian mechanism, charged to the same budget
    normalizer_noise_multiplier: float = 50.0  # noise multiplier of that Gaussian mechanism (normalizer 'dp' only)
    support_cells: str = ""  # release a DP histogram of the sensitive states with the model, on cells of these widths (one per observation dimension, comma-separated, in data units; 0 leaves a dimension out), so that sampling keeps rows where the data lies (--support_threshold); its Gaussian mechanism is charged to the same ε (empty: no histogram)
    support_noise_multiplier: float = 5.0  # σ of that histogram's Gaussian noise, in records per cell (one record changes one count by 1)
    public_warmup_steps: int = 0  # > 0: before DP-SGD, train this many non-private steps on PUBLIC rows (the pre-training datasets) drawn toward the sensitive set: each public k-means cluster weighted by a DP count of the sensitive records nearest it; that Gaussian mechanism is charged to the same ε (0: off)
    public_warmup_clusters: int = 64  # k-means clusters of the public rows (fitted on public data, seeded by --seed)
    public_warmup_noise_multiplier: float = 20.0  # σ of the Gaussian noise on each cluster's count, in records (one record changes one count by 1); at ε = 1 it raises DP-SGD's σ by about 3 in a hundred (10: about 12 in a hundred)
    dynamics_steps: int = 0  # > 0: also fine-tune a dynamics model (s, a) → (s′ − s, r) on the sensitive training split for this many steps, with DP-SGD of its own (dynamics_noise_multiplier, Poisson batches of dynamics_batch_size expected rows, C = clip_norm), starting from the one fitted to the PUBLIC datasets as --relabel public fits it; it is kept in the checkpoint for --relabel dp, and its Gaussian mechanism is charged to the same ε (the diffusion's σ is calibrated with it) (0: off)
    dynamics_noise_multiplier: float = 8.0  # σ of the dynamics model's DP-SGD (8, 8192 and 3e-4 were chosen on a HalfCheetah stand-in with 500 steps at ε = 10, where they raise the diffusion's σ about 2 in a hundred; alone they spend ε ≈ 2.3 on 48k rows: README)
    dynamics_batch_size: int = 8192  # its expected Poisson batch size (a regression wants large batches under DP)
    dynamics_lr: float = 3e-4  # its Adam learning rate
    dynamics_layers: int = 0  # train only the last this many of its 4 linear layers, the others kept at the public fit: fewer noised coordinates, for small budgets (0: all)
    dynamics_clip_norm: float = 0.0  # C of its DP-SGD (0: clip_norm, the diffusion model's)
    dynamics_width: int = 512  # hidden units of the public dynamics model it starts from (--relabel_width's)
    dynamics_public_steps: int = 20_000  # training steps of that public model (--relabel_steps')
    train_fraction: float = 0.8  # share of the sensitive set trained on; the rest is held out (MIA non-members)
    enabled: bool = True  # false: fine-tune WITHOUT privacy (a reference for attacks and audits; its output is not DP)


@dataclass
class DiffusionConfig:
    mode: str = "pretrain"  # pretrain | finetune | sample
    public_datasets: str = ""  # pretrain: comma-separated public datasets, names or paths (alias: the paper's --datasets_name)
    dataset: str = ""  # finetune: the sensitive dataset, a name or path (paper: --dataset)
    max_sensitive_rows: int = 0  # finetune: keep only this many sensitive rows (those with the smallest per-record coins, seeded by --seed) before the split; the guarantee is then stated for that subset (0: all)
    checkpoint: str = ""  # finetune: the pre-trained checkpoint; sample: the checkpoint to sample from (alias: the paper's --load_checkpoint)
    run_dir: str = ""  # output folder; default runs/diffusion/<mode>-<dataset>[-eps<ε>]-seed<seed> ($PRIVTRANR_RUNS_DIR replaces runs/); sample: the checkpoint's folder
    seed: int = 0  # seeds torch, numpy and the data split (never the DP mechanisms' randomness, which comes from OS entropy)
    device: str = "auto"  # auto (CUDA when available), cpu or cuda
    action_space: str = "raw"  # pretrain: how the model represents actions: 'raw', 'atanh' of their position within the bounds (samples map back with tanh, never onto a bound: for tanh-squashed policies such as SAC's), or 'auto' (atanh where under a thousandth of the PUBLIC action entries lie on a bound, raw otherwise); raw by default: atanh fixed a HalfCheetah stand-in's action marginals, and kept agent utility only together with --relabel public (README); fine-tuning and sampling keep the checkpoint's
    profile: str = "cpu-small"  # denoiser size: cpu-small (W=256×3), synther (W=1024×6), paper (W=2048×6)
    width: int = 0  # override the profile's residual width (0 = profile's)
    depth: int = 0  # override the profile's number of residual blocks (0 = profile's)
    edm: EDMConfig = field(default_factory=EDMConfig)  # EDM noise schedule and loss constants
    train: TrainConfig = field(default_factory=TrainConfig)  # optimizer, batch, epochs, EMA, logging
    dp: DPConfig = field(default_factory=DPConfig)  # DP fine-tuning
    curiosity: CuriosityConfig = field(default_factory=CuriosityConfig)  # curiosity-driven pre-training (RND)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)  # sampler for mode=sample
    num_samples: int = 100_000  # transitions to generate in mode=sample (alias: the paper's --save_num_samples)
    sample_batch: int = 10_000  # transitions per sampling batch
    reward_range: str = "public"  # sample: 'public' clips synthetic rewards to the public datasets' reward range (post-processing of public facts: no privacy cost), 'none' keeps them
    saturated_actions: str = "public"  # sample: 'public' moves the synthetic action entries nearest a bound onto it, as many as the public datasets' share of entries on a bound (post-processing of public facts: no privacy cost); 'none' only clips actions to the bounds
    identities: str = "public"  # sample: 'public' projects each row onto the exact linear identities the public data satisfies (PointMaze: x′ = x + dt·v′), found at pre-training (post-processing of public facts: no privacy cost); 'none' keeps rows as sampled
    relabel: str = "none"  # sample: 'public' replaces every row's s′ and r by a dynamics model (s, a) → (s′ − s, r) fitted to the PUBLIC datasets the checkpoint's ledger names (post-processing with public facts: no privacy cost); for data whose public and sensitive sets share the physics (one robot, one world; not mazes with other walls); 'dp' by the dynamics model a fine-tune with --dp.dynamics_steps trained and accounted; 'none' keeps the sampled s′ and r
    relabel_steps: int = 20_000  # sample: training steps of that dynamics model (relabel 'public' only; minutes on one CPU core)
    relabel_width: int = WIDTH  # sample: hidden units in each of the dynamics model's three layers (relabel 'public' only; cost grows about with its square)
    relabel_models: int = 1  # sample: fit this many such models from different seeds and label with their mean (relabel 'public' only; each costs relabel_steps)
    relabel_drop: float = 0.0  # sample: draw num_samples/(1 − f) rows and drop the fraction f whose s′ the relabel_models (≥ 2) public models disagree on most: (s, a) where the public physics is extrapolated (relabel 'public' only; public data and the samples: no privacy cost)
    relabel_reward: str = "model"  # sample, with relabel 'public' or 'dp': 'model' labels r with the dynamics model; 'ranked' hands the rows' own sampled rewards out again in the model's order (the row the model rates k-th lowest gets the k-th lowest sampled reward), so r keeps the generator's distribution and the model decides which rows pay (post-processing of the samples and the model: no privacy cost)
    floor: str = "none"  # sample: 'public' raises the root of every state (s and s′) whose body lies deeper in the floor than the public data's 1st percentile of contact depth, by the robot's public MuJoCo model (locomotion only; post-processing of public facts: no privacy cost); before relabel 'public', whose s′ then follows the raised s; 'none' keeps rows as sampled
    drop_sparse: float = 0.0  # sample: draw num_samples/(1 − f) rows and drop the fraction f most isolated (largest distance to their sparse_k-th nearest synthetic neighbour): rows off the data's support that make Q-learners fall; reads only the samples (post-processing: no privacy cost)
    sparse_k: int = 20  # sample: the neighbour whose distance measures a row's isolation (drop_sparse only)
    support_threshold: float = 2.0  # sample: with a checkpoint fine-tuned with --dp.support_cells, keep only rows whose s and s′ lie in cells whose noisy count reaches this many noise standard deviations (post-processing of the accounted histogram; 0 keeps every row)
    progress: bool = True  # show progress bars
    wandb: WandbConfig = field(default_factory=WandbConfig)  # opt-in copy of the training metrics to Weights & Biases


# What only --mode sample reads. A pre-training or fine-tune does not depend on them (a test holds the training code
# to it), so a sweep's fingerprint of those jobs leaves them out: a new sampler re-samples, it does not train again
# (a DP fine-tune trained again is a new release of the sensitive data).
SAMPLING_FIELDS = ("sampler", "num_samples", "sample_batch", "reward_range", "saturated_actions", "identities",
                   "relabel", "relabel_steps", "relabel_width", "relabel_models", "relabel_drop", "relabel_reward",
                   "floor", "drop_sparse", "sparse_k", "support_threshold")


# the paper repo's flags, and the (ε, δ) spelling every DP release also accepts (baselines.py's TARGET_ALIASES)
DIFFUSION_ALIASES = {"--epsilon": "--dp.epsilon", "--delta": "--dp.delta", "--dp_epsilon": "--dp.epsilon",
                     "--dp_delta": "--dp.delta", "--dp_max_grad_norm": "--dp.clip_norm",
                     "--accountant": "--dp.accountant", "--datasets_name": "--public_datasets",
                     "--save_num_samples": "--num_samples", "--load_checkpoint": "--checkpoint"}


def _names(spec: str) -> list[str]:
    return comma_list(spec)


def default_run_dir(cfg: DiffusionConfig) -> Path:
    if cfg.run_dir:
        return Path(cfg.run_dir)
    if cfg.mode == "sample":
        return Path(cfg.checkpoint).parent
    data = public_tag(_names(cfg.public_datasets)) if cfg.mode == "pretrain" else dataset_tag(cfg.dataset)
    return runs_root() / "diffusion" / diffusion_run_name(cfg.mode, data, cfg.seed, cfg.dp.epsilon, cfg.dp.enabled)


def public_tag(public_datasets: list[str]) -> str:
    """The public sets' part of a pre-training folder name: their stems joined by '+'."""
    return "+".join(Path(n).stem for n in public_datasets)


def diffusion_command(python: str, mode: str, config_path: str | Path, device: str, progress: bool,
                      options: list[str]) -> list[str]:
    """The command line of MuJoCo/train_diffuser.py (DiffusionConfig) in `mode` with further `options`."""
    return [python, script("train_diffuser.py"), "--config_path", str(config_path), "--device", device,
            "--progress", str(progress).lower(), "--mode", mode, *options]


def _squash(action_space: str, layout: TransitionLayout, low: Any, high: Any
            ) -> tuple[slice, np.ndarray, np.ndarray] | None:
    """The normalizer's squashed columns for a model of `action_space` (see synther.diffusion.saturation)."""
    return (layout.action, np.asarray(low), np.asarray(high)) if action_space == "atanh" else None


def _denoiser_config(cfg: DiffusionConfig) -> DenoiserConfig:
    if cfg.profile not in PROFILES:
        raise UserError(f"unknown profile '{cfg.profile}' (choose from: {', '.join(PROFILES)})")
    base = PROFILES[cfg.profile]
    return dataclasses.replace(base, width=cfg.width or base.width, depth=cfg.depth or base.depth)


# --- pre-training ------------------------------------------------------------------------------------------
def pretrain(cfg: DiffusionConfig) -> Path:
    names = _names(cfg.public_datasets)
    if not names:
        raise UserError("pretrain needs --public_datasets (one or more public datasets, comma-separated)")
    public = [load_dataset(n) for n in names]
    for other in public[1:]:
        check_compatible(public[0], other)
    layout = public[0].layout
    x = np.concatenate([ds.to_vectors() for ds in public])
    ds_names = [ds.name or ds.source for ds in public]
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    low, high, bounds_source = public_action_bounds(public)
    share = saturated_share(np.concatenate([ds.actions for ds in public]), low, high)
    try:
        action_space, action_space_why = choose_action_space(cfg.action_space, share, low, high)
    except ValueError as e:
        raise UserError(str(e)) from None
    normalizer = Normalizer.from_public(x, layout, ds_names, _squash(action_space, layout, low, high))
    identities = find_identities(x, layout)
    model = EDM(layout.dim, normalizer, _denoiser_config(cfg), cfg.edm).to(device)
    meta = {"phase": "pretrain", "obs_dim": layout.obs_dim, "action_dim": layout.action_dim,
            "denoiser": asdict(_denoiser_config(cfg)), "edm": asdict(cfg.edm), "normalizer_source": normalizer.source,
            "action_low": low.tolist(), "action_high": high.tolist(), "action_bounds_source": bounds_source,
            "public_min": x.min(0).tolist(), "public_max": x.max(0).tolist(), "public_datasets": ds_names,
            "env_dataset": public[0].name, "curiosity": asdict(cfg.curiosity), "versions": package_versions(),
            "public_identities": identities, "public_action_saturation": share, "action_space": action_space}
    datasets = [ds.identity() for ds in public]
    ledger = PrivacyLedger(public_datasets=ds_names, statistics={
        "normalizer": f"public datasets {ds_names}", "action_bounds": bounds_source,
        "linear_identities": f"{count(identities)} exact linear identities of the public datasets {ds_names}",
        "action_saturation": f"share of the public datasets' action entries on a bound {ds_names}",
        "action_space": f"{action_space_why} (public datasets {ds_names})"},
        data_uses=[{"phase": "pretrain", "use": "public", "datasets": datasets, "run": str(default_run_dir(cfg))}])
    meta["identity"] = {"public": datasets}
    run_dir = default_run_dir(cfg)
    data = torch.as_tensor(x, device=device)
    augment = None
    if cfg.curiosity.mode != "off":
        augment = Curiosity(model, cfg.curiosity, math.ceil(len(x) / cfg.train.batch_size), cfg.seed)
    DiffusionTrainer(model, data, cfg.train, run_dir, ledger, meta, cfg.seed, augment=augment,
                     progress=cfg.progress, wandb=cfg.wandb).run()
    return run_dir / CHECKPOINT


# --- DP fine-tuning ----------------------------------------------------------------------------------------
def sensitive_split(cfg: DiffusionConfig, sensitive: TransitionDataset | None = None
                    ) -> tuple[TransitionDataset, TransitionDataset, TransitionDataset]:
    """(sensitive set used, training split, held-out split) exactly as fine-tuning with `cfg` makes them; the
    membership-inference attack calls this again to know who the members are."""
    sensitive = sensitive if sensitive is not None else load_dataset(cfg.dataset)
    if 0 < cfg.max_sensitive_rows < sensitive.size:
        # the records with the smallest coins: one added record can swap at most one member of the subset
        keep = np.argsort(sensitive.record_coins(cfg.seed, "subset"), kind="stable")[:cfg.max_sensitive_rows]
        sensitive = sensitive.subset(np.sort(keep), note=f"the {cfg.max_sensitive_rows} rows with the smallest "
                                                         f"per-record coins (seed {cfg.seed})")
    train, heldout = sensitive.split(cfg.dp.train_fraction, seed=cfg.seed)
    return sensitive, train, heldout


def finetune(cfg: DiffusionConfig, extra_train_rows: np.ndarray | None = None) -> Path:
    """DP fine-tuning (or, with dp.enabled false, a non-private reference run).

    `extra_train_rows` (raw vectors) join the training split: the privacy audit inserts its canaries this way.
    """
    dp = cfg.dp
    if dp.enabled:
        validate_target(dp.epsilon, dp.delta)
    if dp.accountant not in ACCOUNTANTS:
        raise UserError(f"unknown accountant '{dp.accountant}' (choose from: {', '.join(ACCOUNTANTS)})")
    if dp.clipping not in CLIPPING_MODES:
        raise UserError(f"unknown clipping '{dp.clipping}' (choose from: {', '.join(CLIPPING_MODES)})")
    if dp.noise_generator not in NOISE_GENERATORS:
        raise UserError(f"unknown noise generator '{dp.noise_generator}' (choose from: {', '.join(NOISE_GENERATORS)})")
    if dp.draws_per_record < 1:
        raise UserError(f"dp.draws_per_record must be at least 1, got {dp.draws_per_record}")
    if dp.lora_rank < 0:
        raise UserError(f"dp.lora_rank must be ≥ 0, got {dp.lora_rank}")
    if dp.normalizer not in ("public", "dp"):
        raise UserError(f"dp.normalizer must be 'public' or 'dp', got '{dp.normalizer}'")
    if dp.public_subspace < 0:
        raise UserError(f"dp.public_subspace must be ≥ 0, got {dp.public_subspace}")
    if dp.public_subspace and not dp.enabled:
        raise UserError("dp.public_subspace projects DP-SGD's noisy gradients: it needs DP fine-tuning (dp.enabled "
                        "true)")
    if dp.public_subspace and dp.public_subspace_rows < dp.public_subspace:
        raise UserError(f"dp.public_subspace_rows ({dp.public_subspace_rows}) must be at least the subspace's rank "
                        f"dp.public_subspace ({dp.public_subspace})")
    if dp.public_subspace and dp.clipping != "ghost":
        raise UserError(f"dp.public_subspace reads layer inputs and output gradients as clipping 'ghost' does; it is "
                        f"not built for clipping '{dp.clipping}'")
    if dp.public_subspace and dp.public_subspace_every < 1:
        raise UserError(f"dp.public_subspace_every must be ≥ 1, got {dp.public_subspace_every}")
    if dp.public_precondition:
        if not dp.enabled:
            raise UserError("dp.public_precondition scales DP-SGD's per-sample gradients before clipping: it needs DP "
                            "fine-tuning (dp.enabled true)")
        if dp.clipping != "ghost":
            raise UserError(f"dp.public_precondition scales the layer inputs and output gradients clipping 'ghost' "
                            f"reads; it is not built for clipping '{dp.clipping}'")
        if not 0 < dp.public_precondition_floor <= 1:
            raise UserError(f"dp.public_precondition_floor must be in (0, 1], got {dp.public_precondition_floor}")
        if dp.public_precondition_rows < 1 or dp.public_precondition_every < 1:
            raise UserError(f"dp.public_precondition_rows and _every must be ≥ 1, got {dp.public_precondition_rows} "
                            f"and {dp.public_precondition_every}")
    if dp.public_warmup_steps < 0:
        raise UserError(f"dp.public_warmup_steps must be ≥ 0, got {dp.public_warmup_steps}")
    if dp.public_warmup_steps and not dp.enabled:
        raise UserError("dp.public_warmup_steps releases a DP count of the sensitive records per public cluster: it "
                        "needs DP fine-tuning (dp.enabled true)")
    if dp.dynamics_steps < 0:
        raise UserError(f"dp.dynamics_steps must be ≥ 0, got {dp.dynamics_steps}")
    if dp.dynamics_steps:
        if not (dp.dynamics_noise_multiplier > 0 and dp.dynamics_lr > 0):
            raise UserError("dp.dynamics_noise_multiplier and dp.dynamics_lr must be positive, got "
                            f"{dp.dynamics_noise_multiplier} and {dp.dynamics_lr}")
        for name in ("dynamics_batch_size", "dynamics_width", "dynamics_public_steps"):
            if getattr(dp, name) < 1:
                raise UserError(f"dp.{name} must be at least 1, got {getattr(dp, name)}")
        if not 0 <= dp.dynamics_layers <= 4:
            raise UserError(f"dp.dynamics_layers must be 0 (all) to 4, got {dp.dynamics_layers}")
        if not dp.dynamics_clip_norm >= 0:
            raise UserError(f"dp.dynamics_clip_norm must be ≥ 0 (0: dp.clip_norm), got {dp.dynamics_clip_norm}")
    if dp.support_cells and not dp.enabled:
        raise UserError("dp.support_cells releases a DP histogram of the sensitive states: it needs DP fine-tuning "
                        "(dp.enabled true)")
    if not cfg.dataset:
        raise UserError("finetune needs --dataset (the sensitive dataset)")
    if not cfg.checkpoint:
        raise UserError("finetune needs --checkpoint (a model pre-trained on public data)")
    device = resolve_device(cfg.device)
    model, meta, base_ledger = load_model(cfg.checkpoint, device)
    if dp.lora_rank:
        add_adapters(model.net, dp.lora_rank)
    sensitive = load_dataset(cfg.dataset)
    if (sensitive.obs_dim, sensitive.action_dim) != (meta["obs_dim"], meta["action_dim"]):
        raise UserError(f"dimension mismatch: {cfg.dataset} has obs/action dims {sensitive.obs_dim}/"
                        f"{sensitive.action_dim} but the checkpoint was trained on {meta['obs_dim']}/{meta['action_dim']}")
    identity = sensitive.identity()
    _check_history(base_ledger, identity, cfg)
    sensitive, train, heldout = sensitive_split(cfg, sensitive)
    x = train.to_vectors()
    if extra_train_rows is not None:
        x = np.concatenate([x, np.asarray(extra_train_rows, dtype=x.dtype)])
    layout = TransitionLayout(meta["obs_dim"], meta["action_dim"])
    prior = _earlier_mechanisms(base_ledger, cfg.checkpoint)
    statistics = dict(base_ledger.statistics)
    if dp.normalizer == "dp" and dp.enabled:
        pad = 0.1 * (np.asarray(meta["public_max"]) - np.asarray(meta["public_min"]))
        box_low, box_high = np.asarray(meta["public_min"]) - pad, np.asarray(meta["public_max"]) + pad
        # a mechanism's noise: OS entropy, never --seed, never saved
        normalizer = Normalizer.dp_estimate(x, layout, box_low, box_high, dp.normalizer_noise_multiplier,
                                            secret_numpy_rng(), model.normalizer.squash)
        model.normalizer.mean.copy_(normalizer.mean)
        model.normalizer.std.copy_(normalizer.std)
        model.normalizer.source = normalizer.source
        prior.append({"mechanism": "dp normalizer (Gaussian)", **normalizer.source})
        statistics["normalizer"] = ("Gaussian-mechanism estimate on the sensitive training split (accounted; noise "
                                    "from OS entropy, never saved)")
    support = _release_support(model, meta, x[:, layout.obs], dp, prior, statistics)
    public_rows = None
    if dp.public_subspace or dp.public_precondition or dp.public_warmup_steps:
        option = next(name for name, on in [("dp.public_subspace", dp.public_subspace),
                                            ("dp.public_precondition", dp.public_precondition),
                                            ("dp.public_warmup_steps", dp.public_warmup_steps)] if on)
        recorded, public = public_datasets(base_ledger, cfg.checkpoint, option)
        public_rows = torch.as_tensor(np.concatenate([ds.to_vectors() for ds in public]), device=device)
        if public_rows.shape[1] != layout.dim:
            raise UserError(f"{option}: the public datasets' rows have {public_rows.shape[1]} columns, "
                            f"the model {layout.dim}")
        public_names = ', '.join(str(d.get('name') or d.get('source')) for d in recorded)
    if dp.public_subspace:
        statistics["gradient_projection"] = (
            f"each noisy gradient projected onto the top-{dp.public_subspace} subspace of the per-sample gradients of "
            f"{min(dp.public_subspace_rows, len(public_rows))} public rows ({public_names}) at the current weights, "
            f"refit every {dp.public_subspace_every} steps (rows and diffusion draws from --seed): post-processing of "
            "the DP gradient; no sensitive data read")
    if dp.public_precondition:
        statistics["gradient_preconditioning"] = (
            f"each per-sample gradient scaled, before clipping, by a diagonal preconditioner (Adafactor-factored "
            f"inverse root of the second moment, floor {dp.public_precondition_floor}) fitted on the per-sample "
            f"gradients of {min(dp.public_precondition_rows, len(public_rows))} public rows ({public_names}) at the "
            f"current weights, refit every {dp.public_precondition_every} steps (rows and diffusion draws from "
            "--seed): the preconditioned gradient is what is clipped to C and noised, so σ and ε are unchanged; no "
            "sensitive data read")
    q = cfg.train.batch_size / len(x)
    if q > 1:
        raise UserError(f"train.batch_size {cfg.train.batch_size} exceeds the {len(x)} training records")
    run_dir = default_run_dir(cfg)
    dynamics, dynamics_meta = _sensitive_dynamics(x, layout, cfg, base_ledger, prior, statistics, run_dir)
    warmup = _public_warmup(model, x, public_rows, public_names if public_rows is not None else "", cfg, prior,
                            statistics, run_dir)
    steps = cfg.train.total_steps(len(x))
    statistics["split"] = (f"a coin per record (sensitive.split(train_fraction={dp.train_fraction}, seed={cfg.seed})"
                           ": one record's presence changes no other record's side)"
                           + (f" of a {sensitive.size}-row subset" if cfg.max_sensitive_rows else ""))
    if extra_train_rows is not None:
        statistics["extra_train_rows"] = f"{len(extra_train_rows)} rows added to the training split (audit canaries)"
    name = sensitive.name or str(cfg.dataset)
    if 0 < cfg.max_sensitive_rows < identity["rows"]:
        name += f" (its {sensitive.size}-row subset selected by per-record coins, seed {cfg.seed})"
    base_sha = file_sha256(cfg.checkpoint)
    uses = _inherited_uses(base_ledger, cfg.checkpoint) + [{
        "phase": "finetune", "use": "dp" if dp.enabled else "non-private", "datasets": [identity],
        "rows_trained": len(x), "run": str(run_dir), "started_from": {"checkpoint": str(cfg.checkpoint),
                                                                      "sha256": base_sha}}]
    common = dict(sensitive_dataset=name, sensitive_train_rows=len(x), sensitive_heldout_rows=len(heldout),
                  public_datasets=base_ledger.public_datasets, data_uses=uses, prior_mechanisms=prior)
    if dp.enabled:
        sigma = calibrate_noise_multiplier(dp.epsilon, dp.delta, q, steps, dp.accountant,
                                           prior=[tuple(p["accountant_entry"]) for p in prior])
        ledger = PrivacyLedger(
            target_epsilon=dp.epsilon, delta=dp.delta, accountant=dp.accountant, noise_multiplier=sigma,
            sample_rate=q, expected_batch_size=cfg.train.batch_size, clip_norm=dp.clip_norm,
            clipping_mode=dp.clipping, planned_steps=steps, **common,
            statistics={**statistics,
                        "sample_rate": "expected batch size / training rows (the row count is treated as public, "
                                       "as opacus and TF Privacy do; the replace-one ε holds without that)",
                        **({"noise_multiplicity": f"each record's loss is the mean over {dp.draws_per_record} "
                                                  "diffusion draws; the record's whole gradient is clipped to C"}
                           if dp.draws_per_record > 1 else {}),
                        **({"trained_parameters": f"rank-{dp.lora_rank} adapters of every weight matrix (the "
                                                  "pre-trained weights frozen); noise on every adapter coordinate"}
                           if dp.lora_rank else {}),
                        "seed": "--seed chooses the split (and the subset) only; no mechanism's randomness (Poisson "
                                "batches, DP noise, diffusion noise draws) derives from it"})
        settings = DPSettings(noise_multiplier=sigma, clip_norm=dp.clip_norm, sample_rate=q, clipping_mode=dp.clipping,
                              noise_generator=dp.noise_generator, draws_per_record=dp.draws_per_record,
                              subspace_rank=dp.public_subspace, subspace_rows=dp.public_subspace_rows,
                              subspace_every=dp.public_subspace_every, precondition=dp.public_precondition,
                              precondition_floor=dp.public_precondition_floor,
                              precondition_rows=dp.public_precondition_rows,
                              precondition_every=dp.public_precondition_every)
    else:
        ledger = PrivacyLedger(private=False, planned_steps=steps, statistics=statistics, **common)
        settings = None
    meta = {**meta, "phase": "finetune", "normalizer_source": model.normalizer.source,
            "sensitive_dataset": ledger.sensitive_dataset, "sensitive_spec": str(cfg.dataset), "split_seed": cfg.seed,
            "train_fraction": dp.train_fraction, "pretrained_from": str(cfg.checkpoint),
            "extra_train_rows": 0 if extra_train_rows is None else len(extra_train_rows),
            "config": asdict(cfg), "versions": package_versions(), "lora_rank": dp.lora_rank,
            "state_support": support, "public_warmup": warmup, "dp_dynamics": dynamics_meta,
            # what a resumed run must match: the data trained on and the checkpoint started from
            "identity": {"sensitive": identity, "train_sha256": hashlib.sha256(x.tobytes()).hexdigest(),
                         "base_checkpoint_sha256": base_sha, **({"lora_rank": dp.lora_rank} if dp.lora_rank else {}),
                         **({"state_support": support} if support else {}),
                         **({"dynamics": [dp.dynamics_steps, dp.dynamics_noise_multiplier, dp.dynamics_batch_size,
                                          dp.dynamics_lr, dp.dynamics_width, dp.dynamics_public_steps,
                                          dp.dynamics_layers, dp.dynamics_clip_norm or dp.clip_norm]}
                            if dp.dynamics_steps else {}),
                         **({"public_warmup": [dp.public_warmup_steps, dp.public_warmup_clusters,
                                               dp.public_warmup_noise_multiplier]} if warmup else {})}}
    data = torch.as_tensor(x, device=device)
    DiffusionTrainer(model, data, cfg.train, run_dir, ledger, meta, cfg.seed, dp=settings, progress=cfg.progress,
                     wandb=cfg.wandb, public_rows=public_rows,
                     attachments={"dp_dynamics": dynamics} if dynamics is not None else None).run()
    return run_dir / CHECKPOINT


DYNAMICS_MECHANISM = "DP-SGD fine-tune of the dynamics model for --relabel dp"


def _sensitive_dynamics(x: np.ndarray, layout: TransitionLayout, cfg: DiffusionConfig, base: PrivacyLedger,
                        prior: list[dict[str, Any]], statistics: dict[str, Any], run_dir: Path
                        ) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any] | None]:
    """With --dp.dynamics_steps: the public dynamics model (relabel.py, fitted on the ledger's public datasets from
    --seed) fine-tuned on the training rows `x`, under DP-SGD charged as a prior mechanism when dp.enabled (else a
    non-private fit, for the no-DP reference). Returns its weights (kept in the checkpoint) and metadata. A run
    resuming from its own checkpoint keeps that checkpoint's model: nothing is trained, or released, again."""
    dp = cfg.dp
    if not dp.dynamics_steps:
        return None, None
    if (run_dir / CHECKPOINT).exists():  # resuming: the trainer refuses a checkpoint whose settings differ
        state = read_run_checkpoint(run_dir / CHECKPOINT)
        saved, weights = state.get("meta", {}).get("dp_dynamics"), (state.get("attachments") or {}).get("dp_dynamics")
        if not saved or weights is None or bool(saved.get("private")) != dp.enabled:
            raise different_configuration(run_dir / CHECKPOINT)
        if dp.enabled:
            prior.append(saved["mechanism"])
        statistics["dp_dynamics"] = saved["statistics"]
        return weights, saved
    recorded, public = public_datasets(base, cfg.checkpoint, "dp.dynamics_steps")
    q = dp.dynamics_batch_size / len(x)
    if q > 1:
        raise UserError(f"dp.dynamics_batch_size {dp.dynamics_batch_size} exceeds the {len(x)} training records")
    if dp.enabled:  # refused before anything is trained if the mechanism alone spends the budget
        entries = [tuple(p["accountant_entry"]) for p in prior] + [(dp.dynamics_noise_multiplier, q, dp.dynamics_steps)]
        if epsilon_spent(entries, dp.delta, dp.accountant) >= dp.epsilon:
            raise UserError(f"dp.dynamics_steps: the dynamics model's DP-SGD (σ {dp.dynamics_noise_multiplier:g}, "
                            f"{dp.dynamics_steps} steps at rate {q:.4g}) with the mechanisms before it reaches ε ≥ "
                            f"{dp.epsilon:g}: raise dp.dynamics_noise_multiplier or lower dp.dynamics_steps")
    base_dir = Path(cfg.checkpoint).parent / "public-dynamics"  # the cache --relabel public shares
    ensemble, report, _ = cached_public_dynamics(base_dir, [str(d.get("sha256")) for d in recorded], public,
                                                 dp.dynamics_public_steps, cfg.seed, 1, dp.dynamics_width)
    fit = SensitiveFit(dp.dynamics_steps, dp.dynamics_batch_size, dp.dynamics_lr,
                       noise_generator=dp.noise_generator, train_layers=dp.dynamics_layers,
                       **({"noise_multiplier": dp.dynamics_noise_multiplier,
                           "clip_norm": dp.dynamics_clip_norm or dp.clip_norm,
                           "sample_rate": q} if dp.enabled else {}))
    # DP-SGD's batches and noise from OS entropy; --seed only orders the non-private reference's batches
    model = finetune_dynamics(ensemble.members[0], x, layout, fit, cfg.seed, cfg.progress)
    names = ", ".join(str(d.get("name") or d.get("source")) for d in recorded)
    layers = f", the last {fit.train_layers} of its 4 layers" if fit.train_layers else ""
    how = (f"DP-SGD (σ {fit.noise_multiplier:g}, Poisson rate {q:.4g}, C {fit.clip_norm:g}, {fit.steps} steps, Adam "
           f"lr {fit.lr:g}{layers}; batches and noise from OS entropy, never saved), composed into ε" if dp.enabled
           else f"WITHOUT DP ({fit.steps} steps of {fit.batch_size} rows, Adam lr {fit.lr:g}{layers}): not private")
    note = (f"a dynamics model (s, a) → (s′ − s, r) fitted to the public datasets {names} ({report.rows} "
            f"transitions, {dp.dynamics_width} units, {report.steps} steps, seed {cfg.seed}), then fine-tuned on the "
            f"{len(x)} training rows by {how}; kept in the checkpoint for --relabel dp")
    statistics["dp_dynamics"] = note
    mechanism = {"mechanism": DYNAMICS_MECHANISM, "noise_multiplier": fit.noise_multiplier,
                 "accountant_entry": [fit.noise_multiplier, q, fit.steps], "z_max": fit.z_max,
                 "clip_norm": fit.clip_norm, "expected_batch_size": fit.batch_size} if dp.enabled else None
    if mechanism is not None:
        prior.append(mechanism)
    meta = {"width": dp.dynamics_width, "obs_dim": layout.obs_dim, "action_dim": layout.action_dim,
            "public_fit": asdict(report), "sensitive_fit": asdict(fit), "private": dp.enabled,
            "mechanism": mechanism, "statistics": note}
    return model.state_dict(), meta


def _release_support(model: EDM, meta: dict[str, Any], obs: np.ndarray, dp: DPConfig, prior: list[dict[str, Any]],
                     statistics: dict[str, Any]) -> dict[str, Any] | None:
    """With --dp.support_cells: the DP histogram of the training states (synther.diffusion.support), attached to the
    model and charged as a prior mechanism; otherwise any histogram the loaded checkpoint carried is dropped (it
    described an earlier sensitive set). Returns the checkpoint's `state_support` metadata."""
    if not dp.support_cells:
        model.support = None
        return None
    widths = parse_widths(dp.support_cells, int(meta["obs_dim"]))
    obs_cols = slice(0, int(meta["obs_dim"]))
    support = StateSupport.grid(widths, np.asarray(meta["public_min"])[obs_cols],
                                np.asarray(meta["public_max"])[obs_cols])
    # a mechanism's noise: OS entropy, never --seed, never saved
    support.release(obs, dp.support_noise_multiplier, secret_numpy_rng())
    model.support = support.to(next(model.parameters()).device)
    spec = {**support.spec(), "noise_multiplier": dp.support_noise_multiplier}
    prior.append({"mechanism": "DP state-support histogram (Gaussian)", "noise_multiplier": dp.support_noise_multiplier,
                  "l2_sensitivity": 1.0, "accountant_entry": [dp.support_noise_multiplier, 1.0, 1],
                  "z_max": NUMPY_NORMAL_Z_MAX, "cells": spec["cells"], "grid_from": "public data's range",
                  "noise": "numpy, OS entropy"})
    statistics["state_support"] = (f"count of training records in each of {spec['cells']} cells (widths "
                                   f"{widths.tolist()} over the public data's range) + N(0, "
                                   f"{dp.support_noise_multiplier:g}²) per cell: a Gaussian mechanism composed into "
                                   "ε (noise from OS entropy, never saved)")
    return spec


def _public_warmup(model: EDM, x: np.ndarray, public_rows: torch.Tensor | None, public_names: str,
                   cfg: DiffusionConfig, prior: list[dict[str, Any]], statistics: dict[str, Any], run_dir: Path
                   ) -> dict[str, Any] | None:
    """With --dp.public_warmup_steps: release the DP count of the training records per public cluster
    (synther.diffusion.selection), charge it as a prior mechanism, and train the model on public rows drawn toward
    those counts. A run resuming from its own checkpoint keeps that checkpoint's weights and its one release: the
    warm-up is not run, and nothing is released, again. Returns the checkpoint's `public_warmup` metadata."""
    dp = cfg.dp
    if not dp.public_warmup_steps:
        return None
    sigma = dp.public_warmup_noise_multiplier
    prior.append({"mechanism": "DP cluster histogram for the public warm-up (Gaussian)", "noise_multiplier": sigma,
                  "l2_sensitivity": 1.0, "accountant_entry": [sigma, 1.0, 1], "z_max": NUMPY_NORMAL_Z_MAX,
                  "clusters": dp.public_warmup_clusters, "clusters_from": "k-means of the public rows (--seed)",
                  "noise": "numpy, OS entropy"})
    statistics["public_warmup"] = (
        f"{dp.public_warmup_steps} non-private steps on public rows ({public_names}) before DP-SGD, drawn with "
        f"probability ∝ (noisy count of training records nearest their cluster) / (public rows in it), over "
        f"{dp.public_warmup_clusters} k-means clusters of the public rows (--seed); each count + N(0, {sigma:g}²): "
        "a Gaussian mechanism composed into ε (noise from OS entropy, never saved); the draws of public rows are "
        "post-processing (--seed)")
    if (run_dir / CHECKPOINT).exists():  # resuming: the trainer refuses a checkpoint whose warm-up settings differ
        saved = read_run_checkpoint(run_dir / CHECKPOINT).get("meta", {}).get("public_warmup")
        if not saved:  # begun without the warm-up: refused before anything is released
            raise different_configuration(run_dir / CHECKPOINT)
        return saved
    assert public_rows is not None
    with torch.no_grad():
        selection = PublicSelection.fit(model.normalizer.normalize(public_rows), dp.public_warmup_clusters, cfg.seed)
        sensitive = torch.as_tensor(x, device=public_rows.device)
        # a mechanism's noise: OS entropy, never --seed, never saved
        selection.release(model.normalizer.normalize(sensitive), sigma, secret_numpy_rng())
    loss = warm_up(model, public_rows, selection.row_probabilities(), dp.public_warmup_steps, cfg.train.batch_size,
                   cfg.train.lr, cfg.train.adam_beta2, cfg.seed, cfg.progress)
    return {"steps": dp.public_warmup_steps, **selection.spec(), "effective_public_share": selection.effective_share(),
            "final_loss": loss}


def _check_history(base: PrivacyLedger, identity: dict[str, Any], cfg: DiffusionConfig) -> None:
    """Refuse fine-tunes whose guarantee could not hold given what the starting checkpoint has already seen."""
    if cfg.dp.enabled and not base.private:
        raise UserError(f"{cfg.checkpoint} was trained on sensitive data without DP ({base.describe()}); "
                        "nothing trained from it is private. Start from a checkpoint that never saw sensitive data "
                        "without DP, or pass --dp.enabled false for a run labelled non-private")
    for use in base.data_uses:
        if use.get("use") == "public" and any(d.get("sha256") == identity["sha256"] for d in use.get("datasets", [])):
            raise UserError(f"{cfg.dataset} was used as PUBLIC data when {cfg.checkpoint} was pre-trained: "
                            "it cannot be fine-tuned on as sensitive data; pre-train without it")


def _earlier_mechanisms(base: PrivacyLedger, checkpoint: str) -> list[dict[str, Any]]:
    """Every mechanism behind `checkpoint` that read sensitive data, as prior entries of the new ledger.

    Composed whatever dataset they read: its records may be in the new sensitive set too, so the worst-case
    record pays for every use."""
    prior = [dict(m) for m in base.prior_mechanisms]
    if base.noise_multiplier is not None and base.steps_taken > 0:
        prior.append({"mechanism": f"DP-SGD fine-tune of {base.sensitive_dataset} (started from {checkpoint})",
                      "accountant_entry": [base.noise_multiplier, base.sample_rate, base.steps_taken],
                      "z_max": base.noise_z_max if base.noise_z_max is not None else LEGACY_Z_MAX})
    return prior


def _inherited_uses(base: PrivacyLedger, checkpoint: str) -> list[dict[str, Any]]:
    """The starting checkpoint's dataset history, its last run annotated with that run's final guarantee."""
    uses = [dict(u) for u in base.data_uses]
    if not uses:  # a checkpoint written before ledgers kept their history: rebuild what its ledger shows
        if base.public_datasets:
            uses.append({"phase": "pretrain", "use": "public", "datasets": [{"name": n} for n in base.public_datasets]})
        if base.sensitive_dataset:
            uses.append({"phase": "finetune", "use": "dp" if base.private else "non-private",
                         "datasets": [{"name": base.sensitive_dataset}]})
    if uses and uses[-1].get("phase") == "finetune":
        uses[-1]["final"] = {"checkpoint": str(checkpoint), "guarantee": base.describe(),
                             "epsilon_spent": base.epsilon_spent() if base.private else None, "delta": base.delta,
                             "steps_taken": base.steps_taken}
    return uses


REWARD_RANGES = ("public", "none")
IDENTITIES = ("public", "none")
SATURATED_ACTIONS = ("public", "none")
RELABEL = ("public", "dp", "none")
FLOOR = ("public", "none")


# --- loading and sampling ----------------------------------------------------------------------------------
def load_model(path: str | Path, device: torch.device | str = "cpu", ema: bool = True
               ) -> tuple[EDM, dict[str, Any], PrivacyLedger]:
    """Rebuild the model of a checkpoint (EMA weights by default) with its metadata and ledger."""
    model, meta, ledger, _ = _load_checkpoint(path, device, ema)
    return model, meta, ledger


def _load_checkpoint(path: str | Path, device: torch.device | str = "cpu", ema: bool = True
                     ) -> tuple[EDM, dict[str, Any], PrivacyLedger, dict[str, Any]]:
    """load_model, and what else the checkpoint carries ('attachments': e.g. the --relabel dp dynamics model)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as e:  # torch raises several types on a corrupt file
        raise UserError(f"{path}: not a readable checkpoint ({type(e).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != "privtranr-diffusion-v1":
        raise UserError(f"{path}: not a PrivTranR diffusion checkpoint")
    meta = state["meta"]
    layout = TransitionLayout(meta["obs_dim"], meta["action_dim"])
    normalizer = Normalizer.identity(layout.dim, _squash(meta.get("action_space", "raw"), layout,
                                                         meta["action_low"], meta["action_high"]))
    normalizer.source = meta["normalizer_source"]
    model = EDM(layout.dim, normalizer, DenoiserConfig(**meta["denoiser"]), EDMConfig(**meta["edm"]))
    if meta.get("state_support"):  # the DP histogram of the sensitive states released with the model
        model.support = StateSupport.from_spec(meta["state_support"])
    if meta.get("lora_rank"):  # fine-tuned adapters: load them, then fold them into the plain architecture
        add_adapters(model.net, meta["lora_rank"])
        model.load_state_dict(state["ema" if ema else "model"])
        merge_adapters(model.net)
    else:
        model.load_state_dict(state["ema" if ema else "model"])
    return model.to(device).eval(), meta, PrivacyLedger.from_dict(state["ledger"]), state.get("attachments") or {}


class Synthesizer:
    """A trained checkpoint, ready to generate transitions.

    >>> syn = Synthesizer.load("runs/diffusion/finetune-.../checkpoint.pt")
    >>> ds = syn.sample(10_000)            # TransitionDataset (ds.arrays() gives the D4RL-keyed dict)
    """

    def __init__(self, model: EDM, meta: dict[str, Any], ledger: PrivacyLedger, source: str,
                 sensitive_dynamics: PublicDynamics | None = None) -> None:
        self.model, self.meta, self.ledger, self.source = model, meta, ledger, source
        self.layout = TransitionLayout(meta["obs_dim"], meta["action_dim"])
        self.sensitive_dynamics = sensitive_dynamics  # the fine-tune's dynamics model (--dp.dynamics_steps)

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> "Synthesizer":
        model, meta, ledger, attachments = _load_checkpoint(path, resolve_device(device))
        dynamics, saved = None, meta.get("dp_dynamics")
        if saved and "dp_dynamics" in attachments:
            dynamics = PublicDynamics(saved["obs_dim"], saved["action_dim"], saved["width"])
            dynamics.load_state_dict(attachments["dp_dynamics"])
        return cls(model, meta, ledger, str(path), dynamics.eval() if dynamics is not None else None)

    def sample(self, n: int, sampler: SamplerConfig = SamplerConfig(), batch_size: int = 10_000, seed: int = 0,
               progress: bool = False, reward_range: str = "public", identities: str = "public",
               drop_sparse: float = 0.0, sparse_k: int = 20, support_threshold: float = 2.0,
               saturated_actions: str = "public", relabel: str = "none", relabel_steps: int = 20_000,
               relabel_models: int = 1, relabel_drop: float = 0.0, relabel_width: int = WIDTH,
               floor: str = "none", relabel_reward: str = "model") -> TransitionDataset:
        """n transitions (fewer if some rows came out NaN/Inf; the count dropped is in provenance).

        identities 'public' projects each row onto the exact linear identities of the public pre-training data
        (synther.diffusion.identities); reward_range 'public' clips rewards to the range seen in that data: the
        model never learned a reward outside it from public data; saturated_actions 'public' moves the synthetic
        action entries nearest a bound onto it, as many as that data's share on a bound (synther.diffusion.saturation).
        All use public facts only: no privacy cost.
        With a checkpoint that carries a DP state histogram (--dp.support_cells), rows are drawn until n of them
        have s and s′ in cells whose noisy count reaches `support_threshold` noise standard deviations (0: no
        filter); the histogram's cost is already in the ledger, so this is post-processing too.
        drop_sparse f > 0 keeps n of n/(1 − f) such rows, dropping the most isolated among them
        (synther.diffusion.sparsity): it reads only the samples, post-processing again. relabel 'public' replaces
        every row's s′ and r by a dynamics model fitted to the public datasets (synther.diffusion.relabel), fitted
        before any row is drawn, from `seed` (relabel_models of them, each with relabel_width hidden units per
        layer: their mean); relabel_drop f > 0 then keeps the rows those models disagree on least, drawing
        n/(1 − f) for it. relabel 'dp' uses instead the dynamics model the checkpoint carries (--dp.dynamics_steps:
        fine-tuned on the sensitive rows, accounted in the ledger); relabel_reward 'ranked' keeps the sampled reward
        values, re-assigned in the model's order (relabel.ranked_rewards). floor 'public' raises the root of states
        sunk into the floor deeper than the public data's contacts go (synther.diffusion.floor; the robot's model and
        the public data only), before the relabel."""
        if n <= 0:
            raise UserError(f"number of samples must be positive, got {n}")
        if reward_range not in REWARD_RANGES:
            raise UserError(f"unknown reward_range '{reward_range}' (choose from: {', '.join(REWARD_RANGES)})")
        if identities not in IDENTITIES:
            raise UserError(f"unknown identities '{identities}' (choose from: {', '.join(IDENTITIES)})")
        if saturated_actions not in SATURATED_ACTIONS:
            raise UserError(f"unknown saturated_actions '{saturated_actions}' "
                            f"(choose from: {', '.join(SATURATED_ACTIONS)})")
        if relabel not in RELABEL:
            raise UserError(f"unknown relabel '{relabel}' (choose from: {', '.join(RELABEL)})")
        check_settings(drop_sparse, sparse_k)
        check_threshold(support_threshold)
        check_relabel(relabel, relabel_models, relabel_drop, relabel_width, relabel_steps, relabel_reward)
        check_sampler(sampler)
        if floor not in FLOOR:
            raise UserError(f"unknown floor '{floor}' (choose from: {', '.join(FLOOR)})")
        # the public datasets are loaded (and their sha256 checked) once for every step that reads them
        users = " and ".join(f"{name} 'public'" for name, value in (("relabel", relabel), ("floor", floor))
                             if value == "public")
        recorded, public = self._public_datasets(users) if users else ([], [])
        floor_model, allowed_depth = self._public_floor(public) if floor == "public" else (None, 0.0)
        dynamics, dynamics_note = (self._public_dynamics(recorded, public, relabel_steps, seed, relabel_models,
                                                         relabel_width) if relabel == "public" else
                                   self._dp_dynamics() if relabel == "dp" else (None, ""))
        wanted = oversampled(oversampled(n, drop_sparse), relabel_drop)
        guide, guide_note = self._guide(sampler) if sampler.guidance else (None, "")
        support = self.model.support if support_threshold > 0 else None
        min_count = support_threshold * self.meta["state_support"]["noise_multiplier"] if support else 0.0
        gen = torch.Generator().manual_seed(seed)
        chunks, drawn, passed, non_finite, outside, worst = [], 0, 0, 0, 0, 0.0
        with tqdm(total=wanted, desc="sampling", unit="row", disable=not progress, mininterval=1.0) as bar:
            # without the support filter, exactly `wanted` rows are drawn; with it, draws go on until `wanted` pass
            while (passed if support else drawn) < wanted:
                if support and drawn >= MAX_DRAWS_PER_ROW * wanted:
                    raise UserError(f"{self.source}: only {passed} of {drawn} sampled rows lie in the DP state "
                                    f"histogram's cells with a noisy count ≥ {min_count:g}: lower --support_threshold "
                                    "(0 turns the filter off)")
                pass_rate = max(passed / drawn, 1 / MAX_DRAWS_PER_ROW) if support and drawn else 1.0
                k = min(batch_size, math.ceil((wanted - (passed if support else drawn)) / pass_rate))
                follow_lent_threads()
                x = self.model.sample(k, sampler, generator=gen, guide=guide).cpu().numpy()
                drawn += k
                finite = np.isfinite(x).all(axis=1)
                non_finite += int((~finite).sum())
                x = x[finite]
                if identities == "public":
                    worst = max(worst, self._project(x))
                if support:
                    inside = support.keep(x[:, self.layout.obs], x[:, self.layout.next_obs], min_count)
                    outside += int((~inside).sum())
                    x = x[inside]
                chunks.append(x)
                passed += len(x)
                bar.update(len(x) if support else k)
        x = np.concatenate(chunks)[:wanted]
        if len(x) == 0:
            raise UserError(f"{self.source}: every sampled row was NaN/Inf; the model is not usable")
        steps = [guide_note] if guide_note else []
        if identities == "public":
            steps.append(self._identities_note(worst))
        if support:
            steps.append(f"{outside} of {drawn - non_finite} rows dropped as outside the support: s or s′ in a cell "
                         f"whose DP state-histogram count is below {min_count:g} ({support_threshold:g} noise "
                         "standard deviations; the histogram is accounted in the ledger)")
        low, high = np.asarray(self.meta["action_low"]), np.asarray(self.meta["action_high"])
        if self.meta.get("action_space") == "atanh":
            steps.append("actions modelled as atanh of their position within the bounds, mapped back with tanh "
                         "(the representation chosen at pre-training from the public data)")
        x[:, self.layout.action] = np.clip(x[:, self.layout.action], low, high)
        steps.append(f"actions clipped to {self.meta['action_bounds_source']}")
        if saturated_actions == "public":
            share, why_not = self._public_saturation()
            if share is None:
                steps.append(why_not)
            else:
                x[:, self.layout.action], tau, moved = snap_to_bounds(x[:, self.layout.action], low, high, share)
                steps.append(f"{moved} action entries within {tau:.3g} half-ranges of a bound moved onto it (so that "
                             f"{share:.3f} of them lie on a bound: the public datasets' share)")
        if floor_model is not None:  # before the relabel: its s′ follows the raised s
            lifted = {}
            for part in ("obs", "next_obs"):
                columns = getattr(self.layout, part)
                x[:, columns], lift = floor_model.lift(x[:, columns], allowed_depth)
                lifted[part] = int((lift > 0).sum())
            steps.append(f"the root raised in {lifted['obs']} states s and {lifted['next_obs']} states s′ whose body "
                         f"lay deeper in the floor than {allowed_depth:.3g} (the public datasets' 1st percentile of "
                         f"contact depth, measured with the {floor_model.env_id} model)")
        if dynamics is not None:  # after the actions are final: s′ and r follow the action that is released
            if relabel_drop:
                kept = least_disputed(dynamics.disagreement(x[:, self.layout.obs], x[:, self.layout.action]),
                                      oversampled(n, drop_sparse))
                dynamics_note += (f"; {len(x) - len(kept)} of {len(x)} rows dropped where those models disagree "
                                  f"most on s′ (relabel_drop={relabel_drop:g}: public data and the samples only)")
                x = x[kept]
            relabel_rows(x, self.layout, dynamics, relabel_reward)
            if relabel_reward == "ranked":
                dynamics_note += "; r: the rows' sampled rewards, handed out again in the model's order"
            if identities == "public":
                self._project(x)
            steps.append(dynamics_note)
        if reward_range == "public":
            r_low, r_high = (float(self.meta[k][self.layout.reward]) for k in ("public_min", "public_max"))
            x[:, self.layout.reward] = np.clip(x[:, self.layout.reward], r_low, r_high)
            steps.append(f"rewards clipped to the public datasets' range [{r_low:.6g}, {r_high:.6g}]")
        if drop_sparse:
            kept = keep_densest(x[:, self.layout.obs], n, sparse_k, next(self.model.parameters()).device)
            steps.append(f"{len(x) - len(kept)} of {len(x)} rows dropped as the most isolated (distance to the "
                         f"farthest of the {sparse_k} nearest synthetic observations; drop_sparse={drop_sparse:g}, "
                         "reads only the samples)")
            x = x[kept]
        ds = TransitionDataset.from_vectors(
            x, self.layout, name=f"synthetic:{self.meta.get('sensitive_dataset') or self.meta.get('env_dataset')}",
            source=f"sampled from {self.source}", action_low=low, action_high=high,
            provenance={"checkpoint": self.source, "sampler": asdict(sampler),
                        "network_evaluations_per_sample": network_evaluations(sampler), "requested": n,
                        "drawn": drawn, "dropped_non_finite": non_finite, "dropped_outside_support": outside,
                        "seed": seed,
                        "postprocessing": "; ".join(["terminals thresholded at 0.5", *steps]),
                        "env_dataset": self.meta.get("env_dataset")})
        return ds

    def _project(self, x: np.ndarray) -> float:
        """Project rows `x` in place onto the public data's exact identities; the largest violation before."""
        found = self.meta.get("public_identities")
        if not found or not count(found):
            return 0.0
        projected, worst = project(x, found)
        x[:] = projected
        return worst

    def _public_saturation(self) -> tuple[float | None, str]:
        """The public datasets' share of action entries on a bound, or (None, why it is not known). A checkpoint
        pre-trained before the share was recorded gets it from the public datasets its ledger names, if they load
        unchanged (same sha256)."""
        if "public_action_saturation" in self.meta:
            return float(self.meta["public_action_saturation"]), ""
        recorded = self._recorded_public()
        actions = []
        for d in recorded:
            ds = _load_unchanged(d)
            if ds is None:
                return None, (f"actions not snapped to their bounds: the checkpoint predates the recorded public "
                              f"share and its public dataset {d.get('name') or d.get('source')} is not available "
                              "unchanged")
            actions.append(ds.actions)
        if not actions:
            return None, "actions not snapped to their bounds: the checkpoint records no public datasets"
        low, high = np.asarray(self.meta["action_low"]), np.asarray(self.meta["action_high"])
        return saturated_share(np.concatenate(actions), low, high), ""

    def _recorded_public(self) -> list[dict[str, Any]]:
        return recorded_public(self.ledger)

    def _public_floor(self, public: list[TransitionDataset]) -> tuple[FloorModel, float]:
        """The robot's model and the depth its public data's contacts reach (PUBLIC_QUANTILE of them)."""
        env_ids = {ds.env_id for ds in public}
        if len(env_ids) != 1:
            raise UserError(f"{self.source}: floor 'public' needs public datasets of one environment, they record "
                            f"{', '.join(sorted(str(e) for e in env_ids))}")
        model = FloorModel(env_ids.pop())
        return model, model.allowed_depth(np.concatenate([ds.observations for ds in public]))

    def _public_datasets(self, purpose: str) -> tuple[list[dict[str, Any]], list[TransitionDataset]]:
        return public_datasets(self.ledger, self.source, purpose)

    def _public_dynamics(self, recorded: list[dict[str, Any]], public: list[TransitionDataset], steps: int,
                         seed: int, members: int, width: int) -> tuple[PublicDynamicsEnsemble, str]:
        """A dynamics model fitted to the public datasets the ledger names, and the provenance line saying so. The
        fit is kept beside the pre-trained checkpoint, for every sample job drawn from it (relabel.py)."""
        base = Path(str(self.meta.get("pretrained_from") or ""))
        cache = (base.parent if base.is_file() else Path(self.source).parent) / "public-dynamics"
        model, fit, reused = cached_public_dynamics(cache, [str(d.get("sha256")) for d in recorded], public, steps,
                                                    seed, members, width)
        print(f"public dynamics model: {'reused' if reused else 'fitted and kept'} in {cache}")
        names = ", ".join(str(d.get("name") or d.get("source")) for d in recorded)
        what = "a dynamics model" if members == 1 else f"the mean of {members} dynamics models"
        return model, (f"s′ and r of every row replaced by {what} (s, a) → (s′ − s, r) fitted to the public "
                       f"datasets {names} ({fit.rows} transitions, {width} units wide, {fit.steps} steps, seed "
                       f"{seed}; error on {HELD_OUT} held-out public transitions: NMSE of s′ − s "
                       f"{fit.held_out_nmse_next_obs:.3g}, of r {fit.held_out_nmse_reward:.3g})")

    def _dp_dynamics(self) -> tuple[PublicDynamicsEnsemble, str]:
        """The dynamics model fine-tuned with the checkpoint (--dp.dynamics_steps): accounted in its ledger, so
        labelling with it is post-processing."""
        if self.sensitive_dynamics is None:
            raise UserError(f"{self.source}: relabel 'dp' needs a checkpoint fine-tuned with --dp.dynamics_steps "
                            "(this one carries no dynamics model)")
        return PublicDynamicsEnsemble([self.sensitive_dynamics]), (
            "s′ and r of every row replaced by the checkpoint's dynamics model: "
            + self.meta["dp_dynamics"]["statistics"])

    def _identities_note(self, worst: float) -> str:
        found = self.meta.get("public_identities")
        if found is None:
            return "no linear identities applied (the checkpoint was pre-trained before they were recorded)"
        if not count(found):
            return "no linear identities applied (the public datasets satisfy none exactly)"
        return (f"rows projected onto the {count(found)} exact linear identities of the public datasets (largest "
                f"violation before: {worst:.3g} standard deviations)")

    def _guide(self, sampler: SamplerConfig) -> tuple[EDM, str]:
        """The public model that guides sampling, and the line saying so in the samples' provenance. Only a model
        that never saw sensitive data may guide: then guidance is post-processing and costs no privacy."""
        path = sampler.guide_checkpoint or self.meta.get("pretrained_from")
        if not path:
            raise UserError(f"{self.source}: sampler.guidance needs a fine-tuned checkpoint (or "
                            "--sampler.guide_checkpoint, a public pre-trained one)")
        sha = file_sha256(path) if Path(path).exists() else None
        expected = (self.meta.get("identity") or {}).get("base_checkpoint_sha256")
        if not sampler.guide_checkpoint and sha != expected:
            raise UserError(f"{path}: not the checkpoint {self.source} was fine-tuned from (missing or changed); "
                            "give --sampler.guide_checkpoint")
        guide, meta, ledger = load_model(path, next(self.model.parameters()).device)
        if ledger.sensitive_dataset or ledger.target_epsilon is not None or \
                any(u.get("use") != "public" for u in ledger.data_uses):
            raise UserError(f"{path}: its ledger shows sensitive data; only a public pre-trained model may guide")
        if (meta["obs_dim"], meta["action_dim"]) != (self.meta["obs_dim"], self.meta["action_dim"]) or \
                meta["normalizer_source"] != self.meta["normalizer_source"] or \
                meta.get("action_space", "raw") != self.meta.get("action_space", "raw"):
            raise UserError(f"{path}: another data space (dimensions, normalizer or action space) than "
                            f"{self.source}; guidance needs the public model the fine-tune started from")
        return guide, (f"autoguidance w={sampler.guidance:g} by the public checkpoint {path} (sha256 {sha[:12]}…, "
                       f"public data only: {', '.join(ledger.public_datasets)})")


def recorded_public(ledger: PrivacyLedger) -> list[dict[str, Any]]:
    """The ledger's records (name, source, sha256) of the public datasets the model was pre-trained on."""
    return [d for use in ledger.data_uses if use.get("use") == "public" for d in use.get("datasets", [])]


def public_datasets(ledger: PrivacyLedger, source: Any, purpose: str
                    ) -> tuple[list[dict[str, Any]], list[TransitionDataset]]:
    """The public datasets `ledger` names (their records, and each loaded only if unchanged). A dataset the
    ledger also lists as sensitive is refused: only public data."""
    recorded = recorded_public(ledger)
    if not recorded:
        raise UserError(f"{source}: {purpose} needs the public datasets the model was pre-trained on, "
                        "and its ledger names none")
    sensitive = {d.get("sha256") for use in ledger.data_uses if use.get("use") != "public"
                 for d in use.get("datasets", [])}
    public = []
    for d in recorded:
        ds = _load_unchanged(d)
        label = d.get("name") or d.get("source")
        if ds is None:
            raise UserError(f"{source}: {purpose} needs its public dataset {label} unchanged (sha256 "
                            f"{str(d.get('sha256'))[:12]}…) and cannot find it (set $PRIVTRANR_DATA_DIR, or "
                            f"turn off {purpose})")
        if d["sha256"] in sensitive:
            raise UserError(f"{source}: {label} is in the ledger as sensitive data too; {purpose} "
                            "reads only data that was never sensitive")
        public.append(ds)
    return recorded, public


def _load_unchanged(recorded: dict[str, Any]) -> TransitionDataset | None:
    """The dataset a ledger entry names (its file, else its registry name) if it still has the recorded sha256."""
    for where in filter(None, (recorded.get("source"), recorded.get("name"))):
        try:
            ds = load_dataset(where)
        except UserError:  # missing or unreadable: try the next place
            continue
        if ds.content_sha256() == recorded.get("sha256"):
            return ds
    return None


def sample(cfg: DiffusionConfig) -> Path:
    if not cfg.checkpoint:
        raise UserError("sample needs --checkpoint")
    check_settings(cfg.drop_sparse, cfg.sparse_k)
    check_threshold(cfg.support_threshold)
    check_relabel(cfg.relabel, cfg.relabel_models, cfg.relabel_drop, cfg.relabel_width, cfg.relabel_steps,
                  cfg.relabel_reward)
    check_sampler(cfg.sampler)
    syn = Synthesizer.load(cfg.checkpoint, cfg.device)  # a bad checkpoint is refused before any folder is touched
    out = default_run_dir(cfg) / "samples.npz"
    # the folder's lock: no sampling from a run still training there, no two samplers writing one file
    with FolderLock(out.parent):
        ds = syn.sample(cfg.num_samples, cfg.sampler, cfg.sample_batch, cfg.seed, cfg.progress, cfg.reward_range,
                        cfg.identities, cfg.drop_sparse, cfg.sparse_k, cfg.support_threshold, cfg.saturated_actions,
                        cfg.relabel, cfg.relabel_steps, cfg.relabel_models, cfg.relabel_drop, cfg.relabel_width,
                        cfg.floor, cfg.relabel_reward)
        ledger = syn.ledger.to_dict()  # the release's ledger also says what was done to the samples after the model
        ledger["statistics"] = {**ledger.get("statistics", {}),
                                "sample_postprocessing": ds.provenance["postprocessing"] +
                                " (public facts and the samples themselves only)"}
        ds.save(out, extra_metadata={"privacy_ledger": ledger, "diffusion_meta": syn.meta})
    return out
