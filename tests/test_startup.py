"""Starting a command: a closed pipe (``research list | head``) ends it quietly, without a traceback."""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_into_closed_pipe(*command: str) -> subprocess.CompletedProcess[str]:
    """Run ``command`` with its stdout a pipe whose reader has already gone (as ``| head`` does once it
    has its lines): every write fails with EPIPE."""
    read, write = os.pipe()
    os.close(read)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    try:
        return subprocess.run(command, stdout=write, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env, timeout=300)
    finally:
        os.close(write)


@pytest.mark.slow
@pytest.mark.parametrize(
    "command",
    [
        ["-m", "research.cli", "list"],
        ["-m", "research.cli", "--help"],
        ["launchers/slurm.py", "experiments/quickstart.yaml", "--dry-run"],
        ["launchers/slurm.py", "--help"],
    ],
    ids=" ".join,
)
def test_a_closed_pipe_ends_the_command_quietly(command: list[str]) -> None:
    done = run_into_closed_pipe(sys.executable, *command)
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr
    assert done.returncode in (0, 1)  # argparse swallows the error of --help itself


HEAVY = ("torch", "timm", "wandb", "submitit", "matplotlib")


@pytest.mark.parametrize(
    "argv",
    [["research", "--help"], ["research", "train", "--help"], ["launchers/slurm.py", "--help"]],
    ids=" ".join,
)
def test_help_imports_no_heavy_package(argv: list[str]) -> None:
    """``--help`` took 4 s because ``import research`` imported torch and timm (every command does
    only what it needs; the built-ins register in research.load_builtins)."""
    entry = "from research.cli import main; main(sys.argv[1:])" if argv[0] == "research" else "runpy.run_path(sys.argv[0], run_name='__main__')"
    script = f"""
import runpy, sys
sys.argv = {argv!r}
try:
    {entry}
except SystemExit:
    pass
print(sorted(name for name in {HEAVY!r} if name in sys.modules), file=sys.stderr)
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert "usage:" in done.stdout, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "[]", done.stderr


def run_python(script: str) -> subprocess.CompletedProcess[str]:
    """``script`` in a fresh interpreter, importing ``research`` from this checkout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)


def test_the_notebook_lines_work_in_a_fresh_interpreter() -> None:
    """No ``research.load_builtins()`` first: the registry loads the built-ins on its first lookup."""
    done = run_python(
        "from research.registry import MODELS\n"
        "model = MODELS.build('deit_tiny_patch16_224', num_classes=10)\n"
        "print(type(model).__name__, model.num_classes)\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["DeiT", "10"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "lookup",
    [
        "'deit_tiny_patch16_224' in MODELS",
        "len(LOSSES) >= 4",
        "'resnet10_cifar' in list(TEACHERS)",
        "MODELS.info('deit_tiny_distilled_patch16_224').distilled",
        "'hard' in LOSSES.names()",
        "callable(AUGMENTATIONS.get('deit'))",
        "'jsonl' in iter(LOGGERS)",
        "'num_classes' in DATASETS.signature('synthetic').parameters",
    ],
)
def test_every_kind_of_lookup_loads_the_built_ins(lookup: str) -> None:
    done = run_python(f"from research.registry import *\nprint({lookup})\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True", done.stderr


def test_importing_and_registering_load_nothing_heavy() -> None:
    """``import research`` / ``research.registry`` and a registration (a plugin's decorator) stay light:
    only a lookup loads the built-ins (and with them torch and timm)."""
    done = run_python(
        "import sys, research, research.registry\n"
        "from research.registry import MODELS, ModelInfo\n"
        "@MODELS.register('my_net', ModelInfo(default_img_size=32))\n"
        "def my_net(*, num_classes: int) -> None: ...\n"
        f"print(sorted(name for name in {HEAVY!r} if name in sys.modules))\n"
        "print('my_net' in MODELS, 'deit_tiny_patch16_224' in MODELS, 'torch' in sys.modules)\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[]", "True True True"]


def test_help_starts_in_under_a_fifth_of_a_second() -> None:
    """``research --help`` in under 0.2 s (the issue's bound), measured so that a loaded machine does not
    fail it: the CPU time of the process (user + system, which other processes' load barely moves,
    unlike the wall time), median of 7 runs, less the median of a bare interpreter's start between them."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    help_times: list[float] = []
    bare_times: list[float] = []
    for _ in range(7):
        for script, times in (("from research.cli import main; main(['--help'])", help_times), ("pass", bare_times)):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            subprocess.run([sys.executable, "-c", script], capture_output=True, cwd=REPO, env=env, timeout=60, check=True)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            times.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    added = statistics.median(help_times) - statistics.median(bare_times)
    assert added < 0.2, f"research --help takes {added:.3f} s of CPU beyond the interpreter's start"
