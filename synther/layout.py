"""Where things are: the repository's files, the runs root, and each sensitive dataset's public datasets.

One place for what every script, the sweep and the report would otherwise each decide for themselves.
"""
import json
import os
from pathlib import Path
from typing import Any

import yaml

from synther.errors import UserError
from synther.utils.io import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
RUNS_ENV = "PRIVTRANR_RUNS_DIR"
PAIRS = "config/diffusion/pairs.yaml"  # sensitive dataset -> its public datasets


def runs_root(explicit: "str | os.PathLike" = "") -> Path:
    """`explicit` when given, else $PRIVTRANR_RUNS_DIR, else runs/ (relative to the working directory)."""
    return Path(explicit or os.environ.get(RUNS_ENV, "runs"))


def repo_path(path: "str | os.PathLike") -> Path:
    """An absolute path: `path` as given when it is absolute or exists from here, else relative to the repository
    (so config/... works from any working directory, and jobs started from the repository root find it)."""
    p = Path(path).expanduser()
    return (p if p.is_absolute() or p.exists() else ROOT / p).resolve()


def runs_path(path: str) -> Path:
    """repo_path, except that a leading runs/ means the runs root (so $PRIVTRANR_RUNS_DIR moves it)."""
    if path.startswith("runs/") and os.environ.get(RUNS_ENV):
        return runs_root() / path[len("runs/"):]
    return repo_path(path)


def public_datasets_for(dataset: str, pairs: "str | os.PathLike" = PAIRS, or_else: str = "") -> list[str]:
    """The public datasets paired with `dataset` in the pairs file (by its name, else its file's stem); `or_else`
    says in the error how else the caller accepts them."""
    path = repo_path(pairs)
    table = (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}
    key = dataset if dataset in table else Path(dataset).stem
    if key not in table:
        raise UserError(f"no public datasets for '{dataset}' in {path.name}: add '{key}: [...]' there"
                        + (f", or {or_else}" if or_else else "") + " (only public data may shape the model)")
    return list(table[key])


# --- run identity: the methods a run can belong to and the folder names every writer and reader agree on ---------
BASELINES = ("mst", "aim", "dpctgan", "patectgan")
# the utility ladder's rungs besides real data and DP fine-tuning, none of them private release methods:
#   nodp              the diffusion model fine-tuned on the sensitive data WITHOUT DP (SynthER's upper bound)
#   public            the pre-trained model alone, never shown the sensitive data
#   public_curiosity  the same with curiosity-driven pre-training
LADDER = ("nodp", "public", "public_curiosity")
METHODS = ("privtranr",) + LADDER + BASELINES
RUN_FILE = "run.json"  # each job's labels, written into its run folder by the sweep


def eps_tag(eps: float) -> str:
    return f"eps{eps:g}"


def dataset_tag(dataset: str) -> str:
    """The dataset part of folder names: a registry name as is ('/' made '_'), a file path by its stem."""
    return dataset.replace("/", "_") if not Path(dataset).suffix else Path(dataset).stem


def agent_run_name(algorithm: str, dataset: str, seed: int, method: str = "privtranr",
                   epsilon: float | None = None) -> str:
    """Agent folder name: <algo>-<dataset>-eps<ε>|real-seed<s> for PrivTranR and real data (method 'real');
    baselines put their method before ε so they never collide with PrivTranR's runs; a ladder rung without ε, and
    samples of unknown origin ('synthetic'), are named by themselves."""
    if method == "real":
        data = "real"
    elif epsilon is None:
        data = method
    else:
        data = eps_tag(epsilon) if method == "privtranr" else f"{method}-{eps_tag(epsilon)}"
    return f"{algorithm}-{dataset_tag(dataset)}-{data}-seed{seed}"


def diffusion_run_name(mode: str, data: str, seed: int, epsilon: float | None = None, private: bool = True,
                       curiosity: bool = False) -> str:
    """pretrain-<public a+b+c>[-curiosity]-seed<s> (data: the public tag) or finetune-<dataset>-eps<ε>|nodp-seed<s>."""
    if mode == "finetune":
        return f"finetune-{data}-{eps_tag(epsilon) if private else 'nodp'}-seed{seed}"
    return f"{mode}-{data}{'-curiosity' if curiosity else ''}-seed{seed}"


def baseline_run_name(method: str, dataset: str, epsilon: float, seed: int) -> str:
    return f"{method}-{dataset_tag(dataset)}-{eps_tag(epsilon)}-seed{seed}"


def evaluation_run_name(kind: str, method: str, dataset: str, seed: int, epsilon: float | None = None) -> str:
    """<kind>-<method>-<dataset>[-eps<ε>]-seed<s> (fidelity, mia): ladder rungs have no ε."""
    return f"{kind}-{method}-{dataset_tag(dataset)}{'' if epsilon is None else '-' + eps_tag(epsilon)}-seed{seed}"


def write_run_labels(run_dir: Path, kind: str, labels: dict[str, Any]) -> None:
    """Record in <run_dir>/run.json what the `kind` job of this folder is: its dataset, method, ε, seed, agent and
    data. Jobs sharing a folder (a fine-tune and its sampling) each keep their entry."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / RUN_FILE, {**_read_run_file(run_dir), kind: labels})


def read_run_labels(run_dir: Path, kind: str) -> dict[str, Any] | None:
    """The labels the sweep recorded for the `kind` job of this folder, or None (a run made by a script alone)."""
    entry = _read_run_file(run_dir).get(kind)
    return entry if isinstance(entry, dict) else None


def _read_run_file(run_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((run_dir / RUN_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def dataset_arg(dataset: str) -> str:
    """A dataset as a job's command line names it: jobs run from the repository root, so a dataset given as an
    existing relative path is made absolute; a registry name stays as it is."""
    p = Path(dataset).expanduser()
    return str(p.resolve()) if Path(dataset).suffix and p.exists() else dataset


def script(name: str) -> str:
    """The path of a MuJoCo/ script, for command lines that run it as a job."""
    return str(ROOT / "MuJoCo" / name)
