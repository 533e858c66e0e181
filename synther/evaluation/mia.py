"""Membership inference against the fine-tuned diffusion model, and the canary privacy audit.

Attack (PrivORL's white-box loss attack): a record's score is minus its EDM denoising loss at fixed noise levels
σ (default 0.10–0.13), averaged over fixed noise draws (default 64). Members are records of the fine-tuning split,
non-members the held-out split (DP fine-tuning keeps 20% aside for this). We report AUC and TPR at low FPR with
bootstrap confidence intervals: 1000 vs 1000 records make the 0.1%-FPR point rest on one false positive.

Audit: `run_audit` repeats a fine-tuning run with canaries inserted at random (synther/privacy/audit.py) and turns
the attack's guesses about them into a lower bound on ε, reported beside the accountant's ε and the largest bound
that many canaries could show (≈4.6 for 1000: no larger ε can be contradicted). The white-box audit of the DP-SGD step
itself is synther/privacy/whitebox_audit.py.

This is evaluation by the data holder: it reads the sensitive data, so its outputs are not themselves private.
"""
import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyrallis
import torch
from tqdm.auto import tqdm

from synther.diffusion.edm import EDM
from synther.diffusion.synthesizer import DiffusionConfig, finetune, load_model, sensitive_split
from synther.errors import UserError
from synther.evaluation.plots import new_figure, save_figure
from synther.layout import eps_tag, script
from synther.privacy.audit import audit_from_scores, make_canaries
from synther.utils.device import resolve_device
from synther.utils.io import atomic_path, atomic_write_json

PAPER_SIGMAS = (0.10, 0.11, 0.12, 0.13)
REPORTED_FPRS = (0.001, 0.01, 0.1)
NOTE = ("membership inference and audits read the sensitive data: these results are for the data holder and are "
        "not themselves differentially private")


@dataclasses.dataclass
class AttackSettings:
    sigmas: tuple[float, ...] = PAPER_SIGMAS
    draws: int = 64
    batch_size: int = 4096
    seed: int = 0  # fixes the noise draws, so every record is scored against the same draws


@torch.no_grad()
def loss_scores(model: EDM, x: np.ndarray, settings: AttackSettings = AttackSettings(), progress: bool = False
                ) -> np.ndarray:
    """Membership score of each row: minus its EDM loss averaged over σ ∈ sigmas and `draws` noise draws."""
    device = next(model.parameters()).device
    xt = torch.as_tensor(np.asarray(x, dtype=np.float32), device=device)
    gen = torch.Generator().manual_seed(settings.seed)
    total = torch.zeros(len(xt), dtype=torch.float64)
    for _ in tqdm(range(settings.draws), desc="attack", unit="draw", disable=not progress, mininterval=1.0):
        noise = torch.randn(xt.shape, generator=gen).to(device)  # one draw per record, shared across σ
        for sigma in settings.sigmas:
            for start in range(0, len(xt), settings.batch_size):
                sl = slice(start, start + settings.batch_size)
                s = torch.full((len(xt[sl]),), float(sigma), device=device)
                total[sl] += model.per_sample_loss(xt[sl], sigma=s, noise=noise[sl]).double().cpu()
    return -(total / (settings.draws * len(settings.sigmas))).numpy()


