"""``launchers/slurm.py`` on the real one-node cluster: job arrays of DDP runs, requeue with resume,
a student waiting for its teacher's job, relaunches that submit nothing twice, and bad input.

The launcher is called in-process (``main([...])``); the jobs run the code snapshot it takes, in
separate processes, and write their run dirs under ``tmp_path``.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import submitit
import yaml
from run_dirs import mark_finished
from scripts import load_script

from research.config import load_runs
from research.engine import checkpoint
from research.engine.run_dir import read_lives, read_metrics, read_summary

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# Seconds a job may take to start and finish on a loaded 2-core machine (importing torch alone can
# take 10 s per process there); a requeued job also waits for its old credential to expire.
JOB_TIMEOUT_S = 150
TINY: dict[str, Any] = {
    "model": {"name": "deit_nano_patch4_32", "img_size": 32},
    "data": {"name": "synthetic", "size": 32, "num_classes": 4},  # 32 images: 2 steps of 8 on each of 2 ranks
    "aug": {"name": "none", "simple_crop": True},
    "logger": {"name": "none"},
    "loader": {"batch_size": 8, "workers": 0},
    "sched": {"warmup_epochs": 0},
    "train": {"epochs": 1, "progress": False},
    "slurm": {"partition": "debug", "tasks_per_node": 1, "cpus_per_task": 1, "mem_gb": 1, "time": "5"},
}


launcher = load_script("launchers/slurm.py")


@pytest.fixture
def write_experiment(tmp_path: Path) -> Callable[..., Path]:
    """``write_experiment("name", train={...}, ...)`` writes ``tmp_path/name.yaml``: TINY, sections merged.

    Experiment names get a random suffix: they are the SLURM job names, and other test sessions
    may share the cluster.
    """
    suffix = uuid.uuid4().hex[:6]

    def write(name: str, **sections: Any) -> Path:
        config: dict[str, Any] = {"name": f"{name}-{suffix}", "output_dir": str(tmp_path / "runs")}
        for key, value in {**TINY, **sections}.items():
            config[key] = {**TINY[key], **value} if key in TINY and key in sections else value
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    return write


def launch(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``launchers/slurm.py argv...``; returns its exit status, stdout and stderr."""
    status = launcher.main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return status, out, err


def table(out: str) -> dict[str, dict[str, str]]:
    """The launcher's table: per variant, its cells by column name (columns split on two spaces)."""
    lines = out.split("\n\n")[0].splitlines()
    columns = ["variant", "action", "job id", "after", "run dir", "W&B run", "changes vs baseline"]
    assert [c.strip() for c in lines[0].split("  ") if c.strip()] == columns
    rows = [[c.strip() for c in line.split("  ") if c.strip()] for line in lines[2:]]
    return {row[0]: dict(zip(columns, row, strict=True)) for row in rows}


def job_of(run_dir: Path, experiment_dir: Path) -> submitit.SlurmJob:
    """The submitit job recorded in a run dir (its logs are in ``<experiment dir>/.slurm/<job id>``)."""
    job_id = json.loads((run_dir / "slurm_job.json").read_text())["job_id"]
    return submitit.SlurmJob(folder=experiment_dir / ".slurm" / "%j", job_id=job_id)


def squeue(*args: str) -> list[str]:
    result = subprocess.run(["squeue", "--noheader", *args], capture_output=True, text=True, check=True, timeout=30)
    return result.stdout.split()


