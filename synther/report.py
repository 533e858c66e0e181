"""Results of a sweep, from its run folders alone: tables (markdown + CSV) and plots (PNG).

    collect(runs_dir) -> Results       every agents' summary.json (+ eval.jsonl), fidelity.json, mia.json (+ audit.json)
                                       and ledger.json under runs_dir, labelled with dataset, method, ε, seed, agent
    write_report(results, out_dir)     utility / fidelity / mia / ledger .md and .csv, report.md, and PNG plots

Labels (dataset, method, ε, seed) come from each run folder's run.json, where the sweep records every job's labels
(synther.layout.write_run_labels). Folders without one (a script run alone, or a sweep from before run.json) are
labelled from their JSON files where they say it (summary.json: algorithm, dataset, dp_epsilon, evaluation seed;
ledger.json: mechanism, sensitive dataset, target ε) and otherwise from the folder names of synther.layout:
agents/<algo>-<dataset>-{eps<ε>|<method>-eps<ε>|<rung>|real}-seed<s> and
evaluation/{fidelity|mia}-<method>-<dataset>[-eps<ε>]-seed<s>.

Utility: per dataset × agent × method × ε, the mean and sample standard deviation (n − 1; blank for one seed) over
seeds of each run's score (by default the mean normalized score of its last k evaluations, summary.json's
last_k_mean_normalized_score), the real-data reference (the same agent trained on the real dataset, mean over its
seeds) and the ratio mean / real mean.
"""
import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from synther.errors import UserError
from synther.evaluation.plots import new_figure, save_figure
from synther.layout import BASELINES, LADDER, dataset_tag, read_run_labels
from synther.utils.io import atomic_path

SCORES = {"last_k": "last_k_mean_normalized_score", "final": "final_normalized_score",
          "best": "best_normalized_score"}
METHOD_ORDER = ("real",) + LADDER + ("privtranr",) + BASELINES
FPRS = ("0.001", "0.01", "0.1")
_EVAL_NAME = re.compile(
    r"^(?P<kind>fidelity|mia)-(?P<method>[^-]+)-(?P<dataset>.+?)(?:-eps(?P<eps>[^-]+))?-seed(?P<seed>\d+)$")
_RUNG = "|".join(LADDER)
_SEED = re.compile(r"-seed(\d+)$")
_AGENT_LABELS = ("method", "epsilon", "seed")  # what an agent's run.json entry must give (its summary names the dataset)
_LABELS = ("dataset", *_AGENT_LABELS)  # what an evaluation's run.json entry must give to label it


@dataclass
class AgentRun:
    dataset: str
    agent: str
    method: str  # real, privtranr, a baseline, or 'synthetic' (samples of unknown origin)
    epsilon: float | None
    seed: int
    score: float
    summary: dict[str, Any]
    run_dir: Path
    curve: list[tuple[int, float]] = field(default_factory=list)  # (update, normalized score) from eval.jsonl


@dataclass
class Results:
    agents: list[AgentRun] = field(default_factory=list)
    fidelity: list[dict[str, Any]] = field(default_factory=list)  # dataset, method, epsilon, seed, data=fidelity.json
    mia: list[dict[str, Any]] = field(default_factory=list)  # dataset, method, epsilon, seed, data=mia.json, audit
    ledgers: list[dict[str, Any]] = field(default_factory=list)  # one per private release
    skipped: list[str] = field(default_factory=list)  # files that could not be read or labelled, and why

    def empty(self) -> bool:
        return not (self.agents or self.fidelity or self.mia or self.ledgers)


# --- collecting -------------------------------------------------------------------------------------------------
def _read_json(path: Path, skipped: list[str]) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        skipped.append(f"{path}: unreadable ({type(e).__name__})")
        return None
    if not isinstance(data, dict):
        skipped.append(f"{path}: not a JSON object")
        return None
    return data


