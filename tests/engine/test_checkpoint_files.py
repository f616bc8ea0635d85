"""Faults on checkpoint files lose nothing (issue 17, sections 3 and 4): a damaged ``last.pt`` falls back
to the previous one, a full disk says so and keeps the old file, files follow the umask, ``research
eval`` refuses a wrong file in one line, and a diverged run never saves non-finite weights."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from run_dirs import write_config
from tmpfs import tmpfs

from research.cli import main
from research.config import load_run
from research.engine import checkpoint
from research.engine.run_dir import RunDir, read_metrics
from research.launch.train import train
from research.registry import MODELS
from research.safe_load import CheckpointError

from .conftest import Interrupt, interrupt_at
from .test_safe_load import error_line


def training_state(epoch: int) -> dict[str, object]:
    return {"model": {"w": torch.full((2,), float(epoch))}, "optimizer": {}, "epoch": epoch, "step": epoch, "rng": {}}


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# --- a damaged last.pt ---------------------------------------------------------------------------------


def test_saving_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    last, previous = tmp_path / checkpoint.LAST, tmp_path / checkpoint.PREVIOUS
    checkpoint.save_atomic(training_state(1), last, previous=previous)
    assert not previous.exists()
    checkpoint.save_atomic(training_state(2), last, previous=previous)
    assert checkpoint.load(last)["epoch"] == 2 and checkpoint.load(previous)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint.PREVIOUS, checkpoint.LAST]  # no temporaries


@pytest.mark.parametrize("damage", [truncate, lambda path: path.write_bytes(b"\x00garbage")], ids=["truncated", "garbage"])
def test_a_damaged_last_pt_falls_back_to_the_previous_one(tmp_path: Path, damage, caplog) -> None:
    run_dir = RunDir(tmp_path, config={})
    checkpoint.save_atomic(training_state(1), run_dir.last, previous=tmp_path / checkpoint.PREVIOUS)
    checkpoint.save_atomic(training_state(2), run_dir.last, previous=tmp_path / checkpoint.PREVIOUS)
    damage(run_dir.last)

    assert run_dir.resume_point()["epoch"] == 1
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert f"checkpoint {run_dir.last}: not a readable PyTorch checkpoint" in warning
    assert f"resuming from the previous checkpoint {tmp_path / checkpoint.PREVIOUS}" in warning


def test_the_damaged_file_never_becomes_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    run_dir = RunDir(tmp_path, config={})
    checkpoint.save_atomic(training_state(1), run_dir.last, previous=tmp_path / checkpoint.PREVIOUS)
    checkpoint.save_atomic(training_state(2), run_dir.last, previous=tmp_path / checkpoint.PREVIOUS)
    truncate(run_dir.last)
    saved = run_dir.resume_point()

    class State:
        def state_dict(self, config: dict) -> dict:
            return {**saved, "epoch": 3}

    run_dir.save(State())  # type: ignore[arg-type]
    assert checkpoint.load(run_dir.last)["epoch"] == 3
    assert checkpoint.load(tmp_path / checkpoint.PREVIOUS)["epoch"] == 1  # not the truncated epoch-2 file


def test_no_intact_checkpoint_is_one_line_naming_the_file(experiment, capsys) -> None:
    path = experiment()
    run = load_run(path)
    write_config(run)
    last = run.run_dir / checkpoint.LAST
    last.write_bytes(b"PK\x03\x04 half a zip")
    line = error_line(capsys, main(["train", str(path)]), "train")
    assert f"checkpoint {last}: not a readable PyTorch checkpoint" in line and "--force" in line


def test_a_truncated_last_pt_resumes_from_the_previous_one_bit_identically(experiment, ledger) -> None:
    options = {"epochs": 2, "checkpoint_every_steps": 2, "progress": False, "log_every_steps": 2}
    straight = load_run(experiment("straight", train=options))
    train(straight)
    resumed = load_run(experiment("resumed", train=options))
    with pytest.raises(Interrupt):
        train(resumed, on_loop=interrupt_at(1))
    truncate(resumed.run_dir / checkpoint.LAST)  # the end-of-epoch-1 checkpoint

    assert train(resumed)["status"] == "done"
    a, b = read_metrics(straight.run_dir)[-1], read_metrics(resumed.run_dir)[-1]
    epochs = [m["epoch"] for m in read_metrics(resumed.run_dir)]
    identical = all(a[key] == b[key] for key in ("train/epoch_loss", "val/loss", "val/top1"))
    lost_or_duplicated = len({1, 2} - set(epochs)) + len(epochs) - len(set(epochs))
    ledger.record("corrupt checkpoint", survived=True, lost_or_duplicated=lost_or_duplicated, identical=identical)
    assert epochs == [1, 2] and identical


def test_a_checkpoint_of_the_older_engine_still_resumes(tmp_path: Path) -> None:
    """Before issue 17 the numpy RNG state was pickled as numpy's own array: still plain data, still read."""
    np.random.seed(3)
    expected = np.random.get_state()
    torch.save({**training_state(1), "rng": {**checkpoint.rng_states(), "numpy": expected}}, tmp_path / checkpoint.LAST)
    np.random.seed(4)
    _, saved = checkpoint.load_latest(tmp_path)
    checkpoint.restore_rng_states(saved["rng"])
    assert np.array_equal(np.random.get_state()[1], expected[1]) and np.random.get_state()[2] == expected[2]


