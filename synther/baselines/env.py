"""The separate virtualenv the smartnoise-synth baselines run in.

smartnoise-synth pins opacus<0.15, which cannot share an environment with the main one (opacus 1.x), so the fit runs
in its own interpreter: `ensure_env()` creates `<repo>/.baselines-venv` (or $PRIVTRANR_BASELINES_VENV) from the
repo's `requirements-baselines.txt` on first use, and reuses it while a stamp of that file's hash matches.
"""
import fcntl
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

from synther.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = REPO_ROOT / "requirements-baselines.txt"
WORKER = Path(__file__).resolve().with_name("worker.py")
STAMP = ".privtranr-requirements.sha256"
ENV_VAR = "PRIVTRANR_BASELINES_VENV"


def venv_dir() -> Path:
    return Path(os.environ.get(ENV_VAR) or REPO_ROOT / ".baselines-venv").expanduser().resolve()


def venv_python(venv: Path | None = None) -> Path:
    return (venv or venv_dir()) / "bin" / "python"


def requirements_hash(path: Path = REQUIREMENTS) -> str:
    if not path.exists():
        raise UserError(f"{path}: not found (the baselines environment is built from it)")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def is_ready(venv: Path | None = None) -> bool:
    """True when the venv exists and was built from the current requirements file."""
    venv = venv or venv_dir()
    stamp = venv / STAMP
    return venv_python(venv).exists() and stamp.exists() and stamp.read_text().strip() == requirements_hash()


def ensure_env(quiet: bool = False) -> Path:
    """Create or update the baselines venv if needed; return its python. Safe to call from parallel processes."""
    venv = venv_dir()
    if is_ready(venv):
        return venv_python(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    lock_path = venv.parent / f"{venv.name}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits here, then finds the venv ready
        if is_ready(venv):
            return venv_python(venv)
        _build(venv, quiet)
    return venv_python(venv)


def _build(venv: Path, quiet: bool) -> None:
    def say(msg: str) -> None:
        if not quiet:
            print(msg, file=sys.stderr, flush=True)

    start = time.time()
    log = venv.parent / f"{venv.name}-install.log"
    if not venv_python(venv).exists():
        say(f"baselines: creating the smartnoise-synth environment at {venv} (first use; ~1-2 min, ~2 GB)")
        # sys.executable may itself be a venv's python: `-m venv` builds on its base interpreter either way
        _run([sys.executable, "-m", "venv", str(venv)], log, "creating the virtualenv")
    else:
        say(f"baselines: {REQUIREMENTS.name} changed; updating the environment at {venv}")
    say(f"baselines: pip install -r {REQUIREMENTS} (log: {log})")
    _run([str(venv_python(venv)), "-m", "pip", "install", "--disable-pip-version-check", "-r", str(REQUIREMENTS)],
         log, "installing requirements-baselines.txt")
    (venv / STAMP).write_text(requirements_hash() + "\n")
    say(f"baselines: environment ready in {time.time() - start:.0f} s")


def _run(cmd: list[str], log: Path, what: str) -> None:
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = log.read_text().strip().splitlines()[-1:] or ["(no output)"]
        raise UserError(f"baselines environment: {what} failed (exit {proc.returncode}); see {log}: {tail[0]}")
