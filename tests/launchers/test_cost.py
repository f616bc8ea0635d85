"""The cost estimate before submitting (research/launch/cost.py): arithmetic, sizes, FLOP scaling, unknowns, the table file."""

from __future__ import annotations

import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import yaml
from scripts import load_script

from research.cli import main as research_main
from research.config import ConfigError, load_runs
from research.launch.cost import (
    SHIPPED_TABLE,
    TABLE_ENV,
    Throughput,
    dataset_sizes,
    estimate_run,
    estimate_runs,
    format_estimates,
    read_table,
    read_tables,
    record_throughput,
)
from research.models.flops import registered_flops

EXPERIMENT: dict[str, Any] = {
    "name": "costly",
    "model": {"name": "deit_nano_patch4_32", "img_size": 32},
    "data": {"name": "synthetic", "size": 1000, "num_classes": 4},
    "aug": {"name": "none", "simple_crop": True},
    "logger": {"name": "none"},
    "loader": {"batch_size": 8, "workers": 0},
    "sched": {"warmup_epochs": 0},
    "train": {"epochs": 3, "eval_every_epochs": 2, "eval_hflip": True, "precision": "bf16", "progress": False},
    "slurm": {"gpus_per_node": 2, "gpu_type": "testgpu"},
}
# A hand-made table: the run's key at 100 img/s training and 400 img/s evaluation per device.
ROW = {"model": "deit_nano_patch4_32", "img_size": 32, "batch_size": 8, "precision": "bf16", "device": "testgpu",
       "scope": "step", "train_img_s": 100.0, "eval_img_s": 400.0, "measured": "today", "source": "by hand"}


@pytest.fixture(autouse=True)
def own_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home of the test's own, so the user's throughput table (~/.cache/research) is the test's."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(TABLE_ENV, raising=False)
    return tmp_path / "home"


def experiment(tmp_path: Path, **sections: Any) -> Path:
    config = {**EXPERIMENT, "output_dir": str(tmp_path / "runs"), **sections}
    path = tmp_path / "costly.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_estimate_is_images_times_epochs_over_rate_plus_evaluation(tmp_path: Path) -> None:
    (run,) = load_runs(experiment(tmp_path), check_files=False)
    estimate = estimate_run(run, [Throughput.from_mapping(ROW)])
    # 2 GPUs. Training: 3 epochs x 1000 images / (2 x 100 img/s) = 15 s. Evaluation after epochs 2 and 3
    # (every 2nd, and the last), 1000 val images x 2 views (flip TTA) / (2 x 400 img/s) = 2 x 2.5 s.
    assert estimate.train_s == pytest.approx(15.0)
    assert estimate.eval_s == pytest.approx(5.0)
    assert estimate.wall_s == pytest.approx(20.0)
    assert estimate.gpu_hours == pytest.approx(2 * 20.0 / 3600)
    text = format_estimates([estimate])
    assert "testgpu" in text and "20 s" in text and "by hand" in text and ">=" not in text


def test_grid_totals_add_gpu_hours_and_take_the_longest_run_for_the_wall_time(tmp_path: Path) -> None:
    path = experiment(tmp_path, ablation={"variants": {"short": {}, "long": {"train.epochs": 6}}})
    runs = load_runs(path, check_files=False)
    estimates = [estimate_run(run, [Throughput.from_mapping(ROW)]) for run in runs]
    # short: 15 + 5 s; long: 6 x 1000 / 200 = 30 s of training + 3 evaluations x 2.5 s = 37.5 s
    assert [e.wall_s for e in estimates] == pytest.approx([20.0, 37.5])
    total = format_estimates(estimates).splitlines()[5]
    assert total.startswith("total over 2 runs: 0.0319 GPU-h")  # 2 GPUs x 57.5 s
    assert "wall time 38 s with every run started at once" in total and "58 s one after another" in total


def test_missing_eval_rate_gives_a_lower_bound(tmp_path: Path) -> None:
    (run,) = load_runs(experiment(tmp_path), check_files=False)
    estimate = estimate_run(run, [Throughput.from_mapping({**ROW, "eval_img_s": ""})])
    assert estimate.eval_s is None and estimate.wall_s == pytest.approx(15.0)
    text = format_estimates([estimate])
    assert ">=15 s" in text and "evaluation not measured" in text