def test_rng_states_are_saved_as_tensors_and_plain_data(tmp_path: Path) -> None:
    np.random.seed(5)
    torch.save({"rng": checkpoint.rng_states()}, tmp_path / "rng.pt")
    assert torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / "rng.pt") == []
    draws = np.random.rand(3)
    np.random.seed(6)
    checkpoint.restore_rng_states(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])  # no allow-list needed
    assert np.array_equal(np.random.rand(3), draws)


# --- a full disk, file modes ---------------------------------------------------------------------------


def test_a_full_disk_is_one_line_and_keeps_the_old_checkpoint(tmp_path: Path, monkeypatch) -> None:
    """What torch's writer raises when a write fails for lack of space: a RuntimeError over the OSError."""
    target = tmp_path / checkpoint.LAST
    checkpoint.save_atomic(training_state(1), target)

    def full_disk(obj: object, handle: object) -> None:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:  # torch's writer raises over the failed write: the OSError is only the context
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 393472 vs 393360")  # noqa: B904

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match=rf"cannot write checkpoint {target}: no space left") as info:
        checkpoint.save_atomic(training_state(2), target)
    monkeypatch.undo()
    assert "\n" not in str(info.value) and "unexpected pos" not in str(info.value)
    assert checkpoint.load(target)["epoch"] == 1 and [p.name for p in tmp_path.iterdir()] == [checkpoint.LAST]


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB tmpfs (needs root, as the fault-injection CI job has)."""
    with tmpfs(tmp_path / "disk", "1m") as mount:
        yield mount


@pytest.mark.slow
def test_a_really_full_disk(tiny_disk: Path, ledger) -> None:
    target, previous = tiny_disk / checkpoint.LAST, tiny_disk / checkpoint.PREVIOUS
    checkpoint.save_atomic({**training_state(1), "model": {"w": torch.zeros(50_000)}}, target, previous=previous)
    with pytest.raises(CheckpointError, match=rf"cannot write checkpoint {target}: no space left"):
        checkpoint.save_atomic({**training_state(2), "model": {"w": torch.zeros(500_000)}}, target, previous=previous)
    intact = checkpoint.load(target)["epoch"] == 1
    ledger.record("full disk", survived=intact)
    assert intact and os.listdir(tiny_disk) == [checkpoint.LAST]
    assert shutil.disk_usage(tiny_disk).used < 300_000  # the half-written file was removed


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_checkpoints_follow_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        run_dir = RunDir(tmp_path, config={})

        class State:
            def state_dict(self, config: dict) -> dict:
                return training_state(1)

        run_dir.save(State(), best=True)  # type: ignore[arg-type]
        run_dir.save(State())  # type: ignore[arg-type]
    finally:
        os.umask(old)
    for name in (checkpoint.LAST, checkpoint.PREVIOUS, checkpoint.BEST):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


# --- research eval on the wrong file -------------------------------------------------------------------


def test_eval_refuses_a_directory(experiment, capsys, tmp_path: Path) -> None:
    line = error_line(capsys, main(["eval", str(experiment()), f"checkpoint={tmp_path}"]), "eval")
    assert f"checkpoint {tmp_path}: is a directory" in line


def test_eval_refuses_a_corrupt_file(experiment, capsys, tmp_path: Path) -> None:
    path = tmp_path / "best.pt"
    checkpoint.save_atomic(training_state(1), path)
    truncate(path)
    line = error_line(capsys, main(["eval", str(experiment()), f"checkpoint={path}"]), "eval")
    assert f"checkpoint {path}: not a readable PyTorch checkpoint, truncated or corrupt" in line


def test_eval_names_both_models_and_the_first_keys_that_differ(experiment, capsys, tmp_path: Path) -> None:
    other = MODELS.build("deit_nano_distilled_patch4_32", num_classes=4)
    path = tmp_path / "other.pt"
    torch.save({"model": other.state_dict(), "config": {"model": {"name": "deit_nano_distilled_patch4_32"}}}, path)
    line = error_line(capsys, main(["eval", str(experiment()), f"checkpoint={path}"]), "eval")
    assert f"checkpoint {path} holds model 'deit_nano_distilled_patch4_32', the experiment builds 'deit_nano_patch4_32'" in line
    assert "unexpected dist_token" in line


# --- a diverged run ------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 4 MiB tmpfs: room for two checkpoints of the tiny run, not three (needs root)."""
    with tmpfs(tmp_path / "small", "4m") as mount:
        yield mount


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    (line,) = err.strip().splitlines()
    return line


