"""``research report``: results read from hand-written run dirs of a half-finished ablation (one run
done, one running, one not started), the Markdown / CSV / PNG files, the W&B API path with a stand-in
``Api``, and one real two-variant ablation trained on synthetic data and reported."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

from research.cli import main as cli
from research.config import ConfigError, load_runs
from research.launch.run_check import config_record
from research.report import collect, write_report
from research.report.plots import delta_label
from research.report.table import table
from research.report.wandb_api import WandbUnavailable, fetch_results, split_life
from research.report.write import CSV, CURVES, DELTAS, MARKDOWN

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GRID = {"grid": {"aug.hflip": [0.5, 0.0, 1.0]}}  # variants hflip=0.5 (baseline), hflip=0, hflip=1
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def write_run(
    run_dir: Path,
    top1: Sequence[float],
    *,
    epochs: int = 4,
    status: str | None = None,
    teacher_top1: float | None = None,
    extra_records: Sequence[Mapping[str, Any]] = (),
) -> None:
    """A run dir as the engine leaves it after ``len(top1)`` epochs; ``status`` None = still training
    (no summary.json yet, a checkpoint exists)."""
    run_dir.mkdir(parents=True)
    records: list[dict[str, Any]] = []
    if teacher_top1 is not None:
        records.append({"epoch": 0, "teacher/top1": teacher_top1, "teacher/top5": 99.0})
    for epoch, value in enumerate(top1, start=1):
        records.append(
            {
                "epoch": epoch,
                "train/epoch_loss": 2.0 / epoch,
                "train/lr": 1e-3,
                "train/epoch_images_per_s": 900.0 + epoch,
                "epoch_time_s": 3.0,
                "val/top1": value,
                "val/top5": value + 30.0,
                "val/loss": 1.0,
                "val/best_top1": max(top1[:epoch]),
            }
        )
    records += extra_records
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run_dir / "config.yaml").write_text(yaml.safe_dump({**recorded_config(run_dir), "git": {"commit": COMMIT, "dirty": False}}))
    (run_dir / "last.pt").write_bytes(b"")
    if status is not None:
        summary = {
            "status": status,
            "epochs_done": len(top1),
            "epochs": epochs,
            "best_top1": max(top1, default=None),
            "last_top1": top1[-1] if top1 else None,
            "images_per_s": 1234.0,
            "wall_time_s": 12.0,
        }
        (run_dir / "summary.json").write_text(json.dumps(summary))


def recorded_config(run_dir: Path) -> dict[str, Any]:
    """The ``config.yaml`` a run writes: that of the run ``<root>/<experiment>.yaml`` (the ``experiment``
    fixture's file) makes in ``run_dir`` = ``<root>/<output dir>/<experiment>[/<variant>]``."""
    for experiment_dir in (run_dir, run_dir.parent):
        file = experiment_dir.parent.parent / f"{experiment_dir.name}.yaml"
        if file.is_file():
            runs = load_runs(file, [f"output_dir={experiment_dir.parent}"], check_files=False)
            match = [run for run in runs if run.run_dir == run_dir]
            if match:
                return config_record(match[0])
    raise AssertionError(f"no experiment file makes {run_dir}")


@pytest.fixture
def half_done(experiment, tmp_path: Path) -> Path:
    """An ablation of three variants: the baseline done, ``hflip=0`` at epoch 2 of 4, ``hflip=1`` not started."""
    path = experiment("ablate_flip", train={"epochs": 4}, ablation=GRID)
    runs = tmp_path / "runs" / "ablate_flip"
    write_run(runs / "hflip=0.5", [40.0, 55.0, 60.0, 58.0], status="done")
    write_run(runs / "hflip=0", [45.0, 62.0])
    return path


def table_rows(markdown: str) -> dict[str, list[str]]:
    """The body rows of the Markdown tables in ``markdown``, by their first cell."""
    rows = {}
    for line in markdown.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] not in ("variant",) and not set(line) <= set("|-"):
            rows[cells[0]] = cells
    return rows


def assert_png(path: Path, *, min_bytes: int = 5_000) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) > min_bytes, f"{path} is only {len(data)} bytes"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) >= 200


# --- results ------------------------------------------------------------------------------------------


