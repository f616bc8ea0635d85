"""A real tmpfs of a given size, for the full-disk and read-only faults (needs root, as CI has):
``with tmpfs(tmp_path / "disk", "1m") as mount: ...`` (importable by name, as ``tiny`` is)."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` (``1m``, ``4m``) at ``mount`` (made here), unmounted on the way out."""
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True)
    if done.returncode:
        pytest.fail(f"cannot mount a tmpfs here (the fault-injection tests run as root): {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)
