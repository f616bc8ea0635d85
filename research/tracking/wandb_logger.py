"""Weights & Biases tracker, the default logger (``logger: {name: wandb}``).

Mode: online when an API key is available, else offline, writing real run files that ``wandb sync``
uploads later. The explicit ``mode`` parameter wins over ``WANDB_MODE``, which wins over that automatic
choice. Run files go under ``$WANDB_DIR`` if set, else under the run dir. Every other W&B setting comes
from its ``WANDB_*`` environment variable (``WANDB_SILENT``, ``WANDB_CONSOLE``, ...).

Requeued runs (SLURM preemption, node failure) start the tracker again in the same run dir. Each start
is a *life* (``RunInfo.life``), one line of the run dir's ``lives.jsonl``; the tracker hands back its W&B
run (``WandbTracker.notes``: ``wandb_id``, ``wandb_mode``, ``wandb_name``, ``wandb_resumed``,
``wandb_sync_dir``), which the launch pipeline records there, and which a report reads to stitch the
lives of a run together (the tracker reads the earlier ones from ``RunInfo.lives``):

* online, the W&B run id kept in ``<run_dir>/wandb_id`` is passed back with ``resume="allow"``, so all
  lives append to one W&B run;
* offline, W&B cannot resume a run, so life ``n > 1`` is a new W&B run in the same group named
  ``"<name> (life n)"`` and tagged ``resumed`` and ``life-n``.

Metrics are plotted against the step metric ``trainer/step``, logged as a value, instead of W&B's
internal ``step=``: W&B drops a ``log(step=s)`` with ``s`` below the last step it saw, which is exactly
what a life resuming from an older checkpoint does.
"""

from __future__ import annotations

import logging
import netrc
import os
import secrets
import socket
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Optional
from urllib.parse import urlsplit

from research.registry import LOGGERS, CheckContext, Invalid
from research.tracking.base import (
    DEFAULT_PROJECT,
    GuardedTracker,
    RunInfo,
    Tracker,
    as_number,
    flatten_config,
    warn_once_disabled,
)
from research.tracking.null import NullTracker

__all__ = [
    "ID_FILE",
    "STEP_METRIC",
    "WandbTracker",
    "build_wandb",
    "has_api_key",
    "resolve_mode",
    "server_unreachable",
    "start_wandb_run",
]

log = logging.getLogger(__name__)

STEP_METRIC = "trainer/step"
ID_FILE = "wandb_id"
DEFAULT_BASE_URL = "https://api.wandb.ai"
PROBE_TIMEOUT_S = 3.0  # how long an online start waits for the server before logging offline

# W&B's own aliases ("dryrun", "run") are accepted so that an inherited WANDB_MODE keeps working.
_MODES = {
    "online": "online",
    "run": "online",
    "offline": "offline",
    "dryrun": "offline",
    "disabled": "disabled",
}


class WandbTracker:
    """Logs to one live ``wandb`` run (``wandb.sdk.wandb_run.Run``) against the ``trainer/step`` metric.

    Args:
        run: the object ``wandb.init`` returned.
        notes: what this life of the run is in W&B, for ``lives.jsonl`` (see the module docstring).
    """

    def __init__(self, run: Any, notes: Mapping[str, Any] | None = None) -> None:
        self.run = run
        self.notes = dict(notes or {})
        self._defined: set[str] = set()

    def log(self, metrics: Mapping[str, float], *, step: int) -> None:
        row = {key: as_number(value) for key, value in metrics.items()}
        self._define_step_metric(row)
        row[STEP_METRIC] = int(step)
        self.run.log(row)

    def summary(self, values: Mapping[str, Any]) -> None:
        self.run.summary.update(dict(values))

    def images(self, key: str, grid: Any, *, step: int, caption: str = "") -> bool:
        """Log an ``(H, W, 3)`` uint8 image (a grid of training images) at ``step``."""
        import wandb

        self._define_step_metric({key: None})
        self.run.log({key: wandb.Image(grid, caption=caption or None), STEP_METRIC: int(step)})
        return True

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None

    def _define_step_metric(self, row: Mapping[str, Any]) -> None:
        # One glob per namespace ("val/*") covers keys the engine adds later; keys without a namespace
        # ("epoch") and our own "trainer/" namespace (which holds the step metric itself) are named exactly.
        if not self._defined:
            self.run.define_metric(STEP_METRIC)
            self._defined.add(STEP_METRIC)
        for key in row:
            namespace, slash, _ = key.partition("/")
            pattern = f"{namespace}/*" if slash and namespace != "trainer" else key
            if key != STEP_METRIC and pattern not in self._defined:
                self.run.define_metric(pattern, step_metric=STEP_METRIC)
                self._defined.add(pattern)

    def __repr__(self) -> str:
        return f"WandbTracker({getattr(self.run, 'id', None)!r})"