def test_collect_half_finished_ablation(half_done: Path) -> None:
    done, running, waiting = collect(load_runs(half_done, check_files=False))
    assert (done.variant, done.status, done.is_baseline) == ("hflip=0.5", "done", True)
    assert (done.best_top1, done.best_epoch, done.top5, done.last_top1) == (60.0, 3, 90.0, 58.0)
    assert (done.epochs_done, done.epochs, done.delta_top1, done.images_per_s) == (4, 4, 0.0, 1234.0)
    assert done.commit == COMMIT and done.curve == ((1, 40.0), (2, 55.0), (3, 60.0), (4, 58.0))
    # running: its best so far, the throughput of its last epoch (no summary.json yet)
    assert (running.status, running.best_top1, running.delta_top1, running.epochs_done) == ("running", 62.0, 2.0, 2)
    assert running.images_per_s == 902.0 and running.differing == {"aug.hflip": 0.0}
    assert (waiting.status, waiting.best_top1, waiting.delta_top1, waiting.curve, waiting.epochs_done) == (
        "not started", None, None, (), 0,
    )


def test_resumed_epochs_count_once_and_teacher_line_is_not_an_epoch(experiment, tmp_path: Path) -> None:
    """A run resumed from an older checkpoint may log an epoch twice (the later record wins), and a
    distilled run's epoch-0 teacher line gives the teacher column, not a point of the curve."""
    path = experiment("resumed", train={"epochs": 3})
    redo = {"epoch": 2, "val/top1": 50.0, "val/top5": 80.0}
    write_run(tmp_path / "runs" / "resumed", [30.0, 70.0], teacher_top1=88.5, extra_records=[redo])
    (result,) = collect(load_runs(path, check_files=False))
    assert result.curve == ((1, 30.0), (2, 50.0)) and result.best_top1 == 50.0
    assert result.teacher_top1 == 88.5 and result.epochs_done == 2
    headers = table([result]).splitlines()[0]
    assert "teacher top-1" in headers and "EMA top-1" not in headers  # shown only when some run has one


def test_table_shows_wall_time_seed_and_each_head_of_a_distilled_run(experiment, tmp_path: Path) -> None:
    path = experiment("heads", seed=3, train={"epochs": 2})
    heads = {"val/top1_class": 61.0, "val/top1_distillation": 63.5, "val/top1_both": 64.0}
    write_run(tmp_path / "runs" / "heads", [50.0, 64.0], epochs=2, status="done",
              extra_records=[{"epoch": 2, "val/top1": 64.0, "val/top5": 94.0, **heads}])
    (result,) = collect(load_runs(path, check_files=False))
    assert result.seed == 3 and result.wall_time_s == 12.0
    assert result.head_top1 == {"class": 61.0, "distillation": 63.5, "both": 64.0}  # at the best epoch
    rendered = table([result])
    row = table_rows(rendered)["heads"]
    headers = [cell.strip() for cell in rendered.splitlines()[0].strip("|").split("|")]
    cells = dict(zip(headers, row))
    assert cells["class-head top-1"] == "61.00" and cells["dist.-head top-1"] == "63.50"
    assert cells["both-heads top-1"] == "64.00"
    assert cells["wall time"] == "0.2 min" and cells["seed"] == "3"


def test_failed_run_keeps_its_best_so_far(experiment, tmp_path: Path) -> None:
    path = experiment("ablate_lr", ablation={"grid": {"optim.lr": [1e-3, 1e-2]}})
    write_run(tmp_path / "runs" / "ablate_lr" / "lr=0.001", [50.0], epochs=1, status="done")
    write_run(tmp_path / "runs" / "ablate_lr" / "lr=0.01", [20.0], epochs=1, status="failed")
    baseline, diverged = collect(load_runs(path, check_files=False))
    assert diverged.status == "failed" and diverged.delta_top1 == -30.0 and baseline.delta_top1 == 0.0


