"""The training loop end to end on synthetic data: resume, mid-epoch checkpoints, EMA, schedule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from research.config import load_run
from research.engine import checkpoint
from research.engine.run_dir import read_lives, read_metrics, read_summary
from research.launch.train import train

from .conftest import Interrupt, interrupt_at


def _epochs(run_dir: Path) -> list[dict]:
    return [m for m in read_metrics(run_dir) if "val/top1" in m]


def test_resumed_run_matches_uninterrupted_run(experiment) -> None:
    straight = load_run(experiment("straight"))
    train(straight)

    resumed = load_run(experiment("resumed"))
    with pytest.raises(Interrupt):
        train(resumed, on_loop=interrupt_at(1))
    assert read_summary(resumed.run_dir)["status"] == "failed"
    assert checkpoint.load(resumed.run_dir / "last.pt")["epoch"] == 1
    summary = train(resumed)

    assert summary["status"] == "done" and summary["epochs_done"] == 2
    assert [life["life"] for life in read_lives(resumed.run_dir)] == [1, 2]  # one lives file, whatever the logger
    a, b = _epochs(straight.run_dir), _epochs(resumed.run_dir)
    assert [m["epoch"] for m in b] == [1, 2]  # no duplicated epoch lines after the resume
    for key in ("train/epoch_loss", "val/loss", "val/top1", "val/top5"):
        assert a[-1][key] == pytest.approx(b[-1][key], rel=1e-6, abs=1e-6), key


def test_metrics_lines_are_strict_json_before_the_first_evaluation(experiment) -> None:
    run = load_run(experiment(train={"epochs": 2, "eval_every_epochs": 2, "progress": False}))
    train(run)

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} in metrics.jsonl")

    lines = [json.loads(line, parse_constant=refuse) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    first, second = (line for line in lines if "epoch_time_s" in line)
    assert "val/top1" not in first and "val/best_top1" not in first
    assert second["val/best_top1"] == second["val/top1"]


def test_mid_epoch_checkpoint_resumes_inside_the_epoch(experiment) -> None:
    run = load_run(experiment(train={"epochs": 1, "checkpoint_every_steps": 2, "progress": False, "log_every_steps": 2}))

    with pytest.raises(Interrupt):
        train(run, on_loop=interrupt_at(0, 2))
    saved = checkpoint.load(run.run_dir / "last.pt")
    assert (saved["epoch"], saved["epoch_step"], saved["step"]) == (0, 2, 2)
    train(run)
    final = checkpoint.load(run.run_dir / "last.pt")
    steps_per_epoch = 48 // 8
    assert (final["epoch"], final["epoch_step"], final["step"]) == (1, 0, steps_per_epoch)


def test_ema_weights_are_evaluated_and_every_option_saves(experiment) -> None:
    options = {"epochs": 1, "ema": True, "ema_decay": 0.9, "precision": "bf16", "progress": False, "eval_hflip": True}
    run = load_run(experiment(train=options))
    train(run)
    (record,) = _epochs(run.run_dir)
    assert {"val/top1", "val_ema/top1", "val_ema/top5", "val_ema/loss"} <= set(record)
    assert {"val/top1_single_view", "val_ema/top1_single_view"} <= set(record)  # flip TTA reaches both
    saved = checkpoint.load(run.run_dir / "last.pt")
    assert saved["ema"] is not None and (run.run_dir / "best.pt").exists()
    assert saved["config"]["train"]["ema"] is True


def test_lr_is_stepped_per_iteration_from_warmup(experiment) -> None:
    options = {"epochs": 2, "log_every_steps": 1, "progress": False}
    run = load_run(experiment(logger={"name": "jsonl"}, sched={"warmup_epochs": 1, "step_on": "step"}, train=options))
    train(run)
    steps = [json.loads(line) for line in (run.run_dir / "log.jsonl").read_text().splitlines()]
    lrs = [s["train/lr"] for s in steps if "train/loss" in s]
    peak = 2e-3 * 8 / 512
    assert lrs[0] < peak / 2  # starts near warmup_lr ...
    assert lrs[1] > lrs[0] and lrs[2] > lrs[1]  # ... and rises within the first epoch, step by step
    assert max(lrs) == pytest.approx(peak, rel=0.2)


def test_config_yaml_records_the_resolved_config_and_git(experiment) -> None:
    run = load_run(experiment(train={"epochs": 1, "progress": False}))
    train(run)
    import yaml

    saved = yaml.safe_load((run.run_dir / "config.yaml").read_text())
    assert saved["aug"]["mixup"] == 0.0 and saved["model"]["drop_path_rate"] == 0.1  # defaults filled in
    assert set(saved["git"]) == {"commit", "dirty"}
    assert saved["run_name"] == "tiny"


def test_atomic_save_keeps_the_old_checkpoint_when_writing_fails(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "last.pt"
    checkpoint.save_atomic({"epoch": 1}, target)

    def broken_save(obj, handle):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        checkpoint.save_atomic({"epoch": 2}, target)
    monkeypatch.undo()
    assert checkpoint.load(target)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_fused_attention_switch_reaches_every_attention_block(experiment) -> None:
    from research.launch.dist import DistEnv
    from research.launch.train import build_model

    for fused in (True, False):
        run = load_run(experiment(train={"fused_attention": fused}))
        model = build_model(run.cfg, num_classes=4, env=DistEnv())
        flags = [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")]
        assert flags and all(flag is fused for flag in flags)


def test_weight_decay_exempts_the_tokens_also_under_a_ddp_wrapper(experiment) -> None:
    """The param groups come from the plain module: a DDP wrapper has no ``no_weight_decay()``."""
    from torch import nn

    from research.launch.train import _param_groups
    from research.registry import MODELS

    model = MODELS.build("deit_nano_distilled_patch4_32", num_classes=4)
    wrapper = nn.Module()
    wrapper.module = model  # what unwrap() sees in DistributedDataParallel

    def decayed(**optim) -> set[int]:
        cfg = load_run(experiment(model={"name": "deit_nano_distilled_patch4_32"}, optim=optim)).cfg
        return {id(p) for group in _param_groups(cfg, wrapper) if group["weight_decay"] for p in group["params"]}

    ours = decayed()
    assert id(model.patch_embed.proj.weight) in ours
    assert not {id(model.pos_embed), id(model.cls_token), id(model.dist_token)} & ours
    assert id(model.dist_token) in decayed(decay_dist_token=True)  # the reference's timm 0.3.2


def test_each_life_records_the_code_it_ran(experiment, monkeypatch) -> None:
    """config.yaml holds the last life's commit only; lives.jsonl keeps every life's."""
    path = experiment(train={"epochs": 1})
    monkeypatch.setenv("RESEARCH_GIT_COMMIT", "a" * 40)
    monkeypatch.setenv("RESEARCH_GIT_DIRTY", "0")
    train(load_run(path))
    monkeypatch.setenv("RESEARCH_GIT_COMMIT", "b" * 40)
    monkeypatch.setenv("RESEARCH_GIT_DIRTY", "1")
    run = load_run(path, ["train.epochs=2"])
    train(run)
    lives = read_lives(run.run_dir)
    assert [life["git"] for life in lives] == [{"commit": "a" * 40, "dirty": False}, {"commit": "b" * 40, "dirty": True}]
