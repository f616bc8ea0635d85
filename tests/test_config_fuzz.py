"""Random values and types for every schema field and every builder parameter (issue 17, section 4).

Each case goes through the command line (``research expand CONFIG key=value``) or through an
experiment file, and must either load or exit 2 with exactly one line on stderr, no traceback, and
nothing written. Deterministic (``derandomize``), so CI runs the same cases every time; the case
counts add up to more than 1,000 (see CASES).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import math
import tempfile
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scripts import load_script

from research.cli import EXIT_BAD_INPUT, main
from research.config import ConfigError, load_runs
from research.config.components import SECTIONS
from research.config.schema import ExperimentCfg
from research.registry import constraints

TINY = load_script("tests/conftest.py").TINY  # the smallest experiment (a file, not a module: see scripts.py)

#: Cases per test; their sum is the fuzz test's size in CI (at least 1,000, issue 17).
CASES = {"schema_cli": 330, "schema_yaml": 230, "builder_cli": 250, "builder_yaml": 200, "train": 40, "names": 120}


def fuzz(name: str) -> Any:
    return settings(
        max_examples=CASES[name],
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


# --- what to fuzz ----------------------------------------------------------------------------------


def schema_fields(cls: type = ExperimentCfg, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted key, default)`` for every leaf field of the schema (``plugins`` aside: it imports)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    for item in dataclasses.fields(cls):
        hint, _ = constraints(hints[item.name])
        key = f"{prefix}{item.name}"
        if dataclasses.is_dataclass(hint):
            yield from schema_fields(hint, f"{key}.")  # type: ignore[arg-type]
        elif key != "plugins":
            default = item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default
            yield key, default


DISTILLED = {
    "model": {"name": "deit_nano_distilled_patch4_32"},
    "loss": {"name": "hard"},
    "teacher": {"name": "resnet10_cifar", "checkpoint": "teacher.pt", "img_size": 32},
}


def component_base(section: str, name: str) -> dict[str, Any]:
    """Sections under which registered component ``name`` of ``section`` loads with its defaults."""
    base: dict[str, Any] = dict(DISTILLED) if section in ("teacher", "loss") else {}
    entry: dict[str, Any] = {"name": name}
    if section == "teacher":
        entry.update(checkpoint="teacher.pt", img_size=32, **({"arch": "resnet18"} if name == "timm" else {}))
    if section == "loss" and name == "none":
        base = {}
    if section == "aug":
        entry["simple_crop"] = True
    return {**base, section: entry}


def builder_parameters() -> dict[tuple[str, str], list[tuple[str, Any]]]:
    """``(section, parameter) -> [(component name, default), ...]`` over every registered builder."""
    found: dict[tuple[str, str], list[tuple[str, Any]]] = {}
    for section, spec in SECTIONS.items():
        for name in spec.registry.names():
            for param in spec.registry.signature(name).parameters.values():
                if param.kind is param.KEYWORD_ONLY and param.name not in spec.injected:
                    default = None if param.default is param.empty else param.default
                    found.setdefault((section, param.name), []).append((name, default))
    return found


SCHEMA = list(schema_fields())
BUILDERS = builder_parameters()
PARAMETERS = sorted(BUILDERS)


def near(default: Any) -> list[Any]:
    """Values of the default's kind, some good, some just out of range."""
    if isinstance(default, bool):
        return [True, False, "yes", 0]
    if isinstance(default, (int, float)):
        return [default, 0, 1, -1, default * 2, -default, 0.5, 1.5, 2**40]
    if isinstance(default, str):
        return [default, "", default.upper(), f"{default}x"]
    return [default, None, 0, "x"]


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.integers(-3, 3),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["none", "soft", "hard", "deit", "cifar", "bicubic", "24:00:00", "1-2", "numel", "auto"]),
    # strings OmegaConf or the file system read specially: interpolations, the missing marker, paths
    st.sampled_from(["${oops}", "${seed}", "${oc.env:NO_SUCH_VARIABLE,-1}", "???", "~no-such-user/x", "/tmp/" + "a" * 300]),
    # control characters: a line break in a value that reaches the batch script ran as shell (issue 24)
    st.sampled_from(["a\nb", "gpu\n#SBATCH --time=0", "x\r", "\x1b[2J", "a\u2028b", "..", "."]),
)
# Names of experiments, variants and grid values (issue 24): path parts, '/', control characters, plain ones.
names = st.one_of(
    st.sampled_from([".", "..", "...", "a/b", "../up", "/root", "a\nb", "a\rb", "\x1b[2J", "\t", "a\x00", "x\u2028y", "ok", "a.b"]),
    st.text(max_size=6),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=2), max_leaves=4)


