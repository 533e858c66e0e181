"""Cores a local sweep lends its running jobs while no other job could use them.

At the end of a sweep (the quickstart's last job is the agent on the synthetic samples) one job often runs alone on a
machine whose other cores sit idle; earlier, a sampling job may be what every waiting job waits for. The local pool
(synther.sweep.executors.LocalExecutor) then writes a larger thread count into a file named by
$PRIVTRANR_THREADS_FILE, and a job that follows it (the agent trainer at each log step, sampling at each chunk)
switches torch's intra-op threads. A job borrows only if every waiting job needs it, so no job of the sweep can claim
a lent core before it comes back. The pool knows only its own jobs, so a core counts as idle only if the machine's
load (`MachineLoad`: every process, e.g. a second sweep on the same machine) leaves it free, and lent cores are taken
back when the load rises past the cores: two multi-threaded torch processes on the same cores collapse ~100×.
"""
import os
import time
from collections import deque
from pathlib import Path

import torch

from synther.utils.io import atomic_path

THREADS_FILE_ENV = "PRIVTRANR_THREADS_FILE"


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity where the OS has one (a container or `taskset` limits
    it), else every core of the machine."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def lend_threads(path: Path, threads: int) -> None:
    """Tell the job reading `path` to use `threads` threads (written atomically: it never reads half a number)."""
    with atomic_path(path) as tmp:
        tmp.write_text(f"{threads}\n")


def follow_lent_threads() -> int | None:
    """Switch torch to the thread count the sweep lent this process, if there is one and it changed (said on
    stdout, the job's log); returns it."""
    path = os.environ.get(THREADS_FILE_ENV)
    if not path:
        return None
    try:
        threads = int(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if threads < 1 or threads == torch.get_num_threads():
        return None
    why = ("cores the sweep lent while no other job could use them" if threads > torch.get_num_threads() else
           "the sweep took back cores it had lent (the machine got busier)")
    print(f"now {threads} threads: {why}", flush=True)
    torch.set_num_threads(threads)
    return threads


class MachineLoad:
    """How many threads want a core on this machine, averaged over the last `window` seconds; None where the OS
    says nothing. On Linux the kernel's count of runnable tasks (`procs_running` in /proc/stat, less the reader
    itself), sampled when called (at most every `every` seconds); elsewhere the 1-minute load average. It counts
    every process on the machine, not only a sweep's own jobs."""

    def __init__(self, window: float = 10.0, every: float = 0.25, stat_path: str = "/proc/stat") -> None:
        self.window, self.every, self.stat_path = window, every, Path(stat_path)
        self._samples: deque[tuple[float, int]] = deque()

    def _running(self) -> int | None:
        try:
            for line in self.stat_path.read_text().splitlines():
                if line.startswith("procs_running "):
                    return max(0, int(line.split()[1]) - 1)
        except (OSError, ValueError):
            pass
        return None

    def __call__(self) -> float | None:
        now = time.monotonic()
        if not self._samples or now - self._samples[-1][0] >= self.every:
            running = self._running()
            if running is None:
                try:
                    return os.getloadavg()[0]
                except (AttributeError, OSError):
                    return None
            self._samples.append((now, running))
        while len(self._samples) > 1 and now - self._samples[0][0] > self.window:
            self._samples.popleft()
        return sum(n for _, n in self._samples) / len(self._samples)
