"""``launchers/slurm.py --dry-run``: the jobs and their ``#SBATCH`` lines, on a machine without SLURM.

Every test here runs with ``sbatch`` off the PATH; the real submissions are in tests/slurm/test_launcher.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from run_dirs import mark_finished
from scripts import load_script

from research.config import load_runs

TINY: dict[str, Any] = {
    "model": {"name": "deit_nano_patch4_32", "img_size": 32},
    "data": {"name": "synthetic", "size": 128, "num_classes": 4},  # a batch of 8 on each of 2 x 4 GPUs
    "aug": {"name": "none", "simple_crop": True},
    "logger": {"name": "none"},
    "loader": {"batch_size": 8, "workers": 0},
    "sched": {"warmup_epochs": 0},
    "train": {"epochs": 1, "progress": False},
}


launcher = load_script("launchers/slurm.py")


@pytest.fixture(autouse=True)
def no_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No SLURM client on this 'machine': an empty PATH."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


@pytest.fixture
def write(tmp_path: Path) -> Callable[..., Path]:
    """``write("name", slurm={...}, ...)`` writes ``tmp_path/name.yaml``: TINY with sections replaced."""

    def write_experiment(name: str, **sections: Any) -> Path:
        config = {"name": name, "output_dir": str(tmp_path / "runs"), **TINY, **sections}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    return write_experiment


def sbatch_blocks(out: str) -> dict[str, list[str]]:
    """The ``#SBATCH`` lines printed for each array, keyed by the runs it holds ("a/x, a/y")."""
    blocks: dict[str, list[str]] = {}
    current: list[str] = []
    for line in out.splitlines():
        if line.startswith("sbatch parameters for "):
            current = blocks.setdefault(line.removeprefix("sbatch parameters for ").rstrip(":"), [])
        elif line.startswith("#SBATCH"):
            current.append(line)
    return blocks


def table_rows(out: str) -> dict[str, list[str]]:
    """The launcher's table, a row per variant (columns split on runs of two spaces)."""
    lines = out.split("\n\n")[0].splitlines()
    assert lines[0].split() == ["variant", "action", "job", "id", "after", "run", "dir", "W&B", "run", "changes", "vs", "baseline"]
    return {cells[0]: cells for cells in ([c.strip() for c in line.split("  ") if c.strip()] for line in lines[2:])}


def test_dry_run_prints_each_array_with_its_sbatch_lines_on_gpu_nodes(write, tmp_path: Path, capsys) -> None:
    slurm = {
        "partition": "gpu",
        "nodes": 2,
        "gpus_per_node": 4,
        "cpus_per_task": 8,
        "mem_gb": 32,
        "time": "1-12:00:00",
        "extra": {"reservation": "deit"},
        "array_parallelism": 2,
    }
    ablation = {"variants": {"lr1": {"optim.lr": 1e-3}, "lr3": {"optim.lr": 3e-3}}}
    path = write("sweep", slurm=slurm, ablation=ablation)

    # --dry-run between the file and an override: options may sit anywhere.
    assert launcher.main([str(path), "--dry-run", "slurm.account=vision"]) == 0
    out = capsys.readouterr().out

    rows = table_rows(out)
    runs = tmp_path / "runs" / "sweep"
    assert rows["sweep/lr1"] == ["sweep/lr1", "would submit", "-", "-", str(runs / "lr1"), "sweep/lr1", "optim.lr=0.001"]
    assert rows["sweep/lr3"][1:6] == ["would submit", "-", "-", str(runs / "lr3"), "sweep/lr3"]
    (lines,) = sbatch_blocks(out).values()  # both variants in one array
    for expected in [
        "#SBATCH --array=0-1%2",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=vision",
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=4",  # one DDP process per GPU
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=32768MB",
        "#SBATCH --time=2160",  # minutes
        "#SBATCH --reservation=deit",  # slurm.extra, passed through
        "#SBATCH --job-name=sweep",
    ]:
        assert expected in lines, f"{expected} missing from:\n" + "\n".join(lines)
    assert not any("dependency" in line for line in lines)
    assert not runs.exists(), "a dry run writes nothing"


