"""A launcher backend beside SLURM, added as a plugin module:

Files: 1 (tests/launchers/local_backend.py: a ``Backend`` registered in ``BACKENDS``)

In the package it is at most 3: its module in research/launch/backends/, one import line in that
package's ``__init__``, and, when it has options of its own, their dataclass section in
research/config/schema.py marked ``metadata={"backend": True}`` (as ``slurm:`` is), which
research/config/keys.py counts as placement without an edit.

``research submit --backend subprocess`` trains every run through it; a relaunch skips them all.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

from research import cli
from research.engine.run_dir import read_lives
from research.launch.submit import JOB_FILE

ABLATION = {"variants": {"base": {}, "low_lr": {"optim.lr": 1e-4}}}


@pytest.fixture
def subprocess_backend(restore_registries: None) -> None:
    """The backend, registered as a plugin registers: by importing its module."""
    sys.modules.pop("launchers.local_backend", None)
    importlib.import_module("launchers.local_backend")


@pytest.mark.slow
@pytest.mark.usefixtures("subprocess_backend")
def test_a_backend_from_a_plugin_trains_every_run_and_a_relaunch_skips_them(experiment, tmp_path: Path, capsys) -> None:
    path = experiment("two", ablation=ABLATION)
    command = ["submit", str(path), "--backend", "subprocess", "--no-snapshot"]

    assert cli.main([*command, "--dry-run"]) == 0
    dry = capsys.readouterr().out
    assert dry.count("would submit") == 2 and "# 2 subprocess(es) of" in dry  # one group: equal options
    assert not (tmp_path / "runs").exists()

    assert cli.main(command) == 0
    assert capsys.readouterr().out.count("submitted") == 2
    for variant in ("base", "low_lr"):
        run_dir = tmp_path / "runs" / "two" / variant
        assert json.loads((run_dir / "summary.json").read_text())["status"] == "done"
        record = json.loads((run_dir / JOB_FILE).read_text())
        assert record["backend"] == "subprocess"
        assert [life["job_id"] for life in read_lives(run_dir)] == [record["job_id"]]  # the job knew itself

    assert cli.main(command) == 0
    out = capsys.readouterr().out
    assert out.count("finished") == 2 and "submitted" not in out
    assert len(read_lives(tmp_path / "runs" / "two" / "base")) == 1  # nothing trained again
