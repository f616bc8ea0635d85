"""What only the training machine can tell is checked before a run dir is written (issue 24): fp16
without a GPU, a batch larger than the data, missing data, an unwritable cache, a teacher trained on
other classes (research/launch/preflight.py). Each used to fail once the run dir and its lock were
written; now ``research train`` exits 2 with one line and writes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from tiny import TINY, write_yaml

from research.cli import EXIT_BAD_INPUT, main


def refused(capsys: pytest.CaptureFixture[str], tmp_path: Path, *argv: Any) -> str:
    """The one error line of ``research train ARGV``; nothing was written under the runs folder."""
    status = main(["train", *map(str, argv)])
    err = capsys.readouterr().err
    assert status == EXIT_BAD_INPUT, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "runs").exists()
    return lines[0]


def test_fp16_without_a_gpu(capsys, tmp_path: Path, experiment, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = refused(capsys, tmp_path, experiment("tiny"), "train.precision=fp16")
    assert line == "research train: error: tiny: train.precision=fp16 needs a GPU and this machine has none; use bf16 or fp32"


@pytest.mark.parametrize(
    ("argv", "shown"),
    [
        (["loader.batch_size=33"], "loader.batch_size=33 is larger than the 32 training images each of the 1 process gets"),
        (["loader.limit_train=20", "loader.batch_size=24"], "the 20 training images each of the 1 process gets"),
        (["loader.batch_size=20", "--nproc", "2"], "loader.batch_size=20 is larger than the 16 training images each of the 2 processes"),
    ],
)
def test_a_batch_larger_than_the_data(capsys, tmp_path: Path, experiment, argv: list[str], shown: str) -> None:
    """With drop_last, an epoch of 0 steps; with --nproc 2 it was a traceback from every worker."""
    assert shown in refused(capsys, tmp_path, experiment("tiny"), *argv)


def with_data(tmp_path: Path, data: dict[str, Any]) -> Path:
    """The tiny experiment reading ``data`` (the whole section) instead of synthetic images."""
    return write_yaml(tmp_path / "tiny.yaml", {**TINY, "output_dir": str(tmp_path / "runs"), "data": data})


def cifar(tmp_path: Path, **data: Any) -> Path:
    absent = {"name": "cifar10_jpeg", "archive": str(tmp_path / "absent.tar.xz"), "cache_dir": str(tmp_path / "cache")}
    return with_data(tmp_path, {**absent, **data})


@pytest.mark.parametrize("nproc", ["1", "2"])
def test_missing_data(capsys, tmp_path: Path, nproc: str) -> None:
    """README's own `--nproc 2` line on a machine without the archive printed 109 lines."""
    line = refused(capsys, tmp_path, cifar(tmp_path), "--nproc", nproc)
    assert f"archive {tmp_path / 'absent.tar.xz'} not found" in line and "set data.archive" in line
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    ("data", "shown"),
    [
        ({"name": "imagefolder", "root": "{tmp}/imagenet"}, "has no 'train' or 'val' folder"),
        ({"name": "cifar10", "root": "{tmp}/nowhere"}, "no cifar-10-batches-py/ in"),
    ],
)
def test_missing_folders(capsys, tmp_path: Path, data: dict[str, str], shown: str) -> None:
    data = {key: value.format(tmp=tmp_path) for key, value in data.items()}
    assert shown in refused(capsys, tmp_path, with_data(tmp_path, data))


@pytest.mark.parametrize("cache", ["{tmp}/a-file/cache", "/sys/research-cache"], ids=["under-a-file", "read-only"])
def test_an_unwritable_cache_dir(capsys, tmp_path: Path, cache: str) -> None:
    archive = tmp_path / "cifar10-jpeg.tar.xz"
    archive.write_bytes(b"an archive not extracted yet")  # only its first and last MiB are read, for its key
    (tmp_path / "a-file").write_text("not a folder\n")
    cache = cache.format(tmp=tmp_path)
    line = refused(capsys, tmp_path, cifar(tmp_path, archive=str(archive), cache_dir=cache))
    assert f"data.cache_dir={cache}: cannot write there" in line
    assert not any(path.name.startswith(".research-write-check") for path in tmp_path.iterdir())


def test_a_linked_teacher_of_another_class_count(capsys, tmp_path: Path, experiment) -> None:
    """The teacher trained first, then the student failed loading it, its run dir written."""
    experiment("teacher", model={"name": "resnet10_cifar", "img_size": 32}, data={"num_classes": 4})
    student = experiment(
        "student", model={"name": "deit_nano_distilled_patch4_32"}, teacher={"from_experiment": "teacher.yaml"}, loss={"name": "hard"}
    )
    line = refused(capsys, tmp_path, student)
    assert "student: teacher.from_experiment teacher.yaml trains on 4 classes (data.name=synthetic), the student's data has 10" in line


def test_a_run_that_fits_trains(capsys, tmp_path: Path, experiment) -> None:
    """The checks let a run at the edge through: one batch of exactly the images there are."""
    assert main(["train", str(experiment("tiny")), "loader.batch_size=32"]) == 0