def _float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _agent_labels(folder: str, summary: dict[str, Any]) -> tuple[str, float | None, int | None]:
    """(method, ε, seed) of an agent run folder; the name says the method, the summary says ε and seed."""
    algorithm = summary.get("algorithm", "")
    prefix = f"{algorithm}-{dataset_tag(str(summary.get('dataset', '')))}-"
    rest = folder[len(prefix):] if folder.startswith(prefix) else ""
    kind = (summary.get("data") or {}).get("kind")
    eps = _float(summary.get("dp_epsilon"))
    m = re.match(rf"^(?:(?P<method>[a-z0-9_]+)-)?(?P<data>eps[^-]+|real|synthetic|{_RUNG})-seed(?P<seed>\d+)$", rest)
    if m:
        data = m["data"]
        if data in LADDER:
            method = data
        else:
            method = "real" if data == "real" else m["method"] or ("privtranr" if data.startswith("eps") else
                                                                   "synthetic")
        if eps is None and data.startswith("eps"):
            eps = _float(data[3:])
        seed = int(m["seed"])
    else:  # a custom --name: the summary alone
        method = "real" if kind == "real" else "synthetic"
        seed = None
    if kind == "real":
        method, eps = "real", None
    seed = (summary.get("evaluation") or {}).get("seed", seed)
    return method, eps, None if seed is None else int(seed)


def _curve(path: Path) -> list[tuple[int, float]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
            out.append((int(row["step"]), float(row["normalized_score"])))
        except (ValueError, KeyError, TypeError):
            continue
    return out


def _eval_labels(folder: Path, data: dict[str, Any]) -> dict[str, Any] | None:
    """Labels from the folder name synther.sweep writes; fields of the JSON only for folders named otherwise (a
    'seed' inside mia.json is the attack's, not the sweep's)."""
    m = _EVAL_NAME.match(folder.name)
    if m:
        return {"dataset": m["dataset"], "method": m["method"], "epsilon": _float(m["eps"]) if m["eps"] else None,
                "seed": int(m["seed"])}
    if data.get("dataset") is None or data.get("method") is None:
        return None
    return {"dataset": data["dataset"], "method": data["method"], "epsilon": _float(data.get("target_epsilon")),
            "seed": data.get("seed")}


def collect(runs_dir: str | Path, score: str = "last_k") -> Results:
    """Everything under `runs_dir` (any depth) that a sweep or the scripts wrote."""
    root = Path(runs_dir)
    if not root.is_dir():
        raise UserError(f"{root}: runs folder not found")
    if score not in SCORES:
        raise UserError(f"score must be one of {', '.join(SCORES)}, got '{score}'")
    res = Results()
    for path in sorted(root.rglob("summary.json")):
        s = _read_json(path, res.skipped)
        if s is None or SCORES[score] not in s or "algorithm" not in s:
            if s is not None:
                res.skipped.append(f"{path}: not an agent summary")
            continue
        recorded = read_run_labels(path.parent, "agent")
        if recorded is not None and set(_AGENT_LABELS) <= recorded.keys():
            method, eps, seed = recorded["method"], _float(recorded["epsilon"]), recorded["seed"]
        else:
            method, eps, seed = _agent_labels(path.parent.name, s)
        value = _float(s[SCORES[score]])
        if seed is None or value is None:
            res.skipped.append(f"{path}: no seed or score")
            continue
        res.agents.append(AgentRun(str(s.get("dataset")), s["algorithm"], method, eps, seed, value, s, path.parent,
                                   _curve(path.parent / "eval.jsonl")))
    for kind, rows in (("fidelity", res.fidelity), ("mia", res.mia)):
        for path in sorted(root.rglob(f"{kind}.json")):
            data = _read_json(path, res.skipped)
            if data is None:
                continue
            recorded = read_run_labels(path.parent, kind)
            labels = ({k: recorded[k] for k in _LABELS} if recorded is not None and set(_LABELS) <= recorded.keys()
                      else _eval_labels(path.parent, data))
            if labels is None:
                res.skipped.append(f"{path}: cannot tell its dataset and method (folder {path.parent.name})")
                continue
            # the file itself under "data": its own "epsilon" (mia.json: the accountant's) is not the target ε
            row = {**labels, "data": data, "run_dir": str(path.parent)}
            audit = path.parent / "audit.json"
            if kind == "mia" and audit.exists():
                row["audit"] = _read_json(audit, res.skipped)
            rows.append(row)
    for path in sorted(root.rglob("ledger.json")):
        led = _read_json(path, res.skipped)
        if led is None or led.get("target_epsilon") is None:
            continue  # pre-training: no sensitive data, nothing spent
        acc = led.get("accounting") if isinstance(led.get("accounting"), dict) else {}
        recorded = read_run_labels(path.parent, "finetune") or read_run_labels(path.parent, "baseline") or {}
        seed = recorded.get("seed")
        if seed is None:
            named = _SEED.search(path.parent.name)
            seed = int(named.group(1)) if named else None
        res.ledgers.append({
            "dataset": led.get("sensitive_dataset"), "method": led.get("mechanism") or "privtranr",
            "epsilon": _float(led.get("target_epsilon")), "seed": seed,
            "epsilon_spent": _float(led.get("epsilon_spent")), "delta": _float(led.get("delta")),
            "epsilon_replace_one": _float(led.get("epsilon_replace_one")),
            "delta_total": _float(led.get("delta_total")),
            "noise_multiplier": _float(led.get("noise_multiplier", acc.get("noise_multiplier"))),
            "sample_rate": _float(led.get("sample_rate", acc.get("sample_rate"))),
            "steps": led.get("steps_taken", acc.get("steps")), "accountant": led.get("accountant"),
            "run_dir": str(path.parent)})
    return res


# --- tables -----------------------------------------------------------------------------------------------------
def _mean_std(values: list[float]) -> tuple[float, float | None]:
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), (float(a.std(ddof=1)) if len(a) > 1 else None)