def roc_curve(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) at every distinct threshold, "member" when score ≥ threshold; starts at (0, 0)."""
    scores = np.concatenate([member_scores, nonmember_scores])
    labels = np.concatenate([np.ones(len(member_scores)), np.zeros(len(nonmember_scores))])
    order = np.argsort(-scores, kind="stable")
    scores, labels = scores[order], labels[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores) != 0), len(scores) - 1]  # ties move together
    tp, fp = np.cumsum(labels)[last_of_tie], np.cumsum(1 - labels)[last_of_tie]
    return np.r_[0.0, fp / len(nonmember_scores)], np.r_[0.0, tp / len(member_scores)]


def auc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    """P(member score > non-member score) + ½ P(tie): the Mann–Whitney form of the ROC AUC."""
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([member_scores, nonmember_scores]))
    n1, n0 = len(member_scores), len(nonmember_scores)
    return float((ranks[:n1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """Best TPR among thresholds whose FPR does not exceed `target`."""
    return float(tpr[fpr <= target + 1e-12].max())


def attack_metrics(member_scores: np.ndarray, nonmember_scores: np.ndarray, fprs: tuple[float, ...] = REPORTED_FPRS,
                   bootstrap: int = 1000, seed: int = 0, confidence: float = 0.95) -> dict[str, Any]:
    """AUC and TPR at each FPR, with percentile-bootstrap intervals (members and non-members resampled apart)."""
    m, n = np.asarray(member_scores, np.float64), np.asarray(nonmember_scores, np.float64)
    if len(m) < 2 or len(n) < 2:
        raise UserError(f"the attack needs at least 2 members and 2 non-members, got {len(m)} and {len(n)}")
    fpr, tpr = roc_curve(m, n)
    out = {"auc": auc(m, n), "tpr_at_fpr": {f"{f:g}": tpr_at_fpr(fpr, tpr, f) for f in fprs},
           "members": len(m), "nonmembers": len(n)}
    if bootstrap > 0:
        rng = np.random.default_rng(seed)
        aucs, tprs = [], {k: [] for k in out["tpr_at_fpr"]}
        for _ in range(bootstrap):
            bm, bn = m[rng.integers(len(m), size=len(m))], n[rng.integers(len(n), size=len(n))]
            aucs.append(auc(bm, bn))
            bf, bt = roc_curve(bm, bn)
            for f, k in zip(fprs, tprs):
                tprs[k].append(tpr_at_fpr(bf, bt, f))
        lo, hi = 100 * (1 - confidence) / 2, 100 * (1 + confidence) / 2
        out["auc_ci"] = [float(np.percentile(aucs, lo)), float(np.percentile(aucs, hi))]
        out["tpr_ci"] = {k: [float(np.percentile(v, lo)), float(np.percentile(v, hi))] for k, v in tprs.items()}
        out["ci"] = f"{confidence:.0%} percentile bootstrap, {bootstrap} resamples"
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), 400)).astype(int))  # enough points to plot
    out["roc"] = {"fpr": fpr[keep].tolist(), "tpr": tpr[keep].tolist()}
    return out


def plot_roc(curves: dict[str, dict[str, Any]], path: Path) -> Path:
    """ROC curves on log-log axes (the low-FPR region is what matters for privacy), one per label."""
    fig = new_figure(4.5, 4.5)
    ax = fig.subplots()
    for label, res in curves.items():
        ax.plot(np.maximum(res["roc"]["fpr"], 1e-4), np.maximum(res["roc"]["tpr"], 1e-4),
                label=f"{label} (AUC {res['auc']:.3f})")
    ax.plot([1e-4, 1], [1e-4, 1], "k:", lw=0.8, label="chance")
    ax.set(xscale="log", yscale="log", xlim=(1e-3, 1), ylim=(1e-3, 1), xlabel="false positive rate",
           ylabel="true positive rate", title="Loss-based membership inference")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return save_figure(fig, path)


def finetune_config(checkpoint: str | Path) -> DiffusionConfig:
    """The DiffusionConfig a fine-tuned checkpoint was trained with (recorded in its metadata)."""
    _, meta, _ = load_model(checkpoint, "cpu")
    if meta.get("phase") != "finetune" or "config" not in meta:
        raise UserError(f"{checkpoint}: not a fine-tuned checkpoint with a recorded configuration (attack a model "
                        "fine-tuned on sensitive data; checkpoints from before this version lack the record)")
    config = dict(meta["config"])
    if "load_checkpoint" in config:  # recorded before the option became --checkpoint
        config["checkpoint"] = config.pop("load_checkpoint")
    return pyrallis.decode(DiffusionConfig, config)


def member_split(cfg: DiffusionConfig, count: int, seed: int, dataset: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Up to `count` member rows (training split) and non-member rows (held-out split) as raw vectors."""
    if dataset:
        cfg = dataclasses.replace(cfg, dataset=dataset)
    _, train, heldout = sensitive_split(cfg)
    rng = np.random.default_rng(seed)
    pick = [rng.choice(d.size, min(count, d.size), replace=False) for d in (train, heldout)]
    return train.to_vectors()[np.sort(pick[0])], heldout.to_vectors()[np.sort(pick[1])]


