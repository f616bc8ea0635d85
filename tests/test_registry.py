"""Registries: registration, building, lookup errors, and the built-ins every lookup loads on first use."""

from __future__ import annotations

import inspect
import re
import sys
import typing
from collections.abc import Iterator
from dataclasses import FrozenInstanceError, dataclass
from pathlib import Path
from typing import Annotated, Literal, Optional

import pytest
from torch import nn

from research import plugins
from research.config.components import SECTIONS
from research.registry import (
    AUGMENTATIONS,
    BACKENDS,
    DATASETS,
    LOGGERS,
    LOSSES,
    MODELS,
    REGISTRIES,
    TEACHERS,
    CheckContext,
    Info,
    Invalid,
    OneOf,
    Range,
    Registry,
    RegistryError,
    constraints,
    refusals,
)


@dataclass(frozen=True)
class ThingInfo(Info):
    flavour: str = ""


@pytest.fixture
def things() -> Registry:
    """A private registry: mutation tests must not touch the global ones."""
    return Registry("thing", ThingInfo)


def test_decorator_registers_and_returns_the_function(things: Registry) -> None:
    @things.register("square", ThingInfo(flavour="math"))
    def square(*, x: int = 2) -> int:
        return x * x

    assert square(x=3) == 9  # the decorator hands the function back unchanged
    assert "square" in things
    assert "cube" not in things
    assert things.names() == ["square"]
    assert things.get("square") is square
    assert things.info("square") == ThingInfo(flavour="math")
    assert list(things) == ["square"] and len(things) == 1


def test_build_passes_keyword_arguments(things: Registry) -> None:
    @things.register("pair")
    def pair(*, a: int, b: str = "x") -> tuple[int, str]:
        return a, b

    assert things.build("pair", a=1) == (1, "x")
    assert things.build("pair", a=2, b="y") == (2, "y")
    assert list(things.signature("pair").parameters) == ["a", "b"]


def test_build_refuses_arguments_out_of_their_declared_bounds_and_choices(things: Registry) -> None:
    calls = []

    @things.register("mode")
    def mode(
        *,
        rate: Annotated[float, Range(ge=0, lt=1)] = 0.1,
        mode: Literal["a", "b"] = "a",
        size: Annotated[Optional[str], OneOf("s", "m", None)] = None,
    ) -> str:
        calls.append(mode)
        return mode

    assert things.build("mode", rate=0.5, mode="b", size="m") == "b"
    with pytest.raises(ValueError) as caught:
        things.build("mode", rate=1.0, mode="c", size="xl")
    assert str(caught.value) == (
        "thing 'mode': thing.rate=1.0: must be >= 0 and < 1; thing.mode 'c' is not one of a, b; thing.size 'xl' is not one of s, m, null"
    )
    assert calls == ["b"]  # the refused call never reached the builder


@pytest.mark.parametrize(
    ("name", "kwargs", "refused"),
    [
        ("soft", {"alpha": 2}, "loss 'soft': loss.alpha=2: must be >= 0 and <= 1"),
        ("soft", {"tau": 0}, "loss 'soft': loss.tau=0: must be > 0"),
        ("soft", {"kl_reduction": "mean"}, "loss 'soft': loss.kl_reduction 'mean' is not one of numel, batchmean"),
        ("hard", {"alpha": -0.1}, "loss 'hard': loss.alpha=-0.1: must be >= 0 and <= 1"),
    ],
)
def test_a_notebook_build_is_checked_as_a_file_would_be(name: str, kwargs: dict[str, object], refused: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(refused)}"):
        LOSSES.build(name, base_criterion=nn.CrossEntropyLoss(), teacher=nn.Identity(), **kwargs)


