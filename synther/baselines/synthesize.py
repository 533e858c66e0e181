"""DP tabular-synthesis baselines (smartnoise-synth MST, AIM, DP-CTGAN, PATE-CTGAN) through the diffusion path's I/O.

    synthesize(cfg) -> <run_dir>/samples.npz (+ samples.json with the privacy ledger, ledger.json, config.yaml)

The sensitive dataset is split exactly like the DP fine-tune (TransitionDataset.split(0.8, seed)); only the train
part is synthesized from. Every statistic besides the row count comes from PUBLIC data (the pairs in
config/diffusion/pairs.yaml, or --public_datasets): bin edges for MST/AIM, column bounds for the GANs, action bounds.
The fit itself runs in a separate virtualenv (synther/baselines/env.py) through synther/baselines/worker.py, which
draws every mechanism's randomness from OS entropy: --seed only seeds the split and post-processing.
"""
import json
import math
import os
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyrallis

from synther.baselines import binning
from synther.baselines.env import WORKER, ensure_env
from synther.data import TransitionDataset, check_compatible, load_dataset, public_action_bounds
from synther.errors import UserError
from synther.layout import BASELINES, baseline_run_name, public_datasets_for, runs_root, script
from synther.utils.io import atomic_path, atomic_write_json
from synther.utils.locks import FolderLock
from synther.utils.options import comma_list
from synther.utils.provenance import package_versions

METHODS = BASELINES  # the baseline names every run folder and report uses (synther.layout)
MARGINAL = ("mst", "aim")


@dataclass
class MarginalConfig:
    bins: int = 10  # bins per continuous column (the terminal column always has 2)
    edges: str = "public_quantiles"  # bin edges from: public_quantiles (public data's quantiles) or public_range (equal width over the public range / declared action bounds)
    aim_rounds: int = 0  # AIM rounds, at least one per column (the 1-way marginals take one round each); 0: one per column (smartnoise's default, 16 per column, did not finish in 600 s on 42 columns here)
    aim_max_model_size: float = 80.0  # AIM: largest graphical model (MB) it may select
    aim_max_cells: int = 10000  # AIM: largest marginal (cells) it may measure


@dataclass
class GANConfig:
    epochs: int = 10  # DP-CTGAN epochs over the sensitive train split (σ is calibrated so all of them fit in ε)
    batch_size: int = 500  # rows per batch (DP-CTGAN: EXPECTED rows of a Poisson batch, each row joining with probability q = batch / rows; PATE-CTGAN: votes per student step)
    hidden: list[int] = field(default_factory=lambda: [256, 256])  # generator and discriminator hidden widths
    embedding_dim: int = 128  # generator noise dimension
    clip_norm: float = 1.0  # DP-CTGAN per-sample gradient clip norm
    pate_iterations: int = 50  # PATE-CTGAN generator iterations (fixed in advance; the vote noise is calibrated to them)
    pate_teacher_iters: int = 5  # PATE-CTGAN teacher updates per iteration
    pate_student_iters: int = 5  # PATE-CTGAN student updates per iteration (each asks the teachers batch_size votes)
    pate_rows_per_teacher: int = 1000  # PATE-CTGAN: teachers = max(2, rows // this)


@dataclass
class PrivacyTarget:
    epsilon: float = 10.0  # target ε (the whole release; the row count is treated as public); alias --epsilon
    delta: float = 1e-6  # target δ (the DP fine-tune's default); alias --delta


# every DP release is asked for its target as --dp.epsilon / --dp.delta (the diffusion fine-tune's spelling)
TARGET_ALIASES = {"--epsilon": "--dp.epsilon", "--delta": "--dp.delta"}


@dataclass
class BaselineConfig:
    method: str = "mst"  # mst | aim | dpctgan | patectgan (smartnoise-synth)
    dataset: str = "ptr-maze2d-umaze-dense-v0"  # sensitive dataset: a registry name or a path
    public_datasets: str = ""  # comma-separated public datasets for bin edges and bounds; empty: config/diffusion/pairs.yaml's entry for --dataset
    dp: PrivacyTarget = field(default_factory=PrivacyTarget)  # the release's (ε, δ) target
    num_samples: int = 100_000  # synthetic transitions to write
    seed: int = 0  # seeds the train/held-out split, sampling rows from the fitted model and the in-bin values; never the DP mechanisms (OS entropy, never saved)
    train_fraction: float = 0.8  # share of the sensitive set synthesized from; the rest is held out (as in the DP fine-tune)
    run_dir: str = ""  # output folder; default runs/baselines/<method>-<dataset>-eps<ε>-seed<seed> ($PRIVTRANR_RUNS_DIR replaces runs/)
    marginal: MarginalConfig = field(default_factory=MarginalConfig)  # MST / AIM settings
    gan: GANConfig = field(default_factory=GANConfig)  # DP-CTGAN / PATE-CTGAN settings
    threads: int = 1  # torch threads inside the worker
    overwrite: bool = False  # re-run even if samples.npz exists
    verbose: bool = False  # let smartnoise print its own progress (MST / AIM; the GAN loops are ours and always log)


