"""The real ``sbatch`` with no controller to talk to: no configuration at all, and a ``slurm.conf``
whose controller is down (a port nobody listens on, as after ``cluster.py stop``). The launcher says
so in one line with the fix, exits 2 and leaves nothing behind. Needs the SLURM client tools only,
not the running cluster."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from scripts import load_script

pytestmark = [pytest.mark.slurm, pytest.mark.slow]  # needs the real sbatch (bash .ci/install_slurm.sh installs it)

launcher = load_script("launchers/slurm.py")

# The port of a controller that is not running (the test cluster's is 6817).
DOWN_CONF = """\
ClusterName=down
SlurmctldHost=localhost
SlurmctldPort=6999
AuthType=auth/munge
NodeName=localhost CPUs=1 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES
"""


def _trainable_experiment(tmp_path: Path) -> Path:
    """An experiment whose job could train: the pre-flight check passes, so sbatch is what fails."""
    experiment = tmp_path / "quick.yaml"
    experiment.write_text(
        yaml.safe_dump({
            "name": "quick", "output_dir": str(tmp_path / "runs"), "model": {"name": "deit_nano_patch4_32", "img_size": 32},
            "data": {"name": "synthetic", "size": 16, "num_classes": 4}, "logger": {"name": "none"},
            "loader": {"batch_size": 8},
        })  # fmt: skip
    )
    return experiment


@pytest.mark.parametrize("conf", ["none", "controller down"])
def test_no_controller_is_one_line_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], conf: str
) -> None:
    if conf == "none":
        monkeypatch.delenv("SLURM_CONF", raising=False)
        if Path("/etc/slurm/slurm.conf").exists():
            pytest.skip("this machine has a system slurm.conf")
    else:
        (tmp_path / "slurm.conf").write_text(DOWN_CONF)
        monkeypatch.setenv("SLURM_CONF", str(tmp_path / "slurm.conf"))
    experiment = _trainable_experiment(tmp_path)

    assert launcher.main([str(experiment)]) == 2

    out, err = capsys.readouterr()
    (line,) = err.strip().splitlines()
    assert out == "" and "sbatch cannot reach a SLURM controller" in line and "SLURM_CONF" in line
    assert not (tmp_path / "runs").exists()


def test_a_slurm_conf_that_names_no_file_is_one_line_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """sbatch itself retries for a minute, then prints its own three lines."""
    missing = tmp_path / "etc" / "slurm.conf"
    monkeypatch.setenv("SLURM_CONF", str(missing))
    experiment = _trainable_experiment(tmp_path)

    started = time.monotonic()
    assert launcher.main([str(experiment)]) == 2
    elapsed = time.monotonic() - started

    out, err = capsys.readouterr()
    (line,) = err.strip().splitlines()
    assert out == "" and f"SLURM_CONF={missing} is not a file" in line and "--dry-run" in line
    assert elapsed < 10, elapsed
    assert not (tmp_path / "runs").exists()
