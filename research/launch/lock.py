"""One writer per run dir: an advisory lock held for the life of the process that trains the run.

The lock is ``flock`` on ``<run dir>/.lock`` (NFS maps it to POSIX record locks, which Linux clients
support). The kernel drops it when its holder dies, ``kill -9`` included, so a lock left by a dead
process is simply taken over: the file then still names the old holder, which is logged. The file
names the holder (pid, host, SLURM job) for the error a second writer gets.

The lock belongs to a process tree: a launcher that holds it for a run exports
``RESEARCH_RUN_LOCK=<run dir>`` to the processes it starts (``--nproc`` DDP workers), which then
know they run under it and do not lock again.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from research.config import ConfigError
from research.engine.checkpoint import writing

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
HELD_ENV = "RESEARCH_RUN_LOCK"  # the run dir a parent process holds the lock of


class RunDirBusy(ConfigError):
    """Another process trains this run dir (bad input: exit 2, naming the holder)."""


class RunDirNotWritable(ConfigError):
    """The run dir cannot be written (read-only folder or file system): bad input, exit 2."""


@contextlib.contextmanager
def run_dir_lock(run_dir: Path, *, job_id: str | None = None) -> Iterator[None]:
    """Hold ``run_dir``'s lock inside the block; raise :class:`RunDirBusy` if another process holds it."""
    run_dir = Path(run_dir).resolve()
    if os.environ.get(HELD_ENV) == str(run_dir):  # a launcher above this process holds it
        yield
        return
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = open(run_dir / LOCK_FILE, "a+")  # noqa: SIM115  (held until the block ends)
    except (PermissionError, OSError) as exc:
        if not isinstance(exc, PermissionError) and exc.errno != errno.EROFS:
            raise
        raise RunDirNotWritable(
            f"{run_dir}: cannot write the run dir ({exc.strerror}); make it writable (chmod u+w on it and its "
            "files), or set output_dir to a folder you can write"
        ) from None
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirBusy(
                f"{run_dir}: another process trains this run ({describe(_read(handle))}); wait for it to end, "
                "stop it, or give this run another name, variant or output_dir"
            ) from None
        previous = _read(handle)
        if previous:  # a holder that ended without releasing: killed (kill -9, node failure)
            log.warning("%s: took over the lock left by %s, which is no longer running", run_dir, describe(previous))
        with writing(run_dir / LOCK_FILE):  # a full disk: one line naming the file
            _write(handle, {"pid": os.getpid(), "host": socket.gethostname(), "job_id": job_id, "since": round(time.time(), 3)})
        saved = os.environ.get(HELD_ENV)
        os.environ[HELD_ENV] = str(run_dir)
        try:
            yield
        finally:
            _restore_env(saved)
            _write(handle, None)  # released cleanly: the next holder has nothing to take over (truncating needs no space)
    finally:
        handle.close()  # drops the flock


def holder(run_dir: Path) -> dict[str, Any] | None:
    """Who holds ``run_dir``'s lock now, or None when nobody does."""
    file = Path(run_dir) / LOCK_FILE
    if not file.exists():
        return None
    with open(file, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read(handle) or {}
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return None


def describe(record: dict[str, Any] | None) -> str:
    if not record:
        return "holder unknown"
    job = f", SLURM job {record['job_id']}" if record.get("job_id") else ""
    return f"pid {record.get('pid')} on {record.get('host')}{job}"


def _read(handle: IO[str]) -> dict[str, Any] | None:
    handle.seek(0)
    try:
        record = json.loads(handle.read() or "null")
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def _write(handle: IO[str], record: dict[str, Any] | None) -> None:
    # Unbuffered: a write that fails (a full disk) must not fail again when the handle is closed.
    fd = handle.fileno()
    os.ftruncate(fd, 0)
    if record is not None:
        os.write(fd, json.dumps(record).encode())  # the file is opened for appending: at offset 0 once truncated


def _restore_env(saved: str | None) -> None:
    if saved is None:
        os.environ.pop(HELD_ENV, None)
    else:
        os.environ[HELD_ENV] = saved
