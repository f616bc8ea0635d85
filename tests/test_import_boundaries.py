"""Module boundaries, checked on the source (AST), imports inside functions included.

Components (models, teachers, losses, data) depend on the deep-learning stack and the registry only,
so any of them can be reused or replaced alone; the engine trains whatever it is handed and knows no
component or launcher; launchers/ are scripts at the edge that nothing imports.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "research"

THIRD_PARTY_FOR_COMPONENTS = {"torch", "torchvision", "timm", "einops", "numpy", "PIL"}
COMPONENTS = ("models", "teachers", "losses", "data")
#: What components share with the engine: the registries, the one safe way to read a checkpoint file, the
#: one atomic write and file lock, and the run's random streams.
SHARED_WITH_COMPONENTS = ("research.registry", "research.safe_load", "research.files", "research.seeding")
NOT_FOR_THE_ENGINE = (
    "research.models", "research.teachers", "research.losses", "research.data", "research.launch", "research.config",
)  # fmt: skip
#: The config loader validates components through their registries (info records, checks), never by import.
NOT_FOR_THE_CONFIG = (
    "research.models", "research.teachers", "research.losses", "research.data", "research.engine", "research.launch",
    "research.tracking", "research.report",
)  # fmt: skip


def imports(path: Path) -> Iterator[tuple[int, str]]:
    """``(line, absolute module name)`` for every import in ``path``; ``from research import x`` gives
    ``research.x`` and relative imports are resolved against the file's package."""
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    if path.name == "__init__.py":
        package = ".".join(path.relative_to(REPO).parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            yield node.lineno, module
            for alias in node.names:  # `from research import models` imports research.models
                yield node.lineno, f"{module}.{alias.name}"


def python_files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*.py") if "__pycache__" not in path.parts)


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(f"{package}.")


@pytest.mark.parametrize("component", COMPONENTS)
def test_components_import_only_the_stack_and_the_registry(component: str) -> None:
    own = f"research.{component}"
    offenders = []
    for path in python_files(PACKAGE / component):
        for line, module in imports(path):
            top = module.split(".")[0]
            if top == "research":
                ok = _within(module, own) or module == "research" or any(_within(module, m) for m in SHARED_WITH_COMPONENTS)
            else:
                ok = top in THIRD_PARTY_FOR_COMPONENTS or top in sys.stdlib_module_names or top == "__future__"
            if not ok:
                offenders.append(f"{path.relative_to(REPO)}:{line}: {module}")
    assert not offenders, f"research/{component} may import only {sorted(THIRD_PARTY_FOR_COMPONENTS)}, the standard " \
        f"library, {', '.join(SHARED_WITH_COMPONENTS)} and itself:\n" + "\n".join(offenders)


def test_teachers_reach_models_through_the_registry_only() -> None:
    modules = {module for path in python_files(PACKAGE / "teachers") for _, module in imports(path)}
    assert not any(_within(module, "research.models") for module in modules)
    assert "research.registry.MODELS" in modules  # how a CIFAR teacher builds its network


def test_engine_knows_no_component_and_no_launcher() -> None:
    offenders = [
        f"{path.relative_to(REPO)}:{line}: {module}"
        for path in python_files(PACKAGE / "engine")
        for line, module in imports(path)
        if any(_within(module, forbidden) for forbidden in NOT_FOR_THE_ENGINE)
    ]
    assert not offenders, "research/engine must not import components or launch code:\n" + "\n".join(offenders)


def _offenders(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{path.relative_to(REPO)}:{line}: {module}"
        for path in python_files(PACKAGE / folder)
        for line, module in imports(path)
        if any(_within(module, name) for name in forbidden)
    ]


def test_config_knows_components_only_through_the_registry() -> None:
    offenders = _offenders("config", NOT_FOR_THE_CONFIG)
    assert not offenders, "research/config must reach components through research.registry:\n" + "\n".join(offenders)


def test_tracking_writes_no_run_dir_file_and_knows_no_engine() -> None:
    """A tracker hands back what a life records (its W&B run); the launch pipeline writes it through
    research.engine.run_dir. An import from tracking/ to engine/ made a cycle (the engine takes a tracker)."""
    offenders = _offenders("tracking", ("research.engine", "research.launch"))
    assert not offenders, "research/tracking must not import the engine or launch code:\n" + "\n".join(offenders)


def _calls(names: tuple[str, ...]) -> list[str]:
    return [
        f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node.func)}"
        for path in python_files(PACKAGE)
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call) and ast.unparse(node.func) in names
    ]


