"""The sweep engine: grid expansion and dependency order, skipping finished jobs, resuming killed ones, failures that
block only their dependents, Ctrl-C, and tiny real PrivTranR sweeps on the local pool and on a real local Ray
cluster."""
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from synther.cli import parse
from synther.data.pointmaze import MazeCollectConfig, collect_maze2d
from synther.errors import UserError
from synther.layout import read_run_labels
from synther.utils.locks import FolderLock
from synther.utils.threads import THREADS_FILE_ENV
from synther.sweep import (Budgets, ExtraArgs, Job, LocalExecutor, SweepConfig, agent_run_name, plan, run_jobs, summary_table,
                           topological_order)
from synther.sweep.jobs import dependents
from script_helpers import ROOT, assert_user_error, run_script, script_env

pytestmark = pytest.mark.slow  # sweeps on a local pool and a real Ray cluster

UMAZE, MEDIUM = "ptr-maze2d-umaze-dense-v0", "ptr-maze2d-medium-dense-v0"


# --- planning ----------------------------------------------------------------------------------------------------
def test_grid_expansion_counts_dependencies_and_commands(tmp_path):
    cfg = SweepConfig(datasets=[UMAZE, MEDIUM], public={UMAZE: ["pub-a", "pub-b"], MEDIUM: ["pub-a", "pub-b"]},
                      methods=["privtranr", "mst"], epsilons=[1.0, 10.0], seeds=[0, 1], agents=["td3_bc", "iql"],
                      evaluations=["fidelity", "mia"], runs_dir=str(tmp_path), budgets=Budgets(num_samples=5000),
                      stack_agent_seeds=False)
    jobs = plan(cfg)
    kinds = {k: sum(j.kind == k for j in jobs) for k in ("pretrain", "finetune", "sample", "mia", "baseline",
                                                        "fidelity", "agent")}
    # one pre-training per seed (both datasets share the public sets), one fine-tune/sample/MIA per dataset × ε × seed,
    # fidelity for both methods, agents: 2 methods × 8 sample sets × 2 algorithms + 2 datasets × 2 seeds × 2 real runs
    assert kinds == {"pretrain": 2, "finetune": 8, "sample": 8, "mia": 8, "baseline": 8, "fidelity": 16, "agent": 40}
    assert len({j.id for j in jobs}) == len(jobs) == 90
    assert len({j.run_dir for j in jobs if j.kind == "agent"}) == 40  # no two agent runs share a folder
    position = {j.id: i for i, j in enumerate(jobs)}
    by_id = {j.id: j for j in jobs}
    for job in jobs:
        assert all(position[d] < position[job.id] for d in job.deps), job.id
    expected_deps = {"pretrain": set(), "finetune": {"pretrain"}, "sample": {"finetune"}, "mia": {"finetune"},
                     "baseline": set(), "fidelity": {"sample", "baseline"}}
    for job in jobs:
        dep_kinds = {by_id[d].kind for d in job.deps}
        if job.kind == "agent":
            assert dep_kinds <= {"sample", "baseline"} and len(job.deps) == (job.labels["method"] != "real")
        else:
            assert len(job.deps) <= 1 and dep_kinds <= expected_deps[job.kind], job.id

    def cmd(job_id: str) -> str:
        return " ".join(by_id[job_id].command)

    d = tmp_path
    ft = d / "diffusion" / f"finetune-{UMAZE}-eps10-seed1"
    assert by_id[f"finetune/{ft.name}"].deps == ["pretrain/pretrain-pub-a+pub-b-seed1"]
    assert (f"--mode finetune --dataset {UMAZE} --dp.epsilon 10 --dp.delta 1e-06 --checkpoint "
            f"{d}/diffusion/pretrain-pub-a+pub-b-seed1/checkpoint.pt --seed 1 --run_dir {ft}"
            ) in cmd(f"finetune/{ft.name}")
    assert f"--mode sample --checkpoint {ft}/checkpoint.pt --num_samples 5000" in cmd(f"sample/{ft.name}")
    b = d / "baselines" / f"mst-{UMAZE}-eps1-seed0"
    assert cmd(f"baseline/{b.name}").endswith(f"MuJoCo/baselines.py --method mst --dataset {UMAZE} --dp.epsilon 1 "
                                              f"--dp.delta 1e-06 --num_samples 5000 --seed 0 --run_dir {b} "
                                              f"--public_datasets pub-a,pub-b")  # bins and bounds from public data
    f = d / "evaluation" / f"fidelity-mst-{UMAZE}-eps1-seed0"
    assert cmd(f"fidelity/{f.name}").endswith(f"MuJoCo/marginal.py --real {UMAZE} --synthetic {b}/samples.npz "
                                              f"--out_dir {f} --dynamics false")
    assert by_id[f"fidelity/{f.name}"].deps == [f"baseline/{b.name}"]
    m = d / "evaluation" / f"mia-privtranr-{UMAZE}-eps10-seed1"
    assert cmd(f"mia/{m.name}").endswith(f"MuJoCo/mia.py --checkpoint {ft}/checkpoint.pt --out_dir {m} --audit false")
    agent = by_id[f"agent/td3_bc-{UMAZE}-mst-eps1-seed0"]
    assert agent.deps == [f"baseline/{b.name}"] and agent.run_dir == d / "agents" / f"td3_bc-{UMAZE}-mst-eps1-seed0"
    assert f"--diffusion.path {b}/samples.npz" in cmd(agent.id) and "--dp_epsilon 1" in cmd(agent.id)
    assert f"config/agents/td3_bc/{UMAZE}.yaml" in cmd(agent.id)  # the per-dataset agent YAML
    real = by_id[f"agent/iql-{MEDIUM}-real-seed1"]
    assert real.deps == [] and "--diffusion.path" not in cmd(real.id)

    with pytest.raises(UserError, match="unknown method 'foo'"):
        plan(SweepConfig(methods=["foo"], runs_dir=str(tmp_path)))
    with pytest.raises(UserError, match="unknown agent 'ppo'"):
        plan(SweepConfig(agents=["ppo"], runs_dir=str(tmp_path)))
    with pytest.raises(UserError, match="no public datasets for 'mystery'"):
        plan(SweepConfig(datasets=["mystery"], runs_dir=str(tmp_path)))
    with pytest.raises(UserError, match="num_samples"):
        plan(SweepConfig(methods=["aim"], runs_dir=str(tmp_path)))