def test_a_device_without_measurements_is_unknown_with_the_command_to_measure_it(tmp_path: Path) -> None:
    table = tmp_path / "table.csv"
    record_throughput([{**ROW, "device": "othergpu"}], table)
    (run,) = load_runs(experiment(tmp_path), check_files=False)
    (estimate,) = estimate_runs([run], table=table, config=run.source, overrides=["train.epochs=3"])
    assert not estimate.known and estimate.gpu_hours is None
    assert "no measurement of deit_nano_patch4_32 32px batch 8 bf16 on testgpu" in estimate.reason
    assert estimate.command.startswith("research throughput ")
    assert estimate.command.endswith(f"costly.yaml train.epochs=3 --device testgpu --throughput-table {table}")
    text = format_estimates([estimate])
    cells = text.splitlines()[3].split()  # run, device, devices, GPU-h, wall time, rate, note...
    assert cells[:6] == ["costly", "testgpu", "2", "unknown", "unknown", "-"]  # no figure at all
    assert "total: unknown" in text and estimate.command in text


@pytest.mark.parametrize(
    ("change", "scale"),
    [
        ({"batch_size": 16}, 1.0),
        ({"precision": "fp16"}, 1.0),
        ({"teacher": "airbench_cifar"}, 1.0),
        ({"img_size": 64}, registered_flops("deit_nano_patch4_32", 64) / registered_flops("deit_nano_patch4_32", 32)),
        ({"model": "deit_tiny_patch4_32"}, registered_flops("deit_tiny_patch4_32", 32) / registered_flops("deit_nano_patch4_32", 32)),
    ],
    ids=lambda value: next(iter(value)) if isinstance(value, dict) else "",
)
def test_a_run_without_its_row_is_scaled_from_the_nearest_row_on_its_device_by_flops(
    tmp_path: Path, change: dict[str, Any], scale: float
) -> None:
    table = tmp_path / "table.csv"
    record_throughput([{**ROW, **change}, {**ROW, **change, "device": "othergpu", "train_img_s": 1.0}], table)
    (run,) = load_runs(experiment(tmp_path), check_files=False)
    (estimate,) = estimate_runs([run], table=table, config=run.source)
    assert estimate.scaled and estimate.row is not None and estimate.row.device == "testgpu"
    assert estimate.scale == pytest.approx(scale) and (scale == 1.0 or scale > 1.5)  # a bigger model: more FLOPs per image
    assert estimate.train_s == pytest.approx(15.0 / scale) and estimate.eval_s == pytest.approx(5.0 / scale)
    text = format_estimates([estimate])
    cells = text.splitlines()[3].split()
    assert cells[:4] == ["costly", "testgpu", "2", f"~{2 * 20 / scale / 3600:.3g}"] and "total over 1 run: ~" in text
    assert f"scaled from {estimate.row.model} {estimate.row.img_size}px batch {estimate.row.batch_size}" in text
    assert "~ scaled: no row of the run's own key" in text and estimate.command in text  # and how to measure its own


def test_the_nearest_row_shares_the_teacher_then_the_precision_then_the_flops(tmp_path: Path) -> None:
    rows = [
        {**ROW, "model": "deit_micro_patch4_32", "precision": "fp32", "train_img_s": 1.0},
        {**ROW, "model": "deit_micro_patch4_32", "teacher": "airbench_cifar", "train_img_s": 2.0},
        {**ROW, "model": "deit_tiny_patch4_32", "train_img_s": 3.0},
        {**ROW, "model": "deit_micro_patch4_32", "batch_size": 64, "train_img_s": 4.0},
    ]
    (run,) = load_runs(experiment(tmp_path), check_files=False)
    table = [Throughput.from_mapping(row) for row in rows]
    assert estimate_run(run, table).row.train_img_s == 4.0  # no teacher, bf16, micro (closer to nano than tiny)
    assert estimate_run(run, table[:3]).row.train_img_s == 3.0  # the same precision before closer FLOPs
    assert estimate_run(run, table[:2]).row.train_img_s == 1.0  # no teacher before the same precision


