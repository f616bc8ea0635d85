"""``.ci/install_slurm.sh``, the SLURM set-up README names: it installs everything the SLURM tests
need, rsync included (the launcher's code snapshot; a machine set up from README lacked it). Run with
a stand-in ``apt-get`` that records what it is asked to install; needs no SLURM and no network."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOOLS = ("slurmctld", "slurmd", "sbatch", "srun", "sinfo", "squeue", "scontrol", "scancel", "munged", "rsync")

APT_GET = """#!/bin/sh
echo "apt-get $*" >> "$LOG"
for package in "$@"; do  # a package puts its tool on the PATH
  [ "$package" = rsync ] && printf '#!/bin/sh\\n' > "$BIN/rsync" && chmod +x "$BIN/rsync"
done
exit 0
"""


def run_install(tmp_path: Path, present: tuple[str, ...]) -> tuple[subprocess.CompletedProcess[str], str]:
    """The script on a PATH holding stand-ins for ``present`` only (and the shell's basics)."""
    bin_dir, log = tmp_path / "bin", tmp_path / "apt.log"
    bin_dir.mkdir()
    for tool in (*present, "id", "dpkg-query"):
        (bin_dir / tool).write_text("#!/bin/sh\necho 0\n")
        (bin_dir / tool).chmod(0o755)
    (bin_dir / "apt-get").write_text(APT_GET)
    (bin_dir / "apt-get").chmod(0o755)
    env = {"PATH": str(bin_dir), "LOG": str(log), "BIN": str(bin_dir), "HOME": os.environ.get("HOME", "/")}
    done = subprocess.run([shutil.which("bash") or "/bin/bash", ".ci/install_slurm.sh"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    return done, log.read_text() if log.exists() else ""


def test_a_machine_without_rsync_gets_it(tmp_path: Path) -> None:
    done, log = run_install(tmp_path, tuple(tool for tool in TOOLS if tool != "rsync"))
    assert done.returncode == 0, done.stdout + done.stderr
    installs = [line for line in log.splitlines() if " install " in line]
    assert installs and "rsync" in installs[-1].split(), log


def test_a_machine_with_everything_installs_nothing(tmp_path: Path) -> None:
    done, log = run_install(tmp_path, TOOLS)
    assert done.returncode == 0 and log == "", done.stdout + done.stderr + log
    assert "already installed" in done.stdout
