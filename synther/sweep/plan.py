"""Planning: the sweep's grid (datasets × methods × ε × seeds × agents) as jobs with dependencies.

Folder names come from synther.layout, each command line from the builder beside its script's config.
"""
import hashlib
import json
import shlex
import sys
from pathlib import Path
from typing import Any, Callable

import yaml

from synther import layout
from synther.agents import ALGORITHMS, get_algorithm
from synther.agents.trainer import RESUME_IGNORED, SEED_FIELD, agent_command
from synther.baselines.synthesize import baseline_command
from synther.diffusion.synthesizer import SAMPLING_FIELDS, diffusion_command, public_tag
from synther.errors import UserError
from synther.evaluation.fidelity import fidelity_command
from synther.evaluation.mia import mia_command
from synther.layout import BASELINES, LADDER, agent_run_name, dataset_arg, dataset_tag, eps_tag
from synther.sweep.config import Resources, SweepConfig, blank, layout_dirs, validate
from synther.sweep.jobs import Job, agent_finished, topological_order, training_finished


def _extra(cfg: SweepConfig, kind: str) -> list[str]:
    return shlex.split(blank(getattr(cfg.extra_args, kind)))


def _rung_extra(cfg: SweepConfig, rung: str, kind: str) -> list[str]:
    return shlex.split(blank((cfg.extra_args.by_rung.get(rung) or {}).get(kind) or ""))


def _agent_extra(cfg: SweepConfig, algorithm: str) -> list[str]:
    return [*_extra(cfg, "agent"), *shlex.split(blank(cfg.extra_args.by_agent.get(algorithm) or ""))]


def _res(cfg: SweepConfig, kind: str) -> dict[str, Any]:
    r: Resources = getattr(cfg.resources, kind)
    if r.cpus < 1 or r.gpus < 0:
        raise UserError(f"resources.{kind}: cpus must be ≥ 1 and gpus ≥ 0, got cpus={r.cpus}, gpus={r.gpus}")
    return {"cpus": r.cpus, "gpus": r.gpus}


def agent_job(*, algorithm: str, dataset: str, seed: int, agents_dir: Path, python: str, config_dir: Path,
              samples: Path | None = None, epsilon: float | None = None, method: str = "privtranr",
              deps: list[str] | None = None, max_timesteps: int = 0, eval_freq: int = 0, n_episodes: int = 0,
              sample_limit: int = -1, device: str = "auto", cpus: int = 1, gpus: float = 0.0,
              threads: int | None = None, progress: bool = False, extra: list[str] | None = None,
              stacked: list[tuple[int, Path | None]] | None = None) -> Job:
    """One agent run: real data when `samples` is None, else ONLY the samples (ε recorded in its summary).
    `stacked`: further (seed, samples) runs, seeds seed + 1, seed + 2, ..., trained with it as one stacked network
    (--stack_seeds); their names and samples must differ from its own in the seed's number only."""
    if algorithm not in ALGORITHMS:
        raise UserError(f"unknown agent '{algorithm}' (choose from: {', '.join(ALGORITHMS)})")
    method = method if samples is not None else "real"
    stacked = list(stacked or [])
    name = agent_run_name(algorithm, dataset, seed, method, epsilon)
    labels = {"dataset": dataset, "method": method, "epsilon": epsilon, "seed": seed, "agent": algorithm,
              "data": "real" if samples is None else str(samples)}
    job_id, name_arg, samples_arg = f"agent/{name}", name, samples
    members: list[tuple[Path, dict[str, Any]]] = []
    if stacked:
        seeds = [seed, *(s for s, _ in stacked)]
        if seeds != list(range(seed, seed + len(seeds))):
            raise ValueError(f"stacked agent seeds must be consecutive, got {seeds}")
        name_arg = agent_run_name(algorithm, dataset, SEED_FIELD, method, epsilon)  # type: ignore[arg-type]
        samples_arg = _seed_pattern(samples, seed) if samples is not None else None
        for s, path in stacked:
            member = agent_run_name(algorithm, dataset, s, method, epsilon)
            if name_arg.replace(SEED_FIELD, str(s)) != member or not _differ_in_seed_only(samples, seed, path, s):
                raise ValueError(f"seed {s}'s run differs from seed {seed}'s in more than the seed's number")
            members.append((agents_dir / member, {**labels, "seed": s, "data": "real" if path is None else str(path)}))
        job_id = f"agent/{agent_run_name(algorithm, dataset, seed, method, epsilon)}-{seeds[-1]}"
    yaml_path = config_dir / algorithm / f"{dataset_tag(dataset)}.yaml"
    cmd = agent_command(python, algorithm, dataset=dataset_arg(dataset), seed=seed, checkpoints_path=agents_dir,
                        name=name_arg, device=device, threads=cpus if threads is None else threads, progress=progress,
                        config_path=yaml_path if yaml_path.exists() else None, max_timesteps=max_timesteps,
                        eval_freq=eval_freq, n_episodes=n_episodes, samples=samples_arg, sample_limit=sample_limit,
                        dp_epsilon=epsilon, stack_seeds=1 + len(stacked))
    cmd = cmd + list(extra or [])
    # what each folder's saved config must hold; a stacked seed's own --seed is its folder's, not the command's
    settings = {k: v for k, v in _shaping_options(cmd).items() if not (stacked and k == "seed")}
    return Job(job_id, "agent", agents_dir / name, cmd, list(deps or []), cpus, gpus, ("summary.json",),
               labels, finished=agent_finished(max_timesteps, settings), elastic=True, members=tuple(members))


