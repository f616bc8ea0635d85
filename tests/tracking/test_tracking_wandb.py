"""The ``wandb`` logger: real offline runs read back from their run files, lives of requeued runs,
mode / key detection, and failures that must not stop training.

Online behaviour (resume by id) is checked with a stand-in ``wandb`` module: the tests have no network.
"""

from __future__ import annotations

import dataclasses
import errno
import sys
import time
import types
import warnings
from pathlib import Path
from typing import Any

import pytest
from wandb_reader import WandbFileError, find_run_files, iter_records, read_runs

from research.engine.run_dir import read_lives, start_life
from research.launch.run_tracker import note_tracker
from research.registry import LOGGERS
from research.tracking import (
    GuardedTracker,
    NullTracker,
    RunInfo,
    TrackerWarning,
    WandbTracker,
)
from research.tracking.wandb_logger import (
    ID_FILE,
    STEP_METRIC,
    has_api_key,
    resolve_mode,
)


def tracked_life(run: RunInfo, **kwargs: Any) -> Any:
    """The wandb tracker of the run's next life as ``train()`` starts it (research.launch.run_tracker): the
    life recorded in the run dir, the earlier ones handed to the tracker, what it hands back noted there."""
    life = dataclasses.replace(run, life=start_life(run.run_dir), lives=tuple(read_lives(run.run_dir)))
    tracker = LOGGERS.build("wandb", run=life, **kwargs)
    note_tracker(tracker, life)
    return tracker


def make_run(root: Path, **overrides: Any) -> RunInfo:
    fields: dict[str, Any] = dict(
        run_dir=root / "runs" / "ablate_mixup" / "mixup=0",
        project="deit-tests",
        group="ablate_mixup",
        name="ablate_mixup/mixup=0",
        job_type="train",
        tags=("cutmix", "repeated-aug"),
        config={
            "model": {"name": "deit_tiny_patch16_224", "drop_path": 0.1},
            "aug": {"mixup": {"alpha": 0.0}, "cutmix": {"alpha": 1.0}},
            "optim": {"lr": 5e-4, "betas": [0.9, 0.999]},
            "git_commit": "0123abc",
            "n_parameters": 5_717_416,
        },
    )
    fields.update(overrides)
    return RunInfo(**fields)


def tiny_training(tracker: Any, *, first_step: int = 0, epochs: int = 2, steps_per_epoch: int = 3) -> None:
    """What the engine logs: per-step train scalars, per-epoch validation, the final summary."""
    step = first_step
    for epoch in range(epochs):
        for _ in range(steps_per_epoch):
            train = {"train/loss": 2.0 / (step + 1), "train/lr": 1e-3, "train/images_per_s": 100.0}
            tracker.log(train, step=step)
            step += 1
        val = {"val/top1": 10.0 * (epoch + 1), "val/top5": 50.0, "val/loss": 1.5, "epoch": epoch}
        tracker.log(val, step=step)
    top1 = 10.0 * epochs
    tracker.summary({"best/top1": top1, "last/top1": top1, "epochs": epochs, "wall_time_s": 1.0})
    tracker.close()


def test_offline_run_round_trip(wandb_env):
    run = make_run(wandb_env)
    tracker = tracked_life(run)
    assert isinstance(tracker, GuardedTracker) and isinstance(tracker.inner, WandbTracker)
    tiny_training(tracker)

    (got,) = read_runs(run.run_dir / "wandb")
    (path,) = find_run_files(run.run_dir / "wandb")
    assert (got.project, got.group, got.name, got.job_type) == (
        "deit-tests",
        "ablate_mixup",
        "ablate_mixup/mixup=0",
        "train",
    )
    assert got.tags == ("cutmix", "repeated-aug")
    for key, value in {
        "model.name": "deit_tiny_patch16_224",
        "model.drop_path": 0.1,
        "aug.mixup.alpha": 0.0,
        "aug.cutmix.alpha": 1.0,
        "optim.lr": 5e-4,
        "optim.betas": [0.9, 0.999],
        "git_commit": "0123abc",
        "n_parameters": 5_717_416,
    }.items():
        assert got.config[key] == value, key
    assert "model" not in got.config  # flattened, not nested

    assert got.step_metrics["train/*"] == STEP_METRIC
    assert got.step_metrics["val/*"] == STEP_METRIC
    assert got.step_metrics["epoch"] == STEP_METRIC
    assert got.metric("train/loss") == [(s, 2.0 / (s + 1)) for s in [0, 1, 2, 3, 4, 5]]
    assert got.metric("val/top1") == [(3, 10.0), (6, 20.0)]
    assert got.metric("epoch") == [(3, 0), (6, 1)]
    assert len(got.history) == 8  # one row per log() call
    assert got.summary["best/top1"] == 20.0 and got.summary["epochs"] == 2
    assert got.summary["val/top1"] == 20.0  # W&B's automatic last-value summary

    (life,) = read_lives(run.run_dir)
    assert life["life"] == 1 and life["wandb_mode"] == "offline" and life["wandb_id"] == got.run_id
    assert Path(life["wandb_sync_dir"]) == path.parent
    assert not (run.run_dir / ID_FILE).exists()  # offline runs cannot be resumed: no id to keep


