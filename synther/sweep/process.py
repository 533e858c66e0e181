"""Running one job's process: its environment, log, process group, and dying with the driver."""
import os
import shlex
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from synther.layout import ROOT

# variables that say where data and runs live: forwarded to jobs on every executor (Ray nodes have their own env)
PATH_ENV = ("PRIVTRANR_DATA_DIR", "PRIVTRANR_RUNS_DIR", "D4RL_DATASET_DIR", "MINARI_DATASETS_PATH")
FORWARDED_ENV = (*PATH_ENV, "MPLBACKEND")


def _absolute_paths(env: dict[str, str]) -> dict[str, str]:
    """Jobs run from the repository root: a relative folder in PATH_ENV means the one seen from where the sweep
    was started, so it is made absolute here, in the driver."""
    return {k: str(Path(v).expanduser().absolute()) if k in PATH_ENV and v else v for k, v in env.items()}


@dataclass
class Outcome:
    returncode: int  # negative: killed by that signal
    seconds: float
    tail: list[str]  # last lines of the job's log
    node: str = ""


def job_env(cpus: int, overrides: dict[str, str] | None = None) -> dict[str, str]:
    """A job's environment: this process's (on Ray: the worker's) + thread limits + `overrides`."""
    env = dict(os.environ)
    # torch/numpy threads = the job's cores: two multi-threaded torch processes on the same cores collapse ~100×
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(cpus)
    env["PYTHONUNBUFFERED"] = "1"
    return {**_absolute_paths(env), **(overrides or {})}


def forwarded_env() -> dict[str, str]:
    return _absolute_paths({k: os.environ[k] for k in FORWARDED_ENV if k in os.environ})


def log_tail(path: Path, lines: int = 20) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    # progress bars rewrite their line with \r: keep the last state of each line
    out = [ln.rsplit("\r", 1)[-1].rstrip() for ln in text.splitlines()]
    return [ln for ln in out if ln.strip()][-lines:]


def start_process(command: list[str], log: Path, env: dict[str, str]) -> tuple[subprocess.Popen, Any]:
    log.parent.mkdir(parents=True, exist_ok=True)
    f = open(log, "a")
    f.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} on {socket.gethostname()}: {shlex.join(command)}\n")
    f.flush()
    # own session: Ctrl-C in the terminal reaches the driver only, which then stops each job's process group
    proc = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=ROOT,
                            start_new_session=True, preexec_fn=_prepare_child(os.getpid()))
    return proc, f


def _prepare_child(driver_pid: int) -> Callable[[], None]:
    """For the child before exec: SIGINT back to its default, so the job stops cleanly on the SIGINT `stop_process`
    sends even when the driver was started with SIGINT ignored (bash ignores it in commands it starts with `&`, and
    children inherit that); and (Linux) a SIGTERM when the driver dies, kill -9 included, so a job never runs on as
    an orphan in a folder a re-run will use; if the driver is already gone, exit at once. prctl is looked up here, in
    the parent: the child between fork and exec must not import (another thread may hold the lock)."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: the run-folder locks still refuse a second writer
        prctl = None

    def arm() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if prctl is not None:
            prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
            if os.getppid() != driver_pid:
                os._exit(1)

    return arm


def stop_process(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGINT to the job's process group (scripts stop cleanly on it), SIGKILL if it outlives `grace` seconds."""
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue


def run_subprocess(command: list[str], log: str, env_overrides: dict[str, str], cpus: int) -> dict[str, Any]:
    """Run one job to completion on this machine (the body of a Ray task): log to `log`, return its Outcome."""
    start = time.time()
    proc, f = start_process(command, Path(log), job_env(cpus, env_overrides))
    try:
        rc = proc.wait()
    except BaseException:  # Ray cancels a task by raising KeyboardInterrupt in it: stop the job too
        stop_process(proc)
        raise
    finally:
        f.close()
    return {"returncode": rc, "seconds": time.time() - start, "tail": log_tail(Path(log)),
            "node": socket.gethostname()}
