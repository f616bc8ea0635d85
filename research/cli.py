"""The ``research`` command: list, expand, train, submit, eval, report.

Every command takes an experiment file and ``dotted.key=value`` overrides. Bad input prints one line
on stderr and exits with status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # the shell's status for SIGINT


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """``research COMMAND ...``; ``prog`` names the command in error lines (``launchers/local.py``)."""
    renamed = {argv[0]: prog} if prog and argv else {}  # launchers/slurm.py is `research submit`: its usage says so
    with quiet_broken_pipe():
        args = _parser(renamed).parse_args(argv)
    return run_with_errors(lambda: args.command(args), prog=prog or f"research {args.name}", debug=args.debug)


def run_with_errors(command: Callable[[], int | None], *, prog: str, debug: bool) -> int:
    """Run a command; bad input becomes one line on stderr and exit status 2 (unless ``debug``)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        with quiet_broken_pipe():
            return int(command() or 0)
    except (KeyboardInterrupt, Exception) as exc:
        if debug:
            raise
        if isinstance(exc, KeyboardInterrupt):  # outside training, or a second Ctrl-C inside it
            print(f"{prog}: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        fit = sys.modules.get("research.engine.fit")  # not imported: no run was stopped
        if fit is not None and isinstance(exc, fit.RunStopped):  # SIGTERM / Ctrl-C stopped a run after saving it
            print(f"{prog}: {exc}", file=sys.stderr)
            return exc.exit_status
        # not bad input, the command was right: a diverged run (the message says what to change) or a full disk
        failed = str(exc) if isinstance(exc, FloatingPointError) else _disk_full(exc)
        if failed is not None:
            print(f"{prog}: error: {failed}", file=sys.stderr)
            return 1
        if not _is_bad_input(exc):
            raise
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _disk_full(exc: BaseException) -> str | None:
    """One line for a write that failed for lack of space or quota (research.engine.checkpoint.DiskFull
    names the file; another write's error says what it can), else None. The last checkpoint is intact."""
    checkpoint = sys.modules.get("research.engine.checkpoint")  # not imported: nothing was written
    if checkpoint is None or not checkpoint.no_space(exc):
        return None
    if isinstance(exc, checkpoint.DiskFull):
        return str(exc)
    where = f"cannot write {exc.filename}: " if isinstance(exc, OSError) and exc.filename else ""
    return f"{where}no space left on the device; free space, then run the same command again to resume"


@contextlib.contextmanager
def quiet_broken_pipe() -> Iterator[None]:
    """``research list | head``: the reader left, so stop quietly (exit 1) instead of a traceback.

    Python's recipe (docs of the ``signal`` module, "Note on SIGPIPE"): flush inside, and on
    BrokenPipeError point stdout at devnull, so that the flush at interpreter exit fails no more.
    """
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


def _is_bad_input(exc: BaseException) -> bool:
    from research.config import ConfigError
    from research.data import DataError
    from research.plugins import PluginError
    from research.registry import RegistryError
    from research.safe_load import CheckpointError  # TeacherCheckpointError is one

    return isinstance(exc, (ConfigError, RegistryError, PluginError, DataError, CheckpointError, FileNotFoundError))


def _parser(progs: dict[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="research", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks for bad input")
    commands = parser.add_subparsers(required=True, metavar="COMMAND", parser_class=_Command)

    def command(name: str, func: object, help_text: str, config: bool = True) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text, prog=progs.get(name))
        sub.set_defaults(command=func, name=name)
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
        if config:
            sub.add_argument("config", type=Path, help="experiment YAML file")
            sub.add_argument(
                "overrides", nargs="*", help="dotted.key=value overrides (optim.lr=1e-3), section={...} replacements, ~key deletions"
            )
        return sub

    sub = command("list", _list, "list registered components", config=False)
    sub.add_argument("kind", nargs="?", help="models, teachers, losses, augmentations, datasets, loggers or backends")
    sub = command("expand", _expand, "show the runs an experiment makes and their cost estimate, without running anything")
    cost_options(sub)
    seeds_option(sub)
    sub = command(
        "throughput", _throughput, "measure the training and evaluation images/s of an experiment's runs here; add them to your throughput table"
    )
    sub.add_argument("--device", required=True, help="this machine's device name in the table: the GPU type (h200) or cpu-...")
    sub.add_argument(
        "--throughput-table", type=Path, default=None,
        help="the table to add rows to (default: $RESEARCH_THROUGHPUT_TABLE or ~/.cache/research/throughput.csv)",
    )  # fmt: skip
    sub.add_argument("--only", nargs="+", default=[], metavar="VARIANT", help="measure only these variants")
    sub.add_argument("--steps", type=int, default=20, help="timed steps per measurement (after 5 warm-up steps)")
    sub = command("train", _train, "train every run of an experiment here (finished runs are skipped)")
    run_options(sub)
    sub.add_argument("--nproc", type=int, default=1, help="DDP processes per run (default 1; gloo on CPU)")
    sub = command("submit", _submit, "submit the runs of an experiment not finished or queued yet through its launcher backend (SLURM)")
    run_options(sub)
    sub.add_argument("--dry-run", action="store_true", help="print the jobs, their parameters and cost; submit nothing")
    sub.add_argument("--no-snapshot", action="store_true", help="run the live working tree instead of a code snapshot")
    sub.add_argument("--backend", default=None, metavar="NAME", help="the launcher backend (the key resources.backend)")
    cost_options(sub)  # what the --dry-run's cost estimate assumes
    command("eval", _eval, "evaluate a checkpoint: research eval CONFIG checkpoint=PATH [overrides]")
    sub = command("report", _report, "tables and plots of experiments' runs", config=False)
    sub.add_argument(
        "configs", nargs="+",
        help="experiment YAML files or folders of run dirs (runs/ablate_mixup), then dotted.key=value / ~key overrides applied to each file",
    )
    sub.add_argument("--out", type=Path, default=None, help="report dir (default: reports/<first experiment>)")
    sub.add_argument("--wandb", action="store_true", help="also read runs from the W&B API (online)")
    sub.add_argument("--only", nargs="+", default=[], metavar="VARIANT", help="report only these variants and the baseline")
    paper = sub.add_mutually_exclusive_group()
    paper.add_argument("--paper", type=Path, default=None, help="the paper's figures (default: research/report/paper.yaml)")
    paper.add_argument("--no-paper", action="store_true", help="leave out the paper beside ours")
    return parser


class _Command(argparse.ArgumentParser):
    """A command's parser: options may come between the overrides (``exp.yaml --dry-run slurm.partition=gpu``)."""

    _inner = False  # parse_known_intermixed_args calls parse_known_args twice

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> tuple[argparse.Namespace, list[str]]:  # type: ignore[override]
        if self._inner:
            return super().parse_known_args(args, namespace)
        self._inner = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inner = False


def cost_options(parser: argparse.ArgumentParser) -> None:
    """``--device`` and ``--throughput-table``, shared by ``research expand`` and ``research submit``."""
    parser.add_argument("--device", default=None, help="price the runs on this device (default: resources.gpu_type), e.g. h200")
    parser.add_argument(
        "--throughput-table", type=Path, default=None,
        help="your throughput CSV, read before the package's (default: $RESEARCH_THROUGHPUT_TABLE or ~/.cache/research/throughput.csv)",
    )


def seeds_option(parser: argparse.ArgumentParser) -> None:
    """``--seeds N``: the experiment's ``seeds`` key (every variant run N times, seed + i in ``seed<k>/``)."""
    parser.add_argument("--seeds", type=int, default=None, metavar="N", help="run every variant with N seeds (the key `seeds`)")


def with_seeds(overrides: Sequence[str], args: argparse.Namespace) -> list[str]:
    """The command line's overrides, with ``--seeds N`` as the override ``seeds=N`` and ``--backend NAME``
    as ``resources.backend=NAME`` (checked like any key)."""
    backend = getattr(args, "backend", None)
    options = [f"seeds={args.seeds}"] if args.seeds is not None else []
    return [*overrides, *options, *([f"resources.backend={backend}"] if backend is not None else [])]


def print_cost(runs: Sequence[object], args: argparse.Namespace) -> None:
    """The cost table of ``runs`` (research.launch.cost) for a command with :func:`cost_options`."""
    from research.launch.cost import estimate_runs, format_estimates

    estimates = estimate_runs(
        runs, device=args.device, table=args.throughput_table, config=args.config, overrides=args.overrides  # type: ignore[arg-type]
    )
    print("\n" + format_estimates(estimates, table=args.throughput_table))


def run_options(parser: argparse.ArgumentParser) -> None:
    """The options of ``research train`` and ``research submit`` (``launchers/local.py``, ``launchers/slurm.py``)."""
    parser.add_argument("--force", action="store_true", help="run finished runs again (the old run dir is kept aside)")
    parser.add_argument("--only", nargs="+", default=[], metavar="VARIANT", help="run only these variants (default: all)")
    seeds_option(parser)


def _selected_runs(args: argparse.Namespace, *, check_files: bool = True) -> list[Any]:
    """The runs of a :func:`run_options` command line."""
    from research.config import load_runs

    # `--only a b key=value ~key`: variant names hold no '=' and no leading '~', so what follows them may still be overrides
    only = [item for item in args.only if not _is_override(item)]
    overrides = [*args.overrides, *(item for item in args.only if _is_override(item))]
    return load_runs(args.config, with_seeds(overrides, args), check_files=check_files, only=only)


def _list(args: argparse.Namespace) -> int:
    from research.config import ConfigError
    from research.config.components import SECTIONS
    from research.registry import REGISTRIES

    if args.kind and args.kind not in REGISTRIES:
        raise ConfigError(f"unknown kind {args.kind!r}; choose one of: {', '.join(REGISTRIES)}")
    for kind in [args.kind] if args.kind else list(REGISTRIES):
        registry = REGISTRIES[kind]
        # Parameters the engine passes (num_classes, img_size, ...) have no YAML key: do not offer them.
        injected = {key for spec in SECTIONS.values() if spec.registry is registry for key in spec.injected}
        print(f"{kind}:")
        for name in registry.names():
            params = [
                p
                for p in registry.signature(name).parameters.values()
                if p.default is not inspect.Parameter.empty and p.name not in injected
            ]
            detail = ", ".join(f"{p.name}={p.default!r}" for p in params) if args.kind else ""
            print(f"  {name}" + (f"  ({detail})" if detail else ""))
    return 0


def _expand(args: argparse.Namespace) -> int:
    from research.config import load_runs
    from research.config.expand import format_value
    from research.console import text_table
    from research.launch.run_check import shown_status

    runs = load_runs(args.config, with_seeds(args.overrides, args), check_files=False)
    rows = []
    for run in runs:
        changes = " ".join(f"{k}={format_value(v)}" for k, v in run.changes.items())
        marker = " (baseline)" if run.is_baseline and len(runs) > 1 else ""
        rows.append([run.name + marker, shown_status(run.run_dir), str(run.run_dir), changes or "-"])
    print(text_table(["run", "status", "run dir", "changes vs baseline"], rows))
    print(f"{len(runs)} run{'s' if len(runs) != 1 else ''}")
    print_cost(runs, args)
    return 0


def _throughput(args: argparse.Namespace) -> int:
    from research.config import load_runs
    from research.launch.cost import record_throughput, recording_table
    from research.launch.measure import measure_runs

    _check_count("--steps", args.steps)
    recording_table(args.throughput_table)  # the shipped table, or a malformed one, stops before measuring
    runs = load_runs(args.config, args.overrides, check_files=False, only=args.only)
    rows = measure_runs(runs, device_name=args.device, steps=args.steps)
    path = record_throughput(rows, args.throughput_table)
    for row in rows:
        teacher = f" + teacher {row.teacher}" if row.teacher else ""
        print(
            f"{row.model}{teacher} {row.img_size}px batch {row.batch_size} {row.precision} on {row.device}: "
            f"train {row.train_img_s:,.0f} img/s, eval {row.eval_img_s:,.0f} img/s ({row.scope})"
        )
    print(f"recorded in {path}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from research.launch.local import run_locally

    _check_count("--nproc", args.nproc)
    run_locally(_selected_runs(args), force=args.force, nproc=args.nproc)
    return 0


def _submit(args: argparse.Namespace) -> int:
    from research.config.expand import format_value
    from research.console import text_table
    from research.launch.submit import launch

    rows = launch(_selected_runs(args, check_files=not args.dry_run), force=args.force, dry_run=args.dry_run, snapshot=not args.no_snapshot)
    table = [
        [row.run.name, row.action, row.job_id or "-", ",".join(row.depends_on) or "-", str(row.run.run_dir), row.run.name,
         " ".join(f"{k}={format_value(v)}" for k, v in row.run.changes.items()) or "-"]
        for row in rows
    ]  # fmt: skip
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


def _eval(args: argparse.Namespace) -> int:
    from research.config import ConfigError, load_run
    from research.launch.eval_checkpoint import evaluate_checkpoint

    checkpoints = [o.partition("=")[2] for o in args.overrides if o.startswith("checkpoint=")]
    if len(checkpoints) != 1:
        raise ConfigError("research eval needs exactly one checkpoint=PATH argument")
    overrides = [o for o in args.overrides if not o.startswith("checkpoint=")]
    results = evaluate_checkpoint(load_run(args.config, overrides), Path(checkpoints[0]))
    print(json.dumps(results, indent=1))
    return 0


def _check_count(option: str, value: int) -> None:
    """A count option (``--nproc``, ``--steps``) is at least 1: argparse checks only that it is an integer."""
    if value < 1:
        from research.config import ConfigError

        raise ConfigError(f"{option} {value}: must be at least 1")


def _is_override(item: str) -> bool:
    """``key=value`` or ``~key`` (a deletion), as opposed to a file or variant name."""
    return "=" in item or item.startswith("~")


def _report(args: argparse.Namespace) -> int:
    from research.launch.cost import inference_rate
    from research.launch.run_check import shown_status
    from research.report import write_report

    overrides = [item for item in args.configs if _is_override(item)]
    configs = [Path(item) for item in args.configs if not _is_override(item)]
    paper = False if args.no_paper else args.paper or True
    out = write_report(
        configs, out_dir=args.out, use_wandb=args.wandb, overrides=overrides, only=args.only, paper=paper, status=shown_status,
        inference=inference_rate,
    )
    print(f"report written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
