#!/usr/bin/env python
"""Run every variant of an experiment on this machine, one after the other: ``research train`` under
another name, with the same options.

    python launchers/local.py experiments/ablate_mixup.yaml [dotted.key=value ...] [--force] [--nproc N] [--only VARIANT ...] [--seeds N]

Same run dirs as launchers/slurm.py; finished variants are skipped, unfinished ones resume, and a
teacher that comes from another experiment (teacher.from_experiment) is trained first. ``--nproc N``
runs each variant as N DDP processes (gloo on CPU) through torch's elastic launcher.
"""

from __future__ import annotations

import sys

from research.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]], prog="launchers/local.py"))