def test_an_agents_seeds_plan_as_one_stacked_job(tmp_path):
    """By default each agent's consecutive seeds on one data source are one --stack_seeds job; each seed keeps the
    run folder, labels and samples a job of its own would have."""
    base = dict(datasets=[UMAZE], public={UMAZE: ["pub-a"]}, methods=["privtranr", "mst"], epsilons=[10.0],
                agents=["td3_bc", "cql"], evaluations=[], runs_dir=str(tmp_path), budgets=Budgets(num_samples=5000))
    alone = {j.id: j for j in plan(SweepConfig(**base, seeds=[0, 1, 2, 5], stack_agent_seeds=False))}
    jobs = {j.id: j for j in plan(SweepConfig(**base, seeds=[0, 1, 2, 5]))}
    agents = {i: j for i, j in jobs.items() if j.kind == "agent"}
    # td3_bc: seeds 0-2 stacked and seed 5 alone, for each of 3 data sources; cql (not stackable): one job per seed
    assert sorted(i for i in agents if "td3_bc" in i) == sorted(
        f"agent/td3_bc-{UMAZE}-{data}-seed{s}" for data in ("eps10", "mst-eps10", "real") for s in ("0-2", "5"))
    assert sum("cql" in i for i in agents) == 12
    folders = [j.run_dir for j in agents.values()] + [m for j in agents.values() for m, _ in j.members]
    assert sorted(folders) == sorted(j.run_dir for j in alone.values() if j.kind == "agent")
    dp = agents[f"agent/td3_bc-{UMAZE}-eps10-seed0-2"]
    cmd = dp.command
    assert cmd[cmd.index("--stack_seeds") + 1] == "3" and cmd[cmd.index("--seed") + 1] == "0"
    assert cmd[cmd.index("--name") + 1] == f"td3_bc-{UMAZE}-eps10-seed{{seed}}"
    assert cmd[cmd.index("--diffusion.path") + 1] == str(tmp_path / "diffusion" / f"finetune-{UMAZE}-eps10-seed{{seed}}"
                                                         / "samples.npz")
    assert sorted(dp.deps) == sorted(d for s in (0, 1, 2) for d in alone[f"agent/td3_bc-{UMAZE}-eps10-seed{s}"].deps)
    for folder, labels in [(dp.run_dir, dp.labels), *dp.members]:
        own = alone[f"agent/{folder.name}"]
        assert folder == own.run_dir and labels == own.labels
    dp.write_labels()
    assert [read_run_labels(f, "agent")["seed"] for f in (dp.run_dir, *(m for m, _ in dp.members))] == [0, 1, 2]
    real = agents[f"agent/td3_bc-{UMAZE}-real-seed0-2"]
    assert real.deps == [] and "--diffusion.path" not in real.command and "--stack_seeds" in real.command
    # the job is finished when every seed's folder is
    outputs_only = dataclasses.replace(dp, finished=None)
    for folder in (dp.run_dir, *(m for m, _ in dp.members)):
        assert not outputs_only.outputs_finished()
        (folder / "summary.json").write_text(json.dumps({"steps": 1}))
    assert outputs_only.outputs_finished()


def test_ladder_rungs_plan_their_own_models_samples_and_agents(tmp_path):
    cfg = SweepConfig(datasets=[MEDIUM], methods=["privtranr", "nodp", "public", "public_curiosity"], epsilons=[10.0],
                      agents=["td3_bc"], evaluations=["fidelity", "mia"], runs_dir=str(tmp_path))
    jobs = {j.id: j for j in plan(cfg)}
    nodp = jobs[f"finetune/finetune-{MEDIUM}-nodp-seed0"]
    assert nodp.command[nodp.command.index("--dp.enabled") + 1] == "false" and "--dp.epsilon" not in nodp.command
    assert not any(i.startswith("mia/") and "nodp" in i for i in jobs)  # MIA only for private releases
    curious = [j for i, j in jobs.items() if i.startswith("pretrain/") and "curiosity" in i]
    assert len(curious) == 1 and "reweight" in curious[0].command
    for rung in ("nodp", "public", "public_curiosity"):
        agent = jobs[f"agent/td3_bc-{MEDIUM}-{rung}-seed0"]  # one seed: a job of its own
        samples = agent.command[agent.command.index("--diffusion.path") + 1]
        assert "--dp_epsilon" not in agent.command and samples.endswith("samples.npz")
        assert any(jobs[d].kind == "sample" and str(jobs[d].run_dir / "samples.npz") == samples for d in agent.deps)
        assert f"fidelity/fidelity-{rung}-{MEDIUM}-seed0" in jobs
    with pytest.raises(UserError, match="ladder rungs"):
        plan(SweepConfig(datasets=[MEDIUM], methods=["nodp"], runs_dir=str(tmp_path)))


def test_agent_folder_names_match_the_agent_scripts():
    from synther.agents.trainer import DiffusionSource, AgentConfig, run_name

    for eps in (None, 2.5, 10.0):
        cfg = AgentConfig(dataset=MEDIUM, seed=3, dp_epsilon=-1 if eps is None else eps,
                          diffusion=DiffusionSource(path="" if eps is None else "s.npz"))
        assert agent_run_name("iql", MEDIUM, 3, "real" if eps is None else "privtranr", eps) == run_name(cfg, "iql")
    assert agent_run_name("iql", MEDIUM, 3, "aim", 10.0) == f"iql-{MEDIUM}-aim-eps10-seed3"


def test_an_agent_run_with_another_budget_is_not_counted_as_done(tmp_path):
    from synther.sweep.plan import agent_job

    job = agent_job(algorithm="td3_bc", dataset=UMAZE, seed=0, agents_dir=tmp_path, python=sys.executable,
                    config_dir=ROOT / "config" / "agents", max_timesteps=60000)
    job.run_dir.mkdir(parents=True)
    assert not job.is_done()
    (job.run_dir / "summary.json").write_text(json.dumps({"steps": 40000}))  # an older sweep's 40k-update run
    assert not job.is_done()
    (job.run_dir / "summary.json").write_text(json.dumps({"steps": 60000}))
    _write_agent_config(job)
    assert job.is_done()
    (job.run_dir / "summary.json").write_text("{trunc")
    assert not job.is_done()


def _write_agent_config(job, *extra: str) -> None:
    """config.yaml as the TD3+BC script writes it for the job's command (plus `extra` options)."""
    import pyrallis
    from synther.agents.td3_bc import TD3BCConfig

    cfg = parse(TD3BCConfig, "", [*job.command[2:], *extra])
    with open(job.run_dir / "config.yaml", "w") as f:
        pyrallis.dump(cfg, f)


