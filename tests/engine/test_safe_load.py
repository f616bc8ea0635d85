"""Foreign files run no code (issue 17, section 5): every path that reads a file a user names, or that
sits in a run dir, refuses a pickle that calls ``os.system``, in one line that names the file."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from run_dirs import write_config

from research.cli import EXIT_BAD_INPUT, main
from research.config import load_run
from research.registry import TEACHERS
from research.safe_load import UnsafeCheckpointError, safe_load
from research.teachers import TeacherCheckpointError


class RunsCode:
    """Unpickling this runs ``touch MARKER``, as a planted checkpoint would run anything."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str]]:
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "MARKER"


def malicious(path: Path, marker: Path, *, legacy: bool = False) -> Path:
    """A checkpoint-looking file whose unpickling creates ``marker``."""
    payload = {"model": {"w": torch.zeros(2)}, "epoch": 1, "extra": RunsCode(marker)}
    path.parent.mkdir(parents=True, exist_ok=True)
    # legacy: torch's pre-1.6 format, a bare pickle stream with no zip directory to scan
    torch.save(payload, path, _use_new_zipfile_serialization=not legacy)
    return path


def error_line(capsys: pytest.CaptureFixture[str], status: int, command: str) -> str:
    """The one error line of a CLI run that refused its input (log lines before it are allowed)."""
    err = capsys.readouterr().err
    assert status == EXIT_BAD_INPUT and "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith(f"research {command}: error: ")]
    assert len(errors) == 1 and errors[0] == err.strip().splitlines()[-1], err
    return errors[0]


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_safe_load_refuses_code_and_names_it(tmp_path: Path, marker: Path, legacy: bool) -> None:
    path = malicious(tmp_path / "evil.pt", marker, legacy=legacy)
    with pytest.raises(UnsafeCheckpointError, match=rf"checkpoint {path}: refuses to unpickle posix\.system") as info:
        safe_load(path)
    assert "\n" not in str(info.value)
    assert not marker.exists()


def test_eval_refuses_a_malicious_checkpoint(experiment, capsys, tmp_path: Path, marker: Path) -> None:
    path = malicious(tmp_path / "evil.pt", marker)
    status = main(["eval", str(experiment()), f"checkpoint={path}"])
    assert not marker.exists()
    assert "refuses to unpickle posix.system" in error_line(capsys, status, "eval")


def test_finetune_refuses_a_malicious_checkpoint(experiment, capsys, tmp_path: Path, marker: Path) -> None:
    path = malicious(tmp_path / "evil.pt", marker)
    status = main(["train", str(experiment(job_type="finetune", finetune={"checkpoint": str(path)}))])
    assert not marker.exists()
    assert f"checkpoint {path}: refuses to unpickle posix.system" in error_line(capsys, status, "train")


def test_resume_refuses_a_planted_last_pt(experiment, capsys, marker: Path) -> None:
    path = experiment()
    run = load_run(path)
    write_config(run)  # a run dir of this config, its last.pt replaced
    last = malicious(run.run_dir / "last.pt", marker)
    status = main(["train", str(path)])
    assert not marker.exists()
    assert f"checkpoint {last}: refuses to unpickle posix.system" in error_line(capsys, status, "train")


def test_resume_never_falls_back_past_a_planted_last_pt(tmp_path: Path, marker: Path) -> None:
    """An intact last.prev.pt is no reason to skip a file that tried to run code: that is refused."""
    from research.engine import checkpoint

    malicious(tmp_path / checkpoint.LAST, marker)
    torch.save({"model": {}, "optimizer": {}, "epoch": 1, "step": 1, "rng": {}}, tmp_path / checkpoint.PREVIOUS)
    with pytest.raises(UnsafeCheckpointError):
        checkpoint.load_latest(tmp_path)
    assert not marker.exists()


def test_teacher_refuses_a_malicious_checkpoint(tmp_path: Path, marker: Path) -> None:
    path = malicious(tmp_path / "teacher.pt", marker)
    with pytest.raises(TeacherCheckpointError, match=rf"teacher checkpoint {path}: refuses to unpickle posix\.system"):
        TEACHERS.build("resnet10_cifar", num_classes=4, checkpoint=str(path))
    assert not marker.exists()


def test_torch_load_is_called_in_one_place_only() -> None:
    """Any other ``torch.load`` in the package would be a second, unchecked way in."""
    import ast

    package = Path(__file__).resolve().parents[2] / "research"
    callers = [
        f"{path.relative_to(package.parent)}:{node.lineno}"
        for path in sorted(package.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and node.attr == "load" and getattr(node.value, "id", None) == "torch"
    ]
    assert [caller.split(":")[0] for caller in callers] == ["research/safe_load.py"], callers


def test_a_teacher_checkpoint_under_an_unknown_user_is_one_line(experiment, capsys) -> None:
    teacher = {"name": "resnet10_cifar", "checkpoint": "~no-such-user-here/teacher.pt"}
    path = experiment(model={"name": "deit_nano_distilled_patch4_32"}, loss={"name": "hard"}, teacher=teacher)
    line = error_line(capsys, main(["train", str(path)]), "train")
    assert "~no-such-user-here/teacher.pt: no home directory for ~no-such-user-here" in line
