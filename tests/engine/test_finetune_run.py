"""Fine-tuning at a higher resolution, with distillation (the reference code refuses that combination)."""

from __future__ import annotations

from research.cli import main
from research.config import load_run
from research.engine import checkpoint
from research.launch.local import run_locally


def test_finetune_at_higher_resolution_with_hard_distillation(experiment) -> None:
    one_epoch = {"epochs": 1, "progress": False}
    experiment("teacher", model={"name": "resnet10_cifar", "img_size": 32}, train=one_epoch)
    experiment("student32", model={"name": "deit_nano_distilled_patch4_32", "img_size": 32}, train=one_epoch)
    path = experiment(
        "student48",
        job_type="finetune",
        model={"name": "deit_nano_distilled_patch4_32", "img_size": 48},
        data={"name": "synthetic", "size": 48, "num_classes": 4, "img_size": 48},
        finetune={"from_experiment": "student32.yaml"},
        teacher={"from_experiment": "teacher.yaml"},
        loss={"name": "hard"},
        train=one_epoch,
    )
    run = load_run(path)
    assert run.teacher_run.name == "teacher" and run.finetune_run.name == "student32"
    trained = run_locally([run])
    assert [r.name for r in trained] == ["teacher", "student32", "student48"]  # prerequisites first

    source = checkpoint.load(run.finetune_run.run_dir / "last.pt")["model"]
    tuned = checkpoint.load(run.run_dir / "last.pt")
    assert source["pos_embed"].shape[1] == 2 + 8 * 8 and tuned["model"]["pos_embed"].shape[1] == 2 + 12 * 12
    assert tuned["epoch"] == 1 and tuned["config"]["loss"]["name"] == "hard"


def test_a_finetune_checkpoint_of_another_architecture_is_one_line_naming_the_file_and_both_models(experiment, capsys) -> None:
    one_epoch = {"epochs": 1, "progress": False}
    cnn = load_run(experiment("cnn", model={"name": "resnet10_cifar", "img_size": 32}, train=one_epoch))
    run_locally([cnn])
    path = experiment("tuned", finetune={"checkpoint": str(cnn.run_dir / "last.pt")}, train=one_epoch)
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if "error:" in line]
    assert f"finetune.checkpoint {cnn.run_dir / 'last.pt'} holds model 'resnet10_cifar'" in line
    assert "the experiment builds 'deit_nano_patch4_32'" in line
