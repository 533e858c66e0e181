"""CQL, conservative Q-learning (Kumar et al. 2020):
trained offline on real or synthetic transitions, scored in the simulator (D4RL-normalized).

CORL's default hyper-parameters; per-dataset settings in config/agents/cql/<dataset>.yaml (--config or
--config_path). Trains on --dataset's real transitions, or with --diffusion.path ONLY on synthetic ones (a
samples.npz, or a diffusion checkpoint to sample from); either way it is evaluated in --dataset's registered
simulator with its normalized-score constants. State statistics always come from the data trained on.

Run folder <checkpoints_path>/<name> (default runs/agents/cql-<dataset>-<eps<ε>|synthetic|real>-seed<seed>):
config.yaml, eval.jsonl (learning curve), metrics.jsonl (losses), checkpoint.pt, summary.json (last score, mean of
the last k evaluations, best, data source, normalization provenance, ε). Finished runs are skipped; killed runs
resume from checkpoint.pt.

Examples:
  python MuJoCo/cql.py --config config/agents/cql/ptr-maze2d-umaze-dense-v0.yaml
  python MuJoCo/cql.py --dataset ptr-maze2d-medium-dense-v0 --seed 1 \\
      --diffusion.path runs/diffusion/finetune-ptr-maze2d-medium-dense-v0-eps10-seed0/samples.npz --dp_epsilon 10
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from synther.agents.cql import CQL, CQLConfig  # noqa: E402
from synther.cli import agent_main, run  # noqa: E402

if __name__ == "__main__":
    run(lambda: agent_main(CQLConfig, CQL, __doc__))
