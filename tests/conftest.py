"""Fixtures shared by the spine tests: tiny experiment files, and registries restored after a test."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from faults.ledger import LEDGER, Ledger
from tiny import TINY, deep_update, write_yaml

from research.data.techniques import TECHNIQUES
from research.registry import REGISTRIES

ExperimentWriter = Callable[..., Path]


@pytest.fixture
def yaml_file(tmp_path: Path) -> Callable[[str, dict[str, Any] | str], Path]:
    """``yaml_file("bases/recipe.yaml", {...} or "text")`` writes a file under ``tmp_path``."""
    return lambda relative, content: write_yaml(tmp_path / relative, content)


@pytest.fixture
def experiment(tmp_path: Path) -> ExperimentWriter:
    """``experiment("name", optim={"lr": 1e-3}, ...)`` writes ``tmp_path/name.yaml``: :data:`TINY` with
    the given sections merged in (``None`` removes a section) and ``output_dir`` under ``tmp_path``."""

    def write(name: str = "tiny", /, **sections: Any) -> Path:
        content = deep_update({"output_dir": str(tmp_path / "runs"), **TINY}, sections)
        content = {key: value for key, value in content.items() if value is not None}
        return write_yaml(tmp_path / f"{name}.yaml", content)

    return write


@pytest.fixture
def restore_registries(tmp_path: Path) -> Iterator[None]:
    """Undo whatever a test (or a plugin it imports) registers in the global registries, and forget
    the modules it imported from ``tmp_path``, so later tests see the built-ins only."""
    saved = {kind: (dict(r._entries()), dict(r._info), list(r._checks)) for kind, r in REGISTRIES.items()}  # built-ins loaded
    techniques = list(TECHNIQUES)
    yield
    TECHNIQUES[:] = techniques
    for kind, registry in REGISTRIES.items():
        builders, info, checks = saved[kind]
        registry._builders.clear()
        registry._builders.update(builders)
        registry._info.clear()
        registry._info.update(info)
        registry._checks[:] = checks
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if isinstance(file, str) and Path(file).is_relative_to(tmp_path):
            del sys.modules[name]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the ``cuda`` tests where torch sees no GPU, saying so in the summary (``-rs``)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="cuda: needs a CUDA GPU, and torch.cuda.is_available() is False here")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture
def ledger() -> Ledger:
    """The fault-injection ledger (tests/faults/ledger.py): ``ledger.record(fault, survived=..., ...)``."""
    return LEDGER


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[object]:
    """A fault test (one that asks for ``ledger``) counts as attempted from its setup on (tests/faults/ledger.py)."""
    fault_test = "ledger" in getattr(item, "fixturenames", ())
    if fault_test:
        LEDGER.begin(item.nodeid)
    try:
        return (yield)
    finally:
        if fault_test:
            reports = item.stash.get(_REPORTS, [])
            if not any(report.skipped for report in reports):  # a skip was not meant to run here
                LEDGER.end(item.nodeid, passed=bool(reports) and all(report.passed for report in reports))


_REPORTS = pytest.StashKey[list]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[object]:
    report = yield
    item.stash.setdefault(_REPORTS, []).append(report)
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The fault-injection suite's line of figures, when any fault test ran."""
    if LEDGER.injected:
        terminalreporter.write_sep("-", "fault injection")
        terminalreporter.write_line(LEDGER.line())
        terminalreporter.write_line("faults: " + ", ".join(LEDGER.injected))
        if LEDGER.unreached:
            terminalreporter.write_line("fault tests that ended before injecting their fault: " + ", ".join(LEDGER.unreached))


@pytest.fixture
def plain_loss(restore_registries) -> str:
    """A plugin loss that does not distil (``LossInfo.needs_teacher`` false): the base criterion alone."""
    from research.losses.distillation import GroundTruthObjective
    from research.registry import LOSSES, LossInfo

    @LOSSES.register("plain_test_loss", LossInfo(needs_teacher=False))
    def plain(*, base_criterion: Any, teacher: Any = None) -> GroundTruthObjective:
        return GroundTruthObjective(base_criterion=base_criterion)

    return "plain_test_loss"
