"""Sweeps: the whole evaluation grid as a graph of jobs, run by a local process pool or a Ray cluster.

    plan(SweepConfig) -> [Job]       expand datasets × methods × ε × seeds × agents into jobs with dependencies
    run_jobs(jobs, executor, state)  run them in dependency order; skip finished ones; record failures

    config.py     SweepConfig (budgets, resources, extra flags, layout) and its validation
    jobs.py       Job (command, run folder, dependencies, what marks it finished), topological order
    plan.py       the grid -> jobs; folder names from synther.layout, commands from each script's builder
    process.py    one job's process: environment, log, process group, dying with the driver
    executors.py  the Executor protocol, LocalExecutor (CPU slots) and RayExecutor
    scheduler.py  run_jobs, the state file, the summary table, run_sweep / execute

Jobs and what marks them finished (so a re-run skips them and runs only what is missing):

    pretrain   train_diffuser.py --mode pretrain   checkpoint.pt whose step reached its total (per public sets, seed)
    finetune   train_diffuser.py --mode finetune   checkpoint.pt whose step reached its total (per dataset, ε, seed)
    sample     train_diffuser.py --mode sample     samples.npz (written next to the fine-tuned checkpoint)
    baseline   baselines.py --method <m>           samples.npz
    agent      <algorithm>.py                      summary.json with the planned updates, config.yaml with the job's options
    fidelity   marginal.py                         fidelity.json
    mia        mia.py                              mia.json

A job finished by a sweep also leaves job-<kind>.done.json: its fingerprint (the options that shape its result, the
settings of its config file that its script reads, its dependencies' fingerprints; pre-training and fine-tuning
do not read the sampling fields). When any of them changes (another pre-training budget, an edited YAML, other
extra_args) the job and everything downstream are no longer done: they run again, and each script either redoes the
work or refuses a folder of another configuration with a one-line error; an old result is never counted under a new
configuration. (Folders without the file, finished by a script alone or before the file existed, are judged by
their outputs only; files written under the first fingerprint scheme, which hashed the config file's bytes, still
count and are rewritten.)

Each job is a subprocess of the thin MuJoCo/ script with explicit flags, so a job is isolated, resumable (the
script resumes from its own checkpoint) and the same under any executor. Its stdout and stderr go to
<run folder>/job-<kind>.log (fine-tuning and sampling share a folder). Run folders under the sweep root
(`runs_dir`, default $PRIVTRANR_RUNS_DIR or runs/):

    diffusion/pretrain-<public a+b+c>-seed<s>/
    diffusion/pretrain-<public a+b+c>[-curiosity]-seed<s>/ (+ samples.npz for the ladder's public rungs)
    diffusion/finetune-<dataset>-eps<ε>-seed<s>/          checkpoint.pt, ledger.json, samples.npz, samples.json
    diffusion/finetune-<dataset>-nodp-seed<s>/            the ladder's non-private fine-tune (NOT a private release)
    baselines/<method>-<dataset>-eps<ε>-seed<s>/          samples.npz, samples.json
    agents/<algorithm>-<dataset>-eps<ε>-seed<s>/          on PrivTranR's samples (the agent scripts' default name)
    agents/<algorithm>-<dataset>-<method>-eps<ε>-seed<s>/ trained on a baseline's samples
    agents/<algorithm>-<dataset>-real-seed<s>/            the real-data reference
    agents/<algorithm>-<dataset>-<rung>-seed<s>/          a ladder rung's samples (nodp, public, public_curiosity)
    evaluation/fidelity-<method>-<dataset>[-eps<ε>]-seed<s>/fidelity.json
    evaluation/mia-privtranr-<dataset>-eps<ε>-seed<s>/mia.json (+ audit.json)
    sweep_state.json                                       every job's last status, exit code, log tail, attempts

Every job's folder also gets run.json: per job kind, its labels (dataset, method, ε, seed, agent, the data it read),
which synther.report reads (synther.layout names the folders and writes and reads these files).

Executors: `LocalExecutor` (a pool of CPU slots, default the cores it may use; each job gets OMP_NUM_THREADS = its
cpus; idle cores lent at a sweep's tail while the machine's load leaves them idle) and `RayExecutor` (one remote
task per job with num_cpus/num_gpus; the driver launches a job once its dependencies have succeeded). Under Ray,
every node must have the repository and the Python environment at the same paths as the driver, and the sweep root
on a shared filesystem at the same path: jobs write their run folders there and the driver checks them.
"""
from synther.layout import BASELINES, LADDER, METHODS, agent_run_name, dataset_tag, eps_tag
from synther.sweep.config import (EVALUATIONS, KINDS, Budgets, ExtraArgs, KindResources, Layout, Resources,
                                  SweepConfig, layout_dirs, runs_root)
from synther.sweep.executors import Executor, LocalExecutor, RayExecutor, make_executor
from synther.sweep.jobs import Job, topological_order, training_finished
from synther.sweep.plan import agent_job, plan, public_sets
from synther.sweep.process import Outcome, run_subprocess
from synther.sweep.scheduler import (SUCCESS, SweepResult, SweepState, describe_plan, execute, run_jobs, run_sweep,
                                     summary_table)

__all__ = ["BASELINES", "EVALUATIONS", "KINDS", "LADDER", "METHODS", "SUCCESS", "Budgets", "Executor", "ExtraArgs", "Job",
           "KindResources", "Layout", "LocalExecutor", "Outcome", "RayExecutor", "Resources", "SweepConfig",
           "SweepResult", "SweepState", "agent_job", "agent_run_name", "dataset_tag", "describe_plan", "eps_tag",
           "execute", "layout_dirs", "make_executor", "plan", "public_sets", "run_jobs", "run_subprocess",
           "run_sweep", "runs_root", "summary_table", "topological_order", "training_finished"]
