"""Stopping a run cleanly on SIGTERM or Ctrl-C: the loop finishes its step, saves, and stops.

:func:`stop_on_signals` turns SIGINT and SIGTERM into a request that the training loop reads between
steps (a Python attribute: no sync). The loop then writes the checkpoint of the last finished step
and raises :class:`research.engine.fit.RunStopped`; the command prints one line and exits with the
shell's status for the signal (130, 143). A second Ctrl-C stops at once, as Python does.

Under SLURM, ``scancel`` and a preemption send SIGTERM to every task (submitit only logs it): the
same path saves the run and stops it within a step, instead of training on until SIGKILL. The
requeue after SIGUSR2 (:mod:`research.launch.backends.slurm`) ignores SIGTERM on purpose; a handler someone
else installed meanwhile is left in place when the block ends.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from research.engine.fit import RunStopped

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Which signal asked the run to stop (None: none did)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.doing: str | None = None  # set inside at_once: what a signal interrupts there

    def __call__(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    @contextlib.contextmanager
    def at_once(self, doing: str) -> Iterator[None]:
        """Within the block there is no step to finish (extracting a dataset: a minute on a first
        start): a stop request raises :class:`RunStopped` at once, so ``finally`` clauses there
        remove what was half done, well before ``scancel``'s SIGKILL."""
        if self():
            raise self.stopped_while(doing)
        self.doing = doing
        try:
            yield
        finally:
            self.doing = None

    def stopped_while(self, doing: str) -> RunStopped:
        assert self.signum is not None
        return RunStopped(
            f"stopped by {self.name} while {doing}: nothing trained in this life; run the same command again to go on",
            exit_status=128 + self.signum,
        )


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Within the block, SIGINT/SIGTERM set the yielded request instead of killing the process."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield request
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if request.signum is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: now
            return  # the first request is being honoured (a raise here would cut a cleanup short)
        request.signum = signum
        if request.doing is not None:
            raise request.stopped_while(request.doing)
        log.warning("%s: stopping after this step, once its checkpoint is saved (Ctrl-C again to stop now)", request.name)

    previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
    for signum in SIGNALS:
        signal.signal(signum, handler)
    try:
        yield request
    finally:
        for signum, before in previous.items():
            if signal.getsignal(signum) is handler:  # not replaced meanwhile (a requeue ignores SIGTERM)
                signal.signal(signum, before)


@contextlib.contextmanager
def forward_to_workers() -> Iterator[StopRequest]:
    """For a launcher of worker processes (``--nproc``): SIGINT/SIGTERM are passed on to the workers, as
    SIGTERM, once, and recorded in the yielded request; the workers stop after their step, saved.

    torch's elastic agent must leave these two signals alone (:data:`ELASTIC_SIGNALS`): its handler sends the workers the
    signal again, and a second Ctrl-C stops a worker at once, unsaved. SIGTERM, as a worker reads a
    signal after the first as no news; a Ctrl-C has reached them already (the terminal signals the
    whole process group), a ``kill`` of the launcher has not. A second Ctrl-C stops the launcher now.
    """
    request = StopRequest()

    def handler(signum: int, frame: FrameType | None) -> None:
        if request.signum is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        request.signum = signum
        log.warning("%s: the workers stop after their step, once its checkpoint is saved", request.name)
        for pid in _spawned_children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    previous = {signum: signal.signal(signum, handler) for signum in SIGNALS}
    try:
        yield request
    finally:
        for signum, before in previous.items():
            signal.signal(signum, before)


#: What torch's elastic agent may handle under :func:`forward_to_workers` (``LaunchConfig.signals_to_handle``)
ELASTIC_SIGNALS = "SIGHUP,SIGQUIT"


def _spawned_children() -> list[int]:
    """The pids of this process's children that multiprocessing spawned (the workers, not its resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # ended meanwhile
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])  # after "pid (comm)": state, ppid
        if parent == os.getpid() and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return found