def resolve_mode(mode: Optional[str] = None) -> str:
    """``"online"``, ``"offline"`` or ``"disabled"``: ``mode``, else ``$WANDB_MODE``, else by API key.

    Raises:
        ValueError: an unknown mode (a typo in the config or in ``WANDB_MODE``).
    """
    requested, source = (mode, "logger.mode") if mode else (os.environ.get("WANDB_MODE"), "WANDB_MODE")
    if not requested:
        return "online" if has_api_key() else "offline"
    resolved = _MODES.get(requested.strip().lower())
    if resolved is None:
        raise ValueError(f"{source}={requested!r} is not a W&B mode; use one of online, offline, disabled")
    return resolved


def has_api_key() -> bool:
    """Whether W&B credentials exist: ``WANDB_API_KEY``, an identity token file, or a netrc entry.

    Reads only whether a key is there, never the key. Re-implemented on the standard library because
    wandb's own lookup is private and has moved between releases.
    """
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL).netloc
    candidates = [os.environ["NETRC"]] if os.environ.get("NETRC") else ["~/.netrc", "~/_netrc"]
    for candidate in candidates:
        path = Path(candidate).expanduser()
        if not path.is_file():
            continue
        try:
            entry = netrc.netrc(str(path)).authenticators(host)
        except (OSError, netrc.NetrcParseError):
            return False
        return bool(entry and entry[2])
    return False


