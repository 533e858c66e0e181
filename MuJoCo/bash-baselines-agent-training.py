"""DP tabular baselines over datasets × methods × ε × seeds: synthesize, score fidelity, train offline-RL agents.

For each grid point (skipping whatever is already finished):
  1. samples.npz   MuJoCo/baselines.py's synthesize() into runs/baselines/<method>-<dataset>-eps<ε>-seed<s>/
  2. fidelity.json marginal and correlation scores (synther.evaluation.fidelity) of the samples against the
                   sensitive train split the synthesizer saw (terminal column excluded)
  3. agents        each --algorithms agent trained ONLY on the samples (config/agents/<algo>/<dataset>.yaml, like
                   MuJoCo/bash-agent-training.py) into <run>/agents/<algo>-seed<s>/summary.json
A results table is printed at the end and written to <runs>/baselines/results.json. A grid point that fails
(e.g. ε too small for a method's budget) is reported and the sweep goes on.

  python MuJoCo/bash-baselines-agent-training.py --datasets ptr-maze2d-umaze-dense-v0 --methods mst,aim,dpctgan \\
      --epsilons 1,10 --seeds 0 --max_timesteps 20000 --eval_freq 5000 --n_episodes 10
  python MuJoCo/bash-baselines-agent-training.py --dry_run true     # the plan and what is done
"""
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np  # noqa: E402
import pyrallis  # noqa: E402

from synther.agents import ALGORITHMS, get_algorithm  # noqa: E402
from synther.agents.trainer import DiffusionSource, train  # noqa: E402
from synther.baselines import METHODS, BaselineConfig, GANConfig, MarginalConfig, run_dir, synthesize  # noqa: E402
from synther.cli import parse, run  # noqa: E402
from synther.data import load_dataset  # noqa: E402
from synther.errors import UserError  # noqa: E402
from synther.evaluation.fidelity import correlation_score, marginal_score  # noqa: E402
from synther.utils.io import atomic_write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class BaselineSweepConfig:
    datasets: str = "ptr-maze2d-umaze-dense-v0"  # comma-separated sensitive datasets (registry names or paths)
    methods: str = "mst,aim,dpctgan,patectgan"  # comma-separated baselines: mst, aim, dpctgan, patectgan
    epsilons: str = "1,10"  # comma-separated target ε
    seeds: str = "0"  # comma-separated seeds (split, synthesizer and agent)
    delta: float = 1e-6  # target δ of every run
    num_samples: int = 100_000  # synthetic transitions per run
    public_datasets: str = ""  # public datasets for edges/bounds; empty: config/diffusion/pairs.yaml
    marginal: MarginalConfig = field(default_factory=MarginalConfig)  # MST / AIM settings (see MuJoCo/baselines.py --help)
    gan: GANConfig = field(default_factory=GANConfig)  # DP-CTGAN / PATE-CTGAN settings
    algorithms: str = "td3_bc"  # comma-separated agents trained on each sample file (empty: none)
    config_dir: str = "config/agents"  # per-dataset agent YAML: <config_dir>/<algorithm>/<dataset>.yaml
    max_timesteps: int = 0  # override the agents' updates (0: the YAML's)
    eval_freq: int = 0  # override the evaluation interval (0: the YAML's)
    n_episodes: int = 0  # override the episodes per evaluation (0: the YAML's)
    fidelity_rows: int = 50_000  # score fidelity on at most this many rows of each side (random subset, seeded)
    device: str = "auto"  # agents: auto (CUDA when available), cpu or cuda
    threads: int = 1  # torch threads for agents and the synthesizer worker
    dry_run: bool = False  # print the plan (and what is done) without running anything
    progress: bool = True  # progress output