def _method_key(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method), method) if method in METHOD_ORDER else (len(METHOD_ORDER), method)


def _eps_key(eps: float | None) -> float:
    return -1.0 if eps is None else eps


def ratio_ci(synthetic: list[float], real: list[float], draws: int = 4000, level: float = 0.95
             ) -> tuple[float | None, float | None]:
    """Percentile bootstrap CI of mean(synthetic) / mean(real), seeds resampled within each side; None where a
    side has one seed (no spread to resample) or a resampled real mean is 0. A report statistic, not a mechanism:
    fixed seed, so the report is reproducible."""
    if len(synthetic) < 2 or len(real) < 2:
        return None, None
    rng = np.random.default_rng(0)
    syn, ref = np.asarray(synthetic, dtype=np.float64), np.asarray(real, dtype=np.float64)
    syn_means = syn[rng.integers(0, len(syn), (draws, len(syn)))].mean(1)
    ref_means = ref[rng.integers(0, len(ref), (draws, len(ref)))].mean(1)
    if (ref_means == 0).any():
        return None, None
    low, high = np.quantile(syn_means / ref_means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def utility_rows(res: Results) -> list[dict[str, Any]]:
    groups: dict[tuple, list[AgentRun]] = {}
    for r in res.agents:
        groups.setdefault((r.dataset, r.agent, r.method, r.epsilon), []).append(r)
    real = {(d, a): [r.score for r in runs] for (d, a, m, _), runs in groups.items() if m == "real"}
    rows = []
    for (dataset, agent, method, eps), runs in sorted(
            groups.items(), key=lambda kv: (kv[0][0], kv[0][1], _method_key(kv[0][2]), _eps_key(kv[0][3]))):
        runs = sorted(runs, key=lambda r: r.seed)
        scores = [r.score for r in runs]
        mean, std = _mean_std(scores)
        ref_scores = real.get((dataset, agent))
        ref = _mean_std(ref_scores)[0] if ref_scores else None
        low, high = ratio_ci(scores, ref_scores or []) if method != "real" else (None, None)
        rows.append({"dataset": dataset, "agent": agent, "method": method, "epsilon": eps, "n_seeds": len(runs),
                     "mean": mean, "std": std, "real_mean": ref,
                     "ratio_to_real": mean / ref if ref not in (None, 0.0) else None,
                     "ratio_ci_low": low, "ratio_ci_high": high,
                     "seeds": " ".join(str(r.seed) for r in runs)})
    return rows


def ladder_rows(res: Results) -> list[dict[str, Any]]:
    """The utility ladder: per dataset and agent, every rung (real, no-DP fine-tune, public pre-training only,
    DP fine-tuning at each ε) with its score, ratio to real and fidelity, in the order utility is lost. Empty unless
    the results hold a ladder rung besides real data and PrivTranR."""
    if not any(r.method in LADDER for r in res.agents):
        return []
    fid = {(r["dataset"], r["method"], r["epsilon"]): r for r in fidelity_rows(res)}
    rows = []
    for u in utility_rows(res):
        if u["method"] not in ("real", "privtranr", *LADDER):
            continue
        f = fid.get((u["dataset"], u["method"], u["epsilon"]), {})
        rows.append({**u, **{k: v for k, v in f.items() if k.endswith(("_mean", "_std")) and k != "n_seeds"},
                     "fidelity_seeds": f.get("n_seeds")})
    order = {m: i for i, m in enumerate(("real", "nodp", "privtranr", "public_curiosity", "public"))}
    return sorted(rows, key=lambda r: (r["dataset"], r["agent"], order[r["method"]], -_eps_key(r["epsilon"])))


def _grouped(rows: list[dict[str, Any]]) -> list[tuple[tuple, list[dict[str, Any]]]]:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["method"], r["epsilon"]), []).append(r)
    return sorted(groups.items(), key=lambda kv: (kv[0][0], _method_key(kv[0][1]), _eps_key(kv[0][2])))


