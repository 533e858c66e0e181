"""Fidelity of a synthetic samples.npz against the real dataset it imitates.

Writes <out_dir>/fidelity.json and <out_dir>/fidelity_pairs.png (default out_dir: <runs root>/evaluation/
fidelity-<samples' folder name>, where a sweep puts it; never the samples' folder, which is what gets released):
- marginal_score: mean over columns of 1 − KS statistic (sdmetrics KSComplement), with per-column scores;
- correlation_score: mean over column pairs of 1 − |ρ_real − ρ_syn| / 2 (Pearson, sdmetrics
  CorrelationSimilarity), with the worst pairs and a heat map of every pair's |ρ_real − ρ_syn|;
  columns are [obs, action, reward, next_obs]; the terminal flag is excluded, as in the paper;
- support: k-NN precision (share of synthetic rows on the real data's support) and recall (share of real rows
  the synthetic ones cover), on --support_rows rows of each, z-scored columns (Kynkäänniemi et al. 2019);
- dynamics (unless --dynamics false): set the simulator to synthetic s, step synthetic a, and compare its s' and r
  with the synthetic ones (MSE normalized by the real data's variance: 0 = consistent, ~2 = unrelated).
  Supported: ptr-maze2d-* (PointMaze) and HalfCheetah/Hopper/Walker2d-v5; otherwise null with the reason.

The real reference is the sensitive dataset: run this as the data holder. The report is not differentially
private and must not be released with the samples (hence its default folder; the runs root is
$PRIVTRANR_RUNS_DIR, else runs/; a fine-tuning folder finetune-<x> gives fidelity-privtranr-<x>).

  python MuJoCo/marginal.py --real ptr-maze2d-medium-dense-v0 \\
      --synthetic runs/diffusion/finetune-ptr-maze2d-medium-dense-v0-eps10-seed0/samples.npz
Exit code 2 with a one-line message when an input is missing, malformed or of other dimensions.
"""
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from synther.cli import parse, run  # noqa: E402
from synther.errors import UserError  # noqa: E402
from synther.evaluation.fidelity import default_out_dir, summary_lines, write_fidelity_report  # noqa: E402


@dataclass
class MarginalConfig:
    real: str = ""  # the real (sensitive) dataset: a registry name or a .npz / .hdf5 / Minari path
    synthetic: str = ""  # the synthetic samples.npz to score
    out_dir: str = ""  # for fidelity.json and fidelity_pairs.png (default: <runs root>/evaluation/fidelity-<samples' folder>)
    dynamics: bool = True  # also compute the dynamics error by stepping the simulator (PointMaze, MuJoCo locomotion)
    dynamics_rows: int = 10_000  # synthetic rows the dynamics error steps through (0: all)
    max_rows: int = 0  # subsample each table to at most this many rows for the scores (0: all rows)
    support_rows: int = 10_000  # rows of each table for the k-NN support precision/recall (0: not computed; cost grows as rows²)
    top_pairs: int = 20  # how many worst column pairs per_pair lists
    plot: bool = True  # write the pair-error heat map fidelity_pairs.png
    seed: int = 0  # seed of the row subsamples


def main() -> None:
    cfg = parse(MarginalConfig, description=__doc__)
    if not cfg.real or not cfg.synthetic:
        raise UserError("--real (dataset name or path) and --synthetic (samples.npz) are required")
    if cfg.max_rows < 0 or cfg.dynamics_rows < 0 or cfg.top_pairs < 0 or cfg.support_rows < 0:
        raise UserError("--max_rows, --dynamics_rows, --support_rows and --top_pairs must be >= 0")
    out = Path(cfg.out_dir) if cfg.out_dir else default_out_dir(cfg.synthetic)
    report = write_fidelity_report(cfg.real, cfg.synthetic, out, plot=cfg.plot, max_rows=cfg.max_rows or None,
                                   seed=cfg.seed, top_pairs=cfg.top_pairs, dynamics=cfg.dynamics,
                                   dynamics_rows=cfg.dynamics_rows, support_rows=cfg.support_rows)
    for line in summary_lines(report):
        print(line)
    print(f"wrote {out / 'fidelity.json'} in {report['seconds']['total'] + report['seconds']['load']:.1f}s")


if __name__ == "__main__":
    run(main)