def run_dir(cfg: BaselineConfig) -> Path:
    if cfg.run_dir:
        return Path(cfg.run_dir)
    return runs_root() / "baselines" / baseline_run_name(cfg.method, cfg.dataset, cfg.dp.epsilon, cfg.seed)


def baseline_command(python: str, method: str, dataset: str, epsilon: float, delta: float, num_samples: int,
                     seed: int, run_dir: str | Path, public_datasets: list[str]) -> list[str]:
    """The command line of MuJoCo/baselines.py (BaselineConfig)."""
    return [python, script("baselines.py"), "--method", method, "--dataset", dataset, "--dp.epsilon",
            f"{epsilon:g}", "--dp.delta", f"{delta:g}", "--num_samples", str(num_samples), "--seed", str(seed), "--run_dir",
            str(run_dir), "--public_datasets", ",".join(public_datasets)]


def validate(cfg: BaselineConfig) -> None:
    if cfg.method not in METHODS:
        raise UserError(f"unknown baseline method '{cfg.method}' (choose from: {', '.join(METHODS)})")
    if not (math.isfinite(cfg.dp.epsilon) and cfg.dp.epsilon > 0):
        raise UserError(f"--dp.epsilon must be a positive finite number, got {cfg.dp.epsilon}")
    if not 0 < cfg.dp.delta < 1:
        raise UserError(f"--dp.delta must be in (0, 1), got {cfg.dp.delta}")
    if cfg.num_samples <= 0:
        raise UserError(f"--num_samples must be positive, got {cfg.num_samples}")
    if not cfg.dataset:
        raise UserError("--dataset (the sensitive dataset) is required")
    if cfg.gan.batch_size < 2 or cfg.gan.epochs < 1 or cfg.gan.pate_iterations < 1:
        raise UserError("--gan.batch_size must be >= 2 and --gan.epochs, --gan.pate_iterations >= 1")


def public_names(cfg: BaselineConfig) -> list[str]:
    names = comma_list(cfg.public_datasets)
    if names:
        return names
    return public_datasets_for(cfg.dataset, or_else="pass --public_datasets a,b")


@dataclass
class Prepared:
    """The sensitive train table after public-only preprocessing, and what the worker needs to know about it."""

    sensitive: TransitionDataset
    train: TransitionDataset
    heldout: TransitionDataset
    public_names: list[str]
    table: np.ndarray  # MST/AIM: bin codes; GANs: values clipped to the public bounds
    preprocessing: dict[str, Any]  # recorded in the side-car: edges or bounds and their source
    column_spec: dict[str, Any]  # for the worker: cardinalities, or lower/upper
    params: dict[str, Any]  # method hyper-parameters for the worker
    bins: binning.ColumnBins | None
    action_low: np.ndarray
    action_high: np.ndarray
    action_source: str


