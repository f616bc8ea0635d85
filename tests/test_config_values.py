"""Bad values never start (issue 17, section 4): every value is checked when the experiment loads, so
the command exits 2 with one line naming the key and the value as given, and writes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import pytest
from scripts import load_script

from research.cli import EXIT_BAD_INPUT, main
from research.config import ConfigError, load_run
from research.registry import MODELS, Range

DISTILLED = {
    "model": {"name": "deit_nano_distilled_patch4_32"},
    "loss": {"name": "hard"},
    "teacher": {"name": "resnet10_cifar", "checkpoint": "teacher.pt"},  # expand checks no files
}


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[Any], prog: str = "") -> str:
    status = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    assert status == EXIT_BAD_INPUT, out + err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"research {prog or argv[0]}: error: "), lines[0]
    return lines[0]


def nothing_written(tmp_path: Path) -> bool:
    return not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("override", "shown"),
    [
        ("optim.lr=-1", "optim.lr=-1: must be > 0"),  # the value as given, not the lr scaled by the batch
        ("train.epochs=0", "train.epochs=0: must be >= 1"),
        ("train.epochs=-1", "train.epochs=-1: must be >= 1"),
        ("seed=-1", "seed=-1: must be >= 0"),
        ("aug.mixup=-0.5", "aug.mixup must be >= 0"),
        ("loader.limit_train=-5", "loader.limit_train=-5: must be >= 1"),  # trained on 39,995 images
        ("model.drop_path_rate=1.5", "model.drop_path_rate=1.5: must be >= 0 and < 1"),
        ("data.size=0", "data.size=0: must be >= 1 (images per split)"),  # raised when the dataset was built
        ("model.img_size=30", "model.img_size=30 is not a multiple of model 'deit_nano_patch4_32''s patch size 4"),
    ],
)
def test_train_refuses_a_bad_value_before_writing(capsys, tmp_path: Path, experiment, override: str, shown: str) -> None:
    line = one_line_error(capsys, ["train", experiment("tiny"), override])
    assert f"command line: {shown}" in line
    assert nothing_written(tmp_path)


@pytest.mark.parametrize(
    ("override", "shown"),
    [
        ("loss.alpha=2", "loss.alpha=2: must be >= 0 and <= 1"),
        ("loss.alpha=abc", "loss.alpha: Value 'abc' of type 'str' could not be converted to Float"),
        ("aug.mixup=-0.5", "aug.mixup must be >= 0"),  # expand crashed on it
        ("model.eval_head=best", "model.eval_head='best' is not one of 'both', 'class', 'distillation'"),
        ("model.img_size=[1]", "model.img_size: Value '[1]' of type 'ListConfig' could not be converted to Integer"),
        ("optim.name=adamx", "optim.name: timm has no optimizer 'adamx'; did you mean adamax"),  # failed in timm at train
        ("logger={name: wandb, mode: onlin}", "logger.mode='onlin' is not one of 'online', 'offline', 'disabled', None"),
        ("sched.name=cosin", "sched.name 'cosin' is not one of timm's schedules: cosine,"),  # timm made no schedule
    ],
)
def test_expand_refuses_a_bad_value(capsys, tmp_path: Path, experiment, override: str, shown: str) -> None:
    line = one_line_error(capsys, ["expand", experiment("tiny", **DISTILLED), override])
    assert f"command line: {shown}" in line


def test_every_bad_value_is_reported_at_once(experiment) -> None:
    with pytest.raises(ConfigError) as caught:
        load_run(experiment("tiny"), ["optim.lr=-1", "train.epochs=0", "slurm.nodes=0"])
    message = str(caught.value)
    assert "optim.lr=-1" in message and "train.epochs=0" in message and "slurm.nodes=0" in message
    assert message.count("; ") == 2 and "\n" not in message


def test_the_file_that_set_a_bad_value_is_named(tmp_path: Path, experiment) -> None:
    with pytest.raises(ConfigError, match=r"tiny\.yaml: train\.label_smoothing=1\.5: must be >= 0 and < 1"):
        load_run(experiment("tiny", train={"label_smoothing": 1.5}))


def test_output_dir_that_is_a_file_is_refused(capsys, tmp_path: Path, experiment) -> None:
    file = tmp_path / "notes.txt"
    file.write_text("mine\n")
    line = one_line_error(capsys, ["train", experiment("tiny"), f"output_dir={file}"])
    assert f"{file} is a file, not a folder" in line
    assert file.read_text() == "mine\n"


def test_a_name_too_long_for_a_folder_is_refused(capsys, tmp_path: Path, experiment) -> None:
    line = one_line_error(capsys, ["train", experiment("tiny"), "name=" + "a" * 300])
    assert "is 300 characters long" in line and "at most 200" in line
    assert nothing_written(tmp_path)


def test_slurm_dry_run_refuses_negative_gpus(capsys, tmp_path: Path, experiment, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    status = load_script("launchers/slurm.py").main([str(experiment("tiny")), "slurm.gpus_per_node=-1", "--dry-run"])
    out, err = capsys.readouterr()
    assert status == EXIT_BAD_INPUT and "#SBATCH" not in out
    assert err.strip() == "launchers/slurm.py: error: command line: slurm.gpus_per_node=-1: must be >= 0 (0 = a CPU-only job)"


def test_a_plugin_builder_gets_its_bounds_checked(experiment, restore_registries) -> None:
    @MODELS.register("bounded_test_model")
    def bounded(*, num_classes: int, img_size: int = 32, width: Annotated[int, Range(ge=8, hint="channels")] = 16) -> Any:
        raise AssertionError("never built at load time")

    path = experiment("tiny", model={"name": "bounded_test_model"})
    assert load_run(path, ["model.width=8"]).cfg.model["width"] == 8
    with pytest.raises(ConfigError, match=r"model\.width=4: must be >= 8 \(channels\)"):
        load_run(path, ["model.width=4"])


@pytest.mark.parametrize(
    ("bound", "value", "problem"),
    [
        (Range(ge=0), -1, "must be >= 0"),
        (Range(gt=0), 0, "must be > 0"),
        (Range(ge=0, le=1), 1.5, "must be >= 0 and <= 1"),
        (Range(ge=0, lt=1), 1, "must be >= 0 and < 1"),
        (Range(ge=0), float("nan"), "must be a finite number"),
        (Range(ge=0), float("inf"), "must be a finite number"),
        (Range(ge=0), "1", "must be a number"),
        (Range(ge=0), True, "must be a number"),
        (Range(ge=0, lt=1), [0.9, 1.0], "must be >= 0 and < 1"),
    ],
)
def test_range_says_what_is_wrong(bound: Range, value: Any, problem: str) -> None:
    assert bound.problem(value) == problem


@pytest.mark.parametrize("value", [None, 0, 0.5, [0.1, 0.9]])
def test_range_lets_good_values_through(value: Any) -> None:
    assert Range(ge=0, lt=1).problem(value) is None


@pytest.mark.parametrize(
    ("override", "shown"),
    [
        ("output_dir=~no-such-user-here/runs", "output_dir=~no-such-user-here/runs: no home directory for ~no-such-user-here"),
        ("output_dir=/tmp/" + "a" * 300, "cannot use it: File name too long"),
        ("finetune.checkpoint=~no-such-user-here/last.pt", "finetune.checkpoint=~no-such-user-here/last.pt: no home directory"),
        ("finetune.checkpoint=/tmp/" + "a" * 300, "cannot use it: File name too long"),
    ],
)
def test_paths_that_cannot_be_used_are_one_line(capsys, tmp_path: Path, experiment, override: str, shown: str) -> None:
    """RuntimeError (an unknown ~user) and OSError (a name too long) came out as tracebacks."""
    assert shown in one_line_error(capsys, ["train", experiment("tiny"), override])
    assert nothing_written(tmp_path)


@pytest.mark.parametrize(
    ("override", "shown"),
    [
        ("model.img_size=${oops}", "command line: model.img_size: Interpolation key 'oops' not found"),
        ("optim.lr=${oc.env:NO_SUCH_VARIABLE,-1}", "optim.lr='${oc.env:NO_SUCH_VARIABLE,-1}': must be > 0"),
        ("plugins=${oops}", "command line: plugins: Interpolation key 'oops' not found"),
    ],
)
def test_interpolations_are_checked_once_resolved(capsys, experiment, override: str, shown: str) -> None:
    """OmegaConf's interpolation errors came out as tracebacks; a bounded value shows what was written."""
    assert shown in one_line_error(capsys, ["expand", experiment("tiny"), override])


def test_the_missing_marker_is_refused_not_ignored(tmp_path: Path, experiment) -> None:
    """OmegaConf's merge kept the value under '???': seed=??? trained with seed 0 without a word."""
    with pytest.raises(ConfigError, match=r"command line: seed: '\?\?\?' \(OmegaConf's mark for a missing value\)"):
        load_run(experiment("tiny"), ["seed=???"])
    with pytest.raises(ConfigError, match=r"tiny\.yaml: optim\.lr: '\?\?\?'"):
        load_run(experiment("tiny", optim={"lr": "???"}))
