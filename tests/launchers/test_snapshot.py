"""Submitting through a fake ``sbatch``: what a refused submission leaves behind (nothing), and what
the code snapshot holds (the tracked files, plus the untracked experiment files and plugin modules
the runs use). The real cluster's version of the refusal is in tests/slurm/test_launcher.py."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from scripts import load_script

from research.launch import submit

from .test_slurm_dry_run import TINY  # the same tiny run the dry-run tests submit

launcher = load_script("launchers/slurm.py")

NO_CONTROLLER = "sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)"


def fake_sbatch(bin_dir: Path, monkeypatch: pytest.MonkeyPatch, *, stderr: str = "", stdout: str = "", status: int = 0) -> None:
    """An ``sbatch`` first on the PATH that prints what it is told and exits with ``status``."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "sbatch"
    script.write_text(f"#!/bin/sh\necho '{stdout}'\necho '{stderr}' >&2\nexit {status}\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def experiment(folder: Path, name: str, **sections: Any) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "output_dir": str(folder / "runs"), **TINY, **sections}, sort_keys=False))
    return path


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


# --- no controller: one line, exit 2, nothing left behind -----------------------------------------


@pytest.mark.parametrize("with_history", [False, True], ids=["fresh", "earlier-job-kept"])
def test_sbatch_without_a_controller_is_one_line_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], with_history: bool
) -> None:
    fake_sbatch(tmp_path / "bin", monkeypatch, stderr=NO_CONTROLLER, status=1)
    path = experiment(tmp_path, "quick")
    runs = tmp_path / "runs"
    if with_history:  # an earlier submission's logs and snapshot stay as they were
        (runs / "quick" / ".slurm" / "41").mkdir(parents=True)
        (runs / "quick" / ".slurm" / "41" / "41_log.out").write_text("old\n")
        (runs / "quick" / ".code" / "20260101-000000").mkdir(parents=True)
    before = files_under(runs)

    assert launcher.main([str(path)]) == 2

    out, err = capsys.readouterr()
    assert out == ""
    (line,) = err.strip().splitlines()  # not sbatch's words twice, no "Cloning into"
    assert line.startswith("launchers/slurm.py: error: sbatch cannot reach a SLURM controller")
    assert "Unable to contact slurm controller" in line
    assert "SLURM_CONF" in line and "start the cluster" in line and "--dry-run" in line
    assert files_under(runs) == before, "no snapshot, no submitit pickles, no submission file"


def test_sbatch_refusing_the_job_names_the_runs_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    refusal = "sbatch: error: Batch job submission failed: Invalid partition name specified"
    fake_sbatch(tmp_path / "bin", monkeypatch, stderr=refusal, status=1)
    assert launcher.main([str(experiment(tmp_path, "refused"))]) == 2
    out, err = capsys.readouterr()
    (line,) = err.strip().splitlines()
    assert f"sbatch refused the job for refused: {refusal}" in line
    assert not (tmp_path / "runs").exists()


# --- the snapshot: untracked experiment files and plugin modules --------------------------------


def plugin_source(model: str) -> str:
    return textwrap.dedent(f"""
        from torch import nn

        from research.registry import MODELS, ModelInfo


        @MODELS.register({model!r}, ModelInfo(distilled=False, default_img_size=32))
        def build(*, num_classes: int, img_size: int = 32) -> nn.Module:
            return nn.Sequential(nn.Flatten(), nn.Linear(3 * img_size * img_size, num_classes))
    """)


@pytest.fixture
def checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git checkout standing in for the code root: one tracked file; the launch folder is its root."""
    root = tmp_path / "checkout"
    root.mkdir()
    (root / "tracked.py").write_text("# tracked\n")
    for command in (["init", "-q"], ["add", "tracked.py"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"]):
        subprocess.run(["git", "-C", str(root), *command], check=True)
    monkeypatch.setattr(submit, "code_root", lambda: root)
    monkeypatch.chdir(root)
    return root


@pytest.mark.usefixtures("restore_registries")
def test_snapshot_holds_the_untracked_experiment_and_plugin_of_the_launch_folder(
    tmp_path: Path, checkout: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    package, model = f"mylab_{uuid.uuid4().hex[:8]}", f"lab_net_{uuid.uuid4().hex[:8]}"
    (checkout / package).mkdir()
    (checkout / package / "__init__.py").touch()
    (checkout / package / "models.py").write_text(plugin_source(model))
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(checkout))])
    path = experiment(checkout, "lab", plugins=[f"{package}.models"], model={"name": model})
    fake_sbatch(tmp_path / "bin", monkeypatch, stdout="Submitted batch job 77")

    with caplog.at_level("INFO"):
        assert launcher.main([path.name, "output_dir=" + str(tmp_path / "runs")]) == 0

    (snapshot,) = (tmp_path / "runs" / "lab" / ".code").iterdir()
    assert files_under(snapshot) == {"tracked.py", "lab.yaml", package, f"{package}/__init__.py", f"{package}/models.py"}
    assert (snapshot / package / "models.py").read_text() == plugin_source(model)
    assert f"untracked lab.yaml, {package}/__init__.py, {package}/models.py" in caplog.text  # said, not silent


def test_each_launch_gets_its_own_snapshot_dir(tmp_path: Path, checkout: Path) -> None:
    """Two launchers in the same second used to share (and crash on) one snapshot name."""
    with submit._snapshot(tmp_path / "exp", {}, created=[]):
        with submit._snapshot(tmp_path / "exp", {}, created=[]):
            pass
    assert len(list((tmp_path / "exp" / ".code").iterdir())) == 2


@pytest.mark.usefixtures("restore_registries")
def test_the_job_imports_the_plugin_from_its_snapshot_and_runs_in_the_launch_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In the job (research.launch.backends.slurm._run_from): cwd becomes the launch folder, whose plugin may have
    been edited since; the job imports the copy submitted in its snapshot."""
    from research.launch.backends.slurm import _run_from
    from research.registry import MODELS

    package, model = f"mylab_{uuid.uuid4().hex[:8]}", f"lab_net_{uuid.uuid4().hex[:8]}"
    for folder, name in ((tmp_path / "snapshot", model), (tmp_path / "launch", model + "_edited")):
        (folder / package).mkdir(parents=True)
        (folder / package / "__init__.py").touch()
        (folder / package / "models.py").write_text(plugin_source(name))
    monkeypatch.chdir(tmp_path / "snapshot")  # where sbatch started the job
    monkeypatch.setattr(sys, "path", ["", *sys.path])

    _run_from(str(tmp_path / "launch"), [f"{package}.models"])

    assert Path.cwd() == tmp_path / "launch"
    assert model in MODELS and model + "_edited" not in MODELS
