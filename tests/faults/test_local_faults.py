"""Faults injected into ``research train`` on this machine: kill -9, SIGTERM, Ctrl-C, two writers at
once, a diverging run. Each run is compared with an uninterrupted run of the same config: no epoch
record lost or written twice, and the resumed run ends bit-identical to it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from research.engine import checkpoint
from research.engine.run_dir import read_lives, read_summary

from .harness import STEPS, VALIDATION, Process, compare, last_line, reference_run, run_dir_of, start, wait_for_step, write_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return reference_run(tmp_path_factory.mktemp("reference"))


def test_kill_9_loses_nothing_and_the_stale_lock_is_taken_over(tmp_path: Path, reference: Path, ledger) -> None:
    path = write_run(tmp_path, train={"checkpoint_every_steps": 4})
    run_dir = run_dir_of(path)
    process = start(path)
    wait_for_step(run_dir, STEPS + 6, process)  # inside the second epoch, past a mid-epoch checkpoint
    os.killpg(process.popen.pid, signal.SIGKILL)
    process.finish()
    assert json.loads((run_dir / ".lock").read_text())["pid"] == process.popen.pid  # left behind by the dead holder

    status, _, err = start(path, tag="resume").finish()
    assert status == 0, err
    assert f"took over the lock left by pid {process.popen.pid}" in err
    assert "resumed at epoch 1, step" in err
    outcome = compare(run_dir, reference)
    ledger.record("kill -9", survived=status == 0, lost_or_duplicated=outcome.records_off, identical=outcome.identical)
    assert outcome.records_off == 0 and outcome.identical


@pytest.mark.parametrize(
    ("fault", "signum", "exit_status", "workers"),
    [("SIGTERM", signal.SIGTERM, 143, 0), ("Ctrl-C (SIGINT)", signal.SIGINT, 130, 2)],
)
def test_a_stop_signal_saves_the_last_step_in_one_line_and_resumes_bit_identical(
    tmp_path: Path, reference: Path, ledger, fault: str, signum: int, exit_status: int, workers: int
) -> None:
    # Ctrl-C reaches the whole process group, the loader's workers included; the reference ran with none.
    path = write_run(tmp_path, loader={"workers": workers})
    run_dir = run_dir_of(path)
    process = start(path)
    wait_for_step(run_dir, STEPS + 5, process)
    os.killpg(process.popen.pid, signum)
    status, _, err = process.finish()
    assert status == exit_status, err
    assert "Traceback" not in err, err
    assert last_line(err).startswith(f"research train: stopped by {signal.Signals(signum).name} after step "), err
    saved = checkpoint.load(run_dir / "last.pt")
    assert saved["epoch"] == 1 and 0 < saved["epoch_step"] < STEPS  # the last finished step, mid-epoch
    assert f"after step {saved['step']} " in last_line(err)
    assert read_summary(run_dir)["status"] == "stopped"

    status, _, err = start(path, tag="resume").finish()
    assert status == 0, err
    assert f"resumed at epoch 1, step {saved['step']}" in err
    outcome = compare(run_dir, reference)
    ledger.record(fault, survived=status == 0, lost_or_duplicated=outcome.records_off, identical=outcome.identical)
    assert outcome.records_off == 0 and outcome.identical
    assert [life["life"] for life in read_lives(run_dir)] == [1, 2]


def test_two_writers_on_one_run_dir_train_it_once(tmp_path: Path, ledger) -> None:
    epochs = 12  # long enough that the second writer, started once the first trains, finds it training
    path = write_run(tmp_path, train={"epochs": epochs})
    run_dir = run_dir_of(path)
    first = start(path, tag="first")
    wait_for_step(run_dir, 1, first)
    status, _, err = start(path, tag="second").finish()
    assert status == 2, err
    assert f"another process trains this run (pid {first.popen.pid} on " in last_line(err)
    assert "Traceback" not in err
    assert first.finish()[0] == 0
    outcome = compare(run_dir, run_dir, epochs=epochs)  # against itself: only lost or doubled records count
    ledger.record("concurrent writers", survived=True, lost_or_duplicated=outcome.records_off, identical=None)
    assert outcome.records_off == 0
    assert len(read_lives(run_dir)) == 1


def test_a_diverging_run_is_never_saved_nor_done_and_its_records_are_strict_json(tmp_path: Path, ledger) -> None:
    path = write_run(tmp_path, optim={"lr": 1e6}, train={"checkpoint_every_steps": 2})
    run_dir = run_dir_of(path)
    status, _, err = start(path).finish()
    assert status == 1, err
    assert "Traceback" not in err and "not finite" in last_line(err), err
    assert read_summary(run_dir)["status"] == "failed"
    for name in ("last.pt", "best.pt"):  # a checkpoint written before the loss went non-finite is finite
        if (run_dir / name).exists():
            weights = checkpoint.load(run_dir / name)["model"]
            assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())

    def strict(text: str) -> None:
        for line in text.splitlines():
            json.loads(line, parse_constant=lambda constant: pytest.fail(f"bare {constant} in a JSON line"))

    for name in ("metrics.jsonl", "log.jsonl", "lives.jsonl"):
        if (run_dir / name).exists():
            strict((run_dir / name).read_text())
    ledger.record("NaN", survived=read_summary(run_dir)["status"] != "done", identical=None)


def test_a_torn_metrics_line_and_an_empty_summary_are_recovered_with_a_warning(tmp_path: Path, reference: Path, ledger) -> None:
    path = write_run(tmp_path)
    run_dir = run_dir_of(path)
    process = start(path)
    wait_for_step(run_dir, 2 * STEPS + 3, process)  # the first two epochs recorded
    os.killpg(process.popen.pid, signal.SIGKILL)
    process.finish()
    # what a crash while writing both files leaves: the last line cut short, the summary emptied
    with open(run_dir / "metrics.jsonl", "a") as handle:
        handle.write('{"epoch": 3, "train/epoch_lo')
    (run_dir / "summary.json").write_text("")

    expand = subprocess.run(
        [sys.executable, "-m", "research.cli", "expand", str(path)], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert expand.returncode == 0 and "Traceback" not in expand.stderr, expand.stderr
    assert "summary.json: not a summary" in expand.stderr

    status, _, err = start(path, tag="resume").finish()
    assert status == 0 and "Traceback" not in err, err
    assert "metrics.jsonl: line 3 is cut short" in err
    outcome = compare(run_dir, reference)
    ledger.record("torn metrics line, empty summary", survived=status == 0, lost_or_duplicated=outcome.records_off, identical=outcome.identical)
    assert outcome.records_off == 0 and outcome.identical
    assert read_summary(run_dir)["status"] == "done"


ARCHIVE = Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar10-jpeg.tar.xz"


def _extracting(cache: Path) -> list[Path]:
    return sorted(cache.glob(".cifar10-*-extracting-*")) if cache.is_dir() else []


def _start_extracting(path: Path, cache: Path, tag: str) -> tuple[Process, Path]:
    """``research train`` on CIFAR-10 with an empty cache, once its extraction has begun."""
    before = set(_extracting(cache))
    process = start(path, tag=tag)
    deadline = time.monotonic() + 120
    while not (new := [p for p in _extracting(cache) if p not in before]) or not any(new[0].rglob("*.jpg")):
        if process.popen.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"no extraction under way in {cache}:\n{process.err.read_text()}")
        time.sleep(0.05)
    return process, new[0]


def test_a_stop_during_the_first_extraction_is_prompt_and_leaves_nothing(tmp_path: Path, ledger) -> None:
    assert ARCHIVE.is_file(), f"the CIFAR-10 archive is expected at {ARCHIVE}"
    cache = tmp_path / "cache"
    path = write_run(tmp_path)
    config = yaml.safe_load(path.read_text())
    config["data"] = {"name": "cifar10_jpeg", "archive": str(ARCHIVE), "cache_dir": str(cache)}
    path.write_text(yaml.safe_dump(config))
    run_dir = run_dir_of(path)

    killed, left = _start_extracting(path, cache, "killed")  # scancel's SIGKILL: a partial folder stays
    os.killpg(killed.popen.pid, signal.SIGKILL)
    killed.finish()
    assert left.exists()

    process, extracting = _start_extracting(path, cache, "stopped")
    assert not left.exists()  # the dead extraction's folder, removed by the next one
    sent = time.monotonic()
    os.killpg(process.popen.pid, signal.SIGTERM)
    while "stopped by SIGTERM" not in process.err.read_text() and process.popen.poll() is None:
        time.sleep(0.02)
    took = time.monotonic() - sent  # to the stop line, its folder removed; the interpreter's exit follows
    status, _, err = process.finish()
    assert status == 143 and "Traceback" not in err, err
    assert last_line(err).startswith("research train: stopped by SIGTERM while preparing the data"), err
    assert took < 3, f"{took:.1f}s from SIGTERM to the stop line"  # 0.1-0.3s here under load; was the whole extraction
    assert _extracting(cache) == [] and not extracting.exists()
    summary = read_summary(run_dir)
    assert summary["status"] == "stopped" and summary["stopped_by"] == "SIGTERM"
    ledger.record("kill -9, then SIGTERM during the first extraction", survived=took < 3 and not _extracting(cache), identical=None)


def test_temporary_files_of_saves_a_kill_cut_short_are_removed_at_the_next_start(tmp_path: Path, reference: Path, ledger) -> None:
    path = write_run(tmp_path, train={"checkpoint_every_steps": 1})  # a save after every step: kills land in saves
    run_dir = run_dir_of(path)
    process = start(path)
    wait_for_step(run_dir, STEPS + 6, process)
    os.killpg(process.popen.pid, signal.SIGKILL)
    process.finish()
    # what kills inside research.files.write_atomic leave (the kill above may or may not have landed in one)
    for name in (".last.pt.0badcafe.tmp", ".last.prev.pt.12345678.tmp", ".best.pt.deadbeef.tmp", ".summary.json.tmp"):
        (run_dir / name).write_bytes(b"\0" * 1000)
    (run_dir / "notes.tmp").write_text("not ours: kept")

    status, _, err = start(path, tag="resume").finish()
    assert status == 0, err
    assert sorted(p.name for p in run_dir.glob("*.tmp")) == ["notes.tmp"], err
    assert "removed" in err and "temporary file(s) left by writes a kill cut short" in err
    outcome = compare(run_dir, reference)
    ledger.record("kill -9 during saves", survived=status == 0, lost_or_duplicated=outcome.records_off, identical=outcome.identical)
    assert outcome.records_off == 0 and outcome.identical


@pytest.fixture(scope="module")
def ddp_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = write_run(tmp_path_factory.mktemp("ddp_reference"))
    status, _, err = start(path, "--nproc", "2", tag="reference").finish(timeout_s=400)
    assert status == 0, err
    return run_dir_of(path)


@pytest.mark.parametrize(
    ("fault", "signum", "exit_status", "group"),
    [("--nproc 2: Ctrl-C", signal.SIGINT, 130, True), ("--nproc 2: SIGTERM to the launcher", signal.SIGTERM, 143, False)],
)
def test_a_stop_signal_under_nproc_saves_the_step_on_every_rank_and_resumes(
    tmp_path: Path, ddp_reference: Path, ledger, fault: str, signum: int, exit_status: int, group: bool
) -> None:
    """Ctrl-C reaches the launcher and its workers (the terminal signals the process group); a
    ``kill`` reaches the launcher alone."""
    path = write_run(tmp_path)
    run_dir = run_dir_of(path)
    process = start(path, "--nproc", "2")
    steps = STEPS // 2  # two ranks share each epoch
    wait_for_step(run_dir, steps + 3, process, timeout_s=300)
    if group:
        os.killpg(process.popen.pid, signum)
    else:
        os.kill(process.popen.pid, signum)
    status, _, err = process.finish(timeout_s=300)
    assert status == exit_status and "Traceback" not in err, err
    name = signal.Signals(signum).name if group else "SIGTERM"
    assert last_line(err).startswith(f"research train: stopped by {name} after step "), err
    saved = checkpoint.load(run_dir / "last.pt")
    assert saved["epoch"] == 1 and 0 < saved["epoch_step"] < steps, (saved["epoch"], saved["epoch_step"])
    assert f"after step {saved['step']} " in last_line(err)

    status, _, err = start(path, "--nproc", "2", tag="resume").finish(timeout_s=400)
    assert status == 0, err
    assert f"resumed at epoch 1, step {saved['step']}" in err
    outcome = compare(run_dir, ddp_reference, keys=VALIDATION)  # under DDP the resumed epoch's loss counts rank 0's earlier steps
    ledger.record(fault, survived=status == 0, lost_or_duplicated=outcome.records_off, identical=outcome.identical)
    assert outcome.records_off == 0 and outcome.identical