def test_no_target_device_says_how_to_name_one(tmp_path: Path) -> None:
    (run,) = load_runs(experiment(tmp_path, slurm={"gpus_per_node": 1}), check_files=False)
    estimate = estimate_run(run, [Throughput.from_mapping(ROW)])
    assert not estimate.known and "set resources.gpu_type or pass --device (the table has: testgpu)" in estimate.reason
    assert format_estimates([estimate]) == f"cost estimate: {estimate.reason}"
    assert estimate_run(run, [Throughput.from_mapping(ROW)], device="TestGPU").wall_s == pytest.approx(40.0)  # 1 GPU


def test_record_throughput_merges_by_key_and_keeps_the_comments(tmp_path: Path) -> None:
    table = tmp_path / "table.csv"
    table.write_text("# my cluster's table\n")
    record_throughput([ROW, {**ROW, "batch_size": 16, "train_img_s": 150}], table)
    record_throughput([Throughput.from_mapping({**ROW, "train_img_s": 120, "source": "again"})], table)
    rows = read_table(table)
    assert [(r.batch_size, r.train_img_s, r.source) for r in rows] == [(16, 150.0, "by hand"), (8, 120.0, "again")]
    assert table.read_text().startswith("# my cluster's table\nmodel,img_size,")


def test_the_table_comes_from_the_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table = tmp_path / "elsewhere.csv"
    record_throughput([ROW], table)
    monkeypatch.setenv(TABLE_ENV, str(table))
    assert [row.source for row in read_tables()][0] == "by hand"  # then the shipped rows
    monkeypatch.setenv(TABLE_ENV, str(tmp_path / "missing.csv"))
    with pytest.raises(ConfigError, match="missing.csv: no such file"):
        read_tables()


def test_bad_rows_are_refused_with_the_file_named(tmp_path: Path) -> None:
    table = tmp_path / "bad.csv"
    table.write_text("model,img_size,batch_size,precision,device,train_img_s,speed\nm,32,8,bf16,x,10,1\n")
    with pytest.raises(ConfigError, match=r"bad.csv line 2: unknown throughput column\(s\) speed"):
        read_table(table)
    with pytest.raises(ConfigError, match="rates are > 0"):
        Throughput.from_mapping({**ROW, "train_img_s": 0})


def test_the_shipped_table_cites_a_source_for_every_row() -> None:
    rows = read_table(SHIPPED_TABLE)
    assert rows and all(row.source and row.measured and math.isfinite(row.train_img_s) for row in rows)
    h200 = {(r.model, r.batch_size): r.train_img_s for r in rows if r.device == "h200"}
    assert h200[("deit_tiny_patch16_224", 256)] == 7341 and h200[("deit_base_patch16_224", 128)] == 2427
    assert any(row.device.startswith("cpu") for row in rows)


