"""research.files: the one atomic write (old file or whole new one, umask mode, no leftover) and the one flock."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from research.files import flock, write_atomic


def test_a_write_replaces_the_file_whole_with_the_umasks_mode(tmp_path: Path) -> None:
    file = tmp_path / "summary.json"
    file.write_text("old")
    previous = os.umask(0o027)
    try:
        write_atomic(file, "new")
        write_atomic(tmp_path / "bytes.bin", b"\x00\x01")
        write_atomic(tmp_path / "written.txt", lambda handle: handle.write(b"by a function"))
    finally:
        os.umask(previous)
    assert file.read_text() == "new" and (tmp_path / "bytes.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "written.txt").read_text() == "by a function"
    assert file.stat().st_mode & 0o777 == 0o640  # 0o666 under the umask, as open() makes it (mkstemp: 0o600)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bytes.bin", "summary.json", "written.txt"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    file = tmp_path / "last.pt"
    file.write_text("intact")

    def fails_midway(handle) -> None:
        handle.write(b"half")
        raise KeyboardInterrupt  # a Ctrl-C (or a full disk) in the middle of the write

    with pytest.raises(KeyboardInterrupt):
        write_atomic(file, fails_midway)
    assert file.read_text() == "intact"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_flock_is_exclusive_across_processes_and_dropped_with_its_holder(tmp_path: Path) -> None:
    file = tmp_path / ".lock"
    hold = "from research.files import flock; import sys, time\nwith flock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-c", hold, str(file)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(BlockingIOError), flock(file, wait=False):
            pass
        with pytest.raises(BlockingIOError), flock(file, wait=False, shared=True):
            pass
    finally:
        holder.kill()
        holder.wait()
    with flock(file, wait=False):  # the kernel dropped it with its holder
        pass
