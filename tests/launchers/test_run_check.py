"""A run dir is its config: relaunches with other values stop before anything starts; ``--force``,
``train.resume=false`` and extended epochs are the documented ways on; where-and-how overrides reach
linked teacher runs; a teacher whose weights are gone is trained again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from scripts import load_script

from research.cli import main
from research.config import load_runs
from research.engine.run_dir import read_lives, read_metrics, read_summary, run_status
from research.launch.run_check import DONE_ACTION, NEW, RESUME, plan, run_dir_lock, shown_status

slurm_launcher = load_script("launchers/slurm.py")


def train(path: Path, *args: str) -> int:
    return main(["train", str(path), *args])


def files(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run_dir.iterdir()) if p.is_file()}


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_changed_overrides_on_a_finished_run_stop_the_command_naming_each_key(experiment, capsys) -> None:
    path = experiment()
    assert train(path) == 0
    run_dir = load_runs(path)[0].run_dir
    before = files(run_dir)
    capsys.readouterr()
    assert train(path, "optim.lr=1e-2", "model.drop_path_rate=0.3") == 2
    line = one_error_line(capsys.readouterr().err)
    assert "optim.lr 0.0005 -> 0.01" in line and "model.drop_path_rate 0.1 -> 0.3" in line  # the builder default
    assert "--force" in line and "output_dir=" in line
    assert files(run_dir) == before  # nothing written


def test_a_half_done_run_refuses_new_values_and_keeps_the_record_of_what_trained_it(experiment, capsys) -> None:
    path = experiment()
    assert train(path) == 0  # one epoch of what will be asked for two
    run_dir = load_runs(path)[0].run_dir
    config = (run_dir / "config.yaml").read_text()
    assert train(path, "train.epochs=4", "optim.lr=0.5", "model.drop_path_rate=0.3") == 2
    line = one_error_line(capsys.readouterr().err)
    assert "optim.lr" in line and "model.drop_path_rate" in line and "train.epochs" not in line
    assert (run_dir / "config.yaml").read_text() == config
    assert [m["epoch"] for m in read_metrics(run_dir)] == [1]


def test_train_epochs_may_grow_and_the_new_life_records_it_with_the_execution_keys_it_changed(experiment, capsys) -> None:
    path = experiment()
    assert train(path) == 0
    run_dir = load_runs(path)[0].run_dir
    assert train(path, "train.epochs=2", "train.log_every_steps=7") == 0
    assert [m["epoch"] for m in read_metrics(run_dir)] == [1, 2]
    life = read_lives(run_dir)[-1]
    assert life["epochs_extended"] == [1, 2]
    assert life["changed"] == {"train.log_every_steps": [50, 7]}
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["epochs"] == 2
    assert train(path, "train.epochs=2") == 0  # finished again: skipped
    assert "already finished" in capsys.readouterr().out


def test_force_replaces_a_run_and_keeps_the_old_dir_aside(experiment) -> None:
    path = experiment()
    assert train(path) == 0
    run_dir = load_runs(path)[0].run_dir
    assert train(path, "optim.lr=1e-2", "--force") == 0
    aside = [p for p in run_dir.parent.iterdir() if p.name.startswith(f"{run_dir.name}.replaced-")]
    assert len(aside) == 1 and (aside[0] / "last.pt").exists()
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["optim"]["lr"] == 1e-2
    assert len(read_lives(run_dir)) == 1


def test_resume_false_starts_over_without_a_second_copy_of_any_epoch(experiment) -> None:
    path = experiment()
    assert train(path) == 0
    run_dir = load_runs(path)[0].run_dir
    assert train(path, "train.resume=false") == 0
    assert [m["epoch"] for m in read_metrics(run_dir)] == [1]
    assert any(p.name.startswith(f"{run_dir.name}.replaced-") for p in run_dir.parent.iterdir())


def test_resume_false_inside_a_job_starts_over_in_place(experiment) -> None:
    """A SLURM job (or its requeued life) does not move its own run dir, submission record included, aside."""
    from research.launch.train import train as train_in_this_process

    path = experiment()
    assert train(path) == 0
    (run,) = load_runs(path, ["train.resume=false"])
    (run.run_dir / "slurm_job.json").write_text('{"job_id": "12"}')
    assert train_in_this_process(run)["status"] == "done"
    assert (run.run_dir / "slurm_job.json").exists() and not list(run.run_dir.parent.glob("*.replaced-*"))
    assert [m["epoch"] for m in read_metrics(run.run_dir)] == [1]


def test_a_run_dir_without_its_config_is_not_resumed_blindly(experiment, capsys) -> None:
    path = experiment()
    assert train(path) == 0
    run_dir = load_runs(path)[0].run_dir
    (run_dir / "config.yaml").unlink()
    assert train(path) == 2
    assert "no readable config.yaml" in one_error_line(capsys.readouterr().err)


@pytest.fixture
def teacher_and_student(experiment, tmp_path: Path) -> tuple[Path, Path]:
    teacher = experiment("teacher", model={"name": "resnet10_cifar", "img_size": 32})
    student = experiment(
        "student",
        model={"name": "deit_nano_distilled_patch4_32", "img_size": 32},
        teacher={"from_experiment": "teacher.yaml"},
        loss={"name": "hard"},
    )
    return teacher, student


def test_command_line_placement_overrides_reach_the_linked_teacher_and_others_do_not(teacher_and_student, tmp_path) -> None:
    _, student = teacher_and_student
    elsewhere = tmp_path / "elsewhere"
    (run,) = load_runs(student, [f"output_dir={elsewhere}", "slurm.partition=debug", "logger.name=jsonl", "optim.lr=0.1"])
    teacher = run.teacher_run
    assert teacher is not None
    assert Path(teacher.cfg.output_dir) == elsewhere and teacher.run_dir.is_relative_to(elsewhere)
    assert teacher.cfg.slurm.partition == "debug" and teacher.cfg.logger["name"] == "jsonl"
    assert teacher.cfg.optim.lr != 0.1  # what the student trains with is the student's
    assert run.cfg.teacher["checkpoint"] == str(teacher.run_dir / "last.pt")


def test_the_data_location_given_for_a_student_reaches_its_teacher(experiment, tmp_path) -> None:
    for name in ("teacher", "student"):  # CIFAR-10 JPEG, in place of the tiny config's synthetic data
        path = experiment(name, model={"name": "resnet10_cifar", "img_size": 32})
        content = yaml.safe_load(path.read_text()) | {"data": {"name": "cifar10_jpeg"}}
        if name == "student":
            content |= {"model": {"name": "deit_nano_distilled_patch4_32", "img_size": 32}, "loss": {"name": "hard"}}
            content |= {"teacher": {"from_experiment": "teacher.yaml"}}
        path.write_text(yaml.safe_dump(content))
    archive, cache = tmp_path / "copied" / "cifar10-jpeg.tar.xz", tmp_path / "empty-cache"
    (run,) = load_runs(path, [f"data.archive={archive}", f"data.cache_dir={cache}"], check_files=False)
    teacher = run.teacher_run
    assert teacher is not None
    assert (teacher.cfg.data["archive"], teacher.cfg.data["cache_dir"]) == (str(archive), str(cache))
    assert (run.cfg.data["archive"], run.cfg.data["cache_dir"]) == (str(archive), str(cache))
    (plain,) = load_runs(path, check_files=False)
    assert plain.teacher_run is not None and plain.teacher_run.cfg.data["archive"] != str(archive)


def test_the_readme_slurm_overrides_reach_the_teacher_job(teacher_and_student, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no SLURM here: --dry-run only
    _, student = teacher_and_student
    overrides = ["slurm.partition=debug", "resources.gpus_per_node=0", "resources.cpus_per_task=2", "resources.mem_gb=4"]
    assert slurm_launcher.main([str(student), *overrides, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("#SBATCH --partition=debug") == 2 and "--gpus-per-node" not in out  # teacher and student
    assert out.count("#SBATCH --cpus-per-task=2") == 2


def test_a_finished_student_needs_no_teacher_and_a_teacher_without_weights_is_trained_again(teacher_and_student) -> None:
    teacher_path, student_path = teacher_and_student
    assert train(student_path) == 0  # trains the teacher first
    (student,) = load_runs(student_path)
    teacher = student.teacher_run
    assert teacher is not None and run_status(teacher.run_dir) == "done"
    (teacher.run_dir / "last.pt").unlink()
    assert run_status(teacher.run_dir) != "done"
    assert [(v.run.name, v.action) for v in plan([student])] == [("student", DONE_ACTION)]  # teacher not needed

    assert train(student_path, "train.epochs=2") == 0  # the student trains on: its teacher is retrained first
    assert len(read_lives(teacher.run_dir)) == 2
    assert (teacher.run_dir / "last.pt").exists() and read_summary(teacher.run_dir)["status"] == "done"
    assert [m["epoch"] for m in read_metrics(teacher.run_dir)] == [1]  # the first training's lines are gone


def test_plan_checks_prerequisites_and_orders_them_first(teacher_and_student) -> None:
    _, student_path = teacher_and_student
    (student,) = load_runs(student_path)
    assert [(v.run.name, v.action) for v in plan([student])] == [("teacher", NEW), ("student", NEW)]
    assert main(["train", str(student_path.parent / "teacher.yaml")]) == 0
    assert [(v.run.name, v.action) for v in plan([student])] == [("teacher", DONE_ACTION), ("student", NEW)]
    (student.teacher_run.run_dir / "summary.json").unlink()  # type: ignore[union-attr]
    assert [(v.run.name, v.action) for v in plan([student])][0] == ("teacher", RESUME)


def test_expand_tells_a_stopped_a_cancelled_and_a_training_run_apart(experiment, capsys) -> None:
    path = experiment()
    assert train(path) == 0
    run_dir = load_runs(path)[0].run_dir
    summary = read_summary(run_dir)
    for status in ("stopped", "cancelled"):  # how the last life ended, written by research.launch.train
        (run_dir / "summary.json").write_text(json.dumps({**summary, "status": status, "epochs_done": 0}))
        capsys.readouterr()
        assert main(["expand", str(path)]) == 0
        assert f"tiny  {status}  " in capsys.readouterr().out
    with run_dir_lock(run_dir):
        assert shown_status(run_dir) == "training"