def test_bounds_and_choices_come_from_the_annotation() -> None:
    assert constraints(Annotated[int, Range(ge=1), "other"]) == (int, (Range(ge=1),))
    assert constraints(Literal["x", "y"]) == (typing.Any, (OneOf("x", "y"),))
    assert constraints(Optional[Literal["x"]]) == (typing.Any, (OneOf("x", None),))
    assert constraints(Annotated[str, OneOf("x")]) == (str, (OneOf("x"),))
    assert refusals({"k": (OneOf("x"),)}, {"k": "z", "other": 1}, {"k": "as written"}, prefix="s.") == {
        "k": "s.k 'as written' is not one of x"
    }


def test_names_are_sorted_and_info_is_read_only(things: Registry) -> None:
    for name in ("b", "c", "a"):
        things.register(name, ThingInfo(flavour=name))(lambda: None)
    assert things.names() == ["a", "b", "c"]
    with pytest.raises(FrozenInstanceError):
        things.info("a").flavour = "changed"  # type: ignore[misc]


def test_info_is_typed_a_misspelt_field_fails_at_registration(things: Registry) -> None:
    things.register("plain")(lambda: None)
    assert things.info("plain") == ThingInfo()
    with pytest.raises(TypeError):
        things.register("typo", ThingInfo(flavor="math"))  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="ThingInfo"):
        things.register("wrong", Info())(lambda: None)
    with pytest.raises(TypeError):
        things.register("old_style", flavour="math")  # type: ignore[call-arg]


def test_checks_see_the_entry_and_the_config(things: Registry) -> None:
    things.register("a")(lambda: None)
    seen = []

    @things.add_check
    def check(context: CheckContext) -> None:
        seen.append((context.name, context.config["x"], context.check_files))
        if context.config["x"] < 0:
            raise Invalid("thing.x", "x must be >= 0")

    things.check(CheckContext("a", {"x": 1}, check_files=False))
    assert seen == [("a", 1, False)]
    with pytest.raises(Invalid) as caught:
        things.check(CheckContext("a", {"x": -1}))
    assert caught.value.key == "thing.x"
    with pytest.raises(RegistryError):
        things.check(CheckContext("b", {"x": 1}))


def _first() -> None: ...


def _second() -> None: ...


def test_duplicate_name_raises_naming_both_places(things: Registry) -> None:
    things.register("dup")(_first)
    with pytest.raises(RegistryError) as caught:
        things.register("dup")(_second)
    message = str(caught.value)
    assert f"{_first.__module__}._first" in message
    assert f"{_second.__module__}._second" in message
    assert "'dup'" in message and "thing" in message
    assert things.get("dup") is _first  # the first registration stays


def test_unknown_name_is_a_key_error_listing_close_names(things: Registry) -> None:
    for name in ("deit_tiny", "deit_small", "resnet50"):
        things.register(name)(lambda: None)
    with pytest.raises(KeyError) as caught:
        things.build("deit_tinny")
    assert isinstance(caught.value, RegistryError)
    message = str(caught.value)
    assert not message.startswith("'")  # plain text, not KeyError's quoted repr
    assert "unknown thing 'deit_tinny'" in message
    hint = message.split("Did you mean", 1)[1].split("?", 1)[0]
    assert "'deit_tiny'" in hint and "resnet50" not in hint
    assert "resnet50" in message  # the full list follows
    for lookup in (things.get, things.info, things.signature):
        with pytest.raises(RegistryError):
            lookup("nope")


def test_unknown_name_in_an_empty_registry(things: Registry) -> None:
    with pytest.raises(RegistryError, match=r"\(none\)"):
        things.get("anything")


@pytest.mark.parametrize("bad", ["", None, 3])
def test_names_are_non_empty_strings(things: Registry, bad: object) -> None:
    with pytest.raises(ValueError, match="non-empty strings"):
        things.register(bad)  # type: ignore[arg-type]


def test_global_registries_are_importable_and_listed() -> None:
    assert REGISTRIES == {
        "models": MODELS,
        "teachers": TEACHERS,
        "losses": LOSSES,
        "augmentations": AUGMENTATIONS,
        "datasets": DATASETS,
        "loggers": LOGGERS,
        "backends": BACKENDS,
    }


