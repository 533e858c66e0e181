"""The scheduler: run jobs in dependency order on an executor, skip finished ones, keep the state file."""
import json
import shlex
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from synther.sweep.config import SweepConfig, layout_dirs
from synther.sweep.executors import Executor, make_executor
from synther.sweep.jobs import Job, dependents, topological_order
from synther.sweep.plan import plan
from synther.utils.io import atomic_write_json
from synther.utils.locks import FolderLock

# finished = the job will not be run again; failed/blocked/interrupted = it will on the next run
SUCCESS = ("done", "skipped")


class SweepState:
    """<root>/sweep_state.json: each job's last status, exit code, log tail and attempt count, kept across runs."""

    def __init__(self, path: Path, name: str) -> None:
        self.path = path
        self.data: dict[str, Any] = {"jobs": {}}
        if path.exists():
            try:
                self.data = json.loads(path.read_text())
            except (OSError, ValueError):
                pass  # a damaged state file is only history: start a new one
        self.data.setdefault("jobs", {})
        self.data.update({"sweep": name, "updated": _now()})

    def record(self, job: Job, status: str, **info: Any) -> None:
        entry = self.data["jobs"].setdefault(job.id, {})
        if status == "running":
            entry["attempts"] = entry.get("attempts", 0) + 1
            for k in ("returncode", "seconds", "tail", "finished", "blocked_by", "error"):
                entry.pop(k, None)
        entry.update({"kind": job.kind, "run_dir": str(job.run_dir), "log": str(job.log),
                      "command": shlex.join(job.command), "status": status, "labels": job.labels, **info})
        self.data["updated"] = _now()
        atomic_write_json(self.path, self.data)

    def write(self) -> None:
        atomic_write_json(self.path, self.data)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


@dataclass
class SweepResult:
    status: dict[str, str]  # job id -> done | skipped | failed | blocked | interrupted
    jobs: list[Job]
    notes: dict[str, str] = field(default_factory=dict)  # job id -> why it failed / what blocked it

    def count(self, status: str) -> int:
        return sum(1 for s in self.status.values() if s == status)

    @property
    def ok(self) -> bool:
        return all(s in SUCCESS for s in self.status.values())


def _short(job: Job) -> str:
    return f"{job.kind:<8} {job.id.split('/', 1)[-1]}"


def run_jobs(jobs: list[Job], executor: Executor, state_path: Path, name: str = "sweep",
             echo: Callable[[str], None] = lambda s: print(s, flush=True), poll: float = 0.5) -> SweepResult:
    """Run `jobs` in dependency order on `executor`; finished ones are skipped, a failure blocks only its dependents.

    Ctrl-C (or SIGTERM) stops the running jobs (SIGINT to each, then SIGKILL), records them as interrupted and
    re-raises KeyboardInterrupt; they re-run (resuming from their checkpoints) next time.
    """
    order = topological_order(jobs)
    needed_by = dependents(order)
    n = len(order)
    status: dict[str, str] = {}
    notes: dict[str, str] = {}
    with FolderLock(state_path.parent, ".sweep.lock", what="sweep root"):  # one driver per sweep root
        state = SweepState(state_path, name)
        finished = 0

        def settle(job: Job, st: str, note: str = "", **info: Any) -> None:
            nonlocal finished
            finished += 1
            status[job.id] = st
            if note:
                notes[job.id] = note
            state.record(job, st, finished=_now(), **info)
            shown = "done, skipped" if st == "skipped" else st  # the line the bash-* drivers always printed
            echo(f"[{finished:>{len(str(n))}}/{n}] {_short(job)}: {shown}{' (' + note + ')' if note else ''}")

        for job in order:
            if job.is_done():
                job.write_labels()  # folders from before run.json get one
                job.update_marker()
                settle(job, "skipped", seconds=0.0)
        executor.check([j for j in order if j.id not in status])
        pending = [j for j in order if j.id not in status]
        previous = _signals_as_interrupt()
        try:
            while pending or executor.running():
                started = False
                for job in list(pending):
                    bad = [d for d in job.deps if status.get(d) in ("failed", "blocked", "interrupted")]
                    if bad:
                        pending.remove(job)
                        settle(job, "blocked", f"needs {bad[0]} ({status[bad[0]]})", blocked_by=bad)
                    elif all(status.get(d) in SUCCESS for d in job.deps) and executor.fits(job):
                        pending.remove(job)
                        state.record(job, "running", started=_now())
                        echo(f"{'':>{2 * len(str(n)) + 3}} {_short(job)}: started -> {job.log}")
                        job.write_labels()
                        executor.start(job)
                        started = True
                if pending and not started and not executor.running():
                    raise RuntimeError(f"sweep stalled: {pending[0].id} can never start")  # a scheduler bug
                # idle cores go to a running job only if every waiting job needs it: none can start before it ends
                executor.lend_idle_cores(lambda job: all(p.id in needed_by[job.id] for p in pending))
                for job, out in executor.wait(poll):
                    if out.returncode == 0 and job.outputs_finished():
                        job.mark_finished()
                        settle(job, "done", f"{out.seconds:.1f}s", returncode=0, seconds=out.seconds, node=out.node)
                        continue
                    last = next((ln for ln in reversed(out.tail) if ln.strip()), "")
                    why = (f"exit {out.returncode}" if out.returncode >= 0 else f"killed by signal {-out.returncode}")
                    if out.returncode == 0:
                        why = f"exit 0 but no finished {', '.join(job.outputs) or 'outputs'}"
                    settle(job, "failed", f"{why}: {last[:160]}; log {job.log}" if last else f"{why}; log {job.log}",
                           returncode=out.returncode, seconds=out.seconds, tail=out.tail, node=out.node)
        except KeyboardInterrupt:
            for job in executor.stop_all():
                settle(job, "interrupted", "stopped; it resumes on the next run")
            state.write()
            raise
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    return SweepResult(status, order, notes)


