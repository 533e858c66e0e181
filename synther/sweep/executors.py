"""Where jobs run: a local pool of CPU slots or a Ray cluster, behind one protocol."""
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from synther.errors import UserError
from synther.sweep.config import blank
from synther.sweep.jobs import Job
from synther.sweep.process import (Outcome, start_process, stop_process, forwarded_env, job_env, log_tail,
                                   run_subprocess)
from synther.utils.threads import THREADS_FILE_ENV, MachineLoad, lend_threads, usable_cores

# a core is idle when the machine's load leaves ≥ 75 % of it free; lent cores go back above cores + 0.5
IDLE_CORE_SLACK = 0.25
RECLAIM_ABOVE_CORES = 0.5


class Executor(Protocol):
    """Everything the scheduler calls. `check` sees every job to run before any starts (refuse what can never
    fit); `fits` says whether a job can start now; `wait` returns the jobs that ended within `timeout` seconds;
    `lend_idle_cores(may_borrow)` gives idle cores to the running jobs that can use them and that `may_borrow`
    (the scheduler's test that no waiting job could start before they end)."""

    name: str

    def check(self, jobs: list[Job]) -> None: ...
    def fits(self, job: Job) -> bool: ...
    def start(self, job: Job) -> None: ...
    def wait(self, timeout: float) -> list[tuple[Job, Outcome]]: ...
    def running(self) -> list[Job]: ...
    def lend_idle_cores(self, may_borrow: Callable[[Job], bool]) -> None: ...
    def stop_all(self) -> list[Job]: ...
    def close(self) -> None: ...


def _visible_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:
        return 0


@dataclass
class _Running:
    job: Job
    proc: subprocess.Popen
    log: Any  # the open log file
    started: float
    cpus: int  # slots it holds: its own (LocalExecutor._cpus), plus any lent to it
    threads_file: Path | None  # where its thread count is written, for an elastic job (synther.utils.threads)