def test_research_expand_prints_the_cost(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = tmp_path / "table.csv"
    record_throughput([ROW], table)
    assert research_main(["expand", str(experiment(tmp_path)), "--throughput-table", str(table)]) == 0
    out = capsys.readouterr().out
    assert f"cost estimate (throughput tables: {table}, then research/launch/throughput.csv)" in out and "total over 1 run: 0.0111 GPU-h" in out


def test_slurm_dry_run_prints_the_cost_and_asks_for_the_gpu_type(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch: only a dry run can work
    table = tmp_path / "table.csv"
    record_throughput([ROW], table)
    launcher = load_script("launchers/slurm.py")
    assert launcher.main([str(experiment(tmp_path)), "--dry-run", "--throughput-table", str(table)]) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --gpus-per-node=testgpu:2" in out
    assert "costly  testgpu  2        0.0111" in out


def test_gpu_type_without_gpus_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    launcher = load_script("launchers/slurm.py")
    path = experiment(tmp_path, slurm={"gpu_type": "h200"})
    assert launcher.main([str(path), "--dry-run"]) == 2
    assert "resources.gpu_type=h200 asks for GPUs of that type: set resources.gpus_per_node" in capsys.readouterr().err


def test_research_throughput_measures_and_records_a_step_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = tmp_path / "table.csv"
    path = experiment(tmp_path, train={"epochs": 1, "precision": "fp32", "progress": False})
    assert research_main(["throughput", str(path), "--device", "cpu-test", "--throughput-table", str(table), "--steps", "2"]) == 0
    (row,) = read_table(table)
    assert (row.model, row.batch_size, row.precision, row.device, row.scope) == ("deit_nano_patch4_32", 8, "fp32", "cpu-test", "step")
    assert row.train_img_s > 0 and row.eval_img_s and row.eval_img_s > 0 and "research throughput" in row.source
    assert "recorded in" in capsys.readouterr().out


def test_research_throughput_refuses_a_gpu_name_on_a_cpu(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert research_main(["throughput", str(experiment(tmp_path)), "--device", "h200", "--throughput-table", str(tmp_path / "t.csv")]) == 2
    assert "there is no GPU here" in capsys.readouterr().err


def test_research_throughput_times_a_distilled_step_without_the_teacher_checkpoint(tmp_path: Path) -> None:
    table = tmp_path / "table.csv"
    path = experiment(
        tmp_path,
        model={"name": "deit_nano_distilled_patch4_32", "img_size": 32},
        teacher={"name": "resnet9_slim_cifar", "checkpoint": str(tmp_path / "never-written.pt")},
        loss={"name": "hard"},
        train={"epochs": 1, "precision": "bf16", "progress": False},
    )
    assert research_main(["throughput", str(path), "--device", "cpu-test", "--throughput-table", str(table), "--steps", "1"]) == 0
    (row,) = read_table(table)
    assert (row.model, row.teacher) == ("deit_nano_distilled_patch4_32", "resnet9_slim_cifar") and row.train_img_s > 0
    # and that row now prices the run
    (run,) = load_runs(path, check_files=False)
    (estimate,) = estimate_runs([run], table=table, device="cpu-test")
    assert estimate.known and estimate.train_s == pytest.approx(1000 / (2 * row.train_img_s))


def test_research_throughput_records_in_the_users_table_never_the_shipped_one(
    tmp_path: Path, own_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shipped = SHIPPED_TABLE.read_bytes()
    path = experiment(tmp_path, train={"epochs": 1, "precision": "fp32", "progress": False})
    assert research_main(["throughput", str(path), "--device", "cpu-test", "--steps", "1"]) == 0
    assert SHIPPED_TABLE.read_bytes() == shipped  # a tracked file: writing it dirtied every later run's commit
    user_table = own_home / ".cache" / "research" / "throughput.csv"
    assert f"recorded in {user_table}" in capsys.readouterr().out
    (row,) = read_table(user_table)
    (run,) = load_runs(path, check_files=False)
    (estimate,) = estimate_runs([run], device="cpu-test")  # no table named: the user's, then the shipped
    assert estimate.row == row and estimate.train_s == pytest.approx(1000 / (2 * row.train_img_s))
    # named explicitly, the shipped table is refused before anything is measured
    status = research_main(["throughput", str(path), "--device", "cpu-test", "--throughput-table", str(SHIPPED_TABLE)])
    assert status == 2 and "shipped with the package: no command writes it" in capsys.readouterr().err
    assert SHIPPED_TABLE.read_bytes() == shipped


def test_a_users_row_comes_before_the_shipped_row_of_the_same_key(tmp_path: Path) -> None:
    shipped = read_table(SHIPPED_TABLE)[0]
    table = record_throughput([{**asdict(shipped), "train_img_s": shipped.train_img_s * 2, "source": "mine"}], tmp_path / "mine.csv")
    rows = read_tables(table)
    assert [row.source for row in rows if row.key == shipped.key] == ["mine", shipped.source]


@pytest.mark.parametrize(
    ("content", "shown"),
    [
        (None, "is a directory"),
        (b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x00binary", "cannot read it as CSV text"),
        (b"model,img_size\x00,batch_size\n", "cannot read it as CSV text"),
        (b"model,img_size,batch_size,precision,device,train_img_s\nm,32,8,bf16,x,10,1,2\n", "line 2: more cells than the header's 6 columns"),
        (b"model,img_size\nm,thirty\n", "line 2: bad throughput row"),
    ],
    ids=["directory", "binary", "nul", "extra-cells", "bad-number"],
)
def test_a_malformed_table_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | None, shown: str) -> None:
    table = tmp_path / "table.csv"
    table.mkdir() if content is None else table.write_bytes(content)
    for argv in (["expand", str(experiment(tmp_path))], ["throughput", str(experiment(tmp_path)), "--device", "cpu-test"]):
        assert research_main([*argv, "--throughput-table", str(table)]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and shown in err, err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("steps", ["0", "-3"])
def test_research_throughput_refuses_no_steps(tmp_path: Path, capsys: pytest.CaptureFixture[str], steps: str) -> None:
    assert research_main(["throughput", str(experiment(tmp_path)), "--device", "cpu-test", "--steps", steps]) == 2
    assert capsys.readouterr().err.strip() == f"research throughput: error: --steps {steps}: must be at least 1"
def test_inference_rate_is_the_measured_eval_rate_of_the_runs_row(experiment, tmp_path: Path) -> None:
    from research.config import load_run
    from research.launch.cost import Throughput, inference_rate, record_throughput, run_key

    run = load_run(experiment("timed", slurm={"gpu_type": "h200"}))
    model, img_size, batch, precision, device, teacher = run_key(run.cfg, "h200")
    table = tmp_path / "throughput.csv"
    record_throughput(
        [Throughput(model=model, img_size=img_size, batch_size=batch, precision=precision, device=device, teacher=teacher,
                    train_img_s=1000.0, eval_img_s=3000.0)],
        table,
    )
    assert inference_rate(run, table) == 3000.0  # inference, not the training rate
    assert inference_rate(load_run(experiment("untimed", slurm={"gpu_type": "a100"})), table) is None
    assert inference_rate(load_run(experiment("nowhere")), table) is None  # no gpu_type: no device to read
    assert inference_rate(run) is None  # no table named: the user's (none yet, own HOME), then the shipped; it raised a TypeError


def test_a_loss_that_does_not_distil_is_priced_without_its_teacher(tmp_path: Path, plain_loss: str) -> None:
    """By ``LossInfo.needs_teacher``, not by the name "none": a plugin loss's run has no teacher's forward to pay for."""
    distilled = {"name": "deit_nano_distilled_patch4_32", "img_size": 32}
    with_teacher = {"model": distilled, "teacher": {"name": "resnet10_cifar", "checkpoint": str(tmp_path / "t.pt")}}
    row = {**ROW, "model": distilled["name"]}
    rows = [Throughput.from_mapping(r) for r in ({**row, "teacher": "resnet10_cifar", "train_img_s": 50.0}, row)]
    (run,) = load_runs(experiment(tmp_path, loss={"name": plain_loss}, **with_teacher), check_files=False)
    estimate = estimate_run(run, rows)
    assert estimate.row == rows[1] and not estimate.scaled and estimate.train_s == pytest.approx(15.0)
    (run,) = load_runs(experiment(tmp_path, loss={"name": "hard"}, **with_teacher), check_files=False)
    assert estimate_run(run, rows).row == rows[0]  # a distilling loss: the teacher's row


@pytest.mark.parametrize(
    ("data", "sizes"),
    [
        ({"name": "imagenet", "root": "/not/mounted"}, (1_281_167, 50_000, 1000)),
        ({"name": "cifar10_jpeg"}, (40_000, 5_000, 10)),
        ({"name": "cifar10", "root": "/not/mounted"}, (50_000, 10_000, 10)),
        ({"name": "synthetic", "size": 300, "num_classes": 3}, (300, 300, 3)),
        ({"name": "synthetic"}, (64, 64, 10)),  # the builder's defaults
        ({"name": "imagefolder", "root": "/not/mounted", "train_size": 900, "val_size": 90, "num_classes": 9}, (900, 90, 9)),
    ],
    ids=lambda value: value["name"] if isinstance(value, dict) else "",
)
def test_dataset_sizes_are_known_facts_or_declared_keys_without_the_data(tmp_path: Path, data: dict[str, Any], sizes: tuple[int, int, int]) -> None:
    (run,) = load_runs(experiment(tmp_path, data=data), check_files=False)
    assert dataset_sizes(run.cfg, count_files=False) == sizes
    (run,) = load_runs(experiment(tmp_path, data=data, loader={"batch_size": 8, "workers": 0, "limit_train": 50}), check_files=False)
    assert dataset_sizes(run.cfg)[0] == 50  # capped by loader.limit_train


def test_an_undeclared_image_folder_is_counted_where_it_is_mounted(tmp_path: Path) -> None:
    for split, per_class in (("train", 3), ("val", 2)):
        for label in ("cat", "dog"):
            (tmp_path / "images" / split / label).mkdir(parents=True)
            for i in range(per_class):
                (tmp_path / "images" / split / label / f"{i}.jpg").write_bytes(b"")
    (run,) = load_runs(experiment(tmp_path, data={"name": "imagefolder", "root": str(tmp_path / "images")}), check_files=False)
    assert dataset_sizes(run.cfg) == (6, 4, 2)
    assert "not counted" in dataset_sizes(run.cfg, count_files=False)
    (run,) = load_runs(experiment(tmp_path, data={"name": "imagefolder", "root": str(tmp_path / "absent")}), check_files=False)
    assert "are not on this machine" in dataset_sizes(run.cfg)


def test_the_table_is_replaced_in_one_step_so_a_failed_write_keeps_the_old_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table = record_throughput([ROW], tmp_path / "table.csv")
    before = table.read_bytes()

    def interrupted(src: Any, dst: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        record_throughput([{**ROW, "batch_size": 16}], table)
    assert table.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["table.csv"]  # no temporary file left


def test_a_symlinked_table_is_written_through_the_link(tmp_path: Path) -> None:
    shared = record_throughput([ROW], tmp_path / "shared.csv")
    (tmp_path / "mine.csv").symlink_to(shared)
    record_throughput([{**ROW, "batch_size": 16}], tmp_path / "mine.csv")
    assert (tmp_path / "mine.csv").is_symlink() and len(read_table(shared)) == 2


# The signature command: ImageNet runs priced where /datasets/imagenet is not mounted.
SIGNATURE = Path(__file__).resolve().parents[2] / "experiments" / "ablate_all.yaml"


def _gpu_hours_by_device(out: str) -> dict[str, dict[str, str]]:
    """The cost table of a dry run's output: run -> GPU-h cell, per device."""
    table = out[out.index("cost estimate (throughput tables"):].splitlines()
    header = table[1].split()
    cells: dict[str, dict[str, str]] = {}
    for line in table[3:]:
        if not line.startswith("ablate_all/"):
            break
        run, device, _, gpu_hours = line.split()[:4]
        cells.setdefault(device, {})[run] = gpu_hours
    assert header[:4] == ["run", "device", "devices", "GPU-h"]
    return cells


def test_the_signature_dry_run_prices_every_run_without_the_imagenet_data(capsys: pytest.CaptureFixture[str]) -> None:
    assert not Path("/datasets/imagenet/train").exists()
    launcher = load_script("launchers/slurm.py")
    assert launcher.main([str(SIGNATURE), "--dry-run", "--device", "h200"]) == 0
    cells = _gpu_hours_by_device(capsys.readouterr().out)
    runs = {run.name for run in load_runs(SIGNATURE, check_files=False)}
    assert list(cells) == ["h200"] and set(cells["h200"]) == runs and len(runs) == 10
    # DeiT-S at batch 128 fp16 has no row: the DeiT-S batch 256 bf16 row, x1 by FLOPs: 300 epochs of ImageNet-1k
    # and 300 x 50,000 val images (no eval rate: a lower bound) on 8 GPUs at 5,292 img/s each
    expected = 8 * 300 * 1_281_167 / (8 * 5292) / 3600
    assert all(cell == f"~>={expected:.3g}" for cell in cells["h200"].values())


def test_the_signature_dry_run_without_a_device_prices_every_device_of_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    launcher = load_script("launchers/slurm.py")
    assert launcher.main([str(SIGNATURE), "--dry-run"]) == 0
    out = capsys.readouterr().out
    cells = _gpu_hours_by_device(out)
    devices = sorted({row.device for row in read_table(SHIPPED_TABLE)})
    assert sorted(cells) == devices and all(len(runs) == 10 for runs in cells.values())
    assert not [cell for runs in cells.values() for cell in runs.values() if "unknown" in cell]
    assert all(f"on {device}: total over 10 runs: ~>=" in out for device in devices)
