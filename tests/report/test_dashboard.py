"""The W&B workspace per ablation (research/report/dashboard.py), built without a network, and the one
line a report prints when W&B is not reachable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from research.config import load_runs
from research.launch.run_check import config_record
from research.report import write_report
from research.report.dashboard import build_workspace


def test_the_workspace_groups_the_ablation_by_variant_with_the_verdict_first() -> None:
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    workspace = build_workspace(entity="lab", project="deit", experiment="ablate_mixup", baseline="full", notes="Table 8")
    assert (workspace.entity, workspace.project, workspace.name) == ("lab", "deit", "ablate_mixup: verdict")
    assert workspace.runset_settings.groupby == [ws.Config("variant")]  # seeds pool into their variant
    assert workspace.runset_settings.filters == """Metric("Group") == 'ablate_mixup'"""  # the ablation's group only
    assert [section.name for section in workspace.sections] == ["Verdict", "Top-1 per variant", "Losses"]
    verdict, top1, losses = workspace.sections
    markdown, table = verdict.panels
    assert isinstance(table, wr.WeavePanelSummaryTable) and table.table_name == "verdicts"  # the report run's table
    assert "baseline: `full`" in markdown.markdown and "Table 8" in markdown.markdown
    line, bars = top1.panels
    assert line.y == ["val/top1"] and (line.groupby_aggfunc, line.groupby_rangefunc) == ("mean", "stddev")
    assert bars.metrics == ["best_top1"] and "baseline: full" in bars.title
    assert losses.panels[0].y == ["train/loss"] and losses.panels[1].metric_regex == "^train/loss/.*"
    workspace._to_model()  # the object W&B would save is well formed


def test_offline_the_report_says_so_in_one_line_and_saves_nothing(
    experiment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_MODE", "disabled")  # no report run either: this test is about the dashboard
    path = experiment("ablate_mixup", logger={"name": "wandb"}, ablation={"variants": {"full": {}, "no_mixup": {"optim.lr": 1e-3}}})
    for run in load_runs(path, check_files=False):
        run.run_dir.mkdir(parents=True)
        (run.run_dir / "config.yaml").write_text(yaml.safe_dump(config_record(run)))
        (run.run_dir / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "val/top1": 50.0}) + "\n")

    def no_save(self) -> None:
        raise AssertionError("saved a workspace offline")

    import wandb_workspaces.workspaces as ws

    monkeypatch.setattr(ws.Workspace, "save", no_save)
    write_report([path], tmp_path / "report", echo=False)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("W&B dashboard")]
    assert lines == ["W&B dashboard: not saved (W&B not reachable: no API key; offline runs are uploaded with `wandb sync`)"]