def prepare(cfg: BaselineConfig) -> Prepared:
    """Load and split the sensitive data; build edges/bounds from public data only; apply them to the train split."""
    validate(cfg)
    sensitive = load_dataset(cfg.dataset)
    names = public_names(cfg)
    public = [load_dataset(n) for n in names]
    for ds in public:
        check_compatible(sensitive, ds)
    train, heldout = sensitive.split(cfg.train_fraction, seed=cfg.seed)
    layout = sensitive.layout
    public_x = np.concatenate([ds.to_vectors() for ds in public])
    low, high, act_source = public_action_bounds(public)
    if cfg.method == "aim" and 0 < cfg.marginal.aim_rounds < layout.dim:
        raise UserError(f"--marginal.aim_rounds must be 0 or at least the {layout.dim} columns (AIM spends one round "
                        f"on each 1-way marginal first), got {cfg.marginal.aim_rounds}")
    bins = None
    if cfg.method in MARGINAL:
        bins = binning.public_bin_edges(public_x, layout, cfg.marginal.bins, cfg.marginal.edges, low, high, act_source)
        # the sensitive rows only pass through the fixed edges
        table = binning.discretize(train.to_vectors(), bins).astype(np.float64)
        preprocessing = {"kind": "discretised", **bins.to_dict()}
        params = {"rounds": cfg.marginal.aim_rounds or layout.dim, "max_model_size": cfg.marginal.aim_max_model_size,
                  "max_cells": cfg.marginal.aim_max_cells, "verbose": cfg.verbose}
        column_spec: dict[str, Any] = {"cardinalities": bins.cardinalities}
    else:
        bounds = binning.public_bounds(public_x, layout, low, high, act_source)
        table = binning.clip_to_bounds(train.to_vectors(), bounds)
        preprocessing = {"kind": "min-max scaled to [-1, 1] with public bounds (terminal as a continuous [0, 1] "
                                 "column thresholded at 0.5, so smartnoise uses no conditional vector)",
                         **bounds.to_dict()}
        g = cfg.gan
        params = {"epochs": g.epochs, "batch_size": g.batch_size, "hidden": list(g.hidden),
                  "embedding_dim": g.embedding_dim, "clip_norm": g.clip_norm, "iterations": g.pate_iterations,
                  "teacher_iters": g.pate_teacher_iters, "student_iters": g.pate_student_iters,
                  "rows_per_teacher": g.pate_rows_per_teacher, "verbose": cfg.verbose}
        column_spec = {"lower": bounds.lower.tolist(), "upper": bounds.upper.tolist()}
    return Prepared(sensitive, train, heldout, names, table, preprocessing, column_spec, params, bins, low, high,
                    act_source)


def synthesize(cfg: BaselineConfig, progress: bool = True) -> Path:
    """Fit the baseline on the sensitive train split and write samples.npz + samples.json; return its path."""
    validate(cfg)
    out_dir = run_dir(cfg)
    out = out_dir / "samples.npz"
    if out.exists() and not cfg.overwrite:
        return out
    with FolderLock(out_dir):  # two fits in one folder would delete each other's work files
        return _fit_and_write(cfg, out_dir, progress)


def _fit_and_write(cfg: BaselineConfig, out_dir: Path, progress: bool) -> Path:
    out = out_dir / "samples.npz"

    def say(msg: str) -> None:
        if progress:
            print(f"[{cfg.method}] {msg}", flush=True)

    prep = prepare(cfg)
    sensitive, train, heldout, table = prep.sensitive, prep.train, prep.heldout, prep.table
    layout, low, high, act_source = sensitive.layout, prep.action_low, prep.action_high, prep.action_source
    say(f"sensitive {sensitive.name or cfg.dataset}: {len(train)} train rows ({len(heldout)} held out); "
        f"public: {', '.join(prep.public_names)}")

    python = ensure_env(quiet=not progress)
    work = (out_dir / ".work").resolve()  # absolute: the worker runs inside it, and its spec names files in it
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    np.savez(work / "input.npz", data=table)
    spec = {"method": cfg.method, "epsilon": cfg.dp.epsilon, "delta": cfg.dp.delta, "seed": cfg.seed,
            "num_samples": cfg.num_samples, "threads": cfg.threads, "params": prep.params,
            "input": str(work / "input.npz"), "output": str(work / "output.npz"), "info": str(work / "info.json"),
            **prep.column_spec}
    (work / "spec.json").write_text(json.dumps(spec))
    say(f"fitting in {python.parent.parent.name} ({table.shape[0]} rows x {table.shape[1]} columns, "
        f"ε={cfg.dp.epsilon:g}, δ={cfg.dp.delta:g})")
    start = time.time()
    _run_worker(python, work, progress)
    wall = time.time() - start
    info = json.loads((work / "info.json").read_text())
    syn = np.load(work / "output.npz")["data"]

    rng = np.random.default_rng(cfg.seed + 12345)
    x = binning.undiscretize(syn, prep.bins, rng) if prep.bins is not None else syn
    x[:, layout.action] = np.clip(x[:, layout.action], low, high)
    x[:, layout.terminal] = (x[:, layout.terminal] > 0.5).astype(np.float64)
    finite = np.isfinite(x).all(axis=1)
    x = x[finite]
    if len(x) == 0:
        raise UserError(f"{cfg.method}: every synthetic row was NaN/Inf")

    ledger = _ledger(cfg, sensitive, train, heldout, prep.public_names, info, prep.preprocessing, act_source)
    postprocessing = ("MST/AIM bin codes -> uniform value inside the public bin; " if cfg.method in MARGINAL else "") \
        + f"terminals thresholded at 0.5; actions clipped to {act_source}"
    ds = TransitionDataset.from_vectors(
        x.astype(np.float32), layout, name=f"synthetic:{sensitive.name or cfg.dataset}",
        source=f"{cfg.method} baseline (smartnoise-synth) on {sensitive.name or cfg.dataset}",
        env_id=sensitive.env_id, action_low=low, action_high=high,
        provenance={"baseline": cfg.method, "requested": cfg.num_samples, "dropped_non_finite": int((~finite).sum()),
                    "seed": cfg.seed, "postprocessing": postprocessing, "env_dataset": sensitive.name})
    meta = {"method": cfg.method, "config": asdict(cfg), "fit_seconds": info["fit_seconds"],
            "sample_seconds": info["sample_seconds"], "worker_wall_seconds": wall, "preprocessing": prep.preprocessing,
            "worker_versions": info["versions"], "versions": package_versions()}
    with atomic_path(out_dir / "config.yaml") as tmp, open(tmp, "w") as f:
        pyrallis.dump(cfg, f)
    atomic_write_json(out_dir / "ledger.json", ledger)
    ds.save(out, extra_metadata={"privacy_ledger": ledger, "baseline_meta": meta})
    shutil.rmtree(work, ignore_errors=True)
    say(f"wrote {out} ({len(x)} rows; fit {info['fit_seconds']:.1f} s); {ledger['guarantee']}")
    return out


