"""The ``research`` command: list, expand, train, eval. Bad input is one line on stderr and exit
status 2; ``--debug`` raises instead. Most tests call :func:`research.cli.main` in-process; the slow
ones run the installed console script and train a tiny experiment end to end."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import research.config
from research.cli import EXIT_BAD_INPUT, main
from research.config import ConfigError
from research.launch.cost import read_tables

REPO = Path(__file__).resolve().parents[1]


def cli(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    """``research ARGV`` in-process: (exit status, stdout, stderr)."""
    status = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_line_error(status: int, err: str, command: str) -> str:
    assert status == EXIT_BAD_INPUT
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"research {command}: error: ")
    return lines[0]


# --- list ------------------------------------------------------------------------------------------


def test_list_shows_every_registry(capsys) -> None:
    status, out, _ = cli(capsys, "list")
    assert status == 0
    for header in ("models:", "teachers:", "losses:", "augmentations:", "datasets:", "loggers:"):
        assert header in out.splitlines()
    for name in ("deit_tiny_patch16_224", "hard", "deit", "cifar10_jpeg", "wandb", "regnety_160"):
        assert f"  {name}" in out


def test_list_one_kind_shows_settable_defaults(capsys) -> None:
    status, out, _ = cli(capsys, "list", "models")
    assert status == 0
    assert out.splitlines()[0] == "models:"
    assert "teachers:" not in out
    line = next(line for line in out.splitlines() if line.strip().startswith("deit_nano_patch4_32 "))
    assert "drop_path_rate=0.1" in line and "img_size=32" in line
    assert "num_classes" not in out  # injected from the dataset: not a YAML key


def test_list_unknown_kind(capsys) -> None:
    status, _, err = cli(capsys, "list", "nope")
    line = assert_one_line_error(status, err, "list")
    assert "'nope'" in line and "models" in line and "loggers" in line


# --- expand ----------------------------------------------------------------------------------------


def test_expand_prints_the_runs(capsys, tmp_path: Path, experiment) -> None:
    path = experiment("ablate_x", aug={"name": "cifar"}, ablation={"grid": {"aug.mixup": [0, 0.8]}})
    status, out, err = cli(capsys, "expand", path, "optim.lr=1e-3")
    assert status == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].split() == ["run", "status", "run", "dir", "changes", "vs", "baseline"]
    assert "ablate_x/mixup=0 (baseline)" in lines[2] and "aug.mixup=0" in lines[2]
    assert "ablate_x/mixup=0.8" in lines[3] and "aug.mixup=0.8" in lines[3]
    assert str(tmp_path / "runs" / "ablate_x" / "mixup=0.8") in lines[3]
    assert "not started" in lines[2]
    assert lines[4] == "2 runs"
    # no resources.gpu_type nor --device: priced on every device of the throughput tables, each with its totals
    devices = sorted({row.device.lower() for row in read_tables()})
    assert len(devices) > 1 and all(f"on {device}: total over 2 runs: ~" in out for device in devices)


def test_expand_shows_what_each_variant_changes_from_the_baseline(capsys, experiment) -> None:
    variants = {"full": {}, "flat": {"aug.hflip": 0.0}, "plain": {"aug.mixup": 0.0, "aug.cutmix": 0.0}}
    path = experiment("ablate_y", aug={"name": "cifar"}, ablation={"baseline": "full", "variants": variants})
    status, out, _ = cli(capsys, "expand", path)
    runs = out.split("\n\n")[0]  # the runs; the cost estimate follows a blank line
    rows = {line.split()[0]: line for line in runs.splitlines()[2:-1]}
    assert "aug.hflip=0.5" in rows["ablate_y/full"] and "aug.mixup=0.8" in rows["ablate_y/full"]
    assert rows["ablate_y/flat"].endswith("aug.hflip=0")
    assert rows["ablate_y/plain"].endswith("aug.mixup=0 aug.cutmix=0")


def test_expand_a_single_run(capsys, experiment) -> None:
    status, out, _ = cli(capsys, "expand", experiment("single"))
    assert status == 0
    assert out.split("\n\n")[0].splitlines()[-1] == "1 run"
    assert "(baseline)" not in out


# (arguments after the experiment file; a part of the error line)
BAD_OVERRIDES = {
    "unknown fixed key": (["optim.lrr=1"], "optim.lrr"),
    "unknown component key": (["aug.mixupp=0"], "aug.mixup"),
    "wrong type": (["optim.lr=abc"], "Float"),
    "unknown model": (["model.name=deit_tiny_patch16_22"], "deit_tiny_patch16_224"),
    "no equals sign": (["optim.lr"], "dotted.key=value"),
    "injected parameter": (["model.num_classes=10"], "dataset"),
    "distillation without a distilled model": (["loss.name=hard"], "deit_nano_distilled_patch4_32"),
    "distillation without a teacher": (["loss.name=hard", "model.name=deit_nano_distilled_patch4_32"], "teacher"),
    "odd batch with mixup": (["loader.batch_size=63", "aug.mixup=0.8"], "63"),
    "slurm time": (["resources.time=soon"], "resources.time"),
    "missing base": (["_base_=nowhere.yaml"], "nowhere.yaml"),
}


@pytest.mark.parametrize(("overrides", "part"), BAD_OVERRIDES.values(), ids=BAD_OVERRIDES.keys())
def test_bad_overrides_exit_2_with_one_line(capsys, experiment, overrides: list[str], part: str) -> None:
    status, out, err = cli(capsys, "expand", experiment("tiny"), *overrides)
    line = assert_one_line_error(status, err, "expand")
    assert part in line
    assert out == ""


def test_bad_files_exit_2_with_one_line(capsys, tmp_path: Path, yaml_file) -> None:
    bad = {
        "missing": tmp_path / "missing.yaml",
        "malformed": yaml_file("malformed.yaml", "model: {name: [\n"),
        "cycle": yaml_file("a.yaml", "_base_: b.yaml\n"),
    }
    yaml_file("b.yaml", "_base_: a.yaml\n")
    for kind, path in bad.items():
        status, _, err = cli(capsys, "expand", path)
        assert path.name in assert_one_line_error(status, err, "expand"), kind


def test_train_refuses_a_missing_teacher_checkpoint_before_training(capsys, tmp_path: Path, experiment) -> None:
    path = experiment(
        "student",
        model={"name": "deit_nano_distilled_patch4_32"},
        loss={"name": "hard"},
        teacher={"name": "resnet10_cifar", "checkpoint": str(tmp_path / "missing.pt")},
    )
    status, _, err = cli(capsys, "train", path)
    line = assert_one_line_error(status, err, "train")
    assert "teacher.checkpoint" in line and "missing.pt" in line
    assert not (tmp_path / "runs").exists()


def test_eval_needs_one_existing_checkpoint(capsys, tmp_path: Path, experiment) -> None:
    path = experiment("tiny")
    status, _, err = cli(capsys, "eval", path)
    assert "checkpoint=PATH" in assert_one_line_error(status, err, "eval")
    status, _, err = cli(capsys, "eval", path, f"checkpoint={tmp_path / 'nope.pt'}")
    assert "nope.pt" in assert_one_line_error(status, err, "eval")


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_raises_the_error(experiment, where: str) -> None:
    args = ["expand", str(experiment("tiny")), "optim.lr=abc"]
    argv = ["--debug", *args] if where == "before" else [*args, "--debug"]
    with pytest.raises(ConfigError, match="optim.lr"):
        main(argv)


def test_a_bug_is_not_reported_as_bad_input(monkeypatch: pytest.MonkeyPatch, experiment) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the loader")

    monkeypatch.setattr(research.config, "load_runs", broken)
    with pytest.raises(RuntimeError, match="a bug in the loader"):
        main(["expand", str(experiment("tiny"))])


def test_usage_errors_exit_2(capsys) -> None:
    with pytest.raises(SystemExit) as caught:
        main([])
    assert caught.value.code == 2
    with pytest.raises(SystemExit):
        main(["expand"])  # no experiment file
    capsys.readouterr()


# --- the installed console script ----------------------------------------------------------------------


@pytest.mark.slow
def test_console_script_bad_input_is_one_line(experiment) -> None:
    """The installed ``research`` script, in a fresh process: ``import research`` alone registers the
    built-ins (the error lists every distilled model), and bad input is exit status 2 with one line."""
    script = Path(sys.executable).with_name("research")
    assert script.exists(), f"{script}: the package is not installed (pip install -e .)"
    done = subprocess.run(
        [script, "expand", experiment("tiny"), "loss.name=hard"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == EXIT_BAD_INPUT
    assert "Traceback" not in done.stderr and done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith("research expand: error: command line: loss 'hard' needs a model with a distillation token")
    assert "deit_nano_distilled_patch4_32" in line and "deit_base_distilled_patch16_384" in line


# --- end to end ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_train_a_tiny_experiment_end_to_end(capsys, tmp_path: Path, experiment) -> None:
    path = experiment("e2e", aug={"name": "cifar", "mixup": 0.8, "cutmix": 1.0}, data={"size": 32})
    run_dir = tmp_path / "runs" / "e2e"

    status, _, err = cli(capsys, "train", path)

    assert status == 0, err
    assert {"config.yaml", "metrics.jsonl", "last.pt", "summary.json"} <= {p.name for p in run_dir.iterdir()}
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["name"] == "e2e" and config["aug"]["mixup"] == 0.8
    assert re.fullmatch(r"[0-9a-f]{40}", config["git"]["commit"]) and isinstance(config["git"]["dirty"], bool)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in metrics] == [1]
    assert 0.0 <= metrics[-1]["val/top1"] <= 100.0 and metrics[-1]["train/epoch_loss"] > 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "done" and summary["epochs_done"] == summary["epochs"] == 1

    trained_at = (run_dir / "last.pt").stat().st_mtime_ns
    status, out, _ = cli(capsys, "train", path)  # finished: nothing to do
    assert status == 0 and "e2e: already finished" in out
    assert (run_dir / "last.pt").stat().st_mtime_ns == trained_at

    status, out, _ = cli(capsys, "expand", path)
    assert status == 0 and " done " in out.splitlines()[2]

    status, out, _ = cli(capsys, "eval", path, f"checkpoint={run_dir / 'last.pt'}")
    assert status == 0
    results = json.loads(out)
    assert results["epoch"] == 1 and 0.0 <= results["val/top1"] <= 100.0


def test_train_and_the_local_launcher_are_one_command_with_the_same_options(capsys, tmp_path: Path, experiment, monkeypatch) -> None:
    path = experiment("pair", ablation={"variants": {"a": {}, "b": {"optim.lr": 1e-3}}})
    calls = []
    monkeypatch.setattr("research.launch.local.run_locally", lambda runs, **kw: calls.append(([r.variant for r in runs], kw)))

    status, _, err = cli(capsys, "train", path, "--only", "b", "train.epochs=2", "--nproc", "2", "--force")
    assert status == 0, err
    assert calls == [(["b"], {"force": True, "nproc": 2})]

    launcher = REPO / "launchers" / "local.py"
    result = subprocess.run([sys.executable, str(launcher), "--help"], capture_output=True, text=True, check=True)
    for option in ("--force", "--nproc", "--only", "--debug"):
        assert option in result.stdout
    result = subprocess.run([sys.executable, str(launcher), str(path), "--only", "c"], capture_output=True, text=True)
    assert result.returncode == EXIT_BAD_INPUT and result.stderr.startswith("launchers/local.py: error: ")
    assert "no variant 'c'" in result.stderr
