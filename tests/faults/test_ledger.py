"""The fault line counts every fault test that was meant to run: one that fails or errors before it
injects its fault shows as attempted and not survived."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from .ledger import Ledger

TESTS = Path(__file__).resolve().parents[1]


def test_a_test_that_ends_before_recording_counts_as_attempted_not_survived() -> None:
    ledger = Ledger()
    ledger.begin("t1")
    ledger.record("kill -9", survived=True, identical=True)
    ledger.end("t1", passed=True)
    ledger.begin("t2")
    ledger.end("t2", passed=False)  # failed before its fault
    ledger.begin("t3")
    ledger.record("NaN", survived=False)
    ledger.end("t3", passed=False)  # recorded: counted once, as recorded
    assert ledger.line() == "fault injection: 3 faults attempted, 1 survived, 0 records lost or duplicated, 1/1 resumes bit-identical"
    assert ledger.unreached == ["t2"]


SESSION = '''
import pytest

def test_reached(ledger):
    ledger.record("kill -9", survived=True, identical=True)

def test_fails_before_its_fault(ledger):
    raise RuntimeError("rsync: command not found")

@pytest.fixture
def cluster():
    raise RuntimeError("no cluster")

def test_errors_in_setup(cluster, ledger):
    ledger.record("never", survived=True)

@pytest.mark.skip(reason="not meant to run here")
def test_skipped(ledger):
    pass

def test_not_a_fault_test():
    assert False
'''

CONFTEST = f'''
import importlib.util, sys
sys.path.insert(0, {str(TESTS)!r})
spec = importlib.util.spec_from_file_location("repo_conftest", {str(TESTS / "conftest.py")!r})
repo = importlib.util.module_from_spec(spec)
spec.loader.exec_module(repo)
globals().update({{name: getattr(repo, name) for name in dir(repo) if name.startswith("pytest_") or name == "ledger"}})
'''


def test_the_session_line_counts_fault_tests_that_failed_or_errored_before_injecting(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(textwrap.dedent(CONFTEST))
    (tmp_path / "test_session.py").write_text(SESSION)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert "2 failed, 1 passed, 1 skipped, 1 error" in done.stdout, done.stdout
    assert (
        "fault injection: 3 faults attempted, 1 survived, 0 records lost or duplicated, 1/1 resumes bit-identical"
        in done.stdout
    ), done.stdout
    assert "test_fails_before_its_fault (not reached)" in done.stdout and "test_errors_in_setup (not reached)" in done.stdout