class LocalExecutor:
    """A pool of CPU slots on this machine; a job takes its cpus (at most all slots) until it exits. Slots left idle
    are lent to running elastic jobs (agent runs, sampling) that every waiting job needs (at a sweep's tail: all of
    them), which then use more threads — as long as `load()` (threads wanting a core, machine-wide; None: unknown,
    trust the pool) leaves those cores idle: another sweep or program on the machine is not the pool's to see."""

    name = "local"

    def __init__(self, workers: int = 0, load: Callable[[], float | None] | None = None) -> None:
        self.cores = usable_cores()
        self.slots = workers or self.cores
        self.load = load or MachineLoad()
        self.used_cpus = 0
        self.used_gpus = 0.0
        self.gpus: float | None = None  # counted on the first GPU job
        self._running: dict[str, _Running] = {}

    def check(self, jobs: list[Job]) -> None:
        """Nothing to refuse: a job asking for more cores than the pool has gets the whole pool."""

    def _cpus(self, job: Job) -> int:
        return max(1, min(job.cpus, self.slots))

    def _gpus(self, job: Job) -> float:
        if job.gpus <= 0:
            return 0.0
        if self.gpus is None:
            self.gpus = float(_visible_gpus())
            if self.gpus == 0:
                print("sweep: jobs ask for GPUs but none is visible; they run without GPU accounting", flush=True)
        return min(job.gpus, self.gpus)

    def fits(self, job: Job) -> bool:
        gpus = self._gpus(job)
        return (self.used_cpus + self._cpus(job) <= self.slots
                and (gpus == 0 or self.used_gpus + gpus <= (self.gpus or 0) + 1e-9))

    def start(self, job: Job) -> None:
        cpus = self._cpus(job)
        env, threads_file = job_env(cpus), None
        if job.elastic:
            threads_file = job.run_dir / f"job-{job.kind}.threads"
            lend_threads(threads_file, cpus)
            env[THREADS_FILE_ENV] = str(threads_file)
        proc, f = start_process(job.command, job.log, env)
        self.used_cpus += cpus
        self.used_gpus += self._gpus(job)
        self._running[job.id] = _Running(job, proc, f, time.time(), cpus, threads_file)

    def lend_idle_cores(self, may_borrow: Callable[[Job], bool]) -> None:
        """Share the idle slots among the running elastic jobs that `may_borrow`, one slot at a time in turn. No
        waiting job can start before such a job ends, so a lent slot is never needed back before it comes back —
        unless a program outside the pool loads the machine past its cores: then every lent slot goes back."""
        load = self.load()
        free = self.slots - self.used_cpus
        if load is not None:
            if load > self.cores + RECLAIM_ABOVE_CORES:
                self._reclaim()
            free = min(free, int(self.cores - load + IDLE_CORE_SLACK))
        elastic = [r for r in self._running.values() if r.threads_file and may_borrow(r.job)]
        if not elastic or free <= 0:
            return
        for i in range(free):
            elastic[i % len(elastic)].cpus += 1
        self.used_cpus += free
        for r in elastic[:free]:
            lend_threads(r.threads_file, r.cpus)

    def _reclaim(self) -> None:
        """Every running job back to its own slots (it drops the lent threads at its next log step or chunk)."""
        for r in self._running.values():
            own = self._cpus(r.job)
            if r.cpus > own:
                self.used_cpus -= r.cpus - own
                r.cpus = own
                lend_threads(r.threads_file, r.cpus)

    def _release(self, job_id: str) -> tuple[Job, float]:
        r = self._running.pop(job_id)
        r.log.close()
        if r.threads_file:
            r.threads_file.unlink(missing_ok=True)
        self.used_cpus -= r.cpus
        self.used_gpus -= self._gpus(r.job)
        return r.job, r.started

    def wait(self, timeout: float) -> list[tuple[Job, Outcome]]:
        deadline = time.time() + timeout
        while True:
            finished = [(jid, r.proc.returncode) for jid, r in self._running.items() if r.proc.poll() is not None]
            if finished or time.time() >= deadline or not self._running:
                break
            time.sleep(0.05)
        out = []
        for jid, rc in finished:
            job, start = self._release(jid)
            out.append((job, Outcome(rc, time.time() - start, log_tail(job.log), socket.gethostname())))
        return out

    def running(self) -> list[Job]:
        return [r.job for r in self._running.values()]

    def stop_all(self) -> list[Job]:
        stopped = []
        threads = [threading.Thread(target=stop_process, args=(r.proc,)) for r in self._running.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for jid in list(self._running):
            stopped.append(self._release(jid)[0])
        return stopped

    def close(self) -> None:
        if self._running:
            self.stop_all()


class RayExecutor:
    """One Ray task per job, reserving its cpus/gpus; Ray places it on any node with room."""

    name = "ray"

    def __init__(self, address: str = "", workers: int = 0) -> None:
        try:
            import ray
        except ImportError:
            raise UserError("--executor ray needs Ray: pip install ray") from None
        self.ray = ray
        import logging

        try:
            if address:
                ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
            else:  # a private local Ray for this sweep, kept small: tasks exchange only a few small values
                ray.init(num_cpus=workers or None, object_store_memory=100_000_000, include_dashboard=False,
                         logging_level=logging.WARNING, log_to_driver=False)
        except ConnectionError as e:
            raise UserError(f"could not connect to the Ray cluster at {address}: {e}") from None
        resources = ray.cluster_resources()
        self.total_cpus = int(resources.get("CPU", 0))
        self.total_gpus = float(resources.get("GPU", 0))
        self._task = ray.remote(run_subprocess)
        self._running: dict[Any, tuple[Job, float]] = {}
        print(f"sweep: Ray cluster with {self.total_cpus} CPUs, {self.total_gpus:g} GPUs "
              f"({len(ray.nodes())} node(s))", flush=True)

    def check(self, jobs: list[Job]) -> None:
        """Before anything runs: a request no node can ever satisfy would wait forever in Ray's queue."""
        for job in jobs:
            if job.cpus > self.total_cpus or job.gpus > self.total_gpus:
                raise UserError(f"{job.id} asks for {job.cpus} CPUs / {job.gpus:g} GPUs but the Ray cluster has "
                                f"{self.total_cpus} / {self.total_gpus:g}: lower resources.{job.kind}")

    def fits(self, job: Job) -> bool:
        return True  # Ray queues each task until a node has room for it

    def start(self, job: Job) -> None:
        ref = self._task.options(num_cpus=job.cpus, num_gpus=job.gpus, name=job.id, max_retries=0).remote(
            job.command, str(job.log), forwarded_env(), job.cpus)
        self._running[ref] = (job, time.time())

    def wait(self, timeout: float) -> list[tuple[Job, Outcome]]:
        if not self._running:
            return []
        ready, _ = self.ray.wait(list(self._running), num_returns=len(self._running), timeout=timeout)
        out = []
        for ref in ready:
            job, start = self._running.pop(ref)
            try:
                out.append((job, Outcome(**self.ray.get(ref))))
            except Exception as e:  # the task itself died (node lost, worker killed): a failed job
                lines = [ln for ln in str(e).splitlines() if ln.strip()][-5:]
                out.append((job, Outcome(-1, time.time() - start, log_tail(job.log) + lines)))
        return out

    def running(self) -> list[Job]:
        return [job for job, _ in self._running.values()]

    def lend_idle_cores(self, may_borrow: Callable[[Job], bool]) -> None:
        """Ray reserves each task's cores on its node: nothing to lend."""

    def stop_all(self) -> list[Job]:
        refs = list(self._running)
        for ref in refs:
            self.ray.cancel(ref)  # KeyboardInterrupt inside the task, which stops its subprocess
        try:
            self.ray.wait(refs, num_returns=len(refs), timeout=20)
        except Exception:
            pass
        stopped = [job for job, _ in self._running.values()]
        self._running.clear()
        return stopped

    def close(self) -> None:
        if self._running:
            self.stop_all()
        self.ray.shutdown()


def make_executor(executor: str, ray_address: str = "", workers: int = 0) -> Executor:
    if executor == "local":
        if blank(ray_address):
            raise UserError("--ray_address needs --executor ray")
        return LocalExecutor(workers)
    if executor == "ray":
        return RayExecutor(blank(ray_address), workers)
    raise UserError(f"executor must be 'local' or 'ray', got '{executor}'")
