"""Aggregate a sweep's run folders into tables (markdown + CSV) and plots (PNG).

Reads every agents' summary.json (+ eval.jsonl), fidelity.json, mia.json (+ audit.json) and ledger.json under
--runs_dir (the layout MuJoCo/sweep.py writes; runs made by hand with the same folder names count too) and writes
to --out:

  utility.md/.csv    dataset × agent × method × ε: mean ± std over seeds of the normalized score, the real-data
                     reference and the ratio to it
  fidelity.md/.csv   marginal and correlation scores (and the dynamics error when computed)
  mia.md/.csv        membership-inference AUC with its confidence interval, TPR at 0.1/1/10% FPR, accountant ε vs
                     the audit's empirical lower bound
  ledger.md/.csv     the privacy ledger of every release: ε spent, δ, σ, q, steps, accountant
  report.md          all tables and plots together
  utility_vs_epsilon_<dataset>.png, learning_curves_<dataset>.png, fidelity_<dataset>.png

  python MuJoCo/report.py --runs_dir runs --out_dir results
"""
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from synther.cli import OUT_ALIASES, parse, run  # noqa: E402
from synther.errors import UserError  # noqa: E402
from synther.layout import runs_root  # noqa: E402
from synther.report import collect, utility_markdown, utility_rows, write_report  # noqa: E402


@dataclass
class ReportConfig:
    runs_dir: str = ""  # the sweep root to read (empty: $PRIVTRANR_RUNS_DIR, else runs)
    out_dir: str = "results"  # folder for the tables, report.md and plots (alias --out)
    score: str = "last_k"  # each agent run's score: last_k (mean of its last k evaluations), final or best
    plots: bool = True  # also draw the PNG plots


def main() -> None:
    cfg = parse(ReportConfig, description=__doc__, aliases=OUT_ALIASES)
    runs = runs_root(cfg.runs_dir)
    res = collect(runs, cfg.score)
    if res.empty():
        raise UserError(f"{runs}: no results found (no agent summary.json, fidelity.json, mia.json or ledger.json)")
    written = write_report(res, cfg.out_dir, plots=cfg.plots, score=cfg.score, source=str(runs))
    rows = utility_rows(res)
    if rows:
        print(utility_markdown(rows) + "\n")
    print(f"{len(res.agents)} agent runs, {len(res.fidelity)} fidelity, {len(res.mia)} MIA, {len(res.ledgers)} "
          f"ledgers -> {Path(cfg.out_dir) / 'report.md'} ({len(written)} files)")
    for s in res.skipped:
        print(f"not used: {s}", file=sys.stderr)


if __name__ == "__main__":
    run(main)