def _seed_pattern(path: Path, seed: int) -> str:
    """A run's samples path with its seed's number as {seed} (the folder names of synther.layout end in -seed<s>)."""
    return str(path).replace(f"-seed{seed}", f"-seed{SEED_FIELD}")


def _differ_in_seed_only(samples: Path | None, seed: int, other: Path | None, other_seed: int) -> bool:
    """Whether two runs' samples (None: real data) are one pattern filled with their seeds."""
    if samples is None or other is None:
        return samples is None and other is None
    return _seed_pattern(samples, seed).replace(SEED_FIELD, str(other_seed)) == str(other)


def _stacks(runs: list[dict[str, Any]], stack: bool) -> list[list[dict[str, Any]]]:
    """Agent runs (agent_job's keyword arguments) -> jobs' runs: with `stack`, the runs of a stackable agent on one
    data source whose seeds follow one another go together, as long as their folders and samples differ only in
    the seed's number; every other run alone."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for run in runs:
        key = (run["algorithm"], run["dataset"], run.get("method", "real") if run.get("samples") else "real",
               run.get("epsilon"))
        groups.setdefault(key, []).append(run)
    out: list[list[dict[str, Any]]] = []
    for (algorithm, *_), group in groups.items():
        agent_class, _ = get_algorithm(algorithm)
        if not stack or not agent_class.stackable:
            out += [[run] for run in group]
            continue
        group = sorted(group, key=lambda run: run["seed"])
        current = [group[0]]
        for run in group[1:]:
            first = current[0]
            if run["seed"] == current[-1]["seed"] + 1 and _differ_in_seed_only(
                    first.get("samples"), first["seed"], run.get("samples"), run["seed"]):
                current.append(run)
            else:
                out.append(current)
                current = [run]
        out.append(current)
    return out


# Options that name or place a run, or that a resumed run may change (the agent trainer's own list): not compared
# with a finished run's config. The samples' path is left out too: a moved runs folder keeps its finished agents.
_PLACEMENT = {"config_path", "checkpoints_path", "name", "diffusion.path", *RESUME_IGNORED}


def _options(command: list[str]) -> dict[str, str]:
    """Every `--key value` (or `--key=value`) option of a command line."""
    options: dict[str, str] = {}
    for i, token in enumerate(command):
        if not token.startswith("--"):
            continue
        key, eq, value = token[2:].partition("=")
        if not eq:
            if i + 1 >= len(command) or command[i + 1].startswith("--"):
                continue
            value = command[i + 1]
        options[key] = value
    return options


def _shaping_options(command: list[str]) -> dict[str, str]:
    """The `--key value` options of a command line that shape the run's result."""
    return {k: v for k, v in _options(command).items() if k not in _PLACEMENT}