def test_offline_second_life_is_a_new_run_named_life_2(wandb_env):
    run = make_run(wandb_env)
    tiny_training(tracked_life(run), epochs=2)
    # requeued: the job restarts from the epoch-1 checkpoint, so steps 3.. are logged again; with a step
    # metric instead of W&B's step=, nothing is dropped (W&B ignores log(step=s) below its last step)
    tiny_training(tracked_life(run), first_step=3, epochs=1)

    first, second = read_runs(run.run_dir / "wandb", count=2)
    assert first.run_id != second.run_id
    assert first.group == second.group == "ablate_mixup"
    assert first.name == "ablate_mixup/mixup=0" and first.tags == ("cutmix", "repeated-aug")
    assert second.name == "ablate_mixup/mixup=0 (life 2)"
    assert second.tags == ("cutmix", "repeated-aug", "resumed", "life-2")
    assert [s for s, _ in second.metric("train/loss")] == [3, 4, 5]
    lives = read_lives(run.run_dir)
    assert [(life["life"], life["wandb_id"], life["wandb_name"]) for life in lives] == [
        (1, first.run_id, first.name),
        (2, second.run_id, second.name),
    ]


def test_wandb_dir_and_mode_env_are_honoured(wandb_env, monkeypatch):
    wandb_dir = wandb_env / "wandb-dir"
    monkeypatch.setenv("WANDB_DIR", str(wandb_dir))
    monkeypatch.setenv("WANDB_MODE", "dryrun")  # W&B's old name for offline
    run = make_run(wandb_env)
    tiny_training(tracked_life(run), epochs=1)
    assert read_runs(wandb_dir)[0].name == run.name
    assert not (run.run_dir / "wandb").exists()
    assert len(read_lives(run.run_dir)) == 1  # the resume bookkeeping stays in the run dir


