#!/usr/bin/env python
"""Submit an experiment's runs to SLURM, one job array per experiment (through submitit):
``research submit`` under another name, with the same options.

    python launchers/slurm.py experiments/ablate_mixup.yaml [dotted.key=value ...] [--dry-run] [--force] [--only VARIANT ...] [--seeds N]

Resources come from the experiment's ``resources:`` section and SLURM's own options from its ``slurm:``
section (override like any key: slurm.partition=gpu). Finished runs are skipped and queued ones left
alone; the rest are submitted and resume from their checkpoints. A student whose teacher comes from
another experiment waits for the teacher's job. ``--dry-run`` prints the jobs and their sbatch
parameters without submitting (no SLURM needed), and what they will cost: GPU-hours and wall time per
run and in all, from the throughput table (research/launch/cost.py; the device is
``resources.gpu_type`` or ``--device``).
"""

from __future__ import annotations

import sys

from research import cli


def main(argv: list[str] | None = None) -> int:
    return cli.main(["submit", *(sys.argv[1:] if argv is None else argv)], prog="launchers/slurm.py")


if __name__ == "__main__":
    sys.exit(main())