# Further options that place a job's inputs or outputs: inputs made by other jobs count by those jobs' fingerprints
_NOT_FINGERPRINTED = {"run_dir", "out_dir", "checkpoint", "synthetic"}


# Top-level fields of its config file a job's script never reads: a finished pre-training or DP fine-tune stays
# finished when only the sampler changes
_UNREAD_CONFIG = {"pretrain": SAMPLING_FIELDS, "finetune": SAMPLING_FIELDS}


def _config_content(path: str | None, unread: tuple[str, ...]) -> str | None:
    """A config file's settings as a hash (comments and layout do not count), without the fields left unread."""
    if not path or not Path(path).is_file():
        return path
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError:  # the job's script reports the file with a one-line error; here its bytes count
        return _file_content(path, unread)
    if isinstance(doc, dict):
        doc = {k: v for k, v in doc.items() if k not in unread}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def _file_content(path: str | None, unread: tuple[str, ...]) -> str | None:
    """The fingerprints' first scheme (2026-12-04 to 12-05): a config file's bytes, every field and comment counted."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path and Path(path).is_file() else path


def _fingerprints(jobs: list[Job], content: Callable[[str | None, tuple[str, ...]], str | None]) -> dict[str, str]:
    prints: dict[str, str] = {}
    for job in jobs:
        given = _options(job.command)
        options = {k: v for k, v in given.items() if k not in _PLACEMENT and k not in _NOT_FINGERPRINTED}
        config = content(given.get("config_path"), _UNREAD_CONFIG.get(job.kind, ()))
        prints[job.id] = hashlib.sha256(json.dumps(
            [job.kind, Path(job.command[1]).name if len(job.command) > 1 else "", options, config,
             sorted(prints[d] for d in job.deps)], sort_keys=True).encode()).hexdigest()[:16]
    return prints


def fingerprint(jobs: list[Job]) -> list[Job]:
    """Set each job's fingerprint (jobs in dependency order): its script, the options that shape its result, the
    settings of its --config_path it reads and its dependencies' fingerprints. A sweep re-run after any of them
    changed runs the job again instead of counting the old result as done (its script then refuses a folder of
    another configuration with a one-line error, or redoes the work: nothing is silently mixed). A folder recorded
    under the first scheme's fingerprint of the same job still counts as done."""
    current, first = _fingerprints(jobs, _config_content), _fingerprints(jobs, _file_content)
    for job in jobs:
        job.fingerprint = current[job.id]
        job.earlier_fingerprints = (first[job.id],) if first[job.id] != current[job.id] else ()
    return jobs


def public_sets(cfg: SweepConfig) -> dict[str, list[str]]:
    return {ds: [dataset_arg(p) for p in (cfg.public.get(ds) or layout.public_datasets_for(
        ds, cfg.pairs, or_else="to the sweep's 'public' mapping"))] for ds in cfg.datasets}