def test_only_submits_the_named_variants_and_refuses_unknown_ones(write, capsys) -> None:
    ablation = {"baseline": "a", "variants": {"a": {}, "b": {"optim.lr": 1e-3}, "c": {"optim.lr": 3e-3}}}
    path = write("pick", ablation=ablation)
    assert launcher.main([str(path), "--dry-run", "--only", "c", "b"]) == 0
    rows = table_rows(capsys.readouterr().out)
    assert sorted(rows) == ["pick/b", "pick/c"]
    assert rows["pick/c"][-1] == "optim.lr=0.003"  # still compared with the baseline that is not run

    assert launcher.main([str(path), "--dry-run", "--only", "d"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no variant 'd'" in err and "its variants are a, b, c" in err


def test_seeds_put_every_seed_of_every_variant_in_one_array(write, tmp_path: Path, capsys) -> None:
    ablation = {"baseline": "a", "variants": {"a": {}, "b": {"optim.lr": 1e-3}}}
    path = write("seeded", ablation=ablation, slurm={"gpus_per_node": 1}, seed=3)
    assert launcher.main([str(path), "--dry-run", "--seeds", "3", "--only", "b", "--device", "h200"]) == 0
    out = capsys.readouterr().out
    rows = table_rows(out)
    assert sorted(rows) == ["seeded/b/seed3", "seeded/b/seed4", "seeded/b/seed5"]
    assert rows["seeded/b/seed4"][4] == str(tmp_path / "runs" / "seeded" / "b" / "seed4")
    assert {row[-1] for row in rows.values()} == {"optim.lr=0.001"}  # against the baseline of the same seed
    (lines,) = sbatch_blocks(out).values()
    assert "#SBATCH --array=0-2%3" in lines
    assert "total over 3 runs: ~" in out  # the estimate counts every seed (scaled by FLOPs: no row of this model on h200)

    assert launcher.main([str(path), "--dry-run", "--seeds", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "seeds" in err


def test_dry_run_on_cpu_nodes_runs_tasks_per_node_processes(write, capsys) -> None:
    path = write("cpu", slurm={"partition": "cpu", "tasks_per_node": 2, "cpus_per_task": 1, "time": "30"})
    assert launcher.main([str(path), "--dry-run"]) == 0
    (lines,) = sbatch_blocks(capsys.readouterr().out).values()
    assert {"#SBATCH --ntasks-per-node=2", "#SBATCH --cpus-per-task=1", "#SBATCH --time=30"} <= set(lines)
    assert not any("gpus" in line for line in lines)


def test_dry_run_shows_the_student_waiting_for_its_teacher(write, tmp_path: Path, capsys) -> None:
    write("teacher", model={"name": "resnet10_cifar", "img_size": 32})
    path = write(
        "student",
        model={"name": "deit_nano_distilled_patch4_32", "img_size": 32},
        teacher={"from_experiment": "teacher.yaml"},
        loss={"name": "hard"},
    )
    assert launcher.main([str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out

    rows = table_rows(out)
    assert list(rows) == ["teacher", "student"]  # the teacher is submitted first
    assert rows["teacher"][1:4] == ["would submit", "-", "-"]
    assert rows["student"][1:4] == ["would submit", "-", "<teacher>"]
    blocks = sbatch_blocks(out)
    assert not any("dependency" in line for line in blocks["teacher"])
    # No job id before submission: the teacher's name stands in for it (shell-quoted by submitit).
    assert "#SBATCH --dependency='afterok:<teacher>'" in blocks["student"]

    # A finished teacher is not submitted again, and the student waits for nothing.
    mark_finished(load_runs(tmp_path / "teacher.yaml")[0])
    assert launcher.main([str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    rows = table_rows(out)
    assert rows["teacher"][1] == "finished" and rows["student"][1:4] == ["would submit", "-", "-"]
    blocks = sbatch_blocks(out)
    assert list(blocks) == ["teacher (finished: submitted only with --force)", "student"]
    assert not any("dependency" in line for line in blocks["student"])


def test_dry_run_of_finished_runs_still_shows_their_sbatch_lines(write, tmp_path: Path, capsys) -> None:
    """The README promises the #SBATCH lines of every --dry-run; finished runs are marked as such."""
    ablation = {"variants": {"a": {"optim.lr": 1e-3}, "b": {"optim.lr": 3e-3}}}
    path = write("done", slurm={"partition": "gpu", "time": "30"}, ablation=ablation)
    for run in load_runs(path):
        mark_finished(run)

    assert launcher.main([str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out

    assert {row[1] for row in table_rows(out).values()} == {"finished"}
    ((name, lines),) = sbatch_blocks(out).items()
    assert name == "done/a, done/b (finished: submitted only with --force)"
    assert {"#SBATCH --partition=gpu", "#SBATCH --time=30"} <= set(lines)
    assert any(line.startswith("#SBATCH --array=0-1") for line in lines)


def test_submitting_without_slurm_exits_2_and_names_the_alternatives(write, tmp_path: Path, capsys) -> None:
    path = write("plain", slurm={"partition": "debug"})
    assert launcher.main([str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    error = captured.err.strip()
    assert "\n" not in error and "sbatch not found" in error
    assert "--dry-run" in error and "launchers/local.py" in error
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("tasks", [1, 8])
def test_tasks_per_node_other_than_gpus_per_node_is_refused(write, capsys, tasks: int) -> None:
    path = write("clash", slurm={"gpus_per_node": 4, "tasks_per_node": tasks})
    assert launcher.main([str(path), "--dry-run"]) == 2
    error = capsys.readouterr().err
    assert f"resources.tasks_per_node={tasks}" in error and "resources.gpus_per_node=4" in error
    assert "leave tasks_per_node unset" in error


def test_tasks_per_node_equal_to_gpus_per_node_is_accepted(write, capsys) -> None:
    path = write("same", slurm={"gpus_per_node": 4, "tasks_per_node": 4})
    assert launcher.main([str(path), "--dry-run"]) == 0
    (lines,) = sbatch_blocks(capsys.readouterr().out).values()
    assert "#SBATCH --ntasks-per-node=4" in lines


# A line break in an #SBATCH line ends it: what follows ran as shell in the job, and sbatch read no
# #SBATCH line after it (no time limit, no USR2 warning, no memory limit). Each is refused at load.
@pytest.mark.parametrize(
    ("slurm", "key"),
    [
        ({"extra": {"comment": "a\ntouch /tmp/pwned #"}}, "slurm.extra.comment='a\\ntouch /tmp/pwned #'"),
        ({"partition": "gpu\r"}, "slurm.partition='gpu\\r'"),
        ({"account": "lab\x1b[2J"}, "slurm.account='lab\\x1b[2J'"),
        ({"constraint": "a100\u2028x"}, "slurm.constraint='a100\\u2028x'"),
        ({"setup": ["module load cuda\nrm -rf ~"]}, "slurm.setup='module load cuda\\nrm -rf ~'"),
        ({"extra": {"time=0 --mem": 1}}, "'time=0 --mem' is not an sbatch option name"),
    ],
    ids=["extra value", "partition", "account", "constraint", "setup", "extra key"],
)
def test_values_that_would_break_the_batch_script_are_refused(write, tmp_path: Path, capsys, slurm, key: str) -> None:
    path = write("inject", slurm={"partition": "gpu", **slurm})
    assert launcher.main([str(path), "--dry-run"]) == 2
    captured = capsys.readouterr()
    (line,) = captured.err.strip().splitlines()
    assert captured.out == "" and key in line, line
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("override", "shown"),
    [
        ('output_dir="runs\\n#SBATCH --time=365-0"', "output_dir 'runs\\n#SBATCH --time=365-0' holds the control character \\n"),
        ("resources.time=0", "SLURM reads a time of 0 as no limit"),
        ("resources.time=00:00:00", "SLURM reads a time of 0 as no limit"),
        ("resources.mem_gb=0.0005", "is less than 1 MB, and sbatch reads --mem=0 as all of a node's memory"),
    ],
)
def test_values_slurm_would_read_as_no_limit_or_another_line_are_refused(write, tmp_path: Path, capsys, override, shown) -> None:
    path = write("limits", slurm={"partition": "gpu"})
    assert launcher.main([str(path), override, "--dry-run"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert shown in line, line
    assert not (tmp_path / "runs").exists()


def test_every_value_stays_on_its_sbatch_line_of_the_batch_script(write, tmp_path: Path) -> None:
    """The batch script submitit writes, in full: every parameter is one #SBATCH line, all of them
    before the first command (sbatch reads none after it), with the smallest memory and time allowed."""
    from submitit.slurm.slurm import _make_sbatch_string

    from research.launch.backends.slurm import executor_parameters

    slurm = {"time": "1", "mem_gb": 0.001, "extra": {"comment": "a b; touch /tmp/x #", "hold": True}, "setup": ["echo ok"]}
    (run,) = load_runs(write("script", slurm=slurm))
    params = executor_parameters(run.cfg, run.experiment)
    script = _make_sbatch_string(command="python -m submitit.core._submit x", folder=tmp_path / "%j", **params)
    lines = script.splitlines()
    header = lines[3 : lines.index("", 3)]  # after "#!/bin/bash", "" and "# Parameters"
    assert header and all(line.startswith("#SBATCH --") for line in header), script
    assert not any(line.startswith("#SBATCH") for line in lines[3 + len(header) :]), script
    assert "#SBATCH --time=1" in header and "#SBATCH --mem=1MB" in header and "#SBATCH --signal=USR2@90" in header
    assert "#SBATCH --comment='a b; touch /tmp/x #'" in header and "#SBATCH --hold" in header


@pytest.mark.parametrize(
    ("slurm", "override", "shown"),
    [
        ({"partition": "cpu"}, "train.precision=fp16", "train.precision=fp16 needs a GPU and its job asks for none"),
        ({"partition": "gpu", "gpus_per_node": 4}, "loader.batch_size=8", "larger than the 4 training images each of the 4 processes gets"),
        ({"partition": "gpu", "gpus_per_node": 1, "nodes": 2}, "loader.batch_size=16", "larger than the 8 training images each of the 2 processes gets"),
    ],
    ids=["fp16-without-gpu", "batch-per-gpu", "batch-per-node"],
)
def test_what_the_job_would_refuse_on_its_node_is_refused_before_submission(write, tmp_path: Path, capsys, slurm, override, shown) -> None:
    path = write("preflight", slurm=slurm, data={"name": "synthetic", "size": 16, "num_classes": 4})
    assert launcher.main([str(path), override, "--dry-run"]) == 2
    captured = capsys.readouterr()
    (line,) = captured.err.strip().splitlines()
    assert shown in line and captured.out == "", line
    assert not (tmp_path / "runs").exists()


def test_data_the_submitting_machine_does_not_mount_is_left_to_the_job(write, tmp_path: Path, capsys) -> None:
    """The cluster's nodes may mount /datasets where the login node does not: no data check at submission."""
    path = write("elsewhere", slurm={"partition": "gpu", "gpus_per_node": 1}, data={"name": "imagefolder", "root": str(tmp_path / "not-here")})
    assert launcher.main([str(path), "--dry-run"]) == 0
    assert "would submit" in capsys.readouterr().out
