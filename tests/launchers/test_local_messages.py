"""What ``research train`` says about runs it does not train (research/launch/local.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from run_dirs import mark_finished

from research.config import load_runs
from research.launch.local import run_locally


@pytest.mark.parametrize("force", [False, True])
def test_a_finished_teacher_is_reused_and_the_message_says_how_to_retrain_it(
    experiment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], force: bool
) -> None:
    """Under --force the teacher used to be "skipped (use --force to train it again)": that --force was given."""
    teacher = experiment("teacher", model={"name": "resnet10_cifar", "img_size": 32})
    student = experiment(
        "student", model={"name": "deit_nano_distilled_patch4_32"}, teacher={"from_experiment": "teacher.yaml"}, loss={"name": "hard"}
    )
    mark_finished(load_runs(teacher, check_files=False)[0])
    trained: list[str] = []
    monkeypatch.setattr("research.launch.train.train", lambda run, **_: trained.append(run.name))

    run_locally(load_runs(student, check_files=False), force=force)

    out = capsys.readouterr().out
    assert trained == ["student"]
    assert f"teacher: already finished in {tmp_path / 'runs' / 'teacher'}; reused" in out
    assert f"research train {teacher} --force to train it again" in out
    assert "use --force" not in out
