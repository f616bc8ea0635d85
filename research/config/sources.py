"""Reading experiment files: YAML with ``_base_`` inheritance, and ``dotted.key=value`` overrides.

``_base_`` is a path relative to the file (or a list of them, merged in order); the file's own keys
win over its bases. Dicts merge recursively; scalars and lists replace (OmegaConf's merge). Every leaf
key remembers the file (or the command line) that set it last, so an error can name its source.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import itertools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from research.config.errors import ConfigError
from research.config.keys import RENAMED, move_renamed, renamed_key

BASE_KEY = "_base_"
COMMAND_LINE = "command line"


class YamlLoader(yaml.SafeLoader):  # type: ignore[misc]  # (PyYAML ships no type hints)
    """PyYAML's safe loader without YAML 1.1 base-60 numbers and dates, with ``1e-3`` as a float.

    Base 60 would read SLURM's ``time: 4:00:00`` as the integer 14400, which SLURM takes as minutes
    (YAML 1.2 dropped it). Floats without a dot and dates as strings match OmegaConf's own loader.
    Files and command-line values both go through this loader, so they read alike. A key written
    twice in one mapping is an error: PyYAML would keep the last one silently (a variant would vanish).
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value != "<<":  # `<<` merges may repeat keys
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key_node.value!r} appears twice in this mapping", key_node.start_mark
                    )
                seen.add(key_node.value)
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping


