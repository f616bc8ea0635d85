#!/usr/bin/env python
"""Submit an experiment's runs to SLURM, one job array per experiment (through submitit).

    python launchers/slurm.py experiments/ablate_mixup.yaml [dotted.key=value ...] [--dry-run] [--force] [--seeds N]

Resources come from the experiment's ``slurm:`` section (override like any key: slurm.partition=gpu).
Finished runs are skipped and queued ones left alone; the rest are submitted and resume from their
checkpoints. A student whose teacher comes from another experiment waits for the teacher's job.
``--dry-run`` prints the jobs and their sbatch parameters without submitting (no SLURM needed), and
what they will cost: GPU-hours and wall time per run and in all, from the throughput table
(research/launch/cost.py; the device is ``slurm.gpu_type`` or ``--device``).
"""

from __future__ import annotations

import argparse
import sys

from research.cli import cost_options, print_cost, quiet_broken_pipe, run_with_errors, seeds_option, with_seeds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="launchers/slurm.py", description=__doc__.splitlines()[0])
    parser.add_argument("config", help="experiment YAML file")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    parser.add_argument("--dry-run", action="store_true", help="print the jobs and sbatch parameters; submit nothing")
    parser.add_argument("--force", action="store_true", help="submit finished runs again (old run dirs kept aside)")
    parser.add_argument("--no-snapshot", action="store_true", help="run the live working tree instead of a code snapshot")
    parser.add_argument("--only", nargs="+", default=[], metavar="VARIANT", help="run only these variants (default: all)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for bad input")
    seeds_option(parser)
    cost_options(parser)  # --device, --throughput-table: what the --dry-run's cost estimate assumes
    # Intermixed: options may come between overrides (``exp.yaml --dry-run slurm.partition=gpu``).
    with quiet_broken_pipe():  # --help | head
        args = parser.parse_intermixed_args(argv)

    def submit() -> int:
        from research.config import load_runs
        from research.config.expand import format_value
        from research.console import text_table
        from research.launch.slurm import launch

        runs = load_runs(args.config, with_seeds(args.overrides, args), check_files=not args.dry_run, only=args.only)
        rows = launch(runs, force=args.force, dry_run=args.dry_run, snapshot=not args.no_snapshot)
        table = [
            [row.run.name, row.action, row.job_id or "-", ",".join(row.depends_on) or "-", str(row.run.run_dir), row.run.name,
             " ".join(f"{k}={format_value(v)}" for k, v in row.run.changes.items()) or "-"]
            for row in rows
        ]
        print(text_table(["variant", "action", "job id", "after", "run dir", "W&B run", "changes vs baseline"], table))
        for header in dict.fromkeys(row.sbatch for row in rows if row.sbatch):
            names = ", ".join(row.run.name for row in rows if row.sbatch == header)
            actions = {row.action for row in rows if row.sbatch == header} - {"would submit"}
            # finished runs are not submitted: their header is what --force would submit them with
            note = f" ({', '.join(sorted(actions))}: submitted only with --force)" if actions else ""
            print(f"\nsbatch parameters for {names}{note}:\n{header}")
        if args.dry_run:
            print_cost([row.run for row in rows if row.action == "would submit"], args)
        return 0

    return run_with_errors(submit, prog="launchers/slurm.py", debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
