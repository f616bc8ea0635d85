"""The one atomic write and the one file lock of the package.

Every file a reader may open at any moment (a checkpoint, ``summary.json``, a decoded-image cache, ...)
is written by :func:`write_atomic`, with one set of rules: the bytes go to ``.<name>.<8 hex>.tmp`` in
the same folder (a rename within one file system is atomic), flushed and fsynced before the rename, so
a crash leaves the old file or the whole new one; the mode follows the umask, as any file the user
writes (teammates on a shared cluster read it); a failed write removes the temporary file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, BinaryIO


def write_atomic(file: Path, content: str | bytes | Callable[[BinaryIO], None]) -> None:
    """Replace ``file`` with ``content`` (text as UTF-8, bytes, or a function writing to the open file)."""
    file = Path(file)
    tmp = file.with_name(f".{file.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        # os.open applies the umask to 0o666, as open() does; tempfile.mkstemp would force 0o600
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as handle:
            if callable(content):
                content(handle)
            else:
                handle.write(content.encode() if isinstance(content, str) else content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, file)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def flock(file: Path, *, wait: bool = True, shared: bool = False) -> Iterator[IO[str]]:
    """Hold a ``flock`` on ``file`` (created if missing) inside the block; yields the open file.

    The kernel drops the lock when its holder dies, ``kill -9`` included (NFS maps it to POSIX record
    locks, which Linux clients support). ``wait=False``: raise :class:`BlockingIOError` at once when
    another process holds it. ``shared``: a shared lock (to ask whether anyone holds the exclusive one).
    """
    with open(file, "a+") as handle:
        fcntl.flock(handle.fileno(), (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB))
        yield handle  # closing the file drops the lock