def _values(rows: list[dict[str, Any]], get) -> list[float]:
    out = []
    for r in rows:
        try:
            v = _float(get(r))
        except (KeyError, TypeError, AttributeError):
            v = None
        if v is not None:
            out.append(v)
    return out


def _stat(rows: list[dict[str, Any]], get, prefix: str) -> dict[str, Any]:
    vals = _values(rows, get)
    if not vals:
        return {f"{prefix}_mean": None, f"{prefix}_std": None}
    mean, std = _mean_std(vals)
    return {f"{prefix}_mean": mean, f"{prefix}_std": std}


def fidelity_rows(res: Results) -> list[dict[str, Any]]:
    rows = []
    for (dataset, method, eps), runs in _grouped(res.fidelity):
        rows.append({"dataset": dataset, "method": method, "epsilon": eps, "n_seeds": len(runs),
                     **_stat(runs, lambda r: r["data"]["marginal_score"], "marginal"),
                     **_stat(runs, lambda r: r["data"]["correlation_score"], "correlation"),
                     **_stat(runs, lambda r: r["data"]["dynamics"]["next_obs_nmse"], "dynamics_next_obs_nmse"),
                     **_stat(runs, lambda r: r["data"]["dynamics"]["reward_nmse"], "dynamics_reward_nmse"),
                     **_stat(runs, lambda r: r["data"]["support"]["precision"], "support_precision"),
                     **_stat(runs, lambda r: r["data"]["support"]["recall"], "support_recall")})
    return rows


def mia_rows(res: Results) -> list[dict[str, Any]]:
    rows = []
    for (dataset, method, eps), runs in _grouped(res.mia):
        row = {"dataset": dataset, "method": method, "epsilon": eps, "n_seeds": len(runs),
               **_stat(runs, lambda r: r["data"]["auc"], "auc"),
               # the attack's own bootstrap interval, averaged over seeds (for one seed: that seed's interval)
               "auc_ci_low": _avg(_values(runs, lambda r: r["data"]["auc_ci"][0])),
               "auc_ci_high": _avg(_values(runs, lambda r: r["data"]["auc_ci"][1]))}
        for f in FPRS:
            row[f"tpr_at_fpr_{f}"] = _avg(_values(runs, lambda r, f=f: r["data"]["tpr_at_fpr"][f]))
        row["accountant_epsilon"] = _avg(_values(runs, lambda r: r["data"]["epsilon"]))
        row["audit_epsilon_lower_bound"] = _avg(_values(runs, lambda r: r["audit"]["epsilon_lower_bound"]))
        row["audit_accountant_epsilon"] = _avg(_values(runs, lambda r: r["audit"]["accountant_epsilon"]))
        row["audit_max_attainable_bound"] = _avg(_values(runs, lambda r: r["audit"]["max_attainable_bound"]))
        rows.append(row)
    return rows


def _avg(vals: list[float]) -> float | None:
    return float(np.mean(vals)) if vals else None


def ledger_rows(res: Results) -> list[dict[str, Any]]:
    return sorted(res.ledgers, key=lambda r: (str(r["dataset"]), _method_key(r["method"]), _eps_key(r["epsilon"]),
                                              r["seed"] if r["seed"] is not None else -1))


