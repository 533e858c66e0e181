"""Running the MuJoCo/ scripts as a user would, and checking the one-line error contract (exit 2, no traceback)."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def script_env(extra: dict | None = None) -> dict:
    # One torch thread per script: two multi-threaded torch processes on 2 cores can stall each other ~100×.
    return {**os.environ, "OMP_NUM_THREADS": "1", **(extra or {})}


def run_script(script: str, *args: str, env_extra: dict | None = None, timeout: int = 600
               ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "MuJoCo" / script), *args], capture_output=True, text=True,
                          env=script_env(env_extra), cwd=ROOT, timeout=timeout)


def assert_user_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
