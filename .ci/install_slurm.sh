#!/usr/bin/env bash
# Installs what the SLURM tests need: a local one-node SLURM cluster (tests/slurm/cluster.py), from
# the Debian packages slurmctld, slurmd, slurm-client and munge, and rsync, which takes the code
# snapshot of every submission (launchers/slurm.py).
# Idempotent: returns at once when every tool is already on PATH.
set -euo pipefail

tools=(slurmctld slurmd sbatch srun sinfo squeue scontrol scancel munged rsync)
missing=()
for tool in "${tools[@]}"; do
  # /usr/sbin may be missing from a non-login PATH; the daemons live there.
  command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || missing+=("$tool")
done
if [ "${#missing[@]}" -eq 0 ]; then
  echo "install_slurm: SLURM, munge and rsync already installed"
  exit 0
fi
echo "install_slurm: missing ${missing[*]}; installing Debian packages"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq slurmctld slurmd slurm-client munge rsync
# tests/slurm/cluster.py runs its own munged and SLURM daemons with their own
# config, whatever system services the packages' scripts may have started.
for tool in "${tools[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || { echo "install_slurm: $tool still missing" >&2; exit 1; }
done
echo "install_slurm: done ($(dpkg-query -W -f='${Version}' slurmctld))"
