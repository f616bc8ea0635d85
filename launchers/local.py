#!/usr/bin/env python
"""Run every variant of an experiment on this machine, one after the other.

    python launchers/local.py experiments/ablate_mixup.yaml [dotted.key=value ...] [--force] [--nproc N]

Same run dirs as launchers/slurm.py; finished variants are skipped, unfinished ones resume, and a
teacher that comes from another experiment (teacher.from_experiment) is trained first. ``--nproc N``
runs each variant as N DDP processes (gloo on CPU) through torch's elastic launcher.
"""

from __future__ import annotations

import argparse
import sys

from research.cli import run_with_errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="launchers/local.py", description=__doc__.splitlines()[0])
    parser.add_argument("config", help="experiment YAML file")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    parser.add_argument("--force", action="store_true", help="train finished variants again (old run dirs kept aside)")
    parser.add_argument("--nproc", type=int, default=1, help="DDP processes per variant (default 1)")
    parser.add_argument("--only", nargs="+", default=[], metavar="VARIANT", help="run only these variants (default: all)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for bad input")
    args = parser.parse_intermixed_args(argv)

    def launch() -> int:
        from research.config import load_runs
        from research.launch.local import run_locally

        runs = load_runs(args.config, args.overrides, only=args.only)
        run_locally(runs, force=args.force, nproc=args.nproc)
        return 0

    return run_with_errors(launch, prog="launchers/local.py", debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