def _run_worker(python: Path, work: Path, progress: bool) -> None:
    """Run the worker in the baselines venv, streaming its output (and keeping it in worker.log)."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)  # nothing from the main environment may leak into the worker
    log_path = work / "worker.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([str(python), str(WORKER), str(work / "spec.json")], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=env, cwd=work)
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            if progress and line.startswith("[worker]"):
                print(line.rstrip(), flush=True)
        proc.wait()
    if proc.returncode != 0:
        lines = [ln for ln in log_path.read_text().splitlines() if ln.strip()]
        raise UserError(f"baseline worker failed (exit {proc.returncode}): {lines[-1] if lines else 'no output'} "
                        f"(full log: {log_path})")


def _ledger(cfg: BaselineConfig, sensitive: TransitionDataset, train: TransitionDataset, heldout: TransitionDataset,
            public: list[str], info: dict[str, Any], preprocessing: dict[str, Any], act_source: str) -> dict[str, Any]:
    acc = info["accounting"]
    caveats = ["the number of training rows is treated as public (as opacus does when it sets q = batch / N)",
               "a re-run with the same --seed fits a different model: the mechanisms' randomness is not replayable"]
    if cfg.method == "patectgan":
        caveats.append("vote noise comes from numpy's (non-cryptographic) Laplace sampler")
    statistics = {
        "bin_edges" if cfg.method in MARGINAL else "column_bounds": preprocessing["source"],
        "action_bounds": act_source,
        "sensitive_rows": "row count treated as public",
        "split": f"sensitive.split(train_fraction={cfg.train_fraction}, seed={cfg.seed}) (the DP fine-tune's split)",
    }
    return {
        "mechanism": cfg.method, "library": "smartnoise-synth", "target_epsilon": cfg.dp.epsilon, "delta": cfg.dp.delta,
        "epsilon_spent": acc["epsilon_spent"], "accountant": acc["accountant"], "accounting": acc,
        "neighbouring": "add/remove one transition of the sensitive train split",
        "sensitive_dataset": sensitive.name or cfg.dataset, "sensitive_train_rows": len(train),
        "sensitive_heldout_rows": len(heldout), "public_datasets": public, "statistics": statistics,
        "preprocessing_privacy_cost": 0.0, "randomness": _randomness(cfg, acc), "caveats": caveats,
        "guarantee": f"({acc['epsilon_spent']:.4g}, {cfg.dp.delta:g})-DP for each transition of "
                     f"{sensitive.name or cfg.dataset} ({cfg.method}, {acc['accountant'].split(':')[0]})",
    }


def _randomness(cfg: BaselineConfig, accounting: dict[str, Any]) -> str:
    """What the published --seed does and does not determine (the worker seeds every mechanism RNG from OS entropy)."""
    uses = ["the train/held-out split", "sampling rows from the fitted model"]
    if cfg.method in MARGINAL:
        uses.append("the value drawn inside each public bin")
    return (f"mechanism randomness: OS entropy, never saved ({accounting['mechanism_rngs']}); "
            f"--seed used only for {', '.join(uses)}")