@pytest.mark.slow
def test_a_run_whose_disk_fills_stops_in_one_line_and_resumes_once_there_is_room(
    small_disk: Path, experiment, capsys, ledger
) -> None:
    reference = load_run(experiment("full", train={"epochs": 3}))
    train(reference)
    path = experiment("full", output_dir=str(small_disk / "runs"), train={"epochs": 3})
    run_dir = load_run(path).run_dir

    assert main(["train", str(path)]) == 1  # room for last.pt, last.prev.pt and best.pt: a third one fails
    line = _one_line(capsys)
    assert line.startswith(f"research train: error: cannot write checkpoint {run_dir}/"), line
    assert "no space left on the device" in line
    assert checkpoint.load(run_dir / "last.pt")["epoch"] in (1, 2)  # the last intact checkpoint
    assert not list(run_dir.glob("*.tmp")), sorted(p.name for p in run_dir.iterdir())

    with open(small_disk / "filler", "wb") as handle:  # now not a byte left: the first write of a life fails
        with pytest.raises(OSError):
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
    assert main(["train", str(path)]) == 1
    line = _one_line(capsys)
    assert line.startswith(f"research train: error: cannot write {run_dir}/") and "no space left" in line, line
    assert not list(run_dir.glob("*.tmp")), sorted(p.name for p in run_dir.iterdir())

    (small_disk / "filler").unlink()
    subprocess.run(["mount", "-o", "remount,size=16m", str(small_disk)], check=True)
    assert main(["train", str(path)]) == 0
    epochs = [m["epoch"] for m in read_metrics(run_dir) if "val/top1" in m]
    ours, theirs = checkpoint.load(run_dir / "last.pt")["model"], checkpoint.load(reference.run_dir / "last.pt")["model"]
    identical = all(torch.equal(ours[key], theirs[key]) for key in theirs)
    ledger.record("disk full, twice", survived=epochs == [1, 2, 3], lost_or_duplicated=abs(len(epochs) - 3), identical=identical)
    assert epochs == [1, 2, 3] and identical
# --- checkpoints by time (issue 26) -------------------------------------------------------------------


def _record_saves(saved: list[int], *, seconds_per_reading: float = 0.0, stop_after_epoch: int = 0) -> Any:
    """An ``on_loop`` hook: a clock that moves ``seconds_per_reading`` at each reading (when set), the
    epochs whose end checkpointed into ``saved``, and an Interrupt once epoch ``stop_after_epoch``'s
    record is written (before its checkpoint is decided)."""

    def hook(loop: Any) -> None:
        if seconds_per_reading:
            readings = iter(range(1, 10_000))
            loop.clock, loop.last_saved = (lambda: seconds_per_reading * next(readings)), 0.0
        save, append = loop.run_dir.save, loop.run_dir.append_metrics

        def recorded(state: Any, best: bool = False) -> None:
            saved.append(state.epoch)
            save(state, best=best)

        def append_then_stop(record: dict[str, Any]) -> None:
            append(record)
            if record.get("epoch") == stop_after_epoch:
                raise Interrupt

        loop.run_dir.save, loop.run_dir.append_metrics = recorded, append_then_stop

    return hook


def test_an_epoch_end_checkpoints_once_checkpoint_every_s_have_passed(experiment) -> None:
    saved: list[int] = []
    options = {"epochs": 4, "eval_every_epochs": 4, "checkpoint_every_s": 60}  # no new best before the last epoch
    train(load_run(experiment(train=options)), on_loop=_record_saves(saved, seconds_per_reading=50))
    assert saved == [2, 4]  # 50 s at epoch 1's end; 100 s at epoch 2's (saved); 50 s later at 3; the last epoch


def test_a_run_stopped_after_skipped_epoch_checkpoints_trains_them_again_bit_identically(experiment) -> None:
    options = {"epochs": 3, "eval_every_epochs": 3, "checkpoint_every_s": 3600}
    straight, saved = load_run(experiment("straight", train=options)), []
    train(straight, on_loop=_record_saves(saved))
    assert saved == [3]  # only the last epoch: two 1-s epochs are not worth a checkpoint each
    resumed = load_run(experiment("resumed", train=options))
    with pytest.raises(Interrupt):  # a kill after epoch 2's record: no checkpoint yet
        train(resumed, on_loop=_record_saves([], stop_after_epoch=2))
    assert not (resumed.run_dir / checkpoint.LAST).exists() and len(read_metrics(resumed.run_dir)) == 2
    assert train(resumed)["status"] == "done"
    assert [m["epoch"] for m in read_metrics(resumed.run_dir)] == [1, 2, 3]  # no record written twice
    a, b = read_metrics(straight.run_dir)[-1], read_metrics(resumed.run_dir)[-1]
    assert all(a[key] == b[key] for key in ("train/epoch_loss", "val/loss", "val/top1"))
