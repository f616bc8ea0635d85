"""A plugin module in the launch folder, on the real cluster: ``plugins: [mylab.models]`` with
``./mylab/models.py`` untracked and no PYTHONPATH. The code snapshot holds the module and the job,
running from the snapshot in the launch folder, builds the plugin's model."""

from __future__ import annotations

import json
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import submitit
import yaml
from scripts import load_script

from research.engine.run_dir import read_summary

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.usefixtures("restore_registries")]

launcher = load_script("launchers/slurm.py")

PLUGIN = """
from torch import nn

from research.registry import MODELS, ModelInfo


@MODELS.register({model!r}, ModelInfo(distilled=False, default_img_size=32))
def build(*, num_classes: int, img_size: int = 32) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * img_size * img_size, num_classes))
"""


def test_a_plugin_from_the_launch_folder_trains_in_the_job(
    slurm_cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    suffix = uuid.uuid4().hex[:6]
    package, model, name = f"mylab_{suffix}", f"lab_net_{suffix}", f"plugin-{suffix}"
    launch_dir = tmp_path / "launch"
    (launch_dir / package).mkdir(parents=True)
    (launch_dir / package / "__init__.py").touch()
    (launch_dir / package / "models.py").write_text(textwrap.dedent(PLUGIN.format(model=model)))
    experiment = {
        "name": name, "output_dir": str(tmp_path / "runs"), "plugins": [f"{package}.models"],
        "model": {"name": model}, "data": {"name": "synthetic", "size": 16, "num_classes": 4},
        "aug": {"name": "none", "simple_crop": True}, "logger": {"name": "none"},
        "loader": {"batch_size": 8, "workers": 0}, "sched": {"warmup_epochs": 0}, "train": {"epochs": 1, "progress": False},
        "slurm": {"partition": "debug", "tasks_per_node": 1, "cpus_per_task": 1, "mem_gb": 1, "time": "5"},
    }  # fmt: skip
    (launch_dir / "lab.yaml").write_text(yaml.safe_dump(experiment, sort_keys=False))
    monkeypatch.chdir(launch_dir)
    monkeypatch.setattr(sys, "path", [entry for entry in sys.path if entry not in ("", ".", str(launch_dir))])

    assert launcher.main(["lab.yaml"]) == 0
    capsys.readouterr()

    run_dir = tmp_path / "runs" / name
    (snapshot,) = (run_dir / ".code").iterdir()
    assert (snapshot / package / "models.py").is_file()
    (launch_dir / package / "models.py").write_text("raise ImportError('the job must run the submitted copy')\n")
    job_id = json.loads((run_dir / "slurm_job.json").read_text())["job_id"]
    job = submitit.SlurmJob(folder=run_dir / ".slurm" / "%j", job_id=job_id)
    slurm_cluster.wait_for_jobs([job], timeout_s=300)
    assert read_summary(run_dir)["status"] == "done", job.stderr()
