"""Fault injection around runs: two processes on one run folder, a killed sweep driver, corrupted checkpoints, a
finished run whose data changed. Each is refused with one `error:` line (exit 2) or cleaned up, never interleaved."""
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from synther.data.pointmaze import dataset_name
from synther.errors import UserError
from synther.utils.locks import FolderLock
from maze_data import shared_maze
from script_helpers import ROOT, assert_user_error, run_script, script_env

pytestmark = pytest.mark.slow  # fault injection across processes

UMAZE = dataset_name("umaze")
TINY = ("--max_timesteps", "20", "--eval_freq", "10", "--n_episodes", "1", "--eval_max_episode_steps", "20",
        "--progress", "false", "--hidden_dim", "16")


def _hold(folder: Path, name: str = ".lock") -> subprocess.Popen:
    """Another process holding `folder`'s run lock until killed."""
    code = (f"from synther.utils.locks import FolderLock; import time\n"
            f"FolderLock({str(folder)!r}, {name!r}).__enter__()\nprint('held', flush=True)\ntime.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env=script_env())
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    shared_maze("umaze", 1000).save(root / f"{UMAZE}.npz")
    samples = {}
    for name, shift in (("a", 0.1), ("b", 0.2)):  # two releases of the same shape, different content
        ds = shared_maze("umaze", 600, seed=3)
        arrays = {k: v for k, v in ds.arrays().items() if k != "timeouts"}
        arrays["observations"] = arrays["observations"] + shift
        path = root / name / "samples.npz"
        type(ds)(**arrays, source=str(path)).save(path)
        samples[name] = path
    return {"env": {"PRIVTRANR_DATA_DIR": str(root)}, "samples": samples}


def test_a_held_folder_refuses_a_second_process_and_is_free_once_its_holder_dies(tmp_path):
    folder = tmp_path / "run"
    holder = _hold(folder)
    try:
        with pytest.raises(UserError, match=rf"in use by another process \(host .* pid {holder.pid}\)"):
            with FolderLock(folder):
                pass
    finally:
        holder.kill()  # kill -9: no clean-up code runs, the kernel drops the lock
        holder.wait()
    with FolderLock(folder):
        assert (folder / ".lock").read_text().split()[-1] == str(os.getpid())


def test_a_waiting_lock_is_taken_when_its_holder_dies(tmp_path):
    folder = tmp_path / "cache"
    holder = _hold(folder, "fit.lock")
    threading.Timer(1.0, holder.kill).start()  # kill -9 after a second: the waiting lock then goes through
    start = time.monotonic()
    with FolderLock(folder, "fit.lock", wait=True):
        waited = time.monotonic() - start
        assert (folder / "fit.lock").read_text().split()[-1] == str(os.getpid())
    holder.wait()
    assert waited >= 0.9


def test_a_failed_run_leaves_no_folder_it_created(tmp_path):
    with pytest.raises(RuntimeError):
        with FolderLock(tmp_path / "new"):
            raise RuntimeError("bad option found after the lock")
    assert not (tmp_path / "new").exists()
    with pytest.raises(UserError, match="cannot create the run folder"):
        (tmp_path / "file").write_text("x")
        with FolderLock(tmp_path / "file" / "sub"):
            pass


def test_the_same_agent_command_twice_at_once_is_refused(data, tmp_path):
    runs = tmp_path / "runs"
    folder = runs / f"td3_bc-{UMAZE}-real-seed0"
    holder = _hold(folder)
    try:
        proc = run_script("td3_bc.py", "--dataset", UMAZE, "--checkpoints_path", str(runs), *TINY,
                          env_extra=data["env"])
    finally:
        holder.kill()
        holder.wait()
    assert_user_error(proc, "in use by another process", f"pid {holder.pid}")
    assert sorted(p.name for p in folder.iterdir()) == [".lock"]  # nothing written by the refused run


def test_a_finished_agent_run_on_other_data_is_not_reported_as_this_one(data, tmp_path):
    runs = tmp_path / "runs"
    common = ("--dataset", UMAZE, "--checkpoints_path", str(runs), "--name", "run", *TINY)
    first = run_script("td3_bc.py", *common, "--diffusion.path", str(data["samples"]["a"]), env_extra=data["env"])
    assert first.returncode == 0, first.stderr
    same = run_script("td3_bc.py", *common, "--diffusion.path", str(data["samples"]["a"]), env_extra=data["env"])
    assert same.returncode == 0 and "finished run found" in same.stdout
    other = run_script("td3_bc.py", *common, "--diffusion.path", str(data["samples"]["b"]), env_extra=data["env"])
    assert_user_error(other, "finished run of another configuration or other data", "--overwrite")
    redo = run_script("td3_bc.py", *common, "--diffusion.path", str(data["samples"]["b"]), "--overwrite", "true",
                      env_extra=data["env"])
    assert redo.returncode == 0, redo.stderr


@pytest.mark.parametrize("content", [b"", b"garbage, not a checkpoint", b"PK\x03\x04truncated zip"])
def test_a_corrupted_agent_checkpoint_is_a_clear_error(data, tmp_path, content):
    runs = tmp_path / "runs"
    folder = runs / f"td3_bc-{UMAZE}-real-seed0"
    folder.mkdir(parents=True)
    (folder / "checkpoint.pt").write_bytes(content)
    proc = run_script("td3_bc.py", "--dataset", UMAZE, "--checkpoints_path", str(runs), *TINY, env_extra=data["env"])
    assert_user_error(proc, str(folder / "checkpoint.pt"), "unreadable", "--overwrite true")


def test_a_corrupted_diffusion_checkpoint_is_a_clear_error(data, tmp_path):
    run_dir = tmp_path / "pre"
    run_dir.mkdir()
    (run_dir / "checkpoint.pt").write_bytes(b"\x80\x02garbage")
    proc = run_script("train_diffuser.py", "--mode", "pretrain", "--public_datasets", UMAZE, "--run_dir", str(run_dir),
                      "--width", "16", "--depth", "1", "--train.max_steps", "5", "--progress", "false",
                      env_extra=data["env"])
    assert_user_error(proc, str(run_dir / "checkpoint.pt"), "unreadable")


def test_a_second_sweep_driver_on_the_same_root_is_refused(tmp_path):
    from synther.sweep import LocalExecutor, run_jobs

    holder = _hold(tmp_path, ".sweep.lock")
    try:
        with pytest.raises(UserError, match=f"in use by another process .*pid {holder.pid}.*sweep root"):
            run_jobs([], LocalExecutor(1), tmp_path / "sweep_state.json", echo=lambda s: None)
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's prctl")
def test_jobs_die_with_a_killed_sweep_driver(tmp_path):
    """kill -9 on the driver: its jobs (own sessions, so no terminal signal reaches them) get SIGTERM from the
    kernel instead of running on as orphans."""
    pid_file = tmp_path / "job.pid"
    driver = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from synther.sweep import Job, LocalExecutor, run_jobs
        prog = "import os, time\\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\\ntime.sleep(120)"
        job = Job("sleeper", "command", Path({str(tmp_path / 'job')!r}), [sys.executable, "-c", prog],
                  outputs=("never",))
        run_jobs([job], LocalExecutor(1), Path({str(tmp_path / 'state.json')!r}), echo=print, poll=0.05)
    """)
    proc = subprocess.Popen([sys.executable, "-c", driver], cwd=ROOT, env=script_env(), stdout=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not (pid_file.exists() and pid_file.read_text()) and time.time() < deadline:
        time.sleep(0.1)
    job_pid = int(pid_file.read_text())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.kill(job_pid, 0)
        except ProcessLookupError:
            break
        if Path(f"/proc/{job_pid}/stat").exists() and Path(f"/proc/{job_pid}/stat").read_text().split()[2] == "Z":
            break  # dead, waiting for init to reap it
        time.sleep(0.1)
    else:
        os.kill(job_pid, signal.SIGKILL)
        pytest.fail("the job outlived its killed driver")


def test_sigint_stops_a_sweep_started_with_sigint_ignored_and_its_jobs_stop_cleanly(tmp_path):
    """bash ignores SIGINT in commands it starts with `&`, and children inherit that: the sweep must still stop on
    `kill -INT`, and its jobs must get the SIGINT it sends them as KeyboardInterrupt, not wait for the SIGKILL."""
    pid_file, clean = tmp_path / "job.pid", tmp_path / "job.clean"
    driver = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from synther.sweep import Job, LocalExecutor, run_jobs
        prog = ("import os, time\\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\\n"
                "try:\\n    time.sleep(120)\\nexcept KeyboardInterrupt:\\n    open({str(clean)!r}, 'w').write('x')")
        job = Job("sleeper", "command", Path({str(tmp_path / 'job')!r}), [sys.executable, "-c", prog],
                  outputs=("never",))
        run_jobs([job], LocalExecutor(1), Path({str(tmp_path / 'state.json')!r}), echo=print, poll=0.05)
    """)
    proc = subprocess.Popen([sys.executable, "-c", driver], cwd=ROOT, env=script_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    deadline = time.time() + 60
    while not (pid_file.exists() and pid_file.read_text()) and time.time() < deadline:
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGINT)
    try:
        proc.wait(8)  # under the 10 s grace: a job that ignored the SIGINT would still be waited for
    except subprocess.TimeoutExpired:
        proc.kill()
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
        pytest.fail("the sweep ignored SIGINT, or waited for its job to be killed")
    assert clean.exists()  # the job saw KeyboardInterrupt
    assert '"interrupted"' in (tmp_path / "state.json").read_text()


