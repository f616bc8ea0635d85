"""Every MODELS entry as recorded: its info record, its parameters (the keys a YAML can set, their
annotations and defaults) and the shapes of the network it builds, against tests/models/entries.json.

The file pins what a rewrite of how entries are declared (research/models/deit.py's table of variants)
must keep. Regenerate it only for an intended change: ``python tests/models/test_entries_snapshot.py``.
"""

import dataclasses
import hashlib
import inspect
import json
import typing
from pathlib import Path

import pytest
import torch

import research.models  # noqa: F401  (registers the models)
from research.registry import MODELS

SNAPSHOT = Path(__file__).with_name("entries.json")


def record(name: str) -> dict:
    """What the entry says without and with building it (on the meta device: shapes, no memory)."""
    builder = MODELS.get(name)
    hints = typing.get_type_hints(builder, include_extras=True)
    params = [[key, repr(hints.get(key)), repr(p.default), p.kind.name] for key, p in inspect.signature(builder).parameters.items()]
    with torch.device("meta"):
        net = MODELS.build(name, num_classes=10)
    shapes = [f"{key}:{tuple(value.shape)}" for key, value in net.state_dict().items()]
    return {
        "info": dataclasses.asdict(MODELS.info(name)),
        "params": params,
        "type": type(net).__qualname__,
        "numel": sum(p.numel() for p in net.parameters()),
        "state_dict": hashlib.sha1("\n".join(shapes).encode()).hexdigest(),
    }


def test_the_registered_names_are_the_recorded_ones():
    assert MODELS.names() == sorted(json.loads(SNAPSHOT.read_text()))


@pytest.mark.parametrize("name", MODELS.names())
def test_entry_is_as_recorded(name):
    assert record(name) == json.loads(SNAPSHOT.read_text())[name]


if __name__ == "__main__":
    SNAPSHOT.write_text(json.dumps({name: record(name) for name in MODELS.names()}, indent=1) + "\n")
