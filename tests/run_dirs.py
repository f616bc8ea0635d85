"""Run dirs made by hand for the launchers' tests: what a finished run leaves behind, without training it."""

from __future__ import annotations

import json

from research.config import Run
from research.engine import run_dir
from research.launch.run_check import config_record


def write_config(run: Run) -> None:
    """``run``'s ``config.yaml``, as its first start writes it (a run dir is its config)."""
    run.run_dir.mkdir(parents=True, exist_ok=True)
    run_dir.write_config(run.run_dir, config_record(run))


def mark_finished(run: Run) -> None:
    """``run``'s dir as a finished run leaves it: its config, a done summary, a checkpoint."""
    write_config(run)
    epochs = run.cfg.train.epochs
    (run.run_dir / "summary.json").write_text(json.dumps({"status": "done", "epochs_done": epochs, "epochs": epochs}))
    (run.run_dir / "last.pt").write_bytes(b"")
