"""Cores a local sweep lends its running jobs while no other job could use them.

At the end of a sweep (the quickstart's last job is the agent on the synthetic samples) one job often runs alone on a
machine whose other cores sit idle; earlier, a sampling job may be what every waiting job waits for. The local pool
(synther.sweep.executors.LocalExecutor) then writes a larger thread count into a file named by
$PRIVTRANR_THREADS_FILE, and a job that follows it (the agent trainer at each log step, sampling at each chunk)
switches torch's intra-op threads. A job borrows only if every waiting job needs it, so no job can claim a lent core
before it comes back and a count never has to shrink again: two multi-threaded torch processes on the same cores
collapse ~100×.
"""
import os
from pathlib import Path

import torch

from synther.utils.io import atomic_path

THREADS_FILE_ENV = "PRIVTRANR_THREADS_FILE"


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
    print(f"now {threads} threads: cores the sweep lent while no other job could use them", flush=True)
    torch.set_num_threads(threads)
    return threads