def test_failing_wandb_log_warns_once_and_training_continues(wandb_env, monkeypatch):
    from wandb.sdk.wandb_run import Run

    def disk_full(self: Any, *args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    run = make_run(wandb_env)
    tracker = tracked_life(run)
    monkeypatch.setattr(Run, "log", disk_full)
    with pytest.warns(TrackerWarning) as caught:
        tiny_training(tracker)  # logs, summary and close all go on
    assert len(caught) == 1 and "wandb logger disabled: log() raised OSError" in str(caught[0].message)
    assert tracker.failed
    assert read_runs(run.run_dir / "wandb")[0].history == []  # the run was still finished


def test_wandb_not_installed_gives_null_tracker(wandb_env, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` raise ImportError
    with pytest.warns(TrackerWarning, match="cannot import wandb"):
        tracker = tracked_life(make_run(wandb_env))
    assert isinstance(tracker, NullTracker)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny_training(tracker)


def test_disabled_mode_starts_nothing(wandb_env, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # not even imported
    run = make_run(wandb_env)
    assert isinstance(LOGGERS.build("wandb", run=run, mode="disabled"), NullTracker)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert isinstance(LOGGERS.build("wandb", run=run), NullTracker)
    assert not run.run_dir.exists()


def test_resolve_mode(wandb_env, monkeypatch):
    assert resolve_mode() == "offline"  # no key anywhere
    monkeypatch.setenv("WANDB_API_KEY", "not-a-real-key")
    assert resolve_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert resolve_mode() == "offline"
    assert resolve_mode("online") == "online"  # the config wins over the environment
    with pytest.raises(ValueError, match="logger.mode='onlin' is not a W&B mode"):
        resolve_mode("onlin")
    monkeypatch.setenv("WANDB_MODE", "ofline")
    with pytest.raises(ValueError, match="WANDB_MODE='ofline'"):
        tracked_life(make_run(wandb_env))


def test_has_api_key_reads_netrc_entry_for_the_host(wandb_env, monkeypatch):
    netrc = wandb_env / "netrc"
    monkeypatch.setenv("NETRC", str(netrc))
    assert not has_api_key()
    netrc.write_text("machine example.org login user password not-a-real-key\n")
    assert not has_api_key()
    netrc.write_text("machine api.wandb.ai login user password not-a-real-key\n")
    assert has_api_key()
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")
    assert not has_api_key()
    netrc.write_text("garbage that is not a netrc file 'x\n")
    assert not has_api_key()


class FakeWandb(types.ModuleType):
    """Stands in for the ``wandb`` module where the real one would need a server."""

    def __init__(self, fail_online: bool = False) -> None:
        super().__init__("wandb")
        self.fail_online = fail_online
        self.inits: list[dict[str, Any]] = []

    def init(self, **kwargs: Any) -> Any:
        self.inits.append(kwargs)
        if kwargs["mode"] == "online" and self.fail_online:
            raise ConnectionError("api.wandb.ai unreachable")
        run_id = kwargs.get("id") or f"offline{len(self.inits)}"
        return types.SimpleNamespace(
            id=run_id,
            settings=types.SimpleNamespace(sync_dir=f"{kwargs['dir']}/wandb/run-{run_id}"),
            define_metric=lambda *a, **k: None,
            log=lambda *a, **k: None,
            summary={},
            finish=lambda: None,
        )


def test_online_lives_resume_the_same_run(wandb_env, wandb_server, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setenv("WANDB_API_KEY", "not-a-real-key")
    run = make_run(wandb_env)
    for _ in range(2):
        tiny_training(tracked_life(run, entity="team"))

    first, second = fake.inits
    assert first["mode"] == second["mode"] == "online"
    assert first["id"] == second["id"] == (run.run_dir / ID_FILE).read_text().strip()
    assert first["resume"] == second["resume"] == "allow"
    assert first["name"] == second["name"] == run.name  # one W&B run: no life suffix
    assert second["tags"] == ["cutmix", "repeated-aug", "resumed"]
    assert first["group"] == "ablate_mixup" and first["entity"] == "team" and first["project"] == "deit-tests"
    assert first["config"]["optim.lr"] == 5e-4
    assert [life["wandb_resumed"] for life in read_lives(run.run_dir)] == [False, True]


def test_online_after_offline_lives_keeps_its_life_name(wandb_env, wandb_server, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    run = make_run(wandb_env)
    tracked_life(run).close()  # no key yet: offline life 1
    monkeypatch.setenv("WANDB_API_KEY", "not-a-real-key")
    tracked_life(run).close()  # online life 2: a new W&B run
    tracked_life(run).close()  # online life 3 continues it, under the same name
    assert [(init["mode"], init["name"], init.get("id")) for init in fake.inits] == [
        ("offline", run.name, None),
        ("online", f"{run.name} (life 2)", fake.inits[1]["id"]),
        ("online", f"{run.name} (life 2)", fake.inits[1]["id"]),
    ]
    assert fake.inits[2]["tags"] == ["cutmix", "repeated-aug", "resumed"]


def test_life_cut_short_mid_write_still_counts(wandb_env, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    run = make_run(wandb_env)
    run.run_dir.mkdir(parents=True)
    (run.run_dir / "lives.jsonl").write_text('{"life": 1, "started": 1.0, "wandb_id": "abc", "wa')
    tracked_life(run).close()
    assert fake.inits[0]["name"] == f"{run.name} (life 2)"
    assert [life["life"] for life in read_lives(run.run_dir)] == [1, 2]


def test_the_tracker_hands_its_life_back_and_writes_no_file_of_the_run_dir(wandb_env, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    run = make_run(wandb_env)
    tracker = LOGGERS.build("wandb", run=run)
    notes = tracker.inner.notes
    assert notes["wandb_mode"] == "offline" and notes["wandb_name"] == run.name and notes["wandb_resumed"] is False
    assert not (run.run_dir / "lives.jsonl").exists()  # research.launch.run_tracker records it
    tracker.close()


def test_project_parameter_overrides_the_runs_project(wandb_env, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    tracked_life(make_run(wandb_env), project="other").close()
    tracked_life(make_run(wandb_env, project=""), mode="offline").close()
    assert [init["project"] for init in fake.inits] == ["other", "deit"]
    assert all(init["mode"] == "offline" for init in fake.inits)  # no key: offline


def test_online_failure_falls_back_to_offline(wandb_env, wandb_server, monkeypatch, caplog):
    fake = FakeWandb(fail_online=True)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setenv("WANDB_API_KEY", "not-a-real-key")
    run = make_run(wandb_env)
    tracker = tracked_life(run)
    assert isinstance(tracker, GuardedTracker)
    assert [init["mode"] for init in fake.inits] == ["online", "offline"]
    assert "online start failed" in caplog.text
    assert fake.inits[1]["name"] == run.name and "id" not in fake.inits[1]
    assert not (run.run_dir / ID_FILE).exists()


def test_online_with_no_server_logs_offline_within_seconds(wandb_env, refused_url, monkeypatch, caplog):
    # A real wandb: online, it would wait its 90 s init timeout for a server that never answers.
    monkeypatch.setenv("WANDB_API_KEY", "not-a-real-key")
    monkeypatch.setenv("WANDB_BASE_URL", refused_url)
    run = make_run(wandb_env)
    started = time.monotonic()
    tiny_training(tracked_life(run, mode="online"), epochs=1)
    assert time.monotonic() - started < 30  # offline wandb starts in a few seconds; online waited 90
    (life,) = read_lives(run.run_dir)
    assert life["wandb_mode"] == "offline" and not (run.run_dir / ID_FILE).exists()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "W&B" in r.getMessage()]
    assert len(warnings) == 1 and f"cannot reach {refused_url}" in warnings[0], warnings
    (offline,) = read_runs(run.run_dir / "wandb")
    assert offline.metric("val/top1") == [(3, 10.0)]  # a real offline run, logged in full


def test_wandb_mode_typo_stops_the_run_at_load(wandb_env, monkeypatch, tmp_path, capsys):
    from tiny import TINY, deep_update, write_yaml

    from research.cli import EXIT_BAD_INPUT, main

    monkeypatch.setenv("WANDB_MODE", "offlne")
    path = write_yaml(tmp_path / "typo.yaml", deep_update(TINY, {"logger": {"name": "wandb"}, "output_dir": str(tmp_path / "runs")}))
    assert main(["train", str(path)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "WANDB_MODE='offlne' is not a W&B mode" in err, err
    assert not (tmp_path / "runs").exists()


def test_online_requested_without_key_logs_offline(wandb_env, monkeypatch, caplog):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    tracked_life(make_run(wandb_env), mode="online").close()
    assert [init["mode"] for init in fake.inits] == ["offline"]
    assert "no API key" in caplog.text


def test_init_failure_gives_null_tracker(wandb_env, monkeypatch):
    def init(**kwargs: Any) -> Any:
        raise RuntimeError("wandb-core did not start")

    fake = FakeWandb()
    fake.init = init  # type: ignore[method-assign]
    monkeypatch.setitem(sys.modules, "wandb", fake)
    with pytest.warns(TrackerWarning, match="wandb.init failed with RuntimeError: wandb-core did not start"):
        tracker = tracked_life(make_run(wandb_env))
    assert isinstance(tracker, NullTracker)


def test_reader_handles_records_spanning_blocks_and_detects_corruption(wandb_env):
    # a 100 kB config value is one Record split over FIRST/MIDDLE/LAST chunks in 32 KiB blocks
    run = make_run(wandb_env, config={"notes": "x" * 100_000})
    tiny_training(tracked_life(run), epochs=1)
    (got,) = read_runs(run.run_dir / "wandb")
    (path,) = find_run_files(run.run_dir / "wandb")
    assert {1, 2, 3, 4} <= got.chunk_types
    assert got.config["notes"] == "x" * 100_000
    assert got.record_types[0] == "header" and got.record_types[-1] == "exit"

    data = bytearray(path.read_bytes())
    data[50_000] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(WandbFileError, match="checksum mismatch"):
        list(iter_records(path))
    path.write_bytes(b"not a run file")
    with pytest.raises(WandbFileError, match="not a W&B run file"):
        list(iter_records(path))