def test_an_agent_run_with_other_settings_is_not_counted_as_done(tmp_path):
    """Changing an agent option in the sweep (extra_args, e.g. TD3+BC's α) re-runs the agents instead of reporting
    the old runs under the new settings; the trainer then refuses the folder with a one-line error."""
    from synther.sweep.plan import agent_job

    def job(extra):
        return agent_job(algorithm="td3_bc", dataset=UMAZE, seed=0, agents_dir=tmp_path, python=sys.executable,
                         config_dir=ROOT / "config" / "agents", max_timesteps=60000, samples=tmp_path / "s.npz",
                         epsilon=10.0, extra=extra)

    old = job(["--summary_last_k", "4"])
    old.run_dir.mkdir(parents=True)
    (old.run_dir / "summary.json").write_text(json.dumps({"steps": 60000}))
    _write_agent_config(old)
    assert old.is_done()
    assert not job(["--summary_last_k", "4", "--alpha", "10"]).is_done()  # saved α is the YAML's 2.5
    assert not job(["--summary_last_k=3"]).is_done()
    _write_agent_config(old, "--alpha", "10", "--threads", "2", "--checkpoints_path", "/moved")
    assert job(["--summary_last_k", "4", "--alpha", "10.0"]).is_done()  # threads and places do not count
    (old.run_dir / "config.yaml").unlink()
    assert not old.is_done()


def test_fingerprints_follow_what_shapes_a_result_and_flow_downstream(tmp_path):
    """A job's fingerprint changes with its own shaping options, its config file's content and any job upstream;
    not with where the runs folder is or how the jobs run (device, progress, threads)."""
    base = dict(datasets=[UMAZE], epsilons=[10.0], seeds=[0], agents=["td3_bc"], evaluations=["fidelity"])

    def fingerprints(**changes):
        cfg = SweepConfig(**{**base, "runs_dir": str(tmp_path / "runs"), **changes})
        return {job.id.split("/")[0] + ("-real" if "real" in job.id else ""): job.fingerprint for job in plan(cfg)}

    first = fingerprints()
    assert len(set(first.values())) == len(first) == 6 and all(len(f) == 16 for f in first.values())
    assert fingerprints() == first
    assert fingerprints(runs_dir=str(tmp_path / "moved"), device="cuda", progress=True) == first
    longer = fingerprints(budgets=Budgets(pretrain_epochs=25))
    assert {k for k in first if longer[k] != first[k]} == {"pretrain", "finetune", "sample", "fidelity", "agent"}
    other_sampler = fingerprints(extra_args=ExtraArgs(sample="--sampler.steps 32"))
    assert {k for k in first if other_sampler[k] != first[k]} == {"sample", "fidelity", "agent"}
    yaml_text = (ROOT / "config" / "diffusion" / "maze2d-quickstart.yaml").read_text()
    default_yaml = fingerprints(diffusion_config=str(ROOT / "config" / "diffusion" / "maze2d-quickstart.yaml"))

    def edited(old: str, new: str) -> dict[str, str]:
        assert yaml_text.count(old) == 1
        path = tmp_path / f"diffusion-{len(list(tmp_path.glob('diffusion-*')))}.yaml"
        path.write_text(yaml_text.replace(old, new))
        prints = fingerprints(diffusion_config=str(path))
        return {k for k in first if prints[k] != default_yaml[k]}

    assert edited("steps: 64 ", "steps: 64 # a comment\n#") == set()  # settings count, not how the file reads
    # the sampler is read only when sampling: a finished pre-training or DP fine-tune stays finished
    assert edited("steps: 64 ", "steps: 32 ") == {"sample", "fidelity", "agent"}
    assert edited("ema_decay: 0.995", "ema_decay: 0.99") == {"pretrain", "finetune", "sample", "fidelity", "agent"}
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml_text + "\nsampler: [unclosed\n")  # planned all the same; its script reports the file
    assert fingerprints(diffusion_config=str(broken))["pretrain"] != default_yaml["pretrain"]


def test_a_job_finished_under_another_fingerprint_runs_again(tmp_path):
    """The sweep records a finished job's fingerprint; once it differs the job is not done (it runs again, so its
    script can refuse or redo the folder) and the dry run says why. Folders without a record keep the old rule."""
    from synther.sweep import describe_plan

    job = _job(tmp_path, "a", WRITE)
    job.fingerprint = "one"
    state = tmp_path / "state.json"
    assert _run([job], state)[0].status == {"a": "done"}
    assert json.loads(job.marker.read_text())["fingerprint"] == "one"
    assert _run([job], state)[0].status == {"a": "skipped"}
    job.fingerprint = "two"
    assert not job.is_done() and job.outputs_finished()
    lines: list[str] = []
    describe_plan([job], lines.append)
    assert "to run again: its options, config file or an upstream job changed" in lines[0]
    assert _run([job], state)[0].status == {"a": "done"}
    assert json.loads(job.marker.read_text())["fingerprint"] == "two"
    job.marker.unlink()  # a folder finished before markers existed (or by a script alone)
    job.fingerprint = "three"
    assert job.is_done()


def test_a_job_recorded_under_the_first_fingerprint_scheme_stays_finished(tmp_path):
    """Markers written when a fingerprint hashed the config file's bytes (sessions 20–22) keep their folders
    finished, and the sweep rewrites them to the current fingerprint; a marker of another job does not count."""
    import hashlib

    from synther.sweep.plan import _NOT_FINGERPRINTED, _PLACEMENT, _options

    cfg = SweepConfig(datasets=[UMAZE], epsilons=[10.0], seeds=[0], agents=["td3_bc"], evaluations=["fidelity"],
                      runs_dir=str(tmp_path / "runs"))
    jobs, first = plan(cfg), {}
    for job in jobs:  # the first scheme, written out as it was
        given = _options(job.command)
        options = {k: v for k, v in given.items() if k not in _PLACEMENT and k not in _NOT_FINGERPRINTED}
        path = given.get("config_path")
        content = hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else None
        first[job.id] = hashlib.sha256(json.dumps([job.kind, Path(job.command[1]).name, options, content,
                                                   sorted(first[d] for d in job.deps)], sort_keys=True).encode()
                                       ).hexdigest()[:16]
    for job in jobs:
        assert job.earlier_fingerprints == (first[job.id],) and job.fingerprint != first[job.id]
        job.run_dir.mkdir(parents=True, exist_ok=True)
        job.marker.write_text(json.dumps({"fingerprint": first[job.id]}))
        assert not job.changed()
        job.marker.write_text(json.dumps({"fingerprint": next(f for i, f in first.items() if i != job.id)}))
        assert job.changed()

    job = _job(tmp_path, "a", WRITE)
    job.fingerprint, job.earlier_fingerprints = "now", ("then",)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "out.txt").write_text("ok")
    job.marker.write_text(json.dumps({"fingerprint": "then"}))
    assert _run([job], tmp_path / "state.json")[0].status == {"a": "skipped"}
    assert json.loads(job.marker.read_text())["fingerprint"] == "now"