def attack_checkpoint(checkpoint: str | Path, members: int = 1000, settings: AttackSettings = AttackSettings(),
                      bootstrap: int = 1000, device: str = "auto", dataset: str = "", progress: bool = False
                      ) -> dict[str, Any]:
    """Attack a fine-tuned checkpoint (EMA weights, as released) with its own member/held-out split."""
    start = time.time()
    cfg = finetune_config(checkpoint)
    model, _, ledger = load_model(checkpoint, resolve_device(device))
    member_x, nonmember_x = member_split(cfg, members, settings.seed, dataset)
    result = attack_metrics(loss_scores(model, member_x, settings, progress),
                            loss_scores(model, nonmember_x, settings, progress), bootstrap=bootstrap,
                            seed=settings.seed)
    eps = ledger.epsilon_spent()
    return {**result, "checkpoint": str(checkpoint), "private": ledger.private,
            "epsilon": eps if np.isfinite(eps) else None, "delta": ledger.delta,
            "sigmas": list(settings.sigmas), "draws": settings.draws, "attack": "white-box EDM loss (PrivORL)",
            "sensitive_dataset": dataset or cfg.dataset, "note": NOTE, "seconds": round(time.time() - start, 2)}


def run_audit(cfg: DiffusionConfig, out_dir: str | Path, canaries: int = 1000, radius: float = 2.0,
              confidence: float = 0.95, settings: AttackSettings = AttackSettings(), progress: bool = False
              ) -> dict[str, Any]:
    """Repeat the fine-tuning `cfg` with `canaries` atypical records, each inserted with probability ½, attack them,
    and return the one-run ε lower bound beside the audit run's accountant ε. Writes <out_dir>/audit.json."""
    start = time.time()
    out_dir = Path(out_dir)
    pretrained, _, _ = load_model(cfg.checkpoint, "cpu")  # its public normalizer places the canaries
    rng = np.random.default_rng([cfg.seed, 0xA0D17])
    x = make_canaries(pretrained.normalizer.mean.numpy(), pretrained.normalizer.std.numpy(), canaries, radius, rng)
    x = pretrained.normalizer.from_model_space(torch.as_tensor(x)).numpy()  # squashed actions: back inside the bounds
    inserted = rng.random(canaries) < 0.5
    run_cfg = dataclasses.replace(cfg, mode="finetune", run_dir=str(out_dir / "audit-run"), progress=progress)
    checkpoint = finetune(run_cfg, extra_train_rows=x[inserted])
    model, _, ledger = load_model(checkpoint, resolve_device(cfg.device))
    scores = loss_scores(model, x, settings, progress)
    delta = cfg.dp.delta
    result = audit_from_scores(scores, inserted, delta=delta, confidence=confidence)
    eps = ledger.epsilon_spent()
    out = {**dataclasses.asdict(result), "accountant_epsilon": eps if np.isfinite(eps) else None,
           "private": ledger.private, "canary_radius": radius, "audit_run": str(checkpoint.parent),
           "canary_inclusion_auc": auc(scores[inserted], scores[~inserted]) if 0 < inserted.sum() < canaries else None,
           "note": NOTE, "seconds": round(time.time() - start, 2)}
    atomic_write_json(out_dir / "audit.json", out)
    return out