def test_a_job_started_under_an_ignored_sigint_gets_it_back(tmp_path):
    """Whatever starts a job (a Ray worker, a driver that ignores SIGINT), the job must stop on SIGINT."""
    from synther.sweep.process import start_process

    prog = "import signal; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        proc, log = start_process([sys.executable, "-c", prog], tmp_path / "job.log", script_env())
        proc.wait(30)
        log.close()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert (tmp_path / "job.log").read_text().splitlines()[-1] == "True"


def test_an_output_path_under_a_regular_file_is_one_error_line(data, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a regular file where a folder should be")
    out = str(blocker / "sub")
    collect = run_script("collect_data.py", "--maze.name", "open", "--maze.num_steps", "50", "--out_dir", out,
                         "--progress", "false")
    assert_user_error(collect, out, "cannot write there", "Not a directory")
    fidelity = run_script("marginal.py", "--real", UMAZE, "--synthetic", str(data["samples"]["a"]), "--out_dir", out,
                          "--plot", "false", env_extra=data["env"])
    assert_user_error(fidelity, out, "cannot create the output folder", "Not a directory")  # refused at its lock
    agent = run_script("td3_bc.py", "--dataset", UMAZE, "--checkpoints_path", out, *TINY, env_extra=data["env"])
    assert_user_error(agent, "cannot create the run folder")
    assert blocker.read_text().startswith("a regular file")


def test_an_epsilon_label_the_samples_ledger_contradicts_is_refused(data, tmp_path):
    from synther.data import load_dataset

    ds = load_dataset(str(data["samples"]["a"]))
    labelled = {}
    for name, ledger in (("eps5", {"private": True, "target_epsilon": 5.0, "guarantee": "(5, 1e-06)-DP"}),
                         ("nodp", {"private": False, "guarantee": "NOT differentially private"})):
        labelled[name] = tmp_path / name / "samples.npz"
        ds.save(labelled[name], extra_metadata={"privacy_ledger": ledger})
    common = ("--dataset", UMAZE, "--checkpoints_path", str(tmp_path / "runs"), *TINY)
    wrong = run_script("td3_bc.py", *common, "--diffusion.path", str(labelled["eps5"]), "--dp_epsilon", "10",
                       env_extra=data["env"])
    assert_user_error(wrong, "--dp_epsilon 10", "target ε = 5")
    not_dp = run_script("td3_bc.py", *common, "--diffusion.path", str(labelled["nodp"]), "--dp_epsilon", "10",
                        env_extra=data["env"])
    assert_user_error(not_dp, "NOT differentially private")
    right = run_script("td3_bc.py", *common, "--diffusion.path", str(labelled["eps5"]), "--dp_epsilon", "5",
                       env_extra=data["env"])
    assert right.returncode == 0, right.stderr


def test_every_output_folder_refuses_a_second_writer(data, tmp_path):
    """Sampling, fidelity, membership inference and the baselines take the same folder lock as training runs: a
    held folder stops each script with one line naming the holder, and none of them writes into it."""
    pre = tmp_path / "pre"
    made = run_script("train_diffuser.py", "--mode", "pretrain", "--public_datasets", UMAZE, "--run_dir", str(pre),
                      "--width", "16", "--depth", "1", "--train.max_steps", "5", "--progress", "false",
                      env_extra=data["env"])
    assert made.returncode == 0, made.stderr
    out = tmp_path / "out"
    commands = {
        "sample": ("train_diffuser.py", "--mode", "sample", "--checkpoint", str(pre / "checkpoint.pt"),
                   "--run_dir", str(out), "--num_samples", "100", "--progress", "false"),
        "fidelity": ("marginal.py", "--real", UMAZE, "--synthetic", str(data["samples"]["a"]), "--out_dir", str(out),
                     "--plot", "false"),
        "mia": ("mia.py", "--mode", "attack", "--checkpoint", str(pre / "checkpoint.pt"), "--out_dir", str(out)),
        "white-box audit": ("mia.py", "--mode", "audit_dpsgd", "--epsilons", "1", "--out_dir", str(out)),
        "baseline": ("baselines.py", "--method", "mst", "--dataset", UMAZE, "--public_datasets", UMAZE,
                     "--run_dir", str(out)),
    }
    holder = _hold(out)
    try:
        for what, command in commands.items():
            proc = run_script(*command, env_extra=data["env"])
            assert_user_error(proc, "in use by another process", f"pid {holder.pid}")
            assert sorted(p.name for p in out.iterdir()) == [".lock"], what
    finally:
        holder.kill()
        holder.wait()
    sampled = run_script(*commands["sample"], env_extra=data["env"])  # the same command, once the folder is free
    assert sampled.returncode == 0, sampled.stderr
    assert (out / "samples.npz").exists()
    junk = tmp_path / "junk" / "checkpoint.pt"  # a bad checkpoint is refused before its folder is locked or written
    junk.parent.mkdir()
    junk.write_bytes(b"junk")
    assert_user_error(run_script("train_diffuser.py", "--mode", "sample", "--checkpoint", str(junk)),
                      "not a readable checkpoint")
    assert [p.name for p in junk.parent.iterdir()] == ["checkpoint.pt"]