def cli_text(value: Any) -> str:
    """How a user would type ``value`` (YAML flow style), or the string as is."""
    if isinstance(value, str):
        return value
    text = yaml.safe_dump(value, default_flow_style=True, width=math.inf).strip()
    return text.removesuffix("...").strip()


# --- running one case ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The folder every case runs in: its experiment file, and a ``runs/`` output dir that must never appear."""
    path = tmp_path_factory.mktemp("fuzz")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(path)
        yield path


def write_experiment(workdir: Path, sections: dict[str, Any], key: str | None = None, value: Any = None) -> Path:
    """The tiny experiment with ``sections``, and ``value`` at the dotted ``key``, as ``fuzz.yaml``."""
    content: dict[str, Any] = copy.deepcopy({**TINY, "output_dir": str(workdir / "runs"), **sections})
    if key is not None:
        node = content
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part] if isinstance(node.get(part), dict) else node.setdefault(part, {})
        node[leaf] = value
    path = workdir / "fuzz.yaml"
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def assert_loads_or_one_line(argv: list[str], workdir: Path) -> None:
    before = sorted(p.name for p in workdir.iterdir())
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    if status != 0:
        lines = err.getvalue().splitlines()
        assert status == EXIT_BAD_INPUT, (argv, err.getvalue())
        assert len(lines) == 1 and lines[0].startswith(f"research {argv[0]}: error: "), (argv, err.getvalue())
        assert "Traceback" not in err.getvalue()
    assert sorted(p.name for p in workdir.iterdir()) == before, f"{argv} wrote into {workdir}"


# --- the tests ---------------------------------------------------------------------------------------


@fuzz("schema_cli")
@given(field=st.sampled_from(SCHEMA), data=st.data())
def test_schema_field_from_the_command_line(workdir: Path, field: tuple[str, Any], data: st.DataObject) -> None:
    key, default = field
    value = data.draw(st.sampled_from(near(default)) | values)
    text = data.draw(st.just(cli_text(value)) | st.text(max_size=10).filter(lambda t: "\0" not in t))
    assert_loads_or_one_line(["expand", str(write_experiment(workdir, {})), f"{key}={text}"], workdir)


@fuzz("schema_yaml")
@given(field=st.sampled_from(SCHEMA), data=st.data())
def test_schema_field_from_a_file(workdir: Path, field: tuple[str, Any], data: st.DataObject) -> None:
    key, default = field
    value = data.draw(st.sampled_from(near(default)) | values)
    assert_loads_or_one_line(["expand", str(write_experiment(workdir, {}, key, value))], workdir)


@fuzz("builder_cli")
@given(parameter=st.sampled_from(PARAMETERS), data=st.data())
def test_builder_parameter_from_the_command_line(workdir: Path, parameter: tuple[str, str], data: st.DataObject) -> None:
    section, param = parameter
    name, default = data.draw(st.sampled_from(BUILDERS[parameter]))
    value = data.draw(st.sampled_from(near(default)) | values)
    path = write_experiment(workdir, component_base(section, name))
    assert_loads_or_one_line(["expand", str(path), f"{section}.{param}={cli_text(value)}"], workdir)


@fuzz("builder_yaml")
@given(parameter=st.sampled_from(PARAMETERS), data=st.data())
def test_builder_parameter_from_a_file(workdir: Path, parameter: tuple[str, str], data: st.DataObject) -> None:
    section, param = parameter
    name, default = data.draw(st.sampled_from(BUILDERS[parameter]))
    value = data.draw(st.sampled_from(near(default)) | values)
    path = write_experiment(workdir, component_base(section, name), f"{section}.{param}", value)
    assert_loads_or_one_line(["expand", str(path)], workdir)


@fuzz("train")
@given(field=st.sampled_from(SCHEMA), data=st.data())
def test_train_refuses_before_writing(workdir: Path, field: tuple[str, Any], data: st.DataObject) -> None:
    """``research train`` validates the same way before its first write (the trainer is patched out)."""
    key, default = field
    value = data.draw(st.sampled_from(near(default)) | values)
    with mock.patch("research.launch.local.run_locally"):
        assert_loads_or_one_line(["train", str(write_experiment(workdir, {})), f"{key}={cli_text(value)}"], workdir)


def test_every_field_and_parameter_is_fuzzed() -> None:
    keys = {key for key, _ in SCHEMA}
    assert {"optim.lr", "train.epochs", "seed", "output_dir", "resources.gpus_per_node", "loader.limit_train"} <= keys
    assert {("loss", "alpha"), ("aug", "mixup"), ("model", "drop_path_rate"), ("data", "size")} <= set(PARAMETERS)
    assert sum(CASES.values()) >= 1000