def _split(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def _resolve(path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() or p.exists() else ROOT / p


def fidelity(samples: Path, cfg: BaselineConfig, max_rows: int) -> dict:
    """Marginal/correlation scores of the samples vs the sensitive train split (the rows the synthesizer saw)."""
    train, _ = load_dataset(cfg.dataset).split(cfg.train_fraction, seed=cfg.seed)
    real, syn = train.to_vectors(), load_dataset(samples).to_vectors()
    rng = np.random.default_rng(cfg.seed)
    real = real[rng.permutation(len(real))[:max_rows]]
    syn = syn[rng.permutation(len(syn))[:max_rows]]
    return {"marginal_score": marginal_score(real, syn), "correlation_score": correlation_score(real, syn),
            "real_rows": len(real), "synthetic_rows": len(syn),
            "reference": f"sensitive train split (split(train_fraction={cfg.train_fraction}, seed={cfg.seed}))"}


def agent_config(sweep: BaselineSweepConfig, algorithm: str, dataset: str, seed: int, eps: float, samples: Path,
                 out_dir: Path):
    _, config_class = get_algorithm(algorithm)
    yaml_path = _resolve(sweep.config_dir) / algorithm / f"{Path(dataset).stem}.yaml"
    base = (pyrallis.parse(config_class=config_class, config_path=str(yaml_path), args=[])
            if yaml_path.exists() else config_class())
    overrides = {k: getattr(sweep, k) for k in ("max_timesteps", "eval_freq", "n_episodes", "threads")
                 if getattr(sweep, k)}
    return dataclasses.replace(base, dataset=dataset, seed=seed, diffusion=DiffusionSource(path=str(samples)),
                               dp_epsilon=eps, checkpoints_path=str(out_dir / "agents"),
                               name=f"{algorithm}-seed{seed}", device=sweep.device, progress=sweep.progress,
                               **overrides)


def main() -> None:
    sweep = parse(BaselineSweepConfig, description=__doc__)
    try:
        epsilons = [float(e) for e in _split(sweep.epsilons)]
        seeds = [int(s) for s in _split(sweep.seeds)]
    except ValueError as e:
        raise UserError(f"--epsilons and --seeds must be comma-separated numbers ({e})") from None
    methods, algorithms = _split(sweep.methods), _split(sweep.algorithms)
    for m in methods:
        if m not in METHODS:
            raise UserError(f"unknown method '{m}' in --methods (choose from: {', '.join(METHODS)})")
    for a in algorithms:
        if a not in ALGORITHMS:
            raise UserError(f"unknown algorithm '{a}' in --algorithms (choose from: {', '.join(ALGORITHMS)})")
    grid = [(d, m, e, s) for d in _split(sweep.datasets) for m in methods for e in epsilons for s in seeds]
    results = []
    for i, (dataset, method, eps, seed) in enumerate(grid, 1):
        cfg = BaselineConfig(method=method, dataset=dataset, public_datasets=sweep.public_datasets, epsilon=eps,
                             delta=sweep.delta, num_samples=sweep.num_samples, seed=seed,
                             marginal=sweep.marginal, gan=sweep.gan, threads=sweep.threads)
        out_dir = run_dir(cfg)
        samples = out_dir / "samples.npz"
        label = f"[{i}/{len(grid)}] {method:<9} {dataset} eps{eps:g} seed{seed}"
        if sweep.dry_run:
            done = [samples.exists(), (out_dir / "fidelity.json").exists(),
                    *[(out_dir / "agents" / f"{a}-seed{seed}" / "summary.json").exists() for a in algorithms]]
            print(f"{label}: {sum(done)}/{len(done)} steps done -> {out_dir}")
            continue
        row = {"dataset": dataset, "method": method, "epsilon": eps, "delta": sweep.delta, "seed": seed,
               "run_dir": str(out_dir)}
        try:
            if not samples.exists():
                print(f"{label}: synthesizing", flush=True)
            synthesize(cfg, progress=sweep.progress)
            meta = json.loads(samples.with_suffix(".json").read_text())
            row["fit_seconds"] = meta["baseline_meta"]["fit_seconds"]
            row["epsilon_spent"] = meta["privacy_ledger"]["epsilon_spent"]
            fid_path = out_dir / "fidelity.json"
            if not fid_path.exists():
                start = time.time()
                atomic_write_json(fid_path, fidelity(samples, cfg, sweep.fidelity_rows))
                print(f"{label}: fidelity scored in {time.time() - start:.0f} s", flush=True)
            row.update({k: v for k, v in json.loads(fid_path.read_text()).items() if k.endswith("_score")})
            for algorithm in algorithms:
                agent_class, _ = get_algorithm(algorithm)
                acfg = agent_config(sweep, algorithm, dataset, seed, eps, samples, out_dir)
                summary_path = out_dir / "agents" / acfg.name / "summary.json"
                if summary_path.exists():
                    summary = json.loads(summary_path.read_text())
                else:
                    print(f"{label}: training {algorithm}", flush=True)
                    summary = train(acfg, agent_class)
                row[f"{algorithm}_final"] = summary["final_normalized_score"]
                row[f"{algorithm}_last_k"] = summary["last_k_mean_normalized_score"]
        except UserError as e:  # one failed grid point must not stop the sweep
            print(f"{label}: FAILED: {e}", file=sys.stderr, flush=True)
            row["error"] = str(e)
        results.append(row)
    if results:
        cols = ["fit_seconds", "marginal_score", "correlation_score", *[f"{a}_final" for a in algorithms]]
        print(f"\n{'method':<10} {'dataset':<30} {'eps':>5} {'seed':>4} " + " ".join(f"{c:>17}" for c in cols))
        for r in results:
            vals = " ".join(f"{r[c]:>17.3f}" if isinstance(r.get(c), float) else f"{'-':>17}" for c in cols)
            print(f"{r['method']:<10} {Path(r['dataset']).stem:<30} {r['epsilon']:>5g} {r['seed']:>4} {vals}")
        root = Path(os.environ.get("PRIVTRANR_RUNS_DIR", "runs")) / "baselines"
        atomic_write_json(root / "results.json", results)
        print(f"wrote {root / 'results.json'}")


if __name__ == "__main__":
    run(main)