# --- formatting -------------------------------------------------------------------------------------------------
def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if abs(v) >= 10 ** -digits or v == 0 else f"{v:.3g}"
    return str(v)


def _pm(mean: float | None, std: float | None, digits: int = 2) -> str:
    """mean ± std, the std to the mean's last decimal (0.996 ± 0.001, not 0.996 ± 0.000879)."""
    if mean is None:
        return "—"
    shown = _fmt(mean, digits)
    if std is None:
        return shown
    if "e" in shown:  # a tiny mean in exponent form: the std in the same form
        return f"{shown} ± {std:.3g}"
    if "." not in shown:  # an integer
        return f"{shown} ± {_fmt(std, digits)}"
    return f"{shown} ± {std:.{len(shown.partition('.')[2])}f}"


def _eps(v: float | None) -> str:
    return "—" if v is None else f"{v:g}"


def markdown_table(header: list[str], body: Iterable[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _ci(low: float | None, high: float | None) -> str:
    return "—" if low is None else f"[{low:.2f}, {high:.2f}]"


def utility_markdown(rows: list[dict[str, Any]]) -> str:
    return markdown_table(
        ["dataset", "agent", "method", "ε", "seeds", "normalized score (mean ± std)", "real", "ratio to real",
         "ratio 95% CI"],
        ([r["dataset"], r["agent"], r["method"], _eps(r["epsilon"]), str(r["n_seeds"]), _pm(r["mean"], r["std"], 1),
          _fmt(r["real_mean"], 1), _fmt(r["ratio_to_real"], 3), _ci(r["ratio_ci_low"], r["ratio_ci_high"])]
         for r in rows))


LADDER_NAMES = {"real": "real data", "nodp": "fine-tuned without DP", "public": "public pre-training only",
                "public_curiosity": "public pre-training only (curiosity)", "privtranr": "DP fine-tuned"}


def ladder_markdown(rows: list[dict[str, Any]]) -> str:
    return markdown_table(
        ["dataset", "agent", "rung", "ε", "seeds", "score (mean ± std)", "ratio to real", "ratio 95% CI", "marginal",
         "correlation", "NMSE s′", "NMSE r"],
        ([r["dataset"], r["agent"], LADDER_NAMES[r["method"]], _eps(r["epsilon"]), str(r["n_seeds"]),
          _pm(r["mean"], r["std"], 1), _fmt(r["ratio_to_real"], 3), _ci(r["ratio_ci_low"], r["ratio_ci_high"]),
          _pm(r.get("marginal_mean"), r.get("marginal_std"), 3),
          _pm(r.get("correlation_mean"), r.get("correlation_std"), 3),
          _pm(r.get("dynamics_next_obs_nmse_mean"), r.get("dynamics_next_obs_nmse_std"), 3),
          _pm(r.get("dynamics_reward_nmse_mean"), r.get("dynamics_reward_nmse_std"), 3)] for r in rows))


def fidelity_markdown(rows: list[dict[str, Any]]) -> str:
    return markdown_table(
        ["dataset", "method", "ε", "seeds", "marginal", "correlation", "dynamics NMSE (next obs)",
         "dynamics NMSE (reward)", "support precision", "support recall"],
        ([r["dataset"], r["method"], _eps(r["epsilon"]), str(r["n_seeds"]),
          _pm(r["marginal_mean"], r["marginal_std"], 3), _pm(r["correlation_mean"], r["correlation_std"], 3),
          _pm(r["dynamics_next_obs_nmse_mean"], r["dynamics_next_obs_nmse_std"], 3),
          _pm(r["dynamics_reward_nmse_mean"], r["dynamics_reward_nmse_std"], 3),
          _pm(r.get("support_precision_mean"), r.get("support_precision_std"), 3),
          _pm(r.get("support_recall_mean"), r.get("support_recall_std"), 3)] for r in rows))


def mia_markdown(rows: list[dict[str, Any]]) -> str:
    def ci(r: dict[str, Any]) -> str:
        return "—" if r["auc_ci_low"] is None else f"[{r['auc_ci_low']:.3f}, {r['auc_ci_high']:.3f}]"

    return markdown_table(
        ["dataset", "method", "ε", "seeds", "AUC", "AUC 95% CI", "TPR@0.1%FPR", "TPR@1%FPR", "TPR@10%FPR",
         "accountant ε", "audit ε lower bound", "audit max attainable"],
        ([r["dataset"], r["method"], _eps(r["epsilon"]), str(r["n_seeds"]), _pm(r["auc_mean"], r["auc_std"], 3), ci(r),
          *(_fmt(r[f"tpr_at_fpr_{f}"], 3) for f in FPRS),
          "∞ (no DP)" if r["accountant_epsilon"] is None and r["epsilon"] is None else _fmt(r["accountant_epsilon"], 3),
          _fmt(r["audit_epsilon_lower_bound"], 3), _fmt(r["audit_max_attainable_bound"], 3)] for r in rows))


def ledger_markdown(rows: list[dict[str, Any]]) -> str:
    return markdown_table(
        ["dataset", "method", "target ε", "seed", "ε spent", "δ", "ε replace-one", "δ with tail", "σ", "q", "steps",
         "accountant"],
        ([str(r["dataset"]), r["method"], _eps(r["epsilon"]), _fmt(r["seed"]), _fmt(r["epsilon_spent"], 3),
          "—" if r["delta"] is None else f"{r['delta']:g}", _fmt(r.get("epsilon_replace_one"), 3),
          "—" if r.get("delta_total") is None else f"{r['delta_total']:.4g}", _fmt(r["noise_multiplier"], 3),
          "—" if r["sample_rate"] is None else f"{r['sample_rate']:.4g}", _fmt(r["steps"]),
          _fmt(r["accountant"]).split(":")[0]]  # the name; the CSV keeps the full description
         for r in rows))


def write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else repr(r[k]) if isinstance(r.get(k), float) else r[k])
                    for k in columns})
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


