"""Exclusive OS locks on run folders: one process writes into a folder at a time.

The lock is `flock` on `<folder>/<name>`, held by an open file descriptor, so the kernel drops it when the process
exits however it dies (kill -9 included): nothing is ever judged stale by guessing from a PID. The file keeps the
holder's host and PID only so the refusal can name them. Across machines (a Ray cluster's shared folder) the lock
holds where the filesystem implements flock: Linux emulates it with byte-range locks on NFS, Lustre needs
`-o flock`; elsewhere each machine is guarded separately.
"""
from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path
from typing import Any

from synther.errors import UserError

LOCK_NAME = ".lock"


class FolderLock:
    """`with FolderLock(run_dir):` — refuse (UserError, naming the holder) if another process holds the folder;
    with `wait=True`, wait for it instead."""

    def __init__(self, folder: str | os.PathLike, name: str = LOCK_NAME, what: str = "run folder",
                 wait: bool = False) -> None:
        self.folder, self.path, self.what, self.wait = Path(folder), Path(folder) / name, what, wait
        self._fd: int | None = None
        self._created = False

    def __enter__(self) -> "FolderLock":
        if self.folder.exists() and not self.folder.is_dir():
            raise UserError(f"{self.folder}: not a folder (a file is in the way of the {self.what})")
        self._created = not self.folder.exists()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except (FileExistsError, NotADirectoryError) as e:
            raise UserError(f"{self.folder}: cannot create the {self.what} ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UserError(f"{self.folder} is in use by another process ({holder}): wait for it to finish, "
                            f"or use another {self.what}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"host {socket.gethostname()} pid {os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if self._fd is None:
            return
        # a run that failed before writing anything leaves no folder behind (it made the folder, and holds it)
        if exc_type is not None and self._created and [p.name for p in self.folder.iterdir()] == [self.path.name]:
            self.path.unlink()
            self.folder.rmdir()
        # otherwise the file stays: unlinking a lock file races with a process about to take it
        os.close(self._fd)
        self._fd = None