def test_changes_vs_baseline_label_named_variants(experiment, tmp_path: Path) -> None:
    path = experiment(
        "ablate_named", ablation={"variants": {"full": {}, "no_flip": {"aug.hflip": 0.0}}, "grid": {"seed": [0, 1]}}
    )
    results = {r.variant: r for r in collect(load_runs(path, check_files=False))}
    assert results["full,seed=0"].is_baseline and results["full,seed=0"].changes == {"seed": 0, "aug.hflip": 0.5}
    assert results["no_flip,seed=0"].changes == {"aug.hflip": 0.0}  # what it changes from the baseline
    assert delta_label(results["no_flip,seed=0"]) == "no_flip\naug.hflip=0 (not started)"  # a bar per variant: its seeds pooled
    assert delta_label(results["full,seed=1"]) == "full (not started)"
    grid_only = collect(load_runs(experiment("ablate_seed", ablation={"grid": {"seed": [0, 1]}}), check_files=False))
    assert delta_label(grid_only[1]) == "ablate_seed (not started)"  # seeds only: one variant


# --- the report dir -----------------------------------------------------------------------------------


def test_report_of_half_finished_ablation(half_done: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = write_report([half_done], tmp_path / "report", False)
    assert out == tmp_path / "report"
    markdown = (out / MARKDOWN).read_text()
    rows = table_rows(markdown)
    header = ["variant", "differing keys", "best top-1", "top-5", "Δ top-1", "epochs", "images/s", "wall time", "seed"]
    assert f"| {' | '.join(header)} | status |" in markdown
    assert rows["hflip=0.5 (baseline)"] == [
        "hflip=0.5 (baseline)", "aug.hflip=0.5", "60.00", "90.00", "+0.00", "4/4", "1234", "0.2 min", "0", "done"
    ]
    assert rows["hflip=0"] == ["hflip=0", "aug.hflip=0", "62.00", "92.00", "+2.00", "2/4", "902", "-", "0", "running"]
    assert rows["hflip=1"] == ["hflip=1", "aug.hflip=1", "-", "-", "-", "0/4", "-", "-", "0", "not started"]
    assert "ablate_flip" in markdown.splitlines()[0] and COMMIT in markdown and "**Date:**" in markdown
    assert "3 runs: 1 done, 1 running, 1 not started" in markdown
    assert f"]({CURVES})" in markdown and f"]({DELTAS})" in markdown
    printed = capsys.readouterr().out
    assert "hflip=0.5 (baseline)" in printed and "+2.00" in printed and "not started" in printed

    with open(out / CSV, newline="") as handle:
        csv_rows = {row["variant"]: row for row in csv.DictReader(handle)}
    assert float(csv_rows["hflip=0"]["delta_top1"]) == 2.0 and csv_rows["hflip=0"]["aug.hflip"] == "0"
    assert csv_rows["hflip=1"]["best_top1"] == "" and csv_rows["hflip=1"]["status"] == "not started"
    assert csv_rows["hflip=0.5"]["is_baseline"] == "True" and csv_rows["hflip=0.5"]["commit"] == COMMIT
    assert_png(out / CURVES)
    assert_png(out / DELTAS)


def test_report_before_anything_ran(experiment, tmp_path: Path) -> None:
    path = experiment("ablate_new", ablation=GRID)
    out = write_report([path], tmp_path / "report", False, echo=False)
    rows = table_rows((out / MARKDOWN).read_text())
    assert [row[-1] for row in rows.values()] == ["not started"] * 3
    assert "unknown (no run has started)" in (out / MARKDOWN).read_text()
    assert_png(out / CURVES, min_bytes=1_000)
    assert_png(out / DELTAS, min_bytes=1_000)


def test_report_of_two_experiments(half_done: Path, experiment, tmp_path: Path) -> None:
    single = experiment("baseline_run")
    write_run(tmp_path / "runs" / "baseline_run", [33.0], epochs=1, status="done")
    out = write_report([half_done, single, half_done], tmp_path / "report", False, echo=False)
    markdown = (out / MARKDOWN).read_text()
    assert "## ablate_flip" in markdown and "## baseline_run" in markdown
    assert table_rows(markdown)["baseline_run"][2] == "33.00"
    with open(out / CSV, newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 4  # the file given twice is reported once
    assert_png(out / CURVES)


def test_cli_report_default_dir(half_done: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli(["report", str(half_done)]) == 0
    assert "report written to reports/ablate_flip" in capsys.readouterr().out
    assert (tmp_path / "reports" / "ablate_flip" / MARKDOWN).is_file()


def test_cli_report_applies_overrides_to_every_experiment(half_done: Path, tmp_path: Path, capsys) -> None:
    elsewhere = tmp_path / "elsewhere"
    write_run(elsewhere / "ablate_flip" / "hflip=0.5", [41.0], epochs=1, status="done")
    out = tmp_path / "report"
    assert cli(["report", str(half_done), f"output_dir={elsewhere}", "--out", str(out)]) == 0
    with open(out / CSV, newline="") as handle:
        rows = {row["variant"]: row for row in csv.DictReader(handle)}
    assert rows["hflip=0.5"]["best_top1"] == "41.0" and rows["hflip=0.5"]["run_dir"].startswith(str(elsewhere))


def test_cli_report_only_keeps_the_named_variants_and_the_baseline(half_done: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "report"
    assert cli(["report", str(half_done), "--only", "hflip=0", "--out", str(out)]) == 0
    rows = table_rows((out / MARKDOWN).read_text())
    assert set(rows) == {"hflip=0.5 (baseline)", "hflip=0"}  # hflip=1 was not asked for
    assert rows["hflip=0"][4] == "+2.00"  # the delta still has its baseline
    with pytest.raises(ConfigError, match="no variant 'hflip=2'.*hflip=0.5, hflip=0, hflip=1"):
        write_report([half_done], tmp_path / "other", False, only=["hflip=2"], echo=False)


# --- W&B API ------------------------------------------------------------------------------------------


class FakeWandbRun:
    """What the report reads of ``wandb.apis.public.Run``."""

    def __init__(self, name: str, history: list[dict[str, Any]], summary: dict[str, Any] | None = None) -> None:
        self.name, self.history_rows = name, history
        self.summary_metrics = summary or {}
        self.config = {"git.commit": "feedbeef", "git.dirty": True}

    def scan_history(self, keys: list[str] | None = None) -> list[dict[str, Any]]:
        # as W&B does: only the rows that hold every requested key
        return [row for row in self.history_rows if all(key in row for key in keys or [])]


class FakeApi:
    default_entity = "me"

    def __init__(self, runs: list[FakeWandbRun]) -> None:
        self._runs, self.queries = runs, []

    def runs(self, path: str, filters: dict[str, Any]) -> list[FakeWandbRun]:
        self.queries.append((path, filters))
        return [run for run in self._runs if run.name.startswith(filters["group"] + "/")]


def epoch_rows(*top1: float, first: int = 1) -> list[dict[str, Any]]:
    """W&B history rows: one per evaluated epoch, plus a training-step row without val metrics."""
    rows = [{"epoch": e, "val/top1": v, "val/top5": v + 20, "trainer/step": 10 * e} for e, v in enumerate(top1, first)]
    return [*rows, {"train/loss": 1.0, "trainer/step": 1}]


@pytest.fixture
def wandb_ablation(experiment, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("WANDB_ENTITY", raising=False)
    logger = {"name": "wandb", "project": "deit-test"}
    return experiment("ablate_flip", train={"epochs": 4}, ablation=GRID, logger=logger)


def test_fetch_results_stitches_offline_lives(wandb_ablation: Path) -> None:
    done = {"status": "done", "epochs_done": 4, "epochs": 4}
    live = {"train/epoch_images_per_s": 800.0}  # a live run's summary: the last values it logged
    api = FakeApi(
        [
            FakeWandbRun("ablate_flip/hflip=0.5", epoch_rows(40, 50, 60, 61), done),
            FakeWandbRun("ablate_flip/hflip=0", epoch_rows(41, 52, 55), {"status": "interrupted"}),
            FakeWandbRun("ablate_flip/hflip=0 (life 2)", epoch_rows(57, 63, first=3), live),
            FakeWandbRun("other_experiment/x", epoch_rows(99)),
        ]
    )
    results = {r.variant: r for r in fetch_results(load_runs(wandb_ablation, check_files=False), api=api)}
    assert api.queries == [("me/deit-test", {"group": "ablate_flip"})]
    assert set(results) == {"hflip=0.5", "hflip=0"}
    resumed = results["hflip=0"]
    assert resumed.curve == ((1, 41.0), (2, 52.0), (3, 57.0), (4, 63.0))  # life 2 redid epoch 3
    assert (resumed.status, resumed.best_top1, resumed.epochs_done) == ("running", 63.0, 4)
    assert resumed.images_per_s == 800.0 and resumed.source == "wandb"
    assert results["hflip=0.5"].status == "done" and results["hflip=0.5"].commit == "feedbeef-dirty"
    assert split_life("a/b (life 12)") == ("a/b", 12) and split_life("a/b") == ("a/b", 1)


def test_report_fills_runs_from_wandb(wandb_ablation: Path, tmp_path: Path) -> None:
    """Run dirs on this machine win unless W&B has seen more of the run."""
    write_run(tmp_path / "runs" / "ablate_flip" / "hflip=0.5", [40.0, 55.0, 60.0, 58.0], status="done")
    api = FakeApi(
        [
            FakeWandbRun("ablate_flip/hflip=0.5", epoch_rows(1, 2), {"status": "running"}),  # behind the run dir
            FakeWandbRun("ablate_flip/hflip=1", epoch_rows(30, 66)),  # only on the cluster
        ]
    )
    out = write_report([wandb_ablation], tmp_path / "report", True, wandb_api=api, echo=False)
    markdown = (out / MARKDOWN).read_text()
    rows = table_rows(markdown)
    assert rows["hflip=0.5 (baseline)"][2] == "60.00"
    assert rows["hflip=1"][2:5] == ["66.00", "86.00", "+6.00"] and rows["hflip=1"][-1] == "running"
    assert "- **Read from:** run dirs; W&B API\n" in markdown
    with open(out / CSV, newline="") as handle:
        assert {row["variant"]: row["source"] for row in csv.DictReader(handle)}["hflip=1"] == "wandb"


def test_report_without_wandb_credentials_uses_run_dirs(
    wandb_ablation: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_run(tmp_path / "runs" / "ablate_flip" / "hflip=0", [45.0, 62.0])
    for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    out = write_report([wandb_ablation], tmp_path / "report", True, echo=False)
    markdown = (out / MARKDOWN).read_text()
    assert "W&B API not read: no W&B credentials" in markdown
    assert table_rows(markdown)["hflip=0"][2] == "62.00"


def test_wandb_failures_leave_the_run_dirs(wandb_ablation: Path, experiment, tmp_path: Path) -> None:
    class BrokenApi(FakeApi):
        def runs(self, path: str, filters: dict[str, Any]) -> list[FakeWandbRun]:
            raise ConnectionError("no route to host")

    with pytest.raises(WandbUnavailable, match="ConnectionError: no route to host"):
        fetch_results(load_runs(wandb_ablation, check_files=False), api=BrokenApi([]))
    out = write_report([wandb_ablation], tmp_path / "report", True, wandb_api=BrokenApi([]), echo=False)
    assert "W&B API not read: the API call failed: ConnectionError" in (out / MARKDOWN).read_text()
    offline = experiment("offline_only")  # logger: none
    with pytest.raises(WandbUnavailable, match="none of these experiments logs to W&B"):
        fetch_results(load_runs(offline, check_files=False), api=FakeApi([]))


# --- end to end ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_train_and_report_synthetic_ablation(experiment, tmp_path: Path) -> None:
    from research.launch.local import run_locally

    path = experiment(
        "ablate_e2e",
        loader={"batch_size": 8, "workers": 0},
        train={"epochs": 1, "log_every_steps": 1},
        ablation={"grid": {"aug.hflip": [0.5, 0.0]}},
    )
    runs = load_runs(path)
    run_locally(runs)
    out = write_report([path], tmp_path / "report", False, echo=False)
    rows = table_rows((out / MARKDOWN).read_text())
    assert set(rows) == {"hflip=0.5 (baseline)", "hflip=0"}
    for row in rows.values():
        assert row[-1] == "done" and row[5] == "1/1" and 0.0 <= float(row[2]) <= 100.0
    assert rows["hflip=0.5 (baseline)"][4] == "+0.00"
    baseline, variant = float(rows["hflip=0.5 (baseline)"][2]), float(rows["hflip=0"][2])
    assert float(rows["hflip=0"][4]) == pytest.approx(variant - baseline, abs=0.011)  # from rounded cells
    assert_png(out / CURVES)
    assert_png(out / DELTAS, min_bytes=1_000)