def test_the_ladder_shares_the_quickstarts_jobs(tmp_path):
    """quickstart-ladder.yaml reuses the quickstart's runs (README): every job the two plan in one runs folder must
    have the same command and fingerprint, or the ladder would re-train them (or report them under other settings)."""
    def jobs(name):
        cfg = parse(SweepConfig, "", ["--config_path", str(ROOT / f"config/sweeps/{name}.yaml"),
                                      "--runs_dir", str(tmp_path), "--seeds", "[0, 1, 2]"])
        return {j.id: (j.command, j.fingerprint) for j in plan(cfg)}

    quickstart, ladder = jobs("quickstart"), jobs("quickstart-ladder")
    shared = quickstart.keys() & ladder.keys()
    assert {i.split("/")[0] for i in shared} >= {"pretrain", "finetune", "sample", "agent", "fidelity", "mia"}
    assert len(shared) == len(quickstart)
    assert {i: ladder[i] for i in shared} == {i: quickstart[i] for i in shared}


def test_by_agent_extra_args_reach_only_their_algorithm(tmp_path):
    cfg = SweepConfig(datasets=[UMAZE], public={UMAZE: ["pub-a"]}, methods=["privtranr"], epsilons=[10.0], seeds=[0],
                      agents=["td3_bc", "iql"], runs_dir=str(tmp_path))
    cfg.extra_args.agent, cfg.extra_args.by_agent = "--summary_last_k 4", {"td3_bc": "--alpha 10"}
    agents = [j for j in plan(cfg) if j.kind == "agent"]
    assert len(agents) == 4 and all(j.command[-2:] == (["--alpha", "10"] if j.labels["agent"] == "td3_bc"
                                                         else ["--summary_last_k", "4"]) for j in agents)
    cfg.extra_args.by_agent = {"td3bc": "--alpha 10"}
    with pytest.raises(UserError, match="extra_args.by_agent: unknown agent 'td3bc'"):
        plan(cfg)


def test_by_rung_extra_args_reach_only_that_rungs_fine_tuning_and_sampling(tmp_path):
    config = tmp_path / "sweep.yaml"
    config.write_text(f"datasets: [{MEDIUM}]\npublic: {{{MEDIUM}: [pub-a]}}\nmethods: [privtranr, nodp, public]\n"
                      "epsilons: [10, 1]\nseeds: [0]\nagents: []\nextra_args:\n  sample: --sampler.steps 32\n"
                      "  by_rung:\n    eps10: {finetune: --dp.dynamics_steps 500, sample: --relabel dp}\n"
                      "    public: {sample: --relabel public}\n")
    cfg = parse(SweepConfig, "", ["--config_path", str(config), "--runs_dir", str(tmp_path / "runs")])
    tails = {(j.kind, j.labels["method"], j.labels["epsilon"]): j.command[-2:] for j in plan(cfg)
             if j.kind in ("finetune", "sample")}
    assert tails == {("finetune", "privtranr", 10.0): ["--dp.dynamics_steps", "500"],
                     ("sample", "privtranr", 10.0): ["--relabel", "dp"],
                     ("finetune", "privtranr", 1.0): ["--train.epochs", "5"],
                     ("sample", "privtranr", 1.0): ["--sampler.steps", "32"],
                     ("finetune", "nodp", None): ["--train.epochs", "5"], ("sample", "nodp", None): ["--sampler.steps", "32"],
                     ("sample", "public", None): ["--relabel", "public"]}
    cfg.extra_args.by_rung = {"eps5": {"sample": "--relabel dp"}}   # an ε this sweep leaves out: nothing changes
    assert {(j.kind, j.labels["method"], j.labels["epsilon"]): j.command[-2:] for j in plan(cfg)
            if j.kind in ("finetune", "sample")}["sample", "privtranr", 10.0] == ["--sampler.steps", "32"]
    for rungs, message in (({"eps10.0": {"sample": "--relabel dp"}}, "unknown rung 'eps10.0'"),
                           ({"epsten": {"sample": "--relabel dp"}}, "unknown rung 'epsten'"),
                           ({"public": {"finetune": "--dp.dynamics_steps 1"}}, "'finetune' is not one of its jobs")):
        cfg.extra_args.by_rung = rungs
        with pytest.raises(UserError, match=message):
            plan(cfg)


def test_topological_order_rejects_cycles_and_unknown_dependencies(tmp_path):
    a, b = _job(tmp_path, "a", "pass", deps=["b"]), _job(tmp_path, "b", "pass", deps=["a"])
    with pytest.raises(ValueError, match="cycle"):
        topological_order([a, b])
    with pytest.raises(ValueError, match="unknown job"):
        topological_order([_job(tmp_path, "c", "pass", deps=["nope"])])
    c, d = _job(tmp_path, "c", "pass", deps=["d"]), _job(tmp_path, "d", "pass")
    assert [j.id for j in topological_order([c, d])] == ["d", "c"]