def _signals_as_interrupt() -> dict[int, Any]:
    """SIGTERM (cluster scheduler, kill) stops the sweep like Ctrl-C, and so does SIGINT even when the sweep was
    started with it ignored (bash ignores it in commands it starts with `&`). Main thread only; returns the handlers
    it replaced, to restore."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, handler)}
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    return previous


def summary_table(result: SweepResult) -> str:
    """Counts per kind and status, then one line per job that did not finish."""
    cols = ("done", "skipped", "failed", "blocked", "interrupted")
    kinds = list(dict.fromkeys(j.kind for j in result.jobs))
    lines = [f"{'kind':<9}" + "".join(f"{c:>12}" for c in cols)]
    for kind in kinds:
        ids = [j.id for j in result.jobs if j.kind == kind]
        lines.append(f"{kind:<9}" + "".join(f"{sum(result.status.get(i) == c for i in ids):>12}" for c in cols))
    lines.append(f"{'total':<9}" + "".join(f"{result.count(c):>12}" for c in cols))
    bad = [j for j in result.jobs if result.status.get(j.id) not in SUCCESS]
    if bad:
        lines.append("")
        for job in bad:
            lines.append(f"{result.status.get(job.id, 'pending'):<11} {job.id}: {result.notes.get(job.id, '')}")
    return "\n".join(lines)


def describe_plan(jobs: list[Job], echo: Callable[[str], None] = print, commands: bool = True) -> None:
    """The dry run: every job, whether it is finished, and its command."""
    counts: dict[str, list[int]] = {}
    for i, job in enumerate(jobs, 1):
        finished = job.outputs_finished()
        changed = finished and job.changed()
        done = finished and not changed  # job.is_done(), each check once
        c = counts.setdefault(job.kind, [0, 0])
        c[0 if done else 1] += 1
        deps = f" (after {', '.join(job.deps)})" if job.deps and not done else ""
        why = " again: its options, config file or an upstream job changed since it finished" if changed else ""
        echo(f"[{i}/{len(jobs)}] {_short(job)}: {'done' if done else 'to run'}{why}{deps}")
        if commands and not done:
            echo(f"    {shlex.join(job.command)}")
    echo("\n" + ", ".join(f"{k}: {d + t} ({t} to run)" for k, (d, t) in counts.items())
         + f"; {len(jobs)} jobs in all")


def run_sweep(cfg: SweepConfig, echo: Callable[[str], None] = lambda s: print(s, flush=True)) -> SweepResult | None:
    """Plan the sweep, then print it (dry run) or run it and print the summary table."""
    jobs = plan(cfg)
    return execute(jobs, cfg.executor, cfg.ray_address, cfg.workers, layout_dirs(cfg)["state"], cfg.name,
                   cfg.dry_run, echo)


def execute(jobs: list[Job], executor: str, ray_address: str, workers: int, state_path: Path, name: str,
            dry_run: bool = False, echo: Callable[[str], None] = lambda s: print(s, flush=True)) -> SweepResult | None:
    if dry_run:
        describe_plan(jobs, echo)
        return None
    if not jobs:
        echo("nothing to run")
        return SweepResult({}, [])
    ex = make_executor(executor, ray_address, workers)
    try:
        result = run_jobs(jobs, ex, state_path, name, echo)
    finally:
        ex.close()
    echo("\n" + summary_table(result) + f"\n\nstate: {state_path}")
    return result
