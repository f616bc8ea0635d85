#!/usr/bin/env python
"""Submit an experiment's runs to SLURM, one job array per experiment (through submitit):
``research submit`` under another name, with the same options.

    python launchers/slurm.py experiments/ablate_mixup.yaml [dotted.key=value ...] [--dry-run] [--force] [--only VARIANT ...] [--seeds N]

Resources come from the experiment's ``resources:`` section and SLURM's own options from its ``slurm:``
section (override like any key: slurm.partition=gpu); research/launch/submit.py says which runs are
submitted and which skipped. ``--dry-run`` prints the jobs, their sbatch parameters and what they will
cost (research/launch/cost.py), without submitting: no SLURM needed.
"""

from __future__ import annotations

import sys

from research import cli


def main(argv: list[str] | None = None) -> int:
    return cli.main(["submit", *(sys.argv[1:] if argv is None else argv)], prog="launchers/slurm.py")


if __name__ == "__main__":
    sys.exit(main())