def test_shipped_sweep_configs_parse_and_dry_run(tmp_path):
    cfg = parse(SweepConfig, "", ["--config_path", str(ROOT / "config/sweeps/maze2d-paper.yaml"),
                                  "--runs_dir", str(tmp_path / "runs")])
    jobs = plan(cfg)
    # 9 pre-trainings (3 mazes with different public sets × 3 seeds), 45 DP fine-tunings, 180 baseline runs, 468
    # agent runs as 156 jobs of 3 stacked seeds
    assert [sum(j.kind == k for j in jobs) for k in ("pretrain", "finetune", "baseline", "agent")] == [9, 45, 180, 156]
    assert sum(1 + len(j.members) for j in jobs if j.kind == "agent") == 468
    loco = parse(SweepConfig, "", ["--config_path", str(ROOT / "config/sweeps/utility-cpu-locomotion.yaml"),
                                   "--runs_dir", str(tmp_path / "loco")])
    relabel = {j.labels["epsilon"]: j.command[j.command.index("--relabel") + 1]
               for j in plan(loco) if j.kind == "sample"}
    assert relabel == {1.0: "dp", 10.0: "dp"}
    layers = {j.labels["epsilon"]: "--dp.dynamics_layers" in j.command for j in plan(loco) if j.kind == "finetune"}
    assert layers == {1.0: True, 10.0: False}  # each ε its own dynamics settings (sessions 43-44)
    tiny = parse(SweepConfig, "", ["--config_path", str(ROOT / "config/sweeps/maze2d-tiny.yaml")])
    assert tiny.budgets.agent_max_timesteps == 20 and tiny.methods == ["privtranr"]

    proc = run_script("sweep.py", "--config", "config/sweeps/maze2d-paper.yaml", "--dry_run", "true",
                      "--runs_dir", str(tmp_path / "runs"))
    assert proc.returncode == 0, proc.stderr
    assert "705 jobs in all" in proc.stdout and "baseline: 180 (180 to run)" in proc.stdout
    assert "MuJoCo/baselines.py --method patectgan" in proc.stdout
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing
    assert_user_error(run_script("sweep.py", "--config", "config/sweeps/maze2d-tiny.yaml", "--methods", "[foo]",
                                 "--dry_run", "true"), "unknown method 'foo'")
    assert_user_error(run_script("sweep.py", "--config", "config/sweeps/maze2d-tiny.yaml", "--executor", "spark"),
                      "executor must be 'local' or 'ray'")