@fuzz("names")
@given(place=st.sampled_from(["name", "variant", "grid"]), name=names)
def test_run_dirs_stay_inside_their_experiment_dir(workdir: Path, place: str, name: str) -> None:
    """A name that is not one folder name (``.``, ``..``, ``a/b``, a control character) is refused in
    one line; any other name puts every run dir inside ``<output_dir>/<experiment>``, strictly below it
    for a variant (a variant named ``.`` was the experiment dir: ``--force`` on it moved its siblings aside)."""
    sections = {
        "name": {"name": name},
        "variant": {"name": "names", "ablation": {"variants": {name: {}, "other": {}}}},
        "grid": {"name": "names", "ablation": {"grid": {"description": [name, "other"]}}},
    }[place]
    path = write_experiment(workdir, sections)
    assert_loads_or_one_line(["expand", str(path)], workdir)
    try:
        runs = load_runs(path)
    except ConfigError:
        return
    output_dir = (workdir / "runs").resolve()
    for run in runs:
        experiment_dir = (output_dir / run.experiment).resolve()
        assert experiment_dir.parent == output_dir, (place, name, run.run_dir)
        assert run.run_dir.resolve().is_relative_to(experiment_dir), (place, name, run.run_dir)
        assert run.run_dir.resolve() != experiment_dir or not run.variant, (place, name, run.run_dir)
# --- values that used to fail only once training started (issue 24) -------------------------------

#: Values of keys whose problems show only at run time (the data, the device, timm, the environment),
#: drawn together so that combinations meet: a warm-up against the epochs, betas against the optimizer.
RUNTIME: dict[str, Any] = {
    "loader.batch_size": st.sampled_from(["1", "16", "32", "33", "1000"]),
    "loader.limit_train": st.sampled_from(["null", "8", "20"]),
    "sched.warmup_epochs": st.sampled_from(["0", "0.5", "1", "2", "7.5"]),
    "train.epochs": st.sampled_from(["1", "2"]),
    "sched.name": st.sampled_from(["cosine", "plateau", "wsd", "step"]),
    "optim.name": st.sampled_from(["adamw", "sgd", "lamb", "momentum"]),
    "optim.betas": st.sampled_from(["null", "[0.9,0.99]", "[0.9,0.99,0.5]", "[0.9]"]),
    "train.precision": st.sampled_from(["fp32", "bf16", "fp16"]),
    "data": st.sampled_from(
        ["{name: cifar10_jpeg, archive: absent.tar.xz, cache_dir: cache}", "{name: cifar10, root: nowhere}", "{name: imagefolder, root: nowhere}"]
    ),
    "WANDB_MODE": st.sampled_from(["offline", "offlne", "disabled"]),
}


def quiet_wandb(root: Path) -> dict[str, str]:
    """W&B's files under ``root``, no console capture, stats, git or code upload, no key (offline)."""
    folders = {f"WANDB_{name}": str(root / name.lower()) for name in ("DIR", "CONFIG_DIR", "CACHE_DIR", "DATA_DIR", "ARTIFACT_DIR")}
    quiet = {"WANDB_SILENT": "true", "WANDB_CONSOLE": "off", "WANDB__DISABLE_STATS": "true", "WANDB_DISABLE_GIT": "true"}
    return {**folders, **quiet, "WANDB_DISABLE_CODE": "true", "WANDB_API_KEY": "", "NETRC": str(root / "no-netrc")}


@pytest.mark.slow
@settings(max_examples=24, derandomize=True, database=None, deadline=None)
@given(chosen=st.lists(st.sampled_from(sorted(RUNTIME)), min_size=1, max_size=3, unique=True), data=st.data())
def test_runtime_values_train_or_stop_before_writing(chosen: list[str], data: st.DataObject) -> None:
    """``research train`` for real, on CPU: it trains, or exits 2 with one line before writing anything
    (these used to fail after the run dir was written, or to train with values timm ignored)."""
    picked = {key: data.draw(RUNTIME[key], label=key) for key in chosen}
    env = {"WANDB_MODE": picked.pop("WANDB_MODE")} if "WANDB_MODE" in picked else {}
    overrides = [f"{key}={value}" for key, value in picked.items()] + (["logger.name=wandb"] if env else [])
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        stack.enter_context(mock.patch.dict("os.environ", {**env, **quiet_wandb(folder / "wandb")}))
        stack.enter_context(contextlib.chdir(folder))
        path = write_experiment(folder, {"sched": {"warmup_epochs": 0}, "loader": {"batch_size": 16, "workers": 0}})
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(["train", str(path), *overrides])
        if status == 0:
            return
        lines = err.getvalue().splitlines()
        assert status == EXIT_BAD_INPUT and len(lines) == 1 and "Traceback" not in err.getvalue(), (overrides, env, err.getvalue())
        assert not (folder / "runs").exists() and not (folder / "cache").exists(), f"{overrides} wrote before refusing"
