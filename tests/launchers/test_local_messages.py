"""What ``research train`` says about runs it does not train (research/launch/local.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from research.config import load_runs
from research.launch.local import run_locally


def finish(run_dir: Path) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps({"status": "done", "epochs_done": 1, "epochs": 1}))
    (run_dir / "last.pt").write_bytes(b"")


@pytest.mark.parametrize("force", [False, True])
def test_a_finished_teacher_is_reused_and_the_message_says_how_to_retrain_it(
    experiment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], force: bool
) -> None:
    """Under --force the teacher used to be "skipped (use --force to train it again)": that --force was given."""
    teacher = experiment("teacher", model={"name": "resnet10_cifar", "img_size": 32})
    student = experiment(
        "student", model={"name": "deit_nano_distilled_patch4_32"}, teacher={"from_experiment": "teacher.yaml"}, loss={"name": "hard"}
    )
    finish(tmp_path / "runs" / "teacher")
    trained: list[str] = []
    monkeypatch.setattr("research.launch.train.train", lambda run, **_: trained.append(run.name))

    run_locally(load_runs(student, check_files=False), force=force)

    out = capsys.readouterr().out
    assert trained == ["student"]
    assert f"teacher: already finished in {tmp_path / 'runs' / 'teacher'}; reused" in out
    assert f"research train {teacher} --force to train it again" in out
    assert "use --force" not in out
