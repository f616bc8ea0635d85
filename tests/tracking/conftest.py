"""Shared fixtures of the tracking tests."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

_LEAKY_ENV = (
    "WANDB_MODE",
    "WANDB_DIR",
    "WANDB_API_KEY",
    "WANDB_IDENTITY_TOKEN_FILE",
    "WANDB_BASE_URL",
    "WANDB_PROJECT",
    "WANDB_ENTITY",
    "WANDB_RUN_ID",
    "WANDB_RESUME",
    "WANDB_NAME",
    "WANDB_TAGS",
    "WANDB_RUN_GROUP",
    "WANDB_JOB_TYPE",
)


@pytest.fixture
def wandb_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No credentials (so: offline), nothing written outside ``tmp_path``, no console or stats threads."""
    for var in _LEAKY_ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    home = tmp_path / "wandb-home"
    for var, sub in [
        ("WANDB_CONFIG_DIR", "config"),
        ("WANDB_CACHE_DIR", "cache"),
        ("WANDB_DATA_DIR", "data"),
        ("WANDB_ARTIFACT_DIR", "artifacts"),
    ]:
        monkeypatch.setenv(var, str(home / sub))
    for var, value in [
        ("WANDB_SILENT", "true"),
        ("WANDB_CONSOLE", "off"),
        ("WANDB__DISABLE_STATS", "true"),  # settings.x_disable_stats
        ("WANDB_DISABLE_GIT", "true"),
        ("WANDB_DISABLE_CODE", "true"),
    ]:
        monkeypatch.setenv(var, value)
    return tmp_path


@pytest.fixture
def wandb_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """``WANDB_BASE_URL`` at a local socket that takes connections (and answers nothing): the online
    start's reachability probe passes, for tests whose ``wandb`` is a stand-in."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        url = f"http://127.0.0.1:{server.getsockname()[1]}"
        monkeypatch.setenv("WANDB_BASE_URL", url)
        yield url


@pytest.fixture
def refused_url() -> str:
    """A local URL whose port takes no connection (bound, then closed): a W&B server not reachable."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
    return f"http://127.0.0.1:{port}"