_INT, _FLOAT, _DATE = (f"tag:yaml.org,2002:{tag}" for tag in ("int", "float", "timestamp"))
YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_INT, _FLOAT, _DATE)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
YamlLoader.add_implicit_resolver(  # YAML 1.1 ints without the base-60 form
    _INT,
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)
YamlLoader.add_implicit_resolver(  # YAML 1.1 floats without the base-60 form, the dot optional
    _FLOAT,
    re.compile(
        r"^(?:[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?|[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


@dataclass
class Layered:
    """A merged config and, for each dotted leaf key, where its value came from."""

    config: DictConfig
    origin: dict[str, str] = field(default_factory=dict)
    source: str = "?"  # the experiment file, named when no key says more (an empty file)

    def where(self, dotted_key: str) -> str:
        """The file (or 'command line') that set ``dotted_key`` or its closest parent; for a section
        (``model``), the source of a key inside it."""
        key = dotted_key
        while key:
            if key in self.origin:
                return self.origin[key]
            key = key.rpartition(".")[0]
        # Origins are kept per leaf, so a section has none of its own: name a file that set a key in it.
        inside = [source for leaf, source in self.origin.items() if leaf.startswith(f"{dotted_key}.")]
        return inside[-1] if inside else next(iter(self.origin.values()), self.source)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; empty dicts stay as leaves."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def read_yaml(path: Path) -> dict[str, Any]:
    """Parse one YAML file into a dict; errors name the file, line and column."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such experiment file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text: byte 0x{exc.object[exc.start]:02x} at offset {exc.start}; save the file as UTF-8"
        ) from None
    try:
        data = yaml.load(text, Loader=YamlLoader)  # noqa: S506  (a safe loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: malformed YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:  # a ReaderError: a character YAML does not allow
        raise ConfigError(f"{path}: malformed YAML: {' '.join(str(exc).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: an experiment file is a mapping of keys, got a {type(data).__name__}")
    return data


def _bases(value: Any, path: Path) -> list[Path]:
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(item, str) and item for item in items):
        raise ConfigError(f"{path}: {BASE_KEY} is a path or a list of paths, got {value!r}")
    return [(path.parent / item).resolve() for item in items]


def load_layers(path: Path, base_override: str | None = None, _stack: tuple[Path, ...] = ()) -> Layered:
    """Read ``path`` and its ``_base_`` chain into one merged config with per-key origins."""
    path = path.resolve()
    if path in _stack:
        chain = " -> ".join(str(p) for p in (*_stack, path))
        raise ConfigError(f"{_stack[-1]}: _base_ cycle: {chain}")
    raw = read_yaml(path)
    bases = raw.pop(BASE_KEY, None)
    if base_override is not None:  # `_base_=...` on the command line swaps the recipe under an ablation
        bases = base_override
    merged = Layered(OmegaConf.create({}))
    for base in _bases(bases, path) if bases else []:
        layer = load_layers(base, None, (*_stack, path))
        merged = merge(merged, layer.config, layer.origin)
    if any(key.rpartition(".")[2] == BASE_KEY for key in flatten(raw)):
        raise ConfigError(f"{path}: {BASE_KEY} is only allowed at the top of a file")
    refuse_missing_marker(raw, _display(path))
    raw = move_renamed(raw, _display(path))
    try:
        own = OmegaConf.create(raw)
    except Exception as exc:  # keys OmegaConf cannot hold (non-string keys, ...)
        raise ConfigError(f"{path}: {exc}") from None
    layered = merge(merged, own, dict.fromkeys(flatten(raw), _display(path)))
    return dataclasses.replace(layered, source=_display(path))


def merge(into: Layered, config: DictConfig, origin: Mapping[str, str]) -> Layered:
    try:
        merged = OmegaConf.merge(into.config, config)
    except TypeError:  # OmegaConf merges no list into a mapping, nor the other way round
        key = clashing_key(into.config, OmegaConf.to_container(config))
        source = origin.get(key) or next((v for k, v in origin.items() if k.startswith(f"{key}.")), into.source)
        new, old = (kind_of(OmegaConf.select(c, key)) for c in (config, into.config))
        raise ConfigError(f"{source}: {key}: cannot merge {new} into the {old.removeprefix('a ')} set in {into.where(key)}") from None
    assert isinstance(merged, DictConfig)
    return Layered(merged, {**into.origin, **origin}, into.source)


def clashing_key(base: DictConfig, config: Any, prefix: str = "") -> str:
    """The dotted key of ``config`` that OmegaConf cannot merge into ``base`` (a list where ``base`` has
    a mapping, or the other way round); on the error path only: it tries the keys one by one."""
    for key, value in (config.items() if isinstance(config, Mapping) else ()):
        dotted = f"{prefix}{key}"
        if not _merges(base, dotted, value):
            inside = clashing_key(base, value, f"{dotted}.") if _merges(base, dotted, {}) else ""
            return inside or dotted
    return ""


def _merges(base: DictConfig, dotted: str, value: Any) -> bool:
    try:
        OmegaConf.merge(base, _nested(dotted, value))
    except TypeError:
        return False
    except Exception:  # other errors are reported where the merged config is checked
        pass
    return True


def _nested(dotted: str, value: Any) -> dict[str, Any]:
    *parents, leaf = dotted.split(".")
    tree: dict[str, Any] = {leaf: value}
    for part in reversed(parents):
        tree = {part: tree}
    return tree


def kind_of(value: Any) -> str:
    """``a mapping``, ``a list`` or ``a value``: what OmegaConf refused to merge, for an error."""
    return "a mapping" if isinstance(value, Mapping) else "a list" if isinstance(value, (list, ListConfig)) else "a value"


def typed_merge(schema: DictConfig, config: DictConfig, where: Callable[[str], str], prefix: str = "", owner: str = "") -> DictConfig:
    """``config`` merged onto a typed ``schema`` (types converted and checked); a key that does not fit is
    a ConfigError naming ``where`` it was set, the key (after ``prefix``) and the ``owner`` of the schema
    (``model 'deit_tiny_patch16_224'``; none: the experiment's schema)."""
    try:
        merged = OmegaConf.merge(schema, config)
    except TypeError:  # OmegaConf merges no list into a mapping, nor the other way round
        key = clashing_key(schema, OmegaConf.to_container(config))
        its_type = f"its type ({owner})" if owner else "its type in the schema"
        raise ConfigError(f"{where(prefix + key)}: {prefix}{key}: {kind_of(OmegaConf.select(config, key))} does not fit {its_type}") from None
    except OmegaConfBaseException as exc:
        raise _refused(exc, where, prefix, owner) from None
    assert isinstance(merged, DictConfig)
    return merged


def plain(config: DictConfig, where: Callable[[str], str], prefix: str = "", owner: str = "") -> dict[str, Any]:
    """``config`` as plain dicts, ``${...}`` interpolations resolved (``${oc.env:VAR,default}``); one that
    does not resolve is a ConfigError, as in :func:`typed_merge`."""
    try:
        return cast(dict[str, Any], OmegaConf.to_container(config, resolve=True))
    except OmegaConfBaseException as exc:
        raise _refused(exc, where, prefix, owner) from None


def _refused(exc: OmegaConfBaseException, where: Callable[[str], str], prefix: str, owner: str) -> ConfigError:
    key = prefix + (getattr(exc, "full_key", "") or "")
    message = str(exc).splitlines()[0]
    return ConfigError(f"{where(key)}: {key}: {message} ({owner})" if owner else f"{where(key)}: {key}: {message}")


def parse_overrides(overrides: Iterable[str]) -> tuple[dict[str, Any], str | None]:
    """``["optim.lr=1e-3", "aug.mixup=0"]`` -> a nested dict (values typed as YAML), and the
    ``_base_`` override if one is given. An item without ``=`` is an error."""
    items: list[tuple[str, str, str]] = []
    base = None
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form dotted.key=value (for example optim.lr=1e-3)")
        if key.strip() == BASE_KEY:
            base = value
            continue
        items.append((item, key.strip(), value))
    conf = OmegaConf.create({})
    for item, key, value in items:  # as OmegaConf.from_dotlist, with this module's YAML loader for values
        try:
            OmegaConf.update(conf, key, yaml.load(value, Loader=YamlLoader), merge=True)  # noqa: S506
        except Exception as exc:
            raise ConfigError(f"override {item!r}: cannot parse it: {str(exc).splitlines()[0]}") from None
    tree = OmegaConf.to_container(conf)
    assert isinstance(tree, dict)
    return cast(dict[str, Any], tree), base


def refuse_missing_marker(tree: Mapping[str, Any], source: str) -> None:
    """OmegaConf reads ``???`` as "no value", and a merge then keeps the value under it: refuse it."""
    for key, value in flatten(tree).items():
        if value == "???":
            raise ConfigError(
                f"{source}: {key}: '???' (OmegaConf's mark for a missing value) would leave the value before it in "
                f"place; give a value, or ~{key} on the command line to go back to the default"
            )


def apply_overrides(layered: Layered, tree: Mapping[str, Any], source: str = COMMAND_LINE) -> Layered:
    refuse_missing_marker(tree, source)
    tree = move_renamed(tree, source)
    return merge(layered, OmegaConf.create(dict(tree)), dict.fromkeys(flatten(tree), source))


@dataclass(frozen=True)
class CommandLine:
    """The command line's overrides, applied over the files in this order:

    - ``delete``: ``~data.archive`` removes a key the files set (inherited or not); its default applies;
    - ``replace``: ``data={name: imagefolder, root: /x}``, a mapping as the value, stands for the whole
      section instead of merging into the files' one (so no inherited key stays behind);
    - ``tree``: ``optim.lr=1e-3`` values, merged.
    """

    tree: dict[str, Any]
    replace: dict[str, Any]
    delete: tuple[str, ...]
    base: str | None


def parse_command_line(overrides: Iterable[str]) -> CommandLine:
    """Split command-line items into deletions (``~key``), section replacements and merged values."""
    plain: list[str] = []
    replace: dict[str, Any] = {}
    delete: list[str] = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if item.startswith("~"):
            if sep or not key[1:].strip():
                raise ConfigError(f"override {item!r}: ~dotted.key deletes a key and takes no value (for example ~data.archive)")
            name = key[1:].strip()
            delete.append(renamed_key(name, COMMAND_LINE) if name in RENAMED else name)
        elif sep and key.strip() != BASE_KEY and isinstance(mapping := _yaml_value(value), dict):
            replace[key.strip()] = mapping
        else:
            plain.append(item)
    tree, base = parse_overrides(plain)
    return CommandLine(tree, replace, tuple(delete), base)


def _yaml_value(text: str) -> Any:
    """A value as YAML reads it; None when it does not parse (:func:`parse_overrides` reports that)."""
    try:
        return yaml.load(text, Loader=YamlLoader)  # noqa: S506  (a safe loader)
    except yaml.YAMLError:
        return None


def apply_command_line(layered: Layered, command_line: CommandLine) -> Layered:
    """``layered`` with the command line's deletions, replacements and values (see :class:`CommandLine`)."""
    config = copy.deepcopy(layered.config)
    origin = dict(layered.origin)
    for key in command_line.delete:
        parent, _, leaf = key.rpartition(".")
        node = _select(config, parent) if parent else config
        if not isinstance(node, DictConfig) or leaf not in node:
            close = difflib.get_close_matches(key, list(origin), n=1, cutoff=0.6)
            hint = f"; did you mean ~{close[0]}?" if close else ""
            raise ConfigError(f"override '~{key}': the experiment files set no {key} to delete{hint}")
        del node[leaf]
        origin = _drop(origin, key)
    for key, section in command_line.replace.items():
        refuse_missing_marker({key: section}, COMMAND_LINE)
        try:
            OmegaConf.update(config, key, section, merge=False)
        except Exception as exc:  # keys OmegaConf cannot hold (non-string keys, a path through a number, ...)
            raise ConfigError(f"override {key}={section}: cannot use it: {str(exc).splitlines()[0]}") from None
        origin = _drop(origin, key)
        origin.update(dict.fromkeys(flatten(section, f"{key}.") or [key], COMMAND_LINE))
    return apply_overrides(Layered(config, origin, layered.source), command_line.tree)


def _select(config: DictConfig, key: str) -> Any:
    try:
        return OmegaConf.select(config, key)
    except Exception:  # a path OmegaConf cannot read (through a number, empty parts, ...): nothing there
        return None


def _drop(origin: Mapping[str, str], key: str) -> dict[str, str]:
    return {k: v for k, v in origin.items() if k != key and not k.startswith(f"{key}.")}


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def as_override_tree(overrides: Mapping[str, Any] | Sequence[str]) -> dict[str, Any]:
    """A variant's overrides, written as ``{dotted.key: value}`` or nested, as a nested dict."""
    if isinstance(overrides, Sequence) and not isinstance(overrides, str):
        tree, base = parse_overrides(overrides)
        if base is not None:
            raise ConfigError("a variant cannot change _base_")
        return tree
    assert isinstance(overrides, Mapping)
    nested: dict[str, Any] = {}
    for key, value in flatten(dict(overrides)).items():
        node = nested
        *parents, leaf = str(key).split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def header_comment(path: Path) -> str:
    """The comment lines that open an experiment file, without their ``#``; ``""`` when there are none."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError:
        return ""
    lines = itertools.takewhile(lambda line: line.startswith("#"), text.splitlines())
    return "\n".join(line[1:].removeprefix(" ") for line in lines).strip()