@pytest.mark.parametrize(
    ("registry", "names"),
    [
        (MODELS, ["deit_tiny_patch16_224", "deit_base_distilled_patch16_384", "deit_nano_patch4_32", "resnet18_cifar"]),
        (TEACHERS, ["regnety_160", "resnet10_cifar", "timm"]),
        (LOSSES, ["none", "soft", "hard"]),
        (AUGMENTATIONS, ["deit", "cifar", "none"]),
        (DATASETS, ["cifar10_jpeg", "cifar10", "imagefolder", "imagenet", "synthetic"]),
        (LOGGERS, ["wandb", "jsonl", "none"]),
    ],
    ids=lambda value: getattr(value, "plural", None),
)
def test_a_lookup_registers_the_built_ins(registry: Registry, names: list[str]) -> None:
    for name in names:
        assert name in registry, f"{name} not registered in {registry!r}"


def test_built_in_metadata_the_config_loader_relies_on() -> None:
    assert MODELS.info("deit_tiny_distilled_patch16_224").distilled is True
    assert MODELS.info("deit_tiny_patch16_224").distilled is False
    assert LOSSES.info("hard").needs_teacher is True
    assert LOSSES.info("none").needs_teacher is False
    for name in MODELS.names():  # every student has a resolution the data side can use
        assert MODELS.info(name).default_img_size, name
    for name in TEACHERS.names():
        assert name == "timm" or TEACHERS.info(name).img_size, name


@pytest.mark.parametrize("key", list(SECTIONS))
def test_built_in_builders_follow_the_contract(key: str) -> None:
    """Keyword-only parameters, annotated so YAML values can be type-checked; the parameters the
    engine injects are accepted by every builder of the section."""
    spec = SECTIONS[key]
    for name in spec.registry.names():
        builder = spec.registry.get(name)
        params = inspect.signature(builder).parameters
        hints = typing.get_type_hints(builder)
        for param in params.values():
            assert param.kind is inspect.Parameter.KEYWORD_ONLY, f"{key} {name!r}: {param.name} is not keyword-only"
            assert param.name in hints, f"{key} {name!r}: {param.name} has no annotation"
        assert set(spec.injected) <= set(params), f"{key} {name!r} does not accept {spec.injected}"


@pytest.fixture
def unloaded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """Registries as in a fresh interpreter, whose built-ins are the modules a test writes in the
    returned folder (the real ones are imported first: importing them again registers nothing)."""
    plugins.load_builtins()
    monkeypatch.setattr(plugins, "_builtins_loaded", False)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [name for name, module in sys.modules.items() if str(getattr(module, "__file__", "")).startswith(str(tmp_path))]:
        del sys.modules[name]


def test_a_lookup_while_the_built_ins_load_does_not_load_them_again(unloaded: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A built-in module registers through research.registry and may look an entry up as it imports:
    that lookup sees what is registered so far; the entry points are loaded once, after the modules."""
    (unloaded / "early_builtin.py").write_text("from research.registry import LOSSES\nSEEN = 'hard' in LOSSES\n")
    loads = []
    monkeypatch.setattr(plugins, "BUILTINS", ("early_builtin",))
    monkeypatch.setattr(plugins, "load_entry_point_plugins", lambda: loads.append(1))
    assert "hard" in LOSSES and len(MODELS) > 0
    assert sys.modules["early_builtin"].SEEN is True  # registered by the real built-ins, imported already
    assert loads == [1]
    assert "hard" in LOSSES and loads == [1]  # once


def test_a_built_in_that_fails_to_import_fails_every_lookup(unloaded: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a half-filled registry after the first error: the next lookup tries again and fails again."""
    (unloaded / "broken_builtin.py").write_text("raise ImportError('no module named fancy_dependency')\n")
    monkeypatch.setattr(plugins, "BUILTINS", ("broken_builtin",))
    for _ in range(2):
        with pytest.raises(ImportError, match="fancy_dependency"):
            MODELS.names()