# --- plots ------------------------------------------------------------------------------------------------------
def _subplots(ncols: int, width: float, height: float):
    """A headless figure (synther.evaluation.plots' Agg canvas, no pyplot) with one row of `ncols` axes."""
    fig = new_figure(width, height, dpi=110)
    fig.set_layout_engine("constrained")
    return fig, fig.subplots(1, ncols, squeeze=False)


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", s)


def plot_utility(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """Per dataset: normalized score vs ε, one line per method (± std), the real-data reference as a line."""
    paths = []
    for dataset in sorted({r["dataset"] for r in rows}):
        mine = [r for r in rows if r["dataset"] == dataset]
        agents = sorted({r["agent"] for r in mine})
        fig, axes = _subplots(len(agents), 4.5 * len(agents), 3.6)
        for ax, agent in zip(axes[0], agents):
            sub = [r for r in mine if r["agent"] == agent]
            for method in sorted({r["method"] for r in sub if r["method"] != "real"}, key=_method_key):
                pts = sorted((r for r in sub if r["method"] == method and r["epsilon"] is not None),
                             key=lambda r: r["epsilon"])
                if pts:
                    ax.errorbar([r["epsilon"] for r in pts], [r["mean"] for r in pts],
                                yerr=[r["std"] or 0.0 for r in pts], marker="o", capsize=3, label=method)
            rungs = sorted((r for r in sub if r["method"] in LADDER), key=lambda r: _method_key(r["method"]))
            for k, r in enumerate(rungs):  # rungs without ε: horizontal lines, like the real-data reference
                ax.axhline(r["mean"], color=f"C{5 + k}", linestyle=":", label=r["method"])
            real = next((r for r in sub if r["method"] == "real"), None)
            if real is not None:
                ax.axhline(real["mean"], color="black", linestyle="--", label="real data")
                if real["std"]:
                    ax.axhspan(real["mean"] - real["std"], real["mean"] + real["std"], color="black", alpha=0.08)
            ax.set_title(agent)
            ax.set_xlabel("ε")
            ax.set_ylabel("normalized score")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"utility vs ε: {dataset}")
        paths.append(save_figure(fig, out / f"utility_vs_epsilon_{_slug(dataset)}.png"))
    return paths


