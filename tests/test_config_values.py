"""Bad values never start (issue 17, section 4): every value is checked when the experiment loads, so
the command exits 2 with one line naming the key and the value as given, and writes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import pytest
from scripts import load_script

from research.cli import EXIT_BAD_INPUT, main
from research.config import ConfigError, load_run
from research.registry import MODELS, OneOf, Range

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
        ("aug.mixup=-0.5", "aug.mixup=-0.5: must be >= 0"),
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
        ("aug.mixup=-0.5", "aug.mixup=-0.5: must be >= 0"),  # expand crashed on it
        ("model.eval_head=best", "model.eval_head 'best' is not one of both, class, distillation"),
        ("model.img_size=[1]", "model.img_size: Value '[1]' of type 'ListConfig' could not be converted to Integer"),
        ("optim.name=adamx", "optim.name: timm has no optimizer 'adamx'; did you mean adamax"),  # failed in timm at train
        ("logger={name: wandb, mode: onlin}", "logger.mode 'onlin' is not one of online, offline, disabled, null"),
        ("sched.name=cosin", "sched.name 'cosin' is not one of cosine, tanh,"),  # timm made no schedule
    ],
)
def test_expand_refuses_a_bad_value(capsys, tmp_path: Path, experiment, override: str, shown: str) -> None:
    line = one_line_error(capsys, ["expand", experiment("tiny", **DISTILLED), override])
    assert f"command line: {shown}" in line


def test_every_bad_value_is_reported_at_once(experiment) -> None:
    with pytest.raises(ConfigError) as caught:
        load_run(experiment("tiny"), ["optim.lr=-1", "train.epochs=0", "resources.nodes=0"])
    message = str(caught.value)
    assert "optim.lr=-1" in message and "train.epochs=0" in message and "resources.nodes=0" in message
    assert message.count("; ") == 2 and "\n" not in message


def test_the_file_that_set_a_bad_value_is_named(tmp_path: Path, experiment) -> None:
    with pytest.raises(ConfigError, match=r"tiny\.yaml: train\.label_smoothing=1\.5: must be >= 0 and < 1"):
        load_run(experiment("tiny", train={"label_smoothing": 1.5}))
    with pytest.raises(ConfigError, match=r"tiny\.yaml: train\.label_smoothing=1\.0: must be >= 0 and < 1"):
        load_run(experiment("tiny", train={"label_smoothing": 1.0}))  # the criterion's builder trusts the bound


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
    status = load_script("launchers/slurm.py").main([str(experiment("tiny")), "resources.gpus_per_node=-1", "--dry-run"])
    out, err = capsys.readouterr()
    assert status == EXIT_BAD_INPUT and "#SBATCH" not in out
    assert err.strip() == "launchers/slurm.py: error: command line: resources.gpus_per_node=-1: must be >= 0 (0 = a CPU-only job)"


def test_a_plugin_builder_gets_its_bounds_and_choices_checked(experiment, restore_registries) -> None:
    @MODELS.register("bounded_test_model")
    def bounded(
        *,
        num_classes: int,
        img_size: int = 32,
        width: Annotated[int, Range(ge=8, hint="channels")] = 16,
        norm: Annotated[str, OneOf("batch", "layer", hint="the normalisation")] = "batch",
    ) -> Any:
        raise AssertionError("never built with a bad value")

    path = experiment("tiny", model={"name": "bounded_test_model"})
    assert load_run(path, ["model.width=8", "model.norm=layer"]).cfg.model == {
        "name": "bounded_test_model", "img_size": 32, "width": 8, "norm": "layer"
    }
    with pytest.raises(ConfigError, match=r"model\.width=4: must be >= 8 \(channels\)"):
        load_run(path, ["model.width=4"])
    with pytest.raises(ConfigError) as caught:
        load_run(path, ["model.norm=group", "model.width=4"])
    assert str(caught.value) == (
        "command line: model.width=4: must be >= 8 (channels); "
        "command line: model.norm 'group' is not one of batch, layer (the normalisation)"
    )
    # the same declarations guard the Python API: a notebook's build is refused before the builder runs
    with pytest.raises(ValueError, match=r"^model 'bounded_test_model': model\.width=4: must be >= 8 \(channels\); model\.norm 'group' is"):
        MODELS.build("bounded_test_model", num_classes=10, width=4, norm="group")


@pytest.mark.parametrize(
    ("overrides", "shown"),
    [
        (["train.precision=fp64"], "command line: train.precision 'fp64' is not one of fp32, bf16, fp16"),
        (["job_type=pretrain"], "command line: job_type 'pretrain' is not one of train, teacher, finetune, eval"),
        (["finetune.interpolation=nearest"], "command line: finetune.interpolation 'nearest' is not one of bicubic, bilinear"),
        (["loss={name: soft, kl_reduction: mean}"], "command line: loss.kl_reduction 'mean' is not one of numel, batchmean"),
    ],
)
def test_a_value_that_is_not_a_choice_is_refused(experiment, overrides: list[str], shown: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_run(experiment("tiny", **DISTILLED), overrides)
    assert str(caught.value) == shown


def test_every_bad_value_and_choice_is_reported_at_once(experiment) -> None:
    with pytest.raises(ConfigError) as caught:
        load_run(experiment("tiny"), ["train.precision=fp64", "sched.step_on=batch", "train.epochs=0"])
    assert str(caught.value).split("; ") == [
        "command line: sched.step_on 'batch' is not one of epoch, step",
        "command line: train.epochs=0: must be >= 1",
        "command line: train.precision 'fp64' is not one of fp32, bf16, fp16",
    ]


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


def test_one_of_says_what_is_wrong() -> None:
    assert OneOf("a", "b").problem("a") is None
    assert OneOf("a", "b").problem("c") == "is not one of a, b"
    assert OneOf("a", "b").problem(None) == "is not one of a, b"  # None is a choice only when listed
    assert OneOf("a", None, hint="h").problem(None) is None
    assert OneOf("a", None, hint="h").problem(1) == "is not one of a, null (h)"


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


# Issue 24: values that used to be taken without a word, or to fail once the run dir was written.


def test_a_loss_without_distillation_trains_no_teacher_and_reads_the_class_head(
    capsys, tmp_path: Path, experiment, plain_loss: str
) -> None:
    """It trained the linked teacher anyway and reported a top-1 averaging in the untrained distillation head."""
    import json

    import yaml

    experiment("teacher", model={"name": "resnet10_cifar", "img_size": 32})
    student = experiment(
        "student",
        model={"name": "deit_nano_distilled_patch4_32", "img_size": 32, "eval_head": "both"},
        teacher={"from_experiment": "teacher.yaml"},
        loss={"name": plain_loss},
    )
    run = load_run(student)
    assert run.teacher_run is None and run.cfg.teacher is None and run.cfg.model["eval_head"] == "class"
    assert main(["train", str(student)]) == 0
    assert not (tmp_path / "runs" / "teacher").exists()  # neither trained nor built
    saved = yaml.safe_load((run.run_dir / "config.yaml").read_text())
    assert saved["teacher"] is None and saved["model"]["eval_head"] == "class"
    last = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()][-1]
    assert last["val/top1"] == last["val/top1_class"]  # the class head, the one trained
    with pytest.raises(ConfigError, match="model.eval_head=distillation: loss 'plain_test_loss' does not distil"):
        load_run(student, ["model.eval_head=distillation"])


@pytest.mark.parametrize(
    ("overrides", "shown"),
    [
        (["optim.betas=[0.9,0.99,0.5]"], "command line: optim.betas=[0.9, 0.99, 0.5] holds 3 values; give two"),
        (["optim.betas=[0.9]"], "optim.betas=[0.9] holds 1 values; give two"),
        (["optim.name=sgd", "optim.betas=[0.9,0.99]"], "optim.betas: optimizer 'sgd' takes no betas; they are for Adam-like optimizers (adamw"),
        (["optim.name=momentum", "optim.betas=[0.9,0.99]"], "optimizer 'momentum' takes no betas"),
        (["sched.warmup_epochs=1", "train.epochs=1"], "command line: sched.warmup_epochs=1 is not shorter than train.epochs=1"),
        (["sched.warmup_epochs=7.5", "train.epochs=3"], "sched.warmup_epochs=7.5 is not shorter than train.epochs=3"),
        (["sched.name=plateau"], "rsqrt (timm's schedules; plateau is not supported: it needs a validation metric at every step)"),
    ],
)
def test_values_timm_would_take_but_not_use_are_refused(capsys, tmp_path: Path, experiment, overrides, shown) -> None:
    line = one_line_error(capsys, ["train", experiment("tiny"), *overrides])
    assert shown in line
    assert nothing_written(tmp_path)


def test_betas_of_an_adam_like_optimizer_load(experiment) -> None:
    assert load_run(experiment("tiny"), ["optim.betas=[0.9,0.95]"]).cfg.optim.betas == [0.9, 0.95]
    assert load_run(experiment("tiny"), ["optim.name=lamb", "optim.betas=[0.9,0.95]"]).cfg.optim.betas == [0.9, 0.95]


@pytest.mark.parametrize("nproc", ["0", "-1"])
def test_nproc_below_one_is_refused(capsys, tmp_path: Path, experiment, nproc: str) -> None:
    line = one_line_error(capsys, ["train", experiment("tiny"), "--nproc", nproc])
    assert line == f"research train: error: --nproc {nproc}: must be at least 1"
    assert nothing_written(tmp_path)


def test_an_unannotated_plugin_parameter_takes_its_defaults_type(capsys, tmp_path: Path, experiment, restore_registries) -> None:
    """A string for ``depth=2`` reached the builder, which failed with a TypeError after the run dir was written."""

    @MODELS.register("unannotated_test_model")
    def unannotated(*, num_classes, img_size=32, depth=2, scale=1.0, note=None):  # type: ignore[no-untyped-def]
        raise AssertionError("never built at load time")

    path = experiment("tiny", model={"name": "unannotated_test_model"})
    line = one_line_error(capsys, ["train", path, "model.depth=abc"])
    assert "command line: model.depth: Value 'abc' of type 'str' could not be converted to Integer" in line
    assert nothing_written(tmp_path)
    cfg = load_run(path, ["model.depth=3", "model.scale=2", "model.note=anything"]).cfg
    assert (cfg.model["depth"], cfg.model["scale"], cfg.model["note"]) == (3, 2.0, "anything")
