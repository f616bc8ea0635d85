"""RunInfo, flatten_config, the guard against failing trackers, and the jsonl / none loggers."""

from __future__ import annotations

import dataclasses
import errno
import json
import warnings
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from research.registry import LOGGERS
from research.tracking import (
    GuardedTracker,
    JsonlTracker,
    NullTracker,
    RunInfo,
    Tracker,
    TrackerWarning,
    flatten_config,
)
from research.tracking.base import as_number


def make_run(tmp_path: Path, **overrides: object) -> RunInfo:
    fields = dict(
        run_dir=tmp_path / "runs" / "ablate_mixup" / "mixup=0",
        project="deit-tests",
        group="ablate_mixup",
        name="ablate_mixup/mixup=0",
        job_type="train",
        tags=("cutmix", "repeated-aug"),
        config={"model": {"name": "deit_tiny_patch16_224"}, "optim": {"lr": 5e-4}},
        is_rank_zero=True,
    )
    fields.update(overrides)
    return RunInfo(**fields)  # type: ignore[arg-type]


def test_registered_loggers():
    assert {"wandb", "jsonl", "none"} <= set(LOGGERS.names())


def test_run_info_is_frozen(tmp_path):
    run = make_run(tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.name = "other"  # type: ignore[misc]


@pytest.mark.parametrize("name", ["wandb", "jsonl", "none"])
def test_only_rank_zero_logs(tmp_path, name):
    run = make_run(tmp_path, is_rank_zero=False)
    tracker = LOGGERS.build(name, run=run)
    assert isinstance(tracker, NullTracker)
    tracker.log({"train/loss": 1.0}, step=0)
    tracker.summary({"best/top1": 1.0})
    tracker.close()
    assert not run.run_dir.exists()  # nothing written, no W&B run started


def test_trackers_satisfy_protocol(tmp_path):
    assert isinstance(NullTracker(), Tracker)
    assert isinstance(LOGGERS.build("jsonl", run=make_run(tmp_path)), Tracker)


def test_flatten_config_nested_lists_and_leaves():
    cfg = {
        "model": {"name": "deit_tiny", "drop_path": 0.1, "extra": {}},
        "aug": {"mixup": {"alpha": 0.8}, "scale": (0.08, 1.0)},
        "plugins": ["a", {"b": {"c": 1}}],
        "output_dir": Path("/runs/x"),
        "bad": float("nan"),
        "git_commit": "0123abc",
        "n_parameters": 5_717_416,
        "teacher": None,
    }
    assert flatten_config(cfg) == {
        "model.name": "deit_tiny",
        "model.drop_path": 0.1,
        "aug.mixup.alpha": 0.8,
        "aug.scale": [0.08, 1.0],
        "plugins": ["a", {"b.c": 1}],
        "output_dir": "/runs/x",
        "bad": "nan",
        "git_commit": "0123abc",
        "n_parameters": 5_717_416,
        "teacher": None,
    }
    json.dumps(flatten_config(cfg))  # W&B stores config values as JSON


def test_flatten_config_accepts_omegaconf_and_custom_separator():
    cfg = OmegaConf.create({"optim": {"lr": 5e-4, "betas": [0.9, 0.999]}, "seed": 0})
    assert flatten_config(cfg) == {"optim.lr": 5e-4, "optim.betas": [0.9, 0.999], "seed": 0}
    assert flatten_config({"a": {"b": 1}}, sep="/") == {"a/b": 1}


def test_as_number():
    assert as_number(torch.tensor(2.5)) == 2.5 and isinstance(as_number(torch.tensor(2.5)), float)
    assert as_number(torch.tensor(3)) == 3
    assert as_number(True) == 1
    with pytest.raises((TypeError, ValueError, RuntimeError)):
        as_number(torch.ones(2))


class _Failing:
    def __init__(self, fail_in: str) -> None:
        self.fail_in = fail_in
        self.calls: list[str] = []

    def _maybe_fail(self, method: str) -> None:
        self.calls.append(method)
        if method == self.fail_in:
            raise OSError(errno.ENOSPC, "No space left on device")

    def log(self, metrics, *, step):
        self._maybe_fail("log")

    def summary(self, values):
        self._maybe_fail("summary")

    def close(self):
        self._maybe_fail("close")


@pytest.mark.parametrize("fail_in", ["log", "summary", "close"])
def test_guarded_tracker_warns_once_then_is_a_no_op(fail_in):
    inner = _Failing(fail_in)
    tracker = GuardedTracker(inner, name="fake")
    with pytest.warns(TrackerWarning, match=rf"fake logger disabled: {fail_in}\(\) raised OSError"):
        tracker.log({"train/loss": 1.0}, step=0)
        tracker.summary({"best/top1": 0.5})
        tracker.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning, whatever happens next
        tracker.log({"train/loss": 1.0}, step=1)
        tracker.summary({"best/top1": 0.5})
        tracker.close()
    assert tracker.failed
    # after a failure, only the quiet close is attempted
    assert inner.calls == (["log", "close"] if fail_in == "log" else ["log", "summary", "close"])


def test_guarded_tracker_lets_keyboard_interrupt_through():
    class Interrupted(_Failing):
        def log(self, metrics, *, step):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        GuardedTracker(Interrupted("none"), name="fake").log({}, step=0)


def test_jsonl_appends_lines_and_merges_summary(tmp_path):
    run = make_run(tmp_path)
    for life in range(2):  # a requeued run appends to the same file
        tracker = LOGGERS.build("jsonl", run=run)
        tracker.log({"train/loss": torch.tensor(2.0 - life), "train/lr": 1e-3}, step=10 * life)
        tracker.log({"val/top1": 0.25, "epoch": 1}, step=10 * life + 5)
        tracker.summary({"best/top1": 0.25 + life, f"life{life}": True})
        tracker.close()
        tracker.close()
    lines = [json.loads(line) for line in (run.run_dir / "log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [0, 5, 10, 15]
    assert lines[2]["train/loss"] == 1.0 and lines[1] | {"timestamp": 0} == {
        "step": 5,
        "timestamp": 0,
        "val/top1": 0.25,
        "epoch": 1,
    }
    summary = json.loads((run.run_dir / "log_summary.json").read_text())
    assert summary == {"best/top1": 1.25, "life0": True, "life1": True}


def test_jsonl_disk_full_warns_once_and_training_continues(tmp_path, monkeypatch):
    tracker = LOGGERS.build("jsonl", run=make_run(tmp_path))
    assert isinstance(tracker, GuardedTracker) and isinstance(tracker.inner, JsonlTracker)

    def disk_full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(JsonlTracker, "log", disk_full)
    with pytest.warns(TrackerWarning, match="jsonl logger disabled.*No space left"):
        for step in range(5):
            tracker.log({"train/loss": 1.0}, step=step)
    tracker.close()


def test_jsonl_unwritable_run_dir_gives_null_tracker(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.warns(TrackerWarning, match="cannot open"):
        tracker = LOGGERS.build("jsonl", run=make_run(tmp_path, run_dir=blocker / "run"))
    assert isinstance(tracker, NullTracker)


@pytest.mark.parametrize(("loss", "tag"), [("plain_test_loss", None), ("hard", "distill-hard")])
def test_the_distill_tag_follows_the_losss_info_not_its_name(experiment, plain_loss: str, loss: str, tag: str | None) -> None:
    """A plugin loss that does not distil (``needs_teacher`` false) is not tagged ``distill-<name>``."""
    from types import SimpleNamespace

    from research.config import load_runs
    from research.launch.run_tracker import run_tags

    model = {"name": "deit_nano_distilled_patch4_32", "img_size": 32}
    teacher = {"name": "resnet10_cifar", "checkpoint": "t.pt"}
    (run,) = load_runs(experiment("tagged", model=model, teacher=teacher, loss={"name": loss}), check_files=False)
    tags = run_tags(run, SimpleNamespace(recipe=SimpleNamespace(techniques=lambda: ())))  # type: ignore[arg-type]
    assert [t for t in tags if t.startswith("distill-")] == ([tag] if tag else [])
