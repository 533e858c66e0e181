"""A job: one subprocess of a MuJoCo/ script, its run folder, dependencies and what marks it finished."""
import json
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

from synther.utils.io import atomic_write_json


@dataclass
class Job:
    id: str  # unique, '<kind>/<run folder name>'
    kind: str  # one of KINDS (tests and tools may use others, with `outputs` saying what marks them finished)
    run_dir: Path
    command: list[str]
    deps: list[str] = field(default_factory=list)
    cpus: int = 1
    gpus: float = 0.0
    outputs: tuple[str, ...] = ()  # files in run_dir whose presence marks the job finished
    labels: dict[str, Any] = field(default_factory=dict)  # dataset, method, epsilon, seed, agent
    finished: Callable[[Path], bool] | None = None  # a further test on run_dir once the outputs exist
    # what the result depends on (the plan sets it): the options that shape it, the settings it reads from its config
    # file and its dependencies' fingerprints; a sweep records it when the job finishes
    fingerprint: str = ""
    # the same job's fingerprints under earlier schemes: a folder recorded under one of them is still finished
    earlier_fingerprints: tuple[str, ...] = ()
    # its process follows the thread count a local pool lends it when cores sit idle (synther.utils.threads)
    elastic: bool = False
    # further run folders the job writes, each with its labels (an agent's stacked seeds: run_dir is the first
    # seed's); `outputs` and `finished` must hold in every one
    members: tuple[tuple[Path, dict[str, Any]], ...] = ()

    @property
    def log(self) -> Path:
        return self.run_dir / f"job-{self.kind}.log"

    @property
    def marker(self) -> Path:
        return self.run_dir / f"job-{self.kind}.done.json"

    def outputs_finished(self) -> bool:
        return bool(self.outputs) and all(
            all((folder / f).exists() for f in self.outputs) and (self.finished is None or self.finished(folder))
            for folder in (self.run_dir, *(folder for folder, _ in self.members)))

    def write_labels(self) -> None:
        """Record in each of its run folders what the job is there (synther.layout.write_run_labels)."""
        from synther import layout

        for folder, labels in ((self.run_dir, self.labels), *self.members):
            layout.write_run_labels(folder, self.kind, labels)

    def changed(self) -> bool:
        """Whether a sweep finished this job under another fingerprint: its options, its config file or a job
        upstream changed since. Folders without a marker (finished by a script alone, or by a sweep before markers
        existed) count as unchanged."""
        if not self.fingerprint:
            return False
        try:
            return self._recorded() not in (self.fingerprint, *self.earlier_fingerprints)
        except FileNotFoundError:
            return False
        except Exception:  # a damaged marker: let the job run; its script judges the folder
            return True

    def _recorded(self) -> str:
        return json.loads(self.marker.read_text())["fingerprint"]

    def is_done(self) -> bool:
        return self.outputs_finished() and not self.changed()

    def mark_finished(self) -> None:
        if self.fingerprint:  # jobs built outside a plan have none
            atomic_write_json(self.marker, {"fingerprint": self.fingerprint, "command": self.command})

    def update_marker(self) -> None:
        """A finished job recorded under an earlier scheme's fingerprint gets the current one."""
        try:
            recorded = self._recorded()
        except (OSError, ValueError, KeyError, TypeError):  # no marker or a damaged one: nothing to update
            return
        if recorded in self.earlier_fingerprints:
            self.mark_finished()


def training_finished(run_dir: Path) -> bool:
    """A diffusion run whose checkpoint reached its last step (the trainer writes checkpoints mid-run too)."""
    import torch  # only here: planning and dry runs do not need it

    try:
        state = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False, mmap=True)
        return int(state["step"]) >= int(state["total_steps"])
    except Exception:  # unreadable or foreign file: not finished, the job re-runs and its script reports it
        return False


def _agent_finished(max_timesteps: int, settings: dict[str, str], run_dir: Path) -> bool:
    try:
        steps = json.loads((run_dir / "summary.json").read_text()).get("steps")
    except Exception:  # unreadable: not finished, the job re-runs and the agent script reports it
        return False
    if max_timesteps > 0 and steps != max_timesteps:
        return False
    return not settings or _settings_match(settings, run_dir / "config.yaml")


def _settings_match(settings: dict[str, str], config_yaml: Path) -> bool:
    """Whether the run's saved config holds every `--key value` the job would pass (dotted keys are nested). A false
    "no" only costs a re-run that the agent script ends at once when the run's own key matches (it is the judge)."""
    import yaml

    try:
        saved = yaml.safe_load(config_yaml.read_text())
        for key, value in settings.items():
            node: Any = saved
            for part in key.split("."):
                node = node[part]
            if node != yaml.safe_load(value):
                return False
        return True
    except Exception:  # missing or unreadable config, an option it lacks (an alias), a value YAML cannot read
        return False


def agent_finished(max_timesteps: int, settings: dict[str, str] | None = None) -> Callable[[Path], bool]:
    """An agent run whose summary reports the planned number of updates (any, where the budget is the agent YAML's:
    0) and whose saved config holds the job's `settings` (the options that shape the run: budgets, extra_args such as
    --alpha). A run a sweep made with another budget or other settings is not counted as done: the job runs, and the
    agent script refuses the folder with a one-line error, instead of the report silently mixing configurations."""
    return partial(_agent_finished, max_timesteps, dict(settings or {}))


def topological_order(jobs: list[Job]) -> list[Job]:
    """Jobs with each after its dependencies, otherwise in the given order; rejects unknown deps and cycles."""
    by_id: dict[str, Job] = {}
    for job in jobs:
        if job.id in by_id:
            raise ValueError(f"duplicate job id {job.id}")
        by_id[job.id] = job
    for job in jobs:
        for d in job.deps:
            if d not in by_id:
                raise ValueError(f"job {job.id} depends on unknown job {d}")
    order: list[Job] = []
    state: dict[str, int] = {}  # 1 visiting, 2 placed

    def visit(job: Job, path: tuple[str, ...]) -> None:
        if state.get(job.id) == 2:
            return
        if state.get(job.id) == 1:
            raise ValueError(f"dependency cycle: {' -> '.join(path + (job.id,))}")
        state[job.id] = 1
        for d in job.deps:
            visit(by_id[d], path + (job.id,))
        state[job.id] = 2
        order.append(job)

    for job in jobs:
        visit(job, ())
    return order


def dependents(jobs: list[Job]) -> dict[str, set[str]]:
    """Each job's id -> the ids of every job that needs it, directly or through others (jobs in dependency order)."""
    out: dict[str, set[str]] = {job.id: set() for job in jobs}
    for job in reversed(jobs):  # a job's dependents come after it: theirs are complete when it is reached
        for d in job.deps:
            out[d] |= {job.id} | out[job.id]
    return out