def start_wandb_run(
    wandb: Any, run: RunInfo, *, project: str, entity: Optional[str], mode: str
) -> tuple[Any, dict[str, Any]]:
    """Start (or, online, resume) the W&B run for this life of ``run``.

    If the server takes no connection within :data:`PROBE_TIMEOUT_S` (no network), or an online start
    fails (server error), this life falls back to an offline run, with one warning.

    Args:
        wandb: the imported ``wandb`` module.
        run: the run being tracked.
        project: the W&B project.
        entity: the W&B entity (user or team); None = the account's default.
        mode: ``"online"`` or ``"offline"`` (see :func:`resolve_mode`).

    Returns:
        The live ``wandb`` run, and what this life is in W&B (:attr:`WandbTracker.notes`).
    """
    run_dir = Path(run.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    root = Path(os.environ.get("WANDB_DIR") or run_dir)
    root.mkdir(parents=True, exist_ok=True)
    if mode == "online" and not has_api_key():
        log.warning("W&B: no API key (`wandb login` or WANDB_API_KEY): logging offline under %s", root)
        mode = "offline"
    if mode == "online" and (unreachable := server_unreachable()):
        log.warning("W&B: %s; logging this life offline under %s (`wandb sync` uploads it later)", unreachable, root)
        mode = "offline"
    if mode == "online":
        try:
            return _start_life(wandb, run, root, project=project, entity=entity, mode="online")
        except Exception as exc:
            log.warning("W&B: online start failed (%r); logging this life offline", exc)
    return _start_life(wandb, run, root, project=project, entity=entity, mode="offline")


def server_unreachable(timeout_s: float = PROBE_TIMEOUT_S) -> str:
    """Why the W&B server (``$WANDB_BASE_URL``, or its HTTPS proxy) takes no connection, or ``""`` if it does.

    ``wandb.init`` online with no network waits its ``init_timeout`` (90 s) before failing; a TCP
    connection tells the same in a few seconds, once per life.
    """
    url = urlsplit(os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL)
    proxy = _proxy(url.scheme)
    target = urlsplit(proxy) if proxy else url
    port = target.port or (443 if target.scheme == "https" else 80)
    try:
        socket.create_connection((target.hostname or "", port), timeout=timeout_s).close()
    except OSError as exc:  # refused, no route, no DNS, timed out
        through = f" through proxy {target.hostname}:{port}" if proxy else ""
        return f"cannot reach {url.scheme}://{url.netloc}{through} ({exc.strerror or exc})"
    return ""


def _proxy(scheme: str) -> str:
    names = ("HTTPS_PROXY", "https_proxy") if scheme == "https" else ("HTTP_PROXY", "http_proxy")
    proxy = next((os.environ[name] for name in names if os.environ.get(name)), "")
    return proxy if not proxy or "://" in proxy else f"http://{proxy}"  # "host:3128" is an http proxy


def _start_life(
    wandb: Any, run: RunInfo, root: Path, *, project: str, entity: Optional[str], mode: str
) -> tuple[Any, dict[str, Any]]:
    run_dir = Path(run.run_dir)
    lives, life = run.lives, run.life
    id_file = run_dir / ID_FILE
    online_id = id_file.read_text(encoding="utf-8").strip() if mode == "online" and id_file.exists() else ""
    tags = list(dict.fromkeys(run.tags))
    if online_id:  # the same W&B run continues: keep the name it was created with
        name = next((entry["wandb_name"] for entry in lives if entry.get("wandb_id") == online_id), run.name)
        tags.append("resumed")
    elif life > 1:  # a new W&B run for a later life: make it findable next to the earlier ones
        name = f"{run.name} (life {life})"
        tags += ["resumed", f"life-{life}"]
    else:
        name = run.name
    kwargs: dict[str, Any] = dict(
        project=project,
        entity=entity,
        group=run.group,
        name=name,
        job_type=run.job_type,
        tags=tags,
        notes=run.notes or None,
        config=flatten_config(run.config),
        dir=str(root),
        mode=mode,
        reinit="create_new",  # never finish or reuse a run this tracker did not start
    )
    if mode == "online":
        # allow_val_change: a requeued life may legitimately carry an edited config (more epochs)
        kwargs.update(id=online_id or _new_run_id(), resume="allow", allow_val_change=True)
    wb_run = wandb.init(**kwargs)
    if mode == "online":
        _keep_id(run_dir, wb_run.id)
    sync_dir = str(getattr(wb_run.settings, "sync_dir", ""))
    notes = dict(wandb_id=wb_run.id, wandb_mode=mode, wandb_name=name, wandb_resumed=bool(online_id), wandb_sync_dir=sync_dir)
    return wb_run, notes


def _new_run_id() -> str:
    alphabet = string.ascii_lowercase + string.digits  # the characters W&B's own ids use
    return "".join(secrets.choice(alphabet) for _ in range(8))


def _keep_id(run_dir: Path, run_id: str) -> None:
    # Best effort: the W&B run is already live, losing it would be worse than losing the ability to
    # resume it in the next life.
    try:
        (run_dir / ID_FILE).write_text(run_id + "\n", encoding="utf-8")
    except OSError as exc:
        log.warning("W&B: cannot keep the run id in %s: %s", run_dir / ID_FILE, exc)


@LOGGERS.add_check
def mode_is_known(context: CheckContext) -> None:
    """A typo in ``WANDB_MODE`` stops the run when it loads, not once its run dir is written."""
    if context.name == "wandb":
        try:
            resolve_mode(context.config["logger"].get("mode"))
        except ValueError as exc:
            raise Invalid("logger.mode", str(exc)) from None


@LOGGERS.register("wandb")
def build_wandb(
    *,
    run: RunInfo,
    project: Optional[str] = None,
    entity: Optional[str] = None,
    mode: Optional[Literal["online", "offline", "disabled"]] = None,
) -> Tracker:
    """Track the run with Weights & Biases (see the module docstring for modes, lives and resuming).

    Args:
        run: injected by the engine.
        project: the W&B project; None = the run's project (``RunInfo.project``), else ``DEFAULT_PROJECT``.
        entity: the W&B user or team; None = the account's default (or ``WANDB_ENTITY``).
        mode: ``"online"``, ``"offline"``, ``"disabled"``, or None = ``WANDB_MODE`` if set, else online
            when an API key is available and offline otherwise.

    Returns:
        The tracker on rank 0; a no-op tracker on other ranks, when disabled, or (with one warning)
        when wandb cannot be imported or started.

    Raises:
        ValueError: ``mode`` or ``WANDB_MODE`` is not a W&B mode.
    """
    if not run.is_rank_zero:
        return NullTracker()
    resolved = resolve_mode(mode)
    if resolved == "disabled":
        return NullTracker()
    try:
        import wandb
    except ImportError as exc:
        hint = "`pip install wandb`, or use logger.name=jsonl"
        warn_once_disabled("wandb", f"cannot import wandb ({exc}); {hint}")
        return NullTracker()
    try:
        wb_run, notes = start_wandb_run(
            wandb, run, project=project or run.project or DEFAULT_PROJECT, entity=entity, mode=resolved
        )
    except Exception as exc:
        warn_once_disabled("wandb", f"wandb.init failed with {type(exc).__name__}: {exc}")
        return NullTracker()
    return GuardedTracker(WandbTracker(wb_run, notes), name="wandb")