def mia_command(python: str, checkpoint: str | Path, out_dir: str | Path, audit: bool) -> list[str]:
    """The command line of MuJoCo/mia.py (its MIAConfig) attacking a fine-tuned checkpoint."""
    return [python, script("mia.py"), "--checkpoint", str(checkpoint), "--out_dir", str(out_dir), "--audit",
            str(audit).lower()]


def write_result(result: dict[str, Any], out_dir: Path, name: str = "mia") -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_roc({Path(result["checkpoint"]).parent.name: result}, out_dir / f"{name}_roc.png")
    atomic_write_json(out_dir / f"{name}.json", result)
    return out_dir / f"{name}.json"


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of attack (and audit) results, one row per model."""
    lines = ["| model | ε (accountant) | AUC [95% CI] | TPR@0.1%FPR | TPR@1%FPR | TPR@10%FPR | "
             "audit ε lower bound (max attainable) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        ci = r.get("auc_ci")
        auc_s = f"{r['auc']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
        t = r["tpr_at_fpr"]
        eps = "∞ (no DP)" if r["epsilon"] is None else f"{r['epsilon']:.3g}"
        audit = r.get("audit")
        audit_s = f"{audit['epsilon_lower_bound']:.3g} ({audit['max_attainable_bound']:.3g})" if audit else "–"
        lines.append(f"| {r['label']} | {eps} | {auc_s} | {t['0.001']:.3f} | {t['0.01']:.3f} | {t['0.1']:.3f} | "
                     f"{audit_s} |")
    return "\n".join(lines)


def run_experiment(base: DiffusionConfig, pretrained: str, dataset: str, out_dir: str | Path, members: int = 1000,
                   epsilons: tuple[float, ...] = (1.0, 10.0), nodp_epochs: float = 1000.0,
                   settings: AttackSettings = AttackSettings(), bootstrap: int = 1000, audit: bool = False,
                   canaries: int = 1000, radius: float = 2.0, confidence: float = 0.95, progress: bool = False
                   ) -> list[dict[str, Any]]:
    """PrivORL's MIA setup: fine-tune on `members` records (as many held out) without DP for `nodp_epochs`, and
    with DP at each ε (the base config's epochs), attack all of them; optionally audit each. Finished runs are
    reused. Writes <out_dir>/mia_experiment.{json,md} and mia_roc.png."""
    out_dir = Path(out_dir)
    variants = [("no DP", None)] + [(f"DP ε={e:g}", float(e)) for e in epsilons]
    rows = []
    for label, eps in variants:
        tag = "nodp" if eps is None else eps_tag(eps)
        dp = dataclasses.replace(base.dp, enabled=eps is not None, epsilon=eps or base.dp.epsilon, train_fraction=0.5)
        train = base.train if eps is not None else dataclasses.replace(base.train, epochs=nodp_epochs, max_steps=0)
        cfg = dataclasses.replace(base, mode="finetune", dataset=dataset, checkpoint=str(pretrained),
                                  max_sensitive_rows=2 * members, dp=dp, train=train,
                                  run_dir=str(out_dir / f"finetune-{tag}"), progress=progress)
        start = time.time()
        checkpoint = finetune(cfg)
        train_s = time.time() - start
        res = attack_checkpoint(checkpoint, members, settings, bootstrap, cfg.device, progress=progress)
        res.update(label=label, finetune_seconds=round(train_s, 2))
        write_result(res, Path(cfg.run_dir))
        if audit:
            res["audit"] = run_audit(cfg, Path(cfg.run_dir) / "audit", canaries, radius, confidence, settings,
                                     progress)
        rows.append(res)
    plot_roc({r["label"]: r for r in rows}, out_dir / "mia_roc.png")
    atomic_write_json(out_dir / "mia_experiment.json", rows)
    with atomic_path(out_dir / "mia_experiment.md") as tmp:
        tmp.write_text(format_table(rows) + "\n")
    return rows