def plot_learning_curves(res: Results, out: Path) -> list[Path]:
    """Per dataset: eval.jsonl curves averaged over seeds (at the updates every seed evaluated), per agent."""
    paths = []
    for dataset in sorted({r.dataset for r in res.agents if r.curve}):
        runs = [r for r in res.agents if r.dataset == dataset and r.curve]
        agents = sorted({r.agent for r in runs})
        fig, axes = _subplots(len(agents), 4.5 * len(agents), 3.6)
        for ax, agent in zip(axes[0], agents):
            groups: dict[tuple, list[AgentRun]] = {}
            for r in runs:
                if r.agent == agent:
                    groups.setdefault((r.method, r.epsilon), []).append(r)
            for (method, eps), group in sorted(groups.items(),
                                               key=lambda kv: (_method_key(kv[0][0]), _eps_key(kv[0][1]))):
                steps = sorted(set.intersection(*(set(s for s, _ in r.curve) for r in group)))
                if not steps:
                    continue
                mean = [np.mean([dict(r.curve)[s] for r in group]) for s in steps]
                label = "real data" if method == "real" else f"{method} ε={eps:g}" if eps is not None else method
                ax.plot(steps, mean, label=label, color="black" if method == "real" else None,
                        linestyle="--" if method == "real" else "-")
            ax.set_title(agent)
            ax.set_xlabel("updates")
            ax.set_ylabel("normalized score")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(f"learning curves (mean over seeds): {dataset}")
        paths.append(save_figure(fig, out / f"learning_curves_{_slug(dataset)}.png"))
    return paths