def test_one_atomic_write_and_one_file_lock() -> None:
    """Every atomic write and every flock of the package goes through research.files (one set of fsync and
    mode rules); a rename elsewhere moves a folder (a run dir set aside, an extraction put in place) or a link."""
    renames = {"research/files.py", "research/launch/run_check.py", "research/data/datasets.py", "research/engine/checkpoint.py"}
    writes = [place for place in _calls(("os.replace", "os.rename", "tempfile.mkstemp")) if place.split(":")[0] not in renames]
    locks = [place for place in _calls(("fcntl.flock",)) if place.split(":")[0] != "research/files.py"]
    assert not writes + locks, "write with research.files.write_atomic, lock with research.files.flock:\n" + "\n".join(writes + locks)


def test_run_statuses_are_written_once() -> None:
    """A run's statuses are research.engine.run_dir's constants; other modules name them, never spell them."""
    statuses = {"done", "failed", "running", "not started", "stopped", "cancelled", "interrupted"}
    places = [
        f"{path.relative_to(REPO)}:{node.lineno}: {node.value!r}"
        for folder in ("launch", "report", "engine")
        for path in python_files(PACKAGE / folder)
        if path.name != "run_dir.py"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and node.value in statuses
    ]
    assert not places, "use research.engine.run_dir's status constants:\n" + "\n".join(places)


def test_report_reads_run_dirs_through_the_engine_not_launch_code() -> None:
    offenders = _offenders("report", ("research.launch",))
    assert not offenders, "research/report reads a run's status with research.engine.run_dir:\n" + "\n".join(offenders)


def test_report_uses_only_the_tracking_packages_public_names() -> None:
    """``from research.tracking import has_api_key``, not a logger module's internals."""
    modules = {path.stem for path in python_files(PACKAGE / "tracking")}
    offenders = [
        f"{path.relative_to(REPO)}:{line}: {module}"
        for path in python_files(PACKAGE / "report")
        for line, module in imports(path)
        if _within(module, "research.tracking") and module.split(".")[2:3] and module.split(".")[2] in modules
    ]
    assert not offenders, "research/report may import research.tracking, not its modules:\n" + "\n".join(offenders)


def test_the_default_wandb_project_is_written_once() -> None:
    places = [
        f"{path.relative_to(REPO)}:{node.lineno}"
        for folder in ("tracking", "launch", "report")
        for path in python_files(PACKAGE / folder)
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and node.value == "deit"
    ]
    assert len(places) == 1, f"the \"deit\" project default must be written once (tracking.DEFAULT_PROJECT): {places}"


def test_nothing_imports_the_launcher_scripts() -> None:
    offenders = [
        f"{path.relative_to(REPO)}:{line}: {module}"
        for folder in (PACKAGE, REPO / "launchers", REPO / "tests")
        if folder.exists()
        for path in python_files(folder)
        for line, module in imports(path)
        if _within(module, "launchers")
    ]
    assert not offenders, "launchers/ are entry-point scripts; import research.launch instead:\n" + "\n".join(offenders)


def test_the_checker_sees_relative_and_from_imports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The AST walk itself: a checker that finds nothing would pass every test above."""
    fake = tmp_path / "research" / "teachers" / "fake.py"
    fake.parent.mkdir(parents=True)
    fake.write_text(
        "import os\nfrom ..models import deit\nfrom research import engine\n\ndef f():\n    import launchers.slurm\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    found = {module for _, module in imports(fake)}
    assert {"os", "research.models", "research.models.deit", "research.engine", "launchers.slurm"} <= found