def wait_until(condition: Callable[[], bool], *, timeout_s: float, what: str, cluster: Any, job: Any = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            stderr = job.stderr() if job is not None else ""
            pytest.fail(f"{what}: not within {timeout_s:.0f}s\n{stderr}\n{cluster.log_tails()}", pytrace=False)
        time.sleep(0.2)


# --- bad input: nothing is submitted ------------------------------------------------------------


def test_sbatch_refusal_is_shown_verbatim_with_its_variants(
    slurm_cluster, write_experiment, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_experiment("refused", ablation={"variants": {"a": {"optim.lr": 1e-3}, "b": {"optim.lr": 3e-3}}})
    status, out, err = launch(capsys, path, "slurm.partition=nope")

    assert status == 2 and out == ""
    name = yaml.safe_load(path.read_text())["name"]
    assert f"sbatch refused the job for {name}/a, {name}/b:" in err
    assert "sbatch: error: Batch job submission failed: Invalid partition name specified" in err  # sbatch's words
    assert not list((tmp_path / "runs").rglob("slurm_job.json"))


def test_a_bad_variant_submits_no_variant(
    slurm_cluster, write_experiment, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_experiment("badvariant", ablation={"variants": {"good": {"optim.lr": 1e-3}, "bad": {"optim.lrr": 3e-3}}})
    status, out, err = launch(capsys, path)

    assert status == 2 and out == ""
    assert "optim.lrr" in err and "variant bad" in err
    assert not (tmp_path / "runs").exists()
    assert squeue("--name", yaml.safe_load(path.read_text())["name"]) == []


def test_force_refused_by_sbatch_leaves_the_old_run_dir_in_place(
    slurm_cluster, write_experiment, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--force moved the run dir aside before sbatch answered: a refused submission left it there."""
    path = write_experiment("keep")
    (run,) = load_runs(path)
    mark_finished(run)
    before = sorted(str(file.relative_to(tmp_path)) for file in (tmp_path / "runs").rglob("*"))

    status, out, err = launch(capsys, path, "--force", "slurm.partition=nope")

    assert status == 2 and out == "" and "Invalid partition name specified" in err
    assert sorted(str(file.relative_to(tmp_path)) for file in (tmp_path / "runs").rglob("*")) == before
    assert read_summary(run.run_dir)["status"] == "done"


# --- real runs ----------------------------------------------------------------------------------


def test_ablation_is_one_job_array_of_ddp_runs_and_a_relaunch_skips_it(
    slurm_cluster, write_experiment, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_experiment(
        "ablation",
        slurm={"tasks_per_node": 2},  # 2 DDP processes (gloo) per variant
        ablation={"variants": {"lr1": {"optim.lr": 1e-3}, "lr3": {"optim.lr": 3e-3}}},
    )
    name = yaml.safe_load(path.read_text())["name"]
    status, out, _ = launch(capsys, path)

    assert status == 0
    rows = table(out)
    runs = {variant: tmp_path / "runs" / name / variant for variant in ("lr1", "lr3")}
    for variant, run_dir in runs.items():
        row = rows[f"{name}/{variant}"]
        assert row["action"] == "submitted" and row["run dir"] == str(run_dir) and row["W&B run"] == f"{name}/{variant}"
    job_ids = [rows[f"{name}/{variant}"]["job id"] for variant in runs]
    array_id = job_ids[0].split("_")[0]
    assert job_ids == [f"{array_id}_0", f"{array_id}_1"], "one job array, one element per variant"
    sbatch = (tmp_path / "runs" / name / ".slurm" / array_id / f"{array_id}_submission.sh").read_text()
    assert "#SBATCH --array=0-1" in sbatch and "#SBATCH --ntasks-per-node=2" in sbatch

    jobs = [job_of(run_dir, tmp_path / "runs" / name) for run_dir in runs.values()]
    slurm_cluster.wait_for_jobs(jobs, timeout_s=2 * JOB_TIMEOUT_S)
    for run_dir, job in zip(runs.values(), jobs, strict=True):
        assert read_summary(run_dir)["status"] == "done", job.stderr()
        assert [m["epoch"] for m in read_metrics(run_dir)] == [1] and "val/top1" in read_metrics(run_dir)[0]
        assert "2 processes" in job.stderr()
        assert len(read_lives(run_dir)) == 1

    # A relaunch finds both finished: no new job, nothing rewritten.
    recorded = {variant: (run_dir / "slurm_job.json").read_text() for variant, run_dir in runs.items()}
    job_dirs = sorted(p.name for p in (tmp_path / "runs" / name / ".slurm").iterdir())
    status, out, _ = launch(capsys, path)
    assert status == 0
    assert {row["action"] for row in table(out).values()} == {"finished"}
    assert "sbatch parameters" not in out
    assert sorted(p.name for p in (tmp_path / "runs" / name / ".slurm").iterdir()) == job_dirs
    assert {variant: (run_dir / "slurm_job.json").read_text() for variant, run_dir in runs.items()} == recorded


def test_a_preempted_run_is_requeued_and_resumes_where_it_stopped(
    slurm_cluster, write_experiment, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    steps = 8  # per epoch and rank: 128 images over 2 ranks, batches of 8
    path = write_experiment(
        "requeue",
        data={"size": 2 * steps * 8},
        logger={"name": "jsonl"},  # a line per step in log.jsonl: the test sees where training is
        train={"epochs": 2, "log_every_steps": 1},
        slurm={"tasks_per_node": 2},
    )
    name = yaml.safe_load(path.read_text())["name"]
    run_dir = tmp_path / "runs" / name
    assert launch(capsys, path)[0] == 0
    job = job_of(run_dir, run_dir)  # one run: the experiment dir is its run dir

    def in_second_epoch() -> bool:  # a step of the second epoch (epoch 1, counted from 0) is logged
        text = (run_dir / "log.jsonl").read_text() if (run_dir / "log.jsonl").exists() else ""
        records = [json.loads(line) for line in text.split("\n")[:-1]]  # complete lines only
        return any(record.get("epoch") == 1 and "train/loss" in record for record in records)

    def requeued() -> bool:
        return "Requeued job" in (job.stdout() or "")

    def second_life_started() -> bool:
        return len(read_lives(run_dir)) == 2

    wait_until(in_second_epoch, timeout_s=JOB_TIMEOUT_S, what="second epoch", cluster=slurm_cluster, job=job)
    job._interrupt(timeout=True)  # USR2, as SLURM sends it before the time limit (--signal=USR2@90)

    # The requeued job is pending (or already running again): a relaunch must not submit it twice.
    wait_until(requeued, timeout_s=60, what="requeue", cluster=slurm_cluster, job=job)
    status, out, _ = launch(capsys, path)
    assert status == 0 and table(out)[name]["action"] == "queued" and table(out)[name]["job id"] == job.job_id
    assert squeue("--name", name, "--format=%i") == [job.job_id]

    # Waiting for the second life first: the result file of a failed first life would end the wait early.
    wait_until(second_life_started, timeout_s=JOB_TIMEOUT_S, what="second life", cluster=slurm_cluster, job=job)
    slurm_cluster.wait_for_jobs([job], timeout_s=JOB_TIMEOUT_S)
    assert read_summary(run_dir)["status"] == "done", job.stderr()
    assert [m["epoch"] for m in read_metrics(run_dir)] == [1, 2]  # no epoch twice, none lost
    first_life, _, second_life = job.stderr().partition("Requeued job")
    assert "from scratch" in first_life, first_life
    resumed = re.search(r"resumed at epoch (\d+), step (\d+)", second_life)
    assert resumed and "from scratch" not in second_life, second_life
    saved = re.search(r"preempted at epoch (\d+) step (\d+); state saved", first_life)
    if saved:  # the signal came between two steps: the state at the signal was saved, mid-epoch
        assert resumed.groups() == saved.groups() and steps < int(saved[2]) < 2 * steps
    else:  # it came inside an optimizer update: the checkpoint saved at the first epoch's end stands
        assert resumed.groups() == ("1", str(steps))
    assert len(read_lives(run_dir)) == 2
    assert checkpoint.load(run_dir / "last.pt")["epoch"] == 2


def test_a_student_job_waits_for_its_teacher_job(
    slurm_cluster, write_experiment, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    teacher_path = write_experiment("teacher", model={"name": "resnet10_cifar", "img_size": 32})
    path = write_experiment(
        "student",
        model={"name": "deit_nano_distilled_patch4_32", "img_size": 32},
        teacher={"from_experiment": teacher_path.name},
        loss={"name": "hard"},
    )
    teacher, student = (yaml.safe_load(p.read_text())["name"] for p in (teacher_path, path))
    status, out, _ = launch(capsys, path)

    assert status == 0
    rows = table(out)
    assert list(rows) == [teacher, student]
    teacher_id, student_id = rows[teacher]["job id"], rows[student]["job id"]
    assert rows[teacher]["action"] == rows[student]["action"] == "submitted"
    assert rows[student]["after"] == teacher_id
    shown = subprocess.run(["scontrol", "show", "job", student_id], capture_output=True, text=True, check=True).stdout
    assert f"Dependency=afterok:{teacher_id}" in shown, shown  # while the teacher has not finished
    student_array = student_id.split("_")[0]
    sbatch = (tmp_path / "runs" / student / ".slurm" / student_array / f"{student_array}_submission.sh").read_text()
    assert f"#SBATCH --dependency=afterok:{teacher_id}" in sbatch

    # Launched again while both are queued or running: neither is submitted twice.
    status, out, _ = launch(capsys, path)
    assert status == 0
    assert {key: (row["action"], row["job id"]) for key, row in table(out).items()} == {
        teacher: ("queued", teacher_id),
        student: ("queued", student_id),
    }

    teacher_dir, student_dir = tmp_path / "runs" / teacher, tmp_path / "runs" / student
    jobs = [job_of(teacher_dir, teacher_dir), job_of(student_dir, student_dir)]
    slurm_cluster.wait_for_jobs(jobs, timeout_s=2 * JOB_TIMEOUT_S)
    assert read_summary(teacher_dir)["status"] == read_summary(student_dir)["status"] == "done"
    assert read_summary(teacher_dir)["finished_at"] < read_lives(student_dir)[0]["started"], "student started first"
    config = yaml.safe_load((student_dir / "config.yaml").read_text())
    assert config["teacher"]["checkpoint"] == str(teacher_dir / "last.pt")
    metrics = read_metrics(student_dir)
    assert "teacher/top1" in metrics[0] and metrics[-1]["epoch"] == 1
    assert checkpoint.load(student_dir / "last.pt")["epoch"] == 1
