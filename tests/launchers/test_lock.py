"""One writer per run dir: the lock names its holder, dies with it, and is taken once (its holder's children are refused too)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tmpfs import tmpfs

from research.cli import main
from research.launch.run_check import RunDirBusy, holder, run_dir_lock, set_aside

HOLD = "from research.launch.run_check import run_dir_lock; import sys, time\nwith run_dir_lock(sys.argv[1], job_id='77'):\n    print('held', flush=True); time.sleep(60)"


def hold_in_another_process(run_dir: Path) -> subprocess.Popen[str]:
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "held"
    return process


def test_a_second_writer_is_refused_naming_the_holder_and_the_run_is_not_moved_aside(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    process = hold_in_another_process(run_dir)
    try:
        assert holder(run_dir)["pid"] == process.pid
        with pytest.raises(RunDirBusy, match=rf"pid {process.pid} on .*SLURM job 77"):
            with run_dir_lock(run_dir):
                pass
        with pytest.raises(RunDirBusy, match="stop it before replacing"):
            set_aside(run_dir)
        assert run_dir.exists()
    finally:
        process.kill()
        process.wait()


def test_the_lock_of_a_killed_holder_is_taken_over_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run_dir = tmp_path / "run"
    process = hold_in_another_process(run_dir)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert holder(run_dir) is None  # the kernel dropped the flock with its holder
    with caplog.at_level(logging.WARNING), run_dir_lock(run_dir):
        assert holder(run_dir)["pid"] == os.getpid()
    assert f"took over the lock left by pid {process.pid}" in caplog.text
    with run_dir_lock(run_dir):  # released cleanly: nothing to take over
        pass
    assert caplog.text.count("took over") == 1


def test_the_lock_is_taken_once_and_its_holders_children_are_refused_too(tmp_path: Path) -> None:
    """One lock per run, taken by the process that trains (rank 0 under --nproc), with no way around it."""
    run_dir = tmp_path / "run"
    with run_dir_lock(run_dir):
        child = subprocess.run(
            [sys.executable, "-c", "from research.launch.run_check import run_dir_lock; import sys\nwith run_dir_lock(sys.argv[1]): print('ok')", str(run_dir)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert child.returncode != 0 and child.stdout == "", child.stdout
        assert f"another process trains this run (pid {os.getpid()} on " in child.stderr
    started = time.monotonic()
    with run_dir_lock(run_dir):
        assert time.monotonic() - started < 5


@pytest.fixture
def read_only_disk(tmp_path: Path) -> Iterator[Path]:
    """A real tmpfs holding ``runs/tiny`` (an empty run dir), remounted read-only (needs root, as the
    fault-injection CI job has; root writes through a chmod, not through a read-only mount)."""
    with tmpfs(tmp_path / "disk", "1m") as mount:
        (mount / "runs" / "tiny").mkdir(parents=True)
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        yield mount


@pytest.mark.parametrize("where", ["the run dir", "its parent"])
def test_a_read_only_run_dir_is_one_line_naming_it(read_only_disk: Path, experiment, capsys, where: str) -> None:
    run_dir = read_only_disk / "runs" / ("tiny" if where == "the run dir" else "new")
    path = experiment("tiny", output_dir=str(read_only_disk / "runs"), name=run_dir.name)
    status = main(["train", str(path)])
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err, err
    (line,) = err.strip().splitlines()
    assert line.startswith(f"research train: error: {run_dir}: cannot write the run dir (Read-only file system)"), line
    assert "output_dir" in line
