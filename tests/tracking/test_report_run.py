"""``research report`` on W&B: a report run in the ablation's group with the verdict table, the runs
table with each run's delta, the plots and the file's header as notes, read back from offline run files."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from wandb_reader import find_run_files, read_runs

from research.config import load_runs
from research.launch.run_check import config_record
from research.report import write_report


def test_report_logs_a_report_run_to_the_ablations_group(wandb_env: Path) -> None:
    experiment = {
        "output_dir": str(wandb_env / "runs"),
        "model": {"name": "deit_nano_patch4_32", "img_size": 32},
        "data": {"name": "synthetic", "size": 16, "num_classes": 4},
        "aug": {"name": "cifar"},
        "logger": {"name": "wandb", "project": "deit-tests"},
        "sched": {"warmup_epochs": 0},
        "train": {"epochs": 1},
        "ablation": {"baseline": "full", "variants": {"full": {}, "no_mixup": {"aug.mixup": 0.0}}},
    }
    path = wandb_env / "ablate_mixup.yaml"
    path.write_text("# Ablation: mixup. Paper, Table 8: 81.8 -> 78.7.\n" + yaml.safe_dump(experiment))
    top1 = {("full", 0): 50.0, ("full", 1): 52.0, ("full", 2): 51.0, ("no_mixup", 0): 47.0, ("no_mixup", 1): 49.0, ("no_mixup", 2): 48.5}
    for run in load_runs(path, ["seeds=3"], check_files=False):
        run.run_dir.mkdir(parents=True)
        (run.run_dir / "config.yaml").write_text(yaml.safe_dump(config_record(run)))
        (run.run_dir / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "val/top1": top1[run.variant, run.cfg.seed]}) + "\n")
        (run.run_dir / "summary.json").write_text(json.dumps({"status": "done", "epochs_done": 1, "epochs": 1}))
        (run.run_dir / "last.pt").write_bytes(b"")

    out = write_report([path], wandb_env / "report", echo=False)

    (report,) = read_runs(out, count=1)
    assert (report.project, report.group, report.job_type, report.name) == ("deit-tests", "ablate_mixup", "report", "ablate_mixup/report")
    assert report.notes == "Ablation: mixup. Paper, Table 8: 81.8 -> 78.7."
    assert report.summary["delta_top1/ablate_mixup/no_mixup/seed1"] == -3.0  # keyed by run: offline runs cannot be reopened
    assert report.summary["delta_top1/ablate_mixup/full/seed0"] == 0.0
    logged = {key: value for row in report.history for key, value in row.items()}
    assert logged["verdicts/_type"] == "table-file" and logged["runs/_type"] == "table-file"
    assert logged["runs/nrows"] == 6
    assert {logged[f"{name}/_type"] for name in ("top1_curves", "top1_delta", "paper_vs_ours")} == {"image-file"}
    files = find_run_files(out)[0].parent / "files"
    table = json.loads((files / logged["verdicts/path"]).read_text())
    rows = {row[0]: dict(zip(table["columns"], row)) for row in table["data"]}
    assert rows["no_mixup"]["n"] == 3 and rows["no_mixup"]["pairs"] == 3
    assert abs(rows["no_mixup"]["delta"] - (-8.5 / 3)) < 1e-9
    assert rows["no_mixup"]["ci_low"] < rows["no_mixup"]["delta"] < rows["no_mixup"]["ci_high"] < 0
    assert abs(rows["no_mixup"]["paper delta"] - (78.7 - 81.8)) < 1e-9 and rows["no_mixup"]["verdict"] == "✓"
    assert rows["full"]["delta"] is None and rows["full"]["verdict"] is None