def plot_fidelity(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """Per dataset: marginal and correlation scores as bars grouped by ε, one bar per method (± std)."""
    paths = []
    for dataset in sorted({r["dataset"] for r in rows}):
        mine = [r for r in rows if r["dataset"] == dataset]
        epsilons = sorted({r["epsilon"] for r in mine}, key=_eps_key)
        methods = sorted({r["method"] for r in mine}, key=_method_key)
        fig, axes = _subplots(2, 10, 3.6)
        width = 0.8 / max(1, len(methods))
        for ax, metric in zip(axes[0], ("marginal", "correlation")):
            for i, method in enumerate(methods):
                xs, ys, es = [], [], []
                for j, eps in enumerate(epsilons):
                    r = next((r for r in mine if r["method"] == method and r["epsilon"] == eps), None)
                    if r is not None and r[f"{metric}_mean"] is not None:
                        xs.append(j + (i - (len(methods) - 1) / 2) * width)
                        ys.append(r[f"{metric}_mean"])
                        es.append(r[f"{metric}_std"] or 0.0)
                ax.bar(xs, ys, width, yerr=es, capsize=2, label=method)
            ax.set_xticks(range(len(epsilons)), [_eps(e) for e in epsilons])
            ax.set_xlabel("ε")
            ax.set_ylabel(f"{metric} score")
            ax.set_ylim(0, 1.05)
            ax.grid(alpha=0.3, axis="y")
            ax.legend(fontsize=8)
        fig.suptitle(f"fidelity: {dataset}")
        paths.append(save_figure(fig, out / f"fidelity_{_slug(dataset)}.png"))
    return paths


# --- the report -------------------------------------------------------------------------------------------------
UTILITY_COLUMNS = ["dataset", "agent", "method", "epsilon", "n_seeds", "mean", "std", "real_mean", "ratio_to_real",
                   "ratio_ci_low", "ratio_ci_high", "seeds"]
FIDELITY_COLUMNS = ["dataset", "method", "epsilon", "n_seeds", "marginal_mean", "marginal_std", "correlation_mean",
                    "correlation_std", "dynamics_next_obs_nmse_mean", "dynamics_next_obs_nmse_std",
                    "dynamics_reward_nmse_mean", "dynamics_reward_nmse_std", "support_precision_mean",
                    "support_precision_std", "support_recall_mean", "support_recall_std"]
MIA_COLUMNS = ["dataset", "method", "epsilon", "n_seeds", "auc_mean", "auc_std", "auc_ci_low", "auc_ci_high",
               *(f"tpr_at_fpr_{f}" for f in FPRS), "accountant_epsilon", "audit_epsilon_lower_bound",
               "audit_accountant_epsilon", "audit_max_attainable_bound"]
LADDER_COLUMNS = UTILITY_COLUMNS[:-1] + [c for c in FIDELITY_COLUMNS if c.endswith(("_mean", "_std"))] + [
    "fidelity_seeds", "seeds"]
LEDGER_COLUMNS = ["dataset", "method", "epsilon", "seed", "epsilon_spent", "delta", "epsilon_replace_one", "delta_total",
                  "noise_multiplier", "sample_rate", "steps", "accountant", "run_dir"]


def write_report(res: Results, out_dir: str | Path, plots: bool = True, score: str = "last_k",
                 source: str = "") -> dict[str, Path]:
    """Write every table (markdown + CSV), report.md and the plots into `out_dir`; returns name -> path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables = {
        "utility": (utility_rows(res), UTILITY_COLUMNS, utility_markdown, "Utility"),
        "ladder": (ladder_rows(res), LADDER_COLUMNS, ladder_markdown, "Utility ladder"),
        "fidelity": (fidelity_rows(res), FIDELITY_COLUMNS, fidelity_markdown, "Fidelity"),
        "mia": (mia_rows(res), MIA_COLUMNS, mia_markdown, "Membership inference"),
        "ledger": (ledger_rows(res), LEDGER_COLUMNS, ledger_markdown, "Privacy ledger"),
    }
    written: dict[str, Path] = {}
    sections = [f"# Results{' of ' + source if source else ''}", ""]
    notes = {
        "utility": f"Normalized score per run: {SCORES[score]}; mean ± sample std (n − 1) over seeds; real = the same "
                   "agent on the real dataset (mean over its seeds); ratio = mean / real, with a percentile bootstrap "
                   "95% CI (seeds resampled on both sides; — with one seed).",
        "ladder": "Where utility is lost, one rung per row under the same agent budget and seeds: real data; the "
                  "diffusion model fine-tuned on the sensitive data without DP (an upper bound, not private); DP "
                  "fine-tuning at each ε; the public pre-trained model alone (with curiosity-driven pre-training, and "
                  "without). Fidelity of each rung's samples beside its score.",
        "fidelity": "Marginal = mean over columns of 1 − KS; correlation = mean over column pairs of "
                    "1 − |ρ_real − ρ_syn| / 2; dynamics NMSE: 0 = simulator-consistent. Mean ± std over seeds.",
        "mia": "Loss attack on the fine-tuned model: AUC mean ± std over seeds, its bootstrap CI (mean over seeds), "
               "TPR at fixed FPR; accountant ε vs the canary audit's empirical lower bound, and the largest bound "
               "that audit could show with its canary count (a perfect attacker): where that is below the "
               "accountant's ε, the audit cannot reveal an over-spending implementation.",
        "ledger": "One row per private release (fine-tuned model or baseline), from its ledger.json: ε under "
                  "add/remove-one neighbours (row count public) at δ; ε under replace-one neighbours (PLD); δ with "
                  "the noise generator's tail term added.",
    }
    plot_paths: dict[str, list[Path]] = {"utility": [], "fidelity": [], "learning_curves": []}
    if plots:
        plot_paths["utility"] = plot_utility(tables["utility"][0], out)
        plot_paths["learning_curves"] = plot_learning_curves(res, out)
        plot_paths["fidelity"] = plot_fidelity(tables["fidelity"][0], out)
    for name, (rows, columns, to_md, title) in tables.items():
        if name == "ladder" and not rows:
            continue  # only sweeps with ladder rungs have one
        md = to_md(rows) if rows else "(no results)"
        _write_text(out / f"{name}.md", md + "\n")
        write_csv(out / f"{name}.csv", rows, columns)
        written[f"{name}.md"], written[f"{name}.csv"] = out / f"{name}.md", out / f"{name}.csv"
        sections += [f"## {title}", "", notes[name], "", md, ""]
        for p in plot_paths.get(name, []) + (plot_paths["learning_curves"] if name == "utility" else []):
            sections += [f"![{p.stem}]({p.name})", ""]
    if res.skipped:
        sections += ["## Files not used", ""] + [f"- {s}" for s in res.skipped] + [""]
    _write_text(out / "report.md", "\n".join(sections))
    written["report.md"] = out / "report.md"
    for paths in plot_paths.values():
        for p in paths:
            written[p.name] = p
    return written
