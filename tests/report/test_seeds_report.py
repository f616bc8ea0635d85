"""``research report`` over seeds and from run dirs: per variant mean ± std and n, the paired difference
from the baseline with its 95% interval, the EMA variant judged on its EMA weights, an ablation's folder
of run dirs reported without its experiment file, and a run holding its lock shown as training."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
import yaml
from scipy import stats as scipy_stats

from research.cli import main as cli
from research.config import Run, load_runs
from research.launch.run_check import config_record, run_dir_lock
from research.report.write import CSV, MARKDOWN

from .test_report import table_rows

ABLATION = {"baseline": "full", "variants": {"full": {}, "no_flip": {"aug.hflip": 0.0}, "ema": {"train.ema": True}}}
BASELINE = {0: 50.0, 1: 52.0, 2: 51.0}
NO_FLIP = {0: 47.0, 1: 49.5, 2: 48.0}  # differences -3, -2.5, -3
EMA = {0: 50.5, 1: 52.5, 2: 51.0}  # EMA weights' top-1; the raw weights' stay at the baseline's - 10


def write_finished(run: Run, top1: float, *, ema_top1: float | None = None) -> None:
    """``run``'s dir as a finished two-epoch run leaves it (its config.yaml as train writes it)."""
    run.run_dir.mkdir(parents=True)
    (run.run_dir / "config.yaml").write_text(yaml.safe_dump({**config_record(run), "git": {"commit": "abc", "dirty": False}}))
    records = [{"epoch": 1, "val/top1": top1 - 5}, {"epoch": 2, "val/top1": top1, "val/top5": 90.0}]
    if ema_top1 is not None:
        records[-1]["val_ema/top1"] = ema_top1
    (run.run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run.run_dir / "summary.json").write_text(json.dumps({"status": "done", "epochs_done": 2, "epochs": 2}))
    (run.run_dir / "last.pt").write_bytes(b"")


@pytest.fixture
def seeded(experiment, tmp_path: Path) -> Path:
    """``ablate_flip`` launched with ``--seeds 3`` and finished (the file itself says nothing of seeds)."""
    path = experiment("ablate_flip", train={"epochs": 2}, ablation=ABLATION)
    for run in load_runs(path, ["seeds=3"], check_files=False):
        if run.variant == "full":
            write_finished(run, BASELINE[run.cfg.seed])
        elif run.variant == "no_flip":
            write_finished(run, NO_FLIP[run.cfg.seed])
        else:
            write_finished(run, BASELINE[run.cfg.seed] - 10, ema_top1=EMA[run.cfg.seed])
    return path


def half_width(differences: list[float]) -> float:
    n = len(differences)
    return scipy_stats.t.ppf(0.975, n - 1) * statistics.stdev(differences) / n**0.5


@pytest.mark.parametrize("given", ["folder", "file"])
def test_seeded_ablation_reports_means_and_paired_intervals(seeded: Path, tmp_path: Path, given: str, capsys) -> None:
    target = tmp_path / "runs" / "ablate_flip" if given == "folder" else seeded
    out = tmp_path / "report"
    assert cli(["report", str(target), "--out", str(out), "--no-paper"]) == 0
    markdown = (out / MARKDOWN).read_text()
    rows = table_rows(markdown)
    mean, std = statistics.fmean(BASELINE.values()), statistics.stdev(BASELINE.values())
    assert rows["full (baseline)"][2:5] == ["val/top1", "3", f"{mean:.2f} ± {std:.2f}"]
    differences = [NO_FLIP[s] - BASELINE[s] for s in BASELINE]
    low, high = statistics.fmean(differences) - half_width(differences), statistics.fmean(differences) + half_width(differences)
    assert rows["no_flip"][1:] == [
        "aug.hflip=0", "val/top1", "3", f"{statistics.fmean(NO_FLIP.values()):.2f} ± {statistics.stdev(NO_FLIP.values()):.2f}",
        f"{statistics.fmean(differences):+.2f}", f"[{low:+.2f}, {high:+.2f}]", "3",
    ]
    # the EMA variant is judged on its EMA weights: +0.5, +0.5, 0 against the baseline's raw weights
    assert rows["ema"][2] == "val_ema/top1" and rows["ema"][5] == "+0.33"
    with open(out / CSV, newline="") as handle:
        runs = {row["run"]: row for row in csv.DictReader(handle)}
    assert set(runs) == {f"ablate_flip/{v}/seed{s}" for v in ("full", "no_flip", "ema") for s in (0, 1, 2)}
    assert runs["ablate_flip/no_flip/seed1"]["delta_top1"] == "-2.5"  # against the baseline of seed 1
    assert "not started" not in markdown


def test_only_seeds_both_variants_ran_are_paired(seeded: Path, tmp_path: Path) -> None:
    (tmp_path / "runs" / "ablate_flip" / "no_flip" / "seed2" / "summary.json").unlink()
    (tmp_path / "runs" / "ablate_flip" / "no_flip" / "seed2" / "metrics.jsonl").write_text("")
    (tmp_path / "runs" / "ablate_flip" / "full" / "seed1" / "metrics.jsonl").write_text("")
    out = tmp_path / "report"
    assert cli(["report", str(tmp_path / "runs" / "ablate_flip"), "--out", str(out), "--no-paper"]) == 0
    row = table_rows((out / MARKDOWN).read_text())["no_flip"]
    assert row[3] == "2" and row[-1] == "1"  # two seeds scored, one of them (seed 0) paired
    assert row[5:7] == ["-3.00", "-"]  # one pair: no interval


def test_a_run_holding_its_lock_is_training(seeded: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "ablate_flip" / "no_flip" / "seed1"
    (run_dir / "summary.json").unlink()
    out = tmp_path / "report"
    with run_dir_lock(run_dir):
        assert cli(["report", str(seeded), "--out", str(out), "--no-paper"]) == 0
    rows = table_rows((out / MARKDOWN).read_text())
    assert rows["no_flip/seed1"][-1] == "training"
    assert "1 training" in (out / MARKDOWN).read_text()


def test_a_folder_without_run_dirs_is_one_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert cli(["report", str(tmp_path / "empty")]) == 2
    assert "no run dir" in capsys.readouterr().err