def plan(cfg: SweepConfig) -> list[Job]:
    """Every job of the grid, each after its dependencies. A pre-training shared by several datasets (same public
    sets and seed) appears once."""
    validate(cfg)
    dirs = layout_dirs(cfg)
    py = blank(cfg.python) or sys.executable
    budgets = cfg.budgets
    jobs: dict[str, Job] = {}

    def add(job: Job) -> Job:
        return jobs.setdefault(job.id, job)

    diffusion_config = layout.repo_path(cfg.diffusion_config)
    privtranr = "privtranr" in cfg.methods
    if {"privtranr", *LADDER} & set(cfg.methods) and not diffusion_config.exists():
        raise UserError(f"diffusion_config: {cfg.diffusion_config} not found")
    # baselines take their bin edges and bounds from the same public sets PrivTranR pre-trains on
    public = public_sets(cfg) if cfg.methods else {}
    num_samples = ["--num_samples", str(budgets.num_samples)] if budgets.num_samples > 0 else []
    if num_samples == [] and any(m in BASELINES for m in cfg.methods):
        raise UserError("budgets.num_samples: the baselines need an explicit number of samples")
    config_dir = layout.repo_path(cfg.agent_config_dir)
    agent_opts = dict(agents_dir=dirs["agents"], python=py, config_dir=config_dir,
                      max_timesteps=budgets.agent_max_timesteps, eval_freq=budgets.agent_eval_freq,
                      n_episodes=budgets.agent_n_episodes, sample_limit=budgets.agent_sample_limit, device=cfg.device,
                      progress=cfg.progress, **_res(cfg, "agent"))

    def diffusion(mode: str, options: list[str], rung: str = "") -> list[str]:
        extra = [*_extra(cfg, mode), *_rung_extra(cfg, rung, mode)]  # pre-training has no rung: nothing added
        return diffusion_command(py, mode, diffusion_config, cfg.device, cfg.progress, [*options, *extra])

    def pretrain_job(ds: str, seed: int, curiosity: bool) -> Job:
        pre_dir = dirs["diffusion"] / layout.diffusion_run_name("pretrain", public_tag(public[ds]), seed,
                                                                curiosity=curiosity)
        flags = ["--curiosity.mode", "reweight"] if curiosity else []
        return Job(f"pretrain/{pre_dir.name}", "pretrain", pre_dir, diffusion("pretrain", [
            "--public_datasets", ",".join(public[ds]), "--seed", str(seed), "--run_dir", str(pre_dir),
            "--train.epochs", f"{budgets.pretrain_epochs:g}", *flags]),
            [], outputs=("checkpoint.pt",), labels={"public": public[ds], "seed": seed, "curiosity": curiosity},
            finished=training_finished, **_res(cfg, "pretrain"))

    def sample_job(model_dir: Path, out_dir: Path, dep: str, labels: dict[str, Any], rung: str) -> Job:
        return Job(f"sample/{out_dir.name}", "sample", out_dir, diffusion("sample", [
            "--checkpoint", str(model_dir / "checkpoint.pt"), *num_samples, "--seed", str(labels["seed"]),
            "--run_dir", str(out_dir)], rung), [dep], outputs=("samples.npz",), labels=labels, elastic=True,
            **_res(cfg, "sample"))

    agent_runs: list[dict[str, Any]] = []  # agent_job's arguments for each (agent, data, seed), grouped at the end
    for seed in cfg.seeds:
        for ds in cfg.datasets:
            sources = []  # (method, ε, samples path, id of the job that writes them)
            if privtranr or {"nodp", "public"} & set(cfg.methods):
                pre = add(pretrain_job(ds, seed, curiosity=False))
            if "public_curiosity" in cfg.methods:
                cur = add(pretrain_job(ds, seed, curiosity=True))
            for method in (m for m in ("public", "public_curiosity") if m in cfg.methods):
                src = pre if method == "public" else cur
                sm = add(sample_job(src.run_dir, src.run_dir, src.id, {"dataset": ds, "method": method,
                                                                       "epsilon": None, "seed": seed}, method))
                sources.append((method, None, src.run_dir / "samples.npz", sm.id))
            for method, eps in ([("nodp", None)] if "nodp" in cfg.methods else []) + \
                    ([("privtranr", e) for e in cfg.epsilons] if privtranr else []):
                private = method == "privtranr"
                rung = eps_tag(eps) if private else "nodp"
                ft_dir = dirs["diffusion"] / layout.diffusion_run_name("finetune", dataset_tag(ds), seed, eps, private)
                labels = {"dataset": ds, "method": method, "epsilon": eps, "seed": seed}
                privacy = ["--dp.epsilon", f"{eps:g}", "--dp.delta", f"{cfg.delta:g}"] if private else \
                    ["--dp.enabled", "false"]
                ft = add(Job(f"finetune/{ft_dir.name}", "finetune", ft_dir, diffusion("finetune", [
                    "--dataset", dataset_arg(ds), *privacy, "--checkpoint", str(pre.run_dir / "checkpoint.pt"),
                    "--seed", str(seed), "--run_dir", str(ft_dir), "--train.epochs", f"{budgets.finetune_epochs:g}"],
                    rung), [pre.id], outputs=("checkpoint.pt",), labels=labels, finished=training_finished,
                    **_res(cfg, "finetune")))
                sm = add(sample_job(ft_dir, ft_dir, ft.id, labels, rung))
                sources.append((method, eps, ft_dir / "samples.npz", sm.id))
                if "mia" in cfg.evaluations and private:
                    mia_dir = dirs["evaluation"] / layout.evaluation_run_name("mia", method, ds, seed, eps)
                    add(Job(f"mia/{mia_dir.name}", "mia", mia_dir, [
                        *mia_command(py, ft_dir / "checkpoint.pt", mia_dir, cfg.mia_audit), *_extra(cfg, "mia")],
                        [ft.id], outputs=("mia.json",), labels=labels, **_res(cfg, "mia")))
            for method in (m for m in cfg.methods if m in BASELINES):
                for eps in cfg.epsilons:
                    b_dir = dirs["baselines"] / layout.baseline_run_name(method, ds, eps, seed)
                    b = add(Job(f"baseline/{b_dir.name}", "baseline", b_dir, [
                        *baseline_command(py, method, dataset_arg(ds), eps, cfg.delta, budgets.num_samples, seed,
                                          b_dir, public[ds]), *_extra(cfg, "baseline")], [], outputs=("samples.npz",),
                        labels={"dataset": ds, "method": method, "epsilon": eps, "seed": seed},
                        **_res(cfg, "baseline")))
                    sources.append((method, eps, b_dir / "samples.npz", b.id))
            for method, eps, samples, source_id in sources:
                labels = {"dataset": ds, "method": method, "epsilon": eps, "seed": seed, "data": str(samples)}
                if "fidelity" in cfg.evaluations:
                    f_dir = dirs["evaluation"] / layout.evaluation_run_name("fidelity", method, ds, seed, eps)
                    add(Job(f"fidelity/{f_dir.name}", "fidelity", f_dir, [
                        *fidelity_command(py, dataset_arg(ds), samples, f_dir, cfg.fidelity_dynamics),
                        *_extra(cfg, "fidelity")], [source_id], outputs=("fidelity.json",), labels=labels,
                        **_res(cfg, "fidelity")))
                for algorithm in cfg.agents:
                    agent_runs.append(dict(algorithm=algorithm, dataset=ds, seed=seed, samples=samples, epsilon=eps,
                                           method=method, deps=[source_id]))
            if cfg.real_reference:
                for algorithm in cfg.agents:
                    agent_runs.append(dict(algorithm=algorithm, dataset=ds, seed=seed, deps=[]))
    for runs in _stacks(agent_runs, cfg.stack_agent_seeds):
        first = runs[0]
        add(agent_job(**{**first, "deps": [d for run in runs for d in run["deps"]]},
                      stacked=[(run["seed"], run.get("samples")) for run in runs[1:]],
                      extra=_agent_extra(cfg, first["algorithm"]), **agent_opts))
    return fingerprint(topological_order(list(jobs.values())))
