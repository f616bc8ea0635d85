"""Starting a command: a closed pipe (``research list | head``) ends it quietly, without a traceback."""

from __future__ import annotations

import os
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
