"""One writer per checkpoint folder: a lock file beside it, held for the whole run.

`.NAME.lock` sits next to the folder NAME (not inside: a save replaces the folder). It is held
with `flock`, so the kernel releases it when its process dies, however it dies; the file also
records who holds it (pid, host, start time, command) so a refusal can name the other run.
A lock file left by a dead process is taken over, and the caller is told.
"""
from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
import sys
from pathlib import Path


class LockedError(RuntimeError):
    """Another live run holds the lock; the message names it."""


def lock_path(folder: Path) -> Path:
    return folder.with_name(f".{folder.name}.lock")


class RunLock:
    """`with RunLock(folder) as lock:` — refuses at once (LockedError) if another run holds
    `folder`; `lock.note` says when a stale lock of a dead run was taken over."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = lock_path(self.folder)
        self.note: str | None = None
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)  # the umask decides the mode
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _describe(_read(fd))
                os.close(fd)
                raise LockedError(f"{self.folder} is being written by another run "
                                  f"({holder})") from None
            try:  # the file may have been removed and recreated by its last holder meanwhile
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _read(fd)
        if previous:
            self.note = (f"took over the lock {self.path.name} left by a run that is no longer "
                         f"running ({_describe(previous)})")
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                "command": " ".join(sys.argv)[:500]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
            os.close(self._fd)  # releases the flock
            self._fd = None


def is_locked(folder: str | os.PathLike) -> bool:
    """Whether a live run holds `folder`'s lock (checked without taking it for long)."""
    try:
        fd = os.open(lock_path(Path(folder)), os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops the shared lock, if it was taken


def _read(fd: int) -> dict:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace") or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _describe(info: dict) -> str:
    if not info:
        return "no details recorded"
    parts = [f"pid {info.get('pid', '?')} on {info.get('host', '?')}",
             f"started {info.get('started', '?')}"]
    if info.get("command"):
        parts.append(f"command: {str(info['command'])[:200]}")
    return ", ".join(str(p) for p in parts)
