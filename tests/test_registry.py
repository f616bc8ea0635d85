"""Registries: registration, building, lookup errors, and the built-ins ``import research`` registers."""

from __future__ import annotations

import inspect
import typing
from dataclasses import FrozenInstanceError, dataclass

import pytest

import research  # noqa: F401  (registers the built-ins)
from research.config.components import SECTIONS
from research.registry import (
    AUGMENTATIONS,
    DATASETS,
    LOGGERS,
    LOSSES,
    MODELS,
    REGISTRIES,
    TEACHERS,
    CheckContext,
    Info,
    Invalid,
    Registry,
    RegistryError,
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
    assert things.metadata("square") == {"flavour": "math"}
    assert list(things) == ["square"] and len(things) == 1


def test_build_passes_keyword_arguments(things: Registry) -> None:
    @things.register("pair")
    def pair(*, a: int, b: str = "x") -> tuple[int, str]:
        return a, b

    assert things.build("pair", a=1) == (1, "x")
    assert things.build("pair", a=2, b="y") == (2, "y")
    assert list(things.signature("pair").parameters) == ["a", "b"]


def test_names_are_sorted_and_info_is_read_only(things: Registry) -> None:
    for name in ("b", "c", "a"):
        things.register(name, ThingInfo(flavour=name))(lambda: None)
    assert things.names() == ["a", "b", "c"]
    with pytest.raises(TypeError):
        things.metadata("a")["flavour"] = "changed"  # type: ignore[index]
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
    for lookup in (things.get, things.metadata, things.signature):
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
def test_import_research_registers_the_built_ins(registry: Registry, names: list[str]) -> None:
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