@pytest.mark.parametrize("path", sorted((ROOT / "config/sweeps").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_sweep_plans_with_its_config_files(path, tmp_path):
    cfg = parse(SweepConfig, "", ["--config_path", str(path), "--runs_dir", str(tmp_path / "runs")])
    jobs = plan(cfg)
    assert jobs
    for job in (j for j in jobs if j.kind in ("agent", "pretrain", "finetune", "sample")):
        # a shipped sweep runs each agent with its dataset's YAML, never the algorithm's defaults
        configs = [value for flag, value in zip(job.command, job.command[1:]) if flag == "--config_path"]
        assert configs and all(Path(c).exists() for c in configs), f"{path.name}: {job.id} has no config file"
    assert not (tmp_path / "runs").exists()  # planning writes nothing


# --- the engine on cheap command jobs ------------------------------------------------------------------------------
def _job(root: Path, name: str, code: str, deps: list[str] | None = None, outputs=("out.txt",)) -> Job:
    """A job running the Python statements `code`, with OUT = its run folder."""
    run_dir = root / name
    prog = f"import os, sys, signal, time\nfrom pathlib import Path\nOUT = Path({str(run_dir)!r})\n" + code
    return Job(name, "command", run_dir, [sys.executable, "-c", prog], list(deps or []), outputs=outputs)


WRITE = "OUT.mkdir(parents=True, exist_ok=True); (OUT / 'out.txt').write_text('ok')"


def _run(jobs, state, workers=2, load=lambda: None):
    """Run `jobs` on a local pool; `load` stands for the machine's (None: unknown, the pool alone decides)."""
    lines: list[str] = []
    result = run_jobs(jobs, LocalExecutor(workers, load=load), state, echo=lines.append, poll=0.05)
    return result, lines


def _borrower(root: Path, name: str, until: list[int], deps: list[str] | None = None) -> Job:
    """An elastic job that records each thread count the pool lends it (and when), until it has seen `until`."""
    job = _job(root, name, f"""
f = Path(os.environ[{THREADS_FILE_ENV!r}]); seen = []
deadline = time.time() + 30
while time.time() < deadline:
    n = int(f.read_text())
    if not seen or seen[-1][0] != n:
        seen.append((n, time.time()))
    if [n for n, _ in seen] == {until!r}:
        break
    time.sleep(0.01)
OUT.mkdir(parents=True, exist_ok=True); (OUT / 'out.txt').write_text(repr(seen))""", deps)
    job.elastic = True
    return job


def test_dependents_are_transitive():
    jobs = [Job(i, "command", Path(i), [], deps) for i, deps in
            (("a", []), ("b", ["a"]), ("c", ["b"]), ("d", []), ("e", ["c", "d"]))]
    assert dependents(jobs) == {"a": {"b", "c", "e"}, "b": {"c", "e"}, "c": {"e"}, "d": {"e"}, "e": set()}


def test_idle_cores_go_to_elastic_jobs_once_nothing_is_left_to_start(tmp_path):
    """The tail of a sweep: a running elastic job with no dependents (an agent run) is lent the cores other jobs
    leave idle, but only once no job waits to start (a lent core is never needed back); plain jobs get no thread
    file."""
    elastic = _borrower(tmp_path, "e", until=[1, 2, 3])
    plain = (f"time.sleep({{}}); OUT.mkdir(parents=True, exist_ok=True)\n"
             f"(OUT / 'out.txt').write_text(repr((time.time(), os.environ.get({THREADS_FILE_ENV!r}))))")
    # c ends first and frees a core while d still waits for x: that core must not be lent yet
    jobs = [elastic, _job(tmp_path, "c", plain.format(0.2)), _job(tmp_path, "x", plain.format(1.0)),
            _job(tmp_path, "d", plain.format(0.5), ["c", "x"])]
    result, _ = _run(jobs, tmp_path / "state.json", workers=3)
    assert result.ok
    seen = eval((tmp_path / "e" / "out.txt").read_text())
    ended = {name: eval((tmp_path / name / "out.txt").read_text()) for name in "cxd"}
    assert [n for n, _ in seen] == [1, 2, 3]  # c's core once d had started, then d's
    assert seen[1][1] > ended["x"][0]  # nothing lent while d waited for x
    assert all(env is None for _, env in ended.values())
    assert not (tmp_path / "e" / "job-command.threads").exists()  # the file goes with its job


def test_a_job_every_waiting_job_needs_borrows_idle_cores(tmp_path):
    """A sampling job that the waiting jobs all need is lent the core another job leaves: none of them could start
    before it ends, when the core comes back."""
    sampler = _borrower(tmp_path, "s", until=[1, 2])
    jobs = [sampler, _job(tmp_path, "y", "time.sleep(0.3)\n" + WRITE), _job(tmp_path, "t", WRITE, ["s"])]
    result, _ = _run(jobs, tmp_path / "state.json", workers=2)
    assert result.ok
    assert [n for n, _ in eval((tmp_path / "s" / "out.txt").read_text())] == [1, 2]


class _ScriptedLoad:
    """The machine's load as a test scripts it: `levels[k]` from `k * period` seconds after the first call on."""

    def __init__(self, levels: list[float], period: float) -> None:
        self.levels, self.period, self.start = levels, period, None
        self.changes: list[float] = []  # when each level after the first began (time.time())

    def __call__(self) -> float:
        now = time.time()
        if self.start is None:
            self.start = now
            self.changes = [now + k * self.period for k in range(1, len(self.levels))]
        return self.levels[min(int((now - self.start) / self.period), len(self.levels) - 1)]


def test_no_core_is_lent_while_another_program_keeps_it_busy(tmp_path):
    """Two sweeps on one 2-core machine: each pool sees a slot idle, but the machine does not. The borrower gets
    the core only once the other program's load is gone."""
    load = _ScriptedLoad([2.0, 1.0], period=1.0)  # the agent + another sweep's agent, then the agent alone
    result, _ = _run([_borrower(tmp_path, "e", until=[1, 2])], tmp_path / "state.json", workers=2, load=load)
    assert result.ok
    seen = eval((tmp_path / "e" / "out.txt").read_text())
    assert [n for n, _ in seen] == [1, 2] and seen[1][1] >= load.changes[0]


def test_lent_cores_go_back_when_the_machine_gets_busy(tmp_path):
    """A core lent at a sweep's tail is taken back when another program starts (load above the cores), and not
    lent again while it runs."""
    # busy while the borrower starts; then the agent alone; then it has 2 threads and a newcomer one
    load = _ScriptedLoad([2.0, 1.0, 3.0], period=1.0)
    result, _ = _run([_borrower(tmp_path, "e", until=[1, 2, 1])], tmp_path / "state.json", workers=2, load=load)
    assert result.ok
    seen = eval((tmp_path / "e" / "out.txt").read_text())
    assert [n for n, _ in seen] == [1, 2, 1]
    assert load.changes[0] <= seen[1][1] < load.changes[1] <= seen[2][1]


def test_the_local_pool_is_sized_to_the_cores_the_process_may_use(monkeypatch):
    """A container or `taskset` limits the CPUs a process may run on: the pool and its idle-core count follow
    that affinity, not the machine's core count."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3, 5}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    pool = LocalExecutor(load=lambda: None)
    assert pool.slots == 2 and pool.cores == 2
    assert LocalExecutor(5, load=lambda: None).slots == 5
    monkeypatch.delattr(os, "sched_getaffinity")
    assert LocalExecutor(load=lambda: None).slots == 64


def test_a_job_drops_to_its_own_threads_when_the_sweep_takes_lent_cores_back(tmp_path, monkeypatch, capsys):
    import torch

    from synther.utils.threads import follow_lent_threads, lend_threads

    path = tmp_path / "job.threads"
    monkeypatch.setenv(THREADS_FILE_ENV, str(path))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        lend_threads(path, 1)
        assert follow_lent_threads() == 1 and torch.get_num_threads() == 1
        assert "now 1 threads: the sweep took back cores it had lent" in capsys.readouterr().out
        assert follow_lent_threads() is None  # unchanged: nothing to do, nothing said
    finally:
        torch.set_num_threads(before)


def test_machine_load_is_the_kernels_runnable_count_averaged_over_a_window(tmp_path, monkeypatch):
    """Linux: /proc/stat's procs_running less the reader itself, averaged over the window; elsewhere the 1-minute
    load average; None when the OS reports neither."""
    from synther.utils.threads import MachineLoad

    stat = tmp_path / "stat"
    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    machine = MachineLoad(window=10.0, every=1.0, stat_path=str(stat))
    for t, running in ((100.0, 2), (101.0, 4), (101.5, 9), (105.0, 3)):  # 101.5: within `every`, not sampled
        clock[0] = t
        stat.write_text(f"cpu  1 2 3\nprocs_running {running}\nprocs_blocked 0\n")
        average = machine()
    assert average == (1 + 3 + 2) / 3
    clock[0] = 112.0  # the samples of 100 and 101 left the window
    stat.write_text("procs_running 1\n")
    assert machine() == (2 + 0) / 2
    elsewhere = MachineLoad(stat_path=str(tmp_path / "missing"))
    monkeypatch.setattr(os, "getloadavg", lambda: (1.5, 1.0, 0.5))
    assert elsewhere() == 1.5
    monkeypatch.delattr(os, "getloadavg")
    assert elsewhere() is None


def test_every_job_folder_gets_its_labels_in_run_json(tmp_path):
    from synther.layout import read_run_labels

    a = _job(tmp_path, "a", WRITE)
    a.labels = {"dataset": "d", "method": "privtranr", "epsilon": 10.0, "seed": 0}
    b = _job(tmp_path, "a", WRITE)  # a second job in the same folder (as sampling shares the fine-tune's)
    b.id, b.kind, b.labels = "b", "sample", {"seed": 1}
    result, _ = _run([a, b], tmp_path / "state.json")
    assert result.ok
    assert read_run_labels(tmp_path / "a", "command") == a.labels
    assert read_run_labels(tmp_path / "a", "sample") == {"seed": 1}
    assert read_run_labels(tmp_path / "a", "agent") is None


def test_failure_blocks_only_dependents_and_finished_jobs_are_skipped(tmp_path):
    flag = tmp_path / "fixed"
    fail_unless_fixed = (f"if not Path({str(flag)!r}).exists():\n"
                         "    print('error: bad input in b.yaml', file=sys.stderr); sys.exit(3)\n" + WRITE)
    finished = _job(tmp_path, "f", "sys.exit(1)")  # its output exists already: it must never run
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "out.txt").write_text("old")
    jobs = [_job(tmp_path, "a", WRITE), _job(tmp_path, "b", fail_unless_fixed, ["a"]),
            _job(tmp_path, "c", WRITE, ["b"]), _job(tmp_path, "c2", WRITE, ["c"]), _job(tmp_path, "d", WRITE),
            _job(tmp_path, "e", WRITE, ["d"]), finished]
    state_path = tmp_path / "state" / "sweep_state.json"
    result, lines = _run(jobs, state_path)
    assert result.status == {"f": "skipped", "a": "done", "b": "failed", "c": "blocked", "c2": "blocked",
                             "d": "done", "e": "done"}
    assert not result.ok and result.count("failed") == 1 and result.count("blocked") == 2
    assert any("f: done, skipped" in ln for ln in lines)
    assert "exit 3: error: bad input in b.yaml" in result.notes["b"]
    assert result.notes["c2"] == "needs c (blocked)"
    state = json.loads(state_path.read_text())["jobs"]
    assert state["b"]["returncode"] == 3 and state["b"]["tail"][-1] == "error: bad input in b.yaml"
    assert state["c"]["blocked_by"] == ["b"] and state["e"]["status"] == "done"
    assert "error: bad input in b.yaml" in (tmp_path / "b" / "job-command.log").read_text()
    assert (tmp_path / "f" / "out.txt").read_text() == "old"
    table = summary_table(result)
    assert "failed      b: exit 3" in table and "blocked     c: needs b (failed)" in table

    flag.touch()  # the user fixes the input and re-runs: only what did not finish runs
    again, lines = _run(jobs, state_path)
    assert again.ok
    assert again.status == {"f": "skipped", "a": "skipped", "b": "done", "c": "done", "c2": "done",
                            "d": "skipped", "e": "skipped"}
    state = json.loads(state_path.read_text())["jobs"]
    assert state["b"]["attempts"] == 2 and state["a"]["attempts"] == 1 and "tail" not in state["b"]


def test_killed_job_leaves_no_marker_and_resumes_from_its_checkpoint_on_the_next_run(tmp_path):
    # first attempt: save a "checkpoint", then die by SIGKILL before writing the output; second: resume from it
    code = ("OUT.mkdir(parents=True, exist_ok=True); ck = OUT / 'ckpt'\n"
            "if not ck.exists(): ck.write_text('step 5'); os.kill(os.getpid(), signal.SIGKILL)\n"
            "(OUT / 'out.txt').write_text('resumed from ' + ck.read_text())")
    jobs = [_job(tmp_path, "k", code), _job(tmp_path, "after", WRITE, ["k"]), _job(tmp_path, "other", WRITE)]
    state_path = tmp_path / "sweep_state.json"
    first, _ = _run(jobs, state_path)
    assert first.status == {"k": "failed", "after": "blocked", "other": "done"}
    assert "killed by signal 9" in first.notes["k"] and not (tmp_path / "k" / "out.txt").exists()
    second, lines = _run(jobs, state_path)
    assert second.status == {"k": "done", "after": "done", "other": "skipped"}
    assert (tmp_path / "k" / "out.txt").read_text() == "resumed from step 5"
    assert json.loads(state_path.read_text())["jobs"]["k"]["attempts"] == 2
    # a job that exits 0 without its output is not finished
    liar = _job(tmp_path, "liar", "pass")
    third, _ = _run([liar], state_path)
    assert third.status == {"liar": "failed"} and "exit 0 but no finished out.txt" in third.notes["liar"]


def test_ctrl_c_stops_running_jobs_and_records_them_interrupted(tmp_path):
    pid_file = tmp_path / "sleeper.pid"
    driver = tmp_path / "driver.py"
    driver.write_text(textwrap.dedent(f"""
        import signal, sys
        from pathlib import Path
        from synther.cli import run
        # as a terminal's foreground job: a shell's background job (CI under nohup &) starts with SIGINT ignored
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from synther.sweep import Job, LocalExecutor, run_jobs
        root = Path({str(tmp_path)!r})
        sleep = "import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
        jobs = [Job("sleeper", "command", root / "s", [sys.executable, "-c", sleep], outputs=("out.txt",)),
                Job("after", "command", root / "a", [sys.executable, "-c", "pass"], ["sleeper"], outputs=("out.txt",))]
        run(lambda: run_jobs(jobs, LocalExecutor(2), root / "sweep_state.json", poll=0.05))
    """))
    proc = subprocess.Popen([sys.executable, str(driver)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=script_env(), cwd=ROOT)
    deadline = time.time() + 60
    while not (pid_file.exists() and pid_file.read_text()) and time.time() < deadline:
        time.sleep(0.1)
    sleeper = int(pid_file.read_text())
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "sleeper: interrupted" in out
    with pytest.raises(ProcessLookupError):  # the job's process was stopped with the driver
        os.kill(sleeper, 0)
    state = json.loads((tmp_path / "sweep_state.json").read_text())["jobs"]
    assert state["sleeper"]["status"] == "interrupted" and "after" not in state
    with FolderLock(tmp_path, ".sweep.lock"):  # the lock is released: another driver could take it now
        pass


# --- real PrivTranR jobs -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    """Tiny maze datasets, then the shipped tiny sweep (ε = 2) run by MuJoCo/sweep.py on the local pool."""
    base = tmp_path_factory.mktemp("sweep")
    data = base / "data"
    for maze, seed in (("open", 0), ("umaze", 1), ("medium", 2), ("large", 3)):
        collect_maze2d(MazeCollectConfig(name=maze, num_steps=1500), seed=seed, progress=False).save(
            data / f"ptr-maze2d-{maze}-dense-v0.npz")
    env = {"PRIVTRANR_DATA_DIR": str(data)}
    runs = base / "runs"
    args = ("--config", "config/sweeps/maze2d-tiny.yaml", "--runs_dir", str(runs))
    start = time.time()
    proc = run_script("sweep.py", *args, "--epsilons", "[2]", "--workers", "2", env_extra=env)
    return {"runs": runs, "env": env, "args": args, "proc": proc, "seconds": time.time() - start}


def test_tiny_privtranr_sweep_end_to_end_on_the_local_pool(tiny_sweep):
    proc, runs = tiny_sweep["proc"], tiny_sweep["runs"]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ft = runs / "diffusion" / f"finetune-{MEDIUM}-eps2-seed0"
    public = "ptr-maze2d-open-dense-v0+ptr-maze2d-umaze-dense-v0+ptr-maze2d-large-dense-v0"
    pre = runs / "diffusion" / f"pretrain-{public}-seed0"
    assert (pre / "checkpoint.pt").exists() and (pre / "job-pretrain.log").exists()
    ledger = json.loads((ft / "ledger.json").read_text())
    assert ledger["target_epsilon"] == 2 and ledger["epsilon_spent"] <= 2
    with np.load(ft / "samples.npz") as f:
        assert f["observations"].shape == (500, 4)
    synthetic = json.loads((runs / "agents" / f"td3_bc-{MEDIUM}-eps2-seed0" / "summary.json").read_text())
    assert synthetic["data"]["kind"] == "synthetic" and synthetic["data"]["path"] == str(ft / "samples.npz")
    assert synthetic["dp_epsilon"] == 2 and synthetic["steps"] == 20
    real = json.loads((runs / "agents" / f"td3_bc-{MEDIUM}-real-seed0" / "summary.json").read_text())
    assert real["data"]["kind"] == "real"
    state = json.loads((runs / "sweep_state.json").read_text())["jobs"]
    assert sorted(e["status"] for e in state.values()) == ["done"] * 5
    assert re.search(r"total\s+5\s+0\s+0\s+0\s+0", proc.stdout)  # the summary table: 5 done, nothing else

    again = run_script("sweep.py", *tiny_sweep["args"], "--epsilons", "[2]", env_extra=tiny_sweep["env"])
    assert again.returncode == 0 and again.stdout.count("done, skipped") == 5 and "started" not in again.stdout
    # a longer pre-training: it and everything downstream of it are no longer done; the real-data agent is
    longer = run_script("sweep.py", *tiny_sweep["args"], "--epsilons", "[2]", "--budgets.pretrain_epochs", "9",
                        "--dry_run", "true", env_extra=tiny_sweep["env"])
    assert longer.returncode == 0 and longer.stdout.count("to run again") == 4, longer.stdout
    assert re.search(r"agent +td3_bc-\S+-real-seed0: done", longer.stdout)

    out = runs.parent / "results"
    rep = run_script("report.py", "--runs_dir", str(runs), "--out_dir", str(out))
    assert rep.returncode == 0, rep.stderr
    utility = (out / "utility.csv").read_text().splitlines()
    assert len(utility) == 3 and utility[1].startswith(f"{MEDIUM},td3_bc,real,,1,")
    assert (out / "ledger.md").read_text().count("| privtranr | 2 | 0 |") == 1
    assert (out / f"utility_vs_epsilon_{MEDIUM}.png").read_bytes()[:4] == b"\x89PNG"


def test_an_agents_stacked_seeds_run_as_one_job(tiny_sweep):
    """Real-data TD3+BC for seeds 0 and 1 as one --stack_seeds job on the local pool: two ordinary run folders,
    each labelled with its own seed; a second sweep finds the job done."""
    runs = tiny_sweep["runs"].parent / "stacked"
    args = ("--config", "config/sweeps/maze2d-tiny.yaml", "--runs_dir", str(runs), "--methods", "[]",
            "--seeds", "[0, 1]")
    proc = run_script("sweep.py", *args, env_extra=tiny_sweep["env"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"agent +td3_bc-\S+-real-seed0-1: done", proc.stdout)
    for seed in (0, 1):
        folder = runs / "agents" / f"td3_bc-{MEDIUM}-real-seed{seed}"
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["stacked_seeds"] == [0, 1] and summary["evaluation"]["seed"] == seed
        assert read_run_labels(folder, "agent")["seed"] == seed
    again = run_script("sweep.py", *args, env_extra=tiny_sweep["env"])
    assert again.returncode == 0 and again.stdout.count("done, skipped") == 1 and "started" not in again.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_cluster(tmp_path_factory):
    """A real single-node Ray cluster on loopback, started with `ray start --head --block` and stopped after."""
    import ray  # noqa: F401  (fails here, clearly, when Ray is not installed)

    port = _free_port()
    # Ray swaps 127.0.0.1 for the machine's outward address unless told it is not clustering across machines:
    # this keeps every Ray socket on loopback
    env = {**script_env(), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    temp = Path(f"/tmp/ptr-ray-{os.getpid()}-{port}")  # short: Ray's socket paths must stay under 107 characters
    ray_cli = Path(sys.executable).parent / "ray"
    head = subprocess.Popen(
        [str(ray_cli), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
         "--num-cpus", "2", "--object-store-memory", "100000000", "--include-dashboard", "false",
         "--disable-usage-stats", "--temp-dir", str(temp)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    started, output = threading.Event(), []

    def drain() -> None:
        for line in head.stdout:
            output.append(line)
            if "Ray runtime started" in line:
                started.set()

    threading.Thread(target=drain, daemon=True).start()
    try:
        assert started.wait(90), "".join(output[-20:])
        yield {"address": f"127.0.0.1:{port}", "env": {k: env[k] for k in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER",
                                                                           "RAY_USAGE_STATS_ENABLED")}}
    finally:
        head.send_signal(signal.SIGINT)  # `ray start --block` stops every process it started on SIGINT
        try:
            head.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(temp, ignore_errors=True)


def test_tiny_sweep_through_a_real_local_ray_cluster(tiny_sweep, ray_cluster):
    runs = tiny_sweep["runs"]
    env = {**tiny_sweep["env"], **ray_cluster["env"]}
    # the same sweep grown to ε ∈ {2, 8}: what the local pool finished is skipped, ε = 8 runs as Ray tasks
    proc = run_script("sweep.py", *tiny_sweep["args"], "--epsilons", "[2,8]", "--executor", "ray",
                      "--ray_address", ray_cluster["address"], env_extra=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Ray cluster with 2 CPUs" in proc.stdout
    assert proc.stdout.count("done, skipped") == 5 and proc.stdout.count(": done (") == 3
    ft = runs / "diffusion" / f"finetune-{MEDIUM}-eps8-seed0"
    assert json.loads((ft / "ledger.json").read_text())["target_epsilon"] == 8
    assert (ft / "samples.npz").exists() and "--mode sample" in (ft / "job-sample.log").read_text()
    summary = json.loads((runs / "agents" / f"td3_bc-{MEDIUM}-eps8-seed0" / "summary.json").read_text())
    assert summary["dp_epsilon"] == 8 and summary["data"]["path"] == str(ft / "samples.npz")
    state = json.loads((runs / "sweep_state.json").read_text())["jobs"]
    assert state[f"agent/td3_bc-{MEDIUM}-eps8-seed0"]["node"] == socket.gethostname()
    assert all(e["status"] in ("done", "skipped") for e in state.values()) and len(state) == 8


def test_jobs_see_relative_data_folders_as_seen_from_where_the_sweep_started(tmp_path, monkeypatch):
    """Jobs run from the repository root: PRIVTRANR_DATA_DIR=data-loco given in another folder must reach them as
    that folder's data-loco, not the repository's."""
    from synther.sweep.process import forwarded_env, job_env

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PRIVTRANR_DATA_DIR", "data-loco")
    monkeypatch.setenv("PRIVTRANR_RUNS_DIR", "~/runs")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    for env in (job_env(1), forwarded_env()):
        assert env["PRIVTRANR_DATA_DIR"] == str(tmp_path / "data-loco")
        assert env["PRIVTRANR_RUNS_DIR"] == str(Path("~/runs").expanduser())
        assert env["MPLBACKEND"] == "Agg"
