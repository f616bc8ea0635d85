"""A real one-node SLURM cluster on this machine, for tests and CI.

The cluster is private: its own munge key and socket, its own ``slurm.conf``,
and every state, spool, pid and log file under one directory
(``$RESEARCH_SLURM_DIR``, default ``/tmp/research-slurm``). It neither needs
nor touches ``/etc/slurm`` or a system munge. Client tools find it through
``SLURM_CONF`` (see :func:`client_env`); jobs inherit that variable from
``sbatch`` (whose default is ``--export=ALL``), so ``srun`` inside a job talks
to the same controller.

Tests use the ``slurm_cluster`` fixture of ``tests/slurm/conftest.py``. By hand::

    python tests/slurm/cluster.py start    # prints the SLURM_CONF to export
    python tests/slurm/cluster.py status   # exit code 0 iff the node takes jobs
    python tests/slurm/cluster.py stop

Needs root (``SlurmUser=root``) and the Debian packages that
``.ci/install_slurm.sh`` installs. Standard library only, so any ``python3``
can run it.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_DIR = "/tmp/research-slurm"
PARTITION = "debug"
NUM_CPUS = 2
# Memory for jobs that ask for none. With CR_Core_Memory a job without --mem
# would otherwise be given the whole node's memory and block every other job.
DEF_MEM_PER_CPU_MB = 2048
# Lifetime of a job step credential, which is also how long a requeued job
# must wait before it may start again (SLURM's default is 120 s).
CRED_EXPIRE_S = 10
# Memory left to the OS and to other work when declaring the node's RealMemory.
_RESERVED_MEM_MB = 2048
_DAEMONS = ("munged", "slurmctld", "slurmd")
_REQUIRED_TOOLS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "sinfo", "squeue", "scontrol", "scancel")
# Node states (sinfo %T, flag suffixes stripped) in which the node takes jobs.
_USABLE_STATES = {"idle", "mixed", "allocated", "completing"}


@dataclass(frozen=True)
class ClusterInfo:
    """What tests need to know about the running cluster.

    Attributes:
        root: Directory holding the cluster's config, state and logs.
        partition: The cluster's only partition, also the default one.
        started_here: Whether this process started the daemons (and so should stop them).
    """

    root: Path
    partition: str = PARTITION
    started_here: bool = False

    @property
    def conf(self) -> Path:
        """The ``slurm.conf`` that ``SLURM_CONF`` points at."""
        return conf_path(self.root)

    def wait_for_jobs(self, jobs: Iterable[Any], *, timeout_s: float) -> None:
        """Waits for submitit jobs with a deadline; see :func:`wait_for_jobs`."""
        wait_for_jobs(jobs, timeout_s=timeout_s, root=self.root)

    def log_tails(self, *, lines: int = 30) -> str:
        """The daemons' last log lines; see :func:`log_tails`."""
        return log_tails(self.root, lines=lines)

    def controller_stopped(self) -> contextlib.AbstractContextManager[None]:
        """slurmctld stopped for a ``with`` block; see :func:`controller_stopped`."""
        return controller_stopped(root=self.root)


class _Layout:
    """Where each file of a cluster rooted at ``root`` lives."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.etc, self.munge, self.state, self.spool, self.run, self.log = (
            root / name for name in ("etc", "munge", "state", "spool", "run", "log")
        )
        self.munge_socket = self.munge / "munge.socket.2"
        self.munge_key = self.munge / "munge.key"
        # Test sessions using the cluster (one empty file per pid), and a mark
        # that one of them started it; see acquire().
        self.users = self.run / "users"
        self.started_by_user = self.run / "started-by-tests"

    def pid_file(self, daemon: str) -> Path:
        return self.run / f"{daemon}.pid"

    def log_file(self, daemon: str) -> Path:
        return self.log / f"{daemon}.log"


def cluster_dir() -> Path:
    """Returns the directory of the cluster: ``$RESEARCH_SLURM_DIR`` or ``/tmp/research-slurm``."""
    return Path(os.environ.get("RESEARCH_SLURM_DIR", DEFAULT_DIR)).resolve()


def conf_path(root: Path | None = None) -> Path:
    """Returns the path of the cluster's ``slurm.conf``."""
    return _Layout(root or cluster_dir()).etc / "slurm.conf"


def client_env(root: Path | None = None) -> dict[str, str]:
    """Returns the environment variables that client tools (and jobs) need."""
    return {"SLURM_CONF": str(conf_path(root))}


def short_hostname() -> str:
    """The name slurmctld and slurmd look for in ``slurm.conf`` (like ``hostname -s``)."""
    return socket.gethostname().split(".")[0]


def _port() -> int:
    """slurmctld's port ($RESEARCH_SLURM_PORT, default SLURM's 6817); slurmd's is the next."""
    return int(os.environ.get("RESEARCH_SLURM_PORT", "6817"))


def _real_memory_mb() -> int:
    """Memory to declare for the node: MemTotal from /proc/meminfo, less headroom.

    Declaring more than the machine has would drain the node; jobs here ask for
    1-4 GB, so a little under the truth is right.
    """
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                total_mb = int(line.split()[1]) // 1024  # reported in kB
                return max(1024, total_mb - _RESERVED_MEM_MB)
    raise RuntimeError("MemTotal missing from /proc/meminfo; cannot size the SLURM node")


def render_conf(root: Path, *, host: str, real_memory_mb: int, port: int = 6817) -> str:
    """Returns the text of ``slurm.conf`` for a one-node cluster rooted at ``root``.

    Args:
        root: Cluster directory; every path in the config lies under it.
        host: Short host name of this machine, for SlurmctldHost and NodeName.
        real_memory_mb: Memory the node declares.
        port: slurmctld's port; slurmd listens on the next one.
    """
    layout = _Layout(root)
    lines = [
        "# Written by tests/slurm/cluster.py: a throwaway one-node cluster for tests.",
        "ClusterName=research",
        # Loopback addresses: the host name need not resolve, nothing leaves the machine.
        f"SlurmctldHost={host}(127.0.0.1)",
        f"SlurmctldPort={port}",
        f"SlurmdPort={port + 1}",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        # socket: our own munged, so a system munge (or its absence) does not
        # matter. cred_expire: a requeued job (submitit's preemption/timeout
        # handling) may only restart once the credential of its previous run
        # has expired; 10 s keeps requeue tests fast while leaving a loaded
        # 2-core machine time to launch steps before their credential expires.
        f"AuthInfo=cred_expire={CRED_EXPIRE_S},socket={layout.munge_socket}",
        "SlurmUser=root",
        "SlurmdUser=root",
        f"StateSaveLocation={layout.state}",
        f"SlurmdSpoolDir={layout.spool}/%n",
        f"SlurmctldPidFile={layout.pid_file('slurmctld')}",
        f"SlurmdPidFile={layout.pid_file('slurmd')}",
        f"SlurmctldLogFile={layout.log_file('slurmctld')}",
        f"SlurmdLogFile={layout.log_file('slurmd')}",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
        # Empty: skip whatever SPANK plugins /etc/slurm/plugstack.conf would load.
        f"PlugStackConfig={layout.etc / 'plugstack.conf'}",
        "MailProg=/bin/true",  # no mail here; the default path does not exist
        # No cgroups: linuxproc tracks job processes through /proc, which works
        # in containers and sandboxes where cgroup delegation does not.
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        f"DefMemPerCPU={DEF_MEM_PER_CPU_MB}",
        # No slurmdbd, hence no sacct: submitit warns and falls back on its result files.
        "AccountingStorageType=accounting_storage/none",
        "JobAcctGatherType=jobacct_gather/none",
        "JobCompType=jobcomp/none",
        "MpiDefault=none",
        "SwitchType=switch/none",
        "SchedulerType=sched/backfill",
        # Nothing wakes the scheduler when a requeued job's begin time passes;
        # it waits for the next periodic pass (60 s by default), so pass often.
        "SchedulerParameters=sched_interval=2,bf_interval=5",
        "JobRequeue=1",  # submitit requeues preempted/timed-out jobs with `scontrol requeue`
        "ReturnToService=2",
        # Trust CPUs/RealMemory below over what slurmd detects, so a machine with
        # another core count still gets a usable node rather than a drained one.
        "SlurmdParameters=config_overrides",
        # Short timers for fast tests: finished jobs leave squeue after MinJobAge
        # s, and killed steps get KillWait s between SIGTERM and SIGKILL.
        "MinJobAge=10",
        "KillWait=2",
        "InactiveLimit=0",
        "Waittime=0",
        "MessageTimeout=10",
        "SlurmctldTimeout=30",
        "SlurmdTimeout=30",
        f"NodeName={host} NodeAddr=127.0.0.1 CPUs={NUM_CPUS} RealMemory={real_memory_mb} State=UNKNOWN",
        f"PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP",
    ]
    return "\n".join(lines) + "\n"


def _run(cmd: Sequence[str], *, root: Path, timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **client_env(root)}
    return subprocess.run(list(cmd), env=env, capture_output=True, text=True, timeout=timeout, check=False)


def _read_pid(layout: _Layout, daemon: str) -> int | None:
    """The pid in ``daemon``'s pid file if that process is alive and is ``daemon``.

    Checking the process name keeps a stale pid file, whose pid was since
    reused, from making us signal an unrelated process.
    """
    try:
        pid = int(layout.pid_file(daemon).read_text().strip())
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError):
        return None
    return pid if comm == daemon else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of ours is as good as gone; reap it if it is one.
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    return True


def node_state(root: Path | None = None) -> str | None:
    """Returns the node's state as ``sinfo`` reports it (e.g. ``idle``), or None if unreachable."""
    root = root or cluster_dir()
    # Without a controller, sinfo retries for ~10 s; our pid file answers at once.
    # Only our own slurmctld counts: RESEARCH_SLURM_DIR names the cluster.
    if not conf_path(root).exists() or _read_pid(_Layout(root), "slurmctld") is None:
        return None
    try:
        out = _run(["sinfo", "--noheader", "--Node", "--format=%T"], root=root, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0 or not out.stdout.strip():
        return None
    return out.stdout.split()[0]


def _usable(state: str | None, *, idle_only: bool = False) -> bool:
    # A '*' suffix means "not responding"; other suffixes are harmless flags.
    if state is None or state.endswith("*"):
        return False
    base = state.rstrip("+~#$@^-!%")
    return base == "idle" if idle_only else base in _USABLE_STATES


def is_running(root: Path | None = None) -> bool:
    """Whether the cluster answers and its node can take jobs."""
    return _usable(node_state(root))


def log_tails(root: Path | None = None, *, lines: int = 30) -> str:
    """Returns the last lines of the munged, slurmctld and slurmd logs, for error messages."""
    layout = _Layout(root or cluster_dir())
    parts = []
    for daemon in _DAEMONS:
        path = layout.log_file(daemon)
        try:
            tail = path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            tail = ["<missing>"]
        parts.append(f"----- {path} -----\n" + "\n".join(tail))
    return "\n".join(parts)


@contextlib.contextmanager
def _lock(root: Path) -> Iterator[None]:
    """Serialises start/stop between concurrent pytest sessions on this machine."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _tool(name: str) -> str:
    """Full path of a SLURM/munge program; the daemons live in /usr/sbin, not always on PATH."""
    search_path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    found = shutil.which(name, path=search_path)
    if found is None:
        raise FileNotFoundError(name)
    return found


def _check_prerequisites() -> None:
    missing = []
    for tool in _REQUIRED_TOOLS:
        try:
            _tool(tool)
        except FileNotFoundError:
            missing.append(tool)
    if missing:
        raise RuntimeError(
            f"SLURM/munge tools not found: {', '.join(missing)}. Install them with "
            "`bash .ci/install_slurm.sh` (Debian packages slurmctld slurmd slurm-client munge)."
        )
    if os.geteuid() != 0:
        raise RuntimeError(
            "The test SLURM cluster runs its daemons as root (SlurmUser=root): run as root, "
            "or have root start it (`python tests/slurm/cluster.py start`) so that tests reuse it."
        )


def _write_files(root: Path) -> None:
    layout = _Layout(root)
    host = short_hostname()
    for folder in (layout.etc, layout.state, layout.spool / host, layout.run, layout.log):
        folder.mkdir(parents=True, exist_ok=True)
    # munged refuses a key/socket folder that others may write to, and warns
    # if they cannot traverse it to reach the socket.
    layout.munge.mkdir(parents=True, exist_ok=True)
    os.chmod(layout.munge, 0o755)
    if not layout.munge_key.exists():
        fd = os.open(layout.munge_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(128))  # the size `mungekey` makes by default (1024 bits)
    (layout.etc / "plugstack.conf").write_text("")
    # Fresh logs, so that log_tails() shows this run; keep the last run's for post-mortems.
    for daemon in _DAEMONS:
        log = layout.log_file(daemon)
        if log.exists():
            log.replace(log.with_suffix(".log.prev"))
    conf_path(root).write_text(render_conf(root, host=host, real_memory_mb=_real_memory_mb(), port=_port()))


def _start_daemons(root: Path) -> None:
    layout = _Layout(root)
    env = {**os.environ, **client_env(root)}
    commands = [
        [
            _tool("munged"),
            "--force",  # take over a socket left behind by a munged that was killed
            f"--socket={layout.munge_socket}",
            f"--key-file={layout.munge_key}",
            f"--pid-file={layout.pid_file('munged')}",
            f"--log-file={layout.log_file('munged')}",
            f"--seed-file={layout.munge / 'munged.seed'}",
        ],
        # -c: clean start, so no job of a previous run comes back.
        [_tool("slurmctld"), "-c", "-f", str(conf_path(root))],
        [_tool("slurmd"), "-c", "-f", str(conf_path(root))],
    ]
    for cmd in commands:  # each forks into the background once it is ready
        subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, timeout=30)


def _wait_until_idle(root: Path, timeout_s: float) -> None:
    layout = _Layout(root)
    started = time.monotonic()
    state = None
    while time.monotonic() - started < timeout_s:
        state = node_state(root)
        if _usable(state, idle_only=True):
            return
        # A daemon that died (e.g. its port is taken) will not come back: fail
        # now rather than at the timeout. The grace covers pid files not yet written.
        dead = [daemon for daemon in _DAEMONS if _read_pid(layout, daemon) is None]
        if dead and time.monotonic() - started > 2.0:
            raise RuntimeError(
                f"{', '.join(dead)} exited while the SLURM cluster was starting (ports "
                f"{_port()}-{_port() + 1} taken by another cluster? set RESEARCH_SLURM_PORT).\n"
                f"{log_tails(root)}"
            )
        time.sleep(0.25)
    raise RuntimeError(
        f"SLURM node did not become idle within {timeout_s:.0f}s (last sinfo state: {state}).\n{log_tails(root)}"
    )


def start(*, root: Path | None = None, timeout_s: float = 60.0) -> bool:
    """Starts the cluster unless it is already up, and waits until its node is idle.

    Args:
        root: Directory for config, state and logs. Defaults to :func:`cluster_dir`.
        timeout_s: How long to wait for the node to become idle.

    Returns:
        True if this call started the daemons (so the caller should :func:`stop`
        them), False if a working cluster was already running.

    Raises:
        RuntimeError: If tools are missing, we are not root, or the node does
            not come up; the message carries the daemons' log tails.
    """
    root = root or cluster_dir()
    with _lock(root):
        return _start_locked(root, timeout_s)


def _start_locked(root: Path, timeout_s: float) -> bool:
    if is_running(root):
        return False
    _check_prerequisites()
    _stop_daemons(root)  # leftovers of a half-dead cluster of ours, e.g. slurmd died
    # A fresh cluster is a hand-started one until acquire() marks it otherwise.
    _Layout(root).started_by_user.unlink(missing_ok=True)
    _write_files(root)
    try:
        _start_daemons(root)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        _stop_daemons(root)
        stderr = (e.stderr or "").strip() if isinstance(e.stderr, str) else ""
        raise RuntimeError(f"{e}\n{stderr}\n{log_tails(root)}") from e
    try:
        _wait_until_idle(root, timeout_s)
    except RuntimeError:
        _stop_daemons(root)
        raise
    return True


def acquire(*, root: Path | None = None, timeout_s: float = 60.0) -> ClusterInfo:
    """Starts the cluster if needed and registers this process as one of its users.

    Several pytest sessions on one machine (e.g. developers working side by
    side) share the cluster: :func:`release` stops it only when the last user
    leaves, and only if some user started it, so a cluster started by hand
    (``cluster.py start``) outlives every test session.

    Args:
        root: Cluster directory. Defaults to :func:`cluster_dir`.
        timeout_s: How long to wait for the node to become idle.

    Returns:
        The cluster's :class:`ClusterInfo`; pass it to :func:`release`.
    """
    root = root or cluster_dir()
    with _lock(root):
        started = _start_locked(root, timeout_s)
        layout = _Layout(root)
        if started:
            layout.started_by_user.touch()
        layout.users.mkdir(exist_ok=True)
        (layout.users / str(os.getpid())).touch()
    return ClusterInfo(root=root, started_here=started)


def release(info: ClusterInfo, *, keep: bool = False) -> bool:
    """Unregisters this process; stops the cluster if it was the last user and a user started it.

    Args:
        info: What :func:`acquire` returned.
        keep: Leave the cluster running even if this is its last user.

    Returns:
        Whether the cluster was stopped.
    """
    layout = _Layout(info.root)
    with _lock(info.root):
        with contextlib.suppress(FileNotFoundError):
            (layout.users / str(os.getpid())).unlink()
        others = [user for user in layout.users.glob("*") if user.name.isdigit() and _alive(int(user.name))]
        if keep or others or not layout.started_by_user.exists():
            return False
        _stop_daemons(info.root)
        for user in layout.users.glob("*"):  # dead sessions' leftovers
            user.unlink()
        layout.started_by_user.unlink()
        return True


def _our_stepds(root: Path) -> list[int]:
    """Pids of the slurmstepd processes (one per job step) of this cluster's jobs.

    slurmd passes its environment, SLURM_CONF included, to the slurmstepds it
    forks, which is how we tell ours from another cluster's.
    """
    marker = b"\0SLURM_CONF=" + str(conf_path(root)).encode() + b"\0"
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            is_stepd = (proc / "comm").read_text().strip() == "slurmstepd"
            if is_stepd and marker in b"\0" + (proc / "environ").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue  # exited meanwhile
    return pids


def _drain_jobs(root: Path, *, timeout_s: float = 10.0) -> None:
    """Cancels every job and waits for their slurmstepds to finish.

    A slurmstepd whose slurmd and slurmctld are gone cannot report its step's
    end, and lingers: so jobs must end, even the ones that just wrote their
    result, before the daemons stop. Whatever is left after the timeout is killed.
    """
    if node_state(root) is not None:
        job_ids = _run(["squeue", "--noheader", "--format=%A"], root=root).stdout.split()
        if job_ids:
            _run(["scancel", *job_ids], root=root)
    if _read_pid(_Layout(root), "slurmd") is None:
        return  # nobody left to hear from the steps: _stop_daemons kills them
    deadline = time.monotonic() + timeout_s
    while _our_stepds(root) and time.monotonic() < deadline:
        time.sleep(0.1)


def _stop_daemons(root: Path, *, timeout_s: float = 15.0) -> None:
    _drain_jobs(root)
    layout = _Layout(root)
    # The SLURM daemons together (each takes ~1-2 s to shut down), then munged,
    # which they may still use while shutting down.
    for group in (("slurmd", "slurmctld"), ("munged",)):
        pids = {daemon: _read_pid(layout, daemon) for daemon in group}
        for pid in pids.values():
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while any(pid and _alive(pid) for pid in pids.values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        for daemon, pid in pids.items():
            if pid and _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(FileNotFoundError):
                layout.pid_file(daemon).unlink()
        if group[0] == "slurmd":
            for pid in _our_stepds(root):  # stuck past _drain_jobs' timeout
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def stop(*, root: Path | None = None) -> None:
    """Stops the daemons named in the cluster's pid files; a no-op if none runs.

    Running jobs die with slurmd. Config and logs stay for post-mortems; the
    next :func:`start` begins from a clean state.
    """
    root = root or cluster_dir()
    with _lock(root):
        _stop_daemons(root)
        _Layout(root).started_by_user.unlink(missing_ok=True)


@contextlib.contextmanager
def controller_stopped(*, root: Path | None = None) -> Iterator[None]:
    """slurmctld stopped (SIGSTOP) for the block, continued (SIGCONT) after it, whatever happens.

    A stopped controller keeps its port: clients connect, then wait for an answer that does not
    come, as with a hung or overloaded controller, and jobs keep their state.
    """
    pid = _read_pid(_Layout(root or cluster_dir()), "slurmctld")
    if pid is None:
        raise RuntimeError("slurmctld is not running")
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def status(*, root: Path | None = None) -> str:
    """Returns a human-readable status: the daemons' pids and ``sinfo`` output."""
    root = root or cluster_dir()
    layout = _Layout(root)
    lines = [f"dir: {root}", f"SLURM_CONF={conf_path(root)}"]
    for daemon in _DAEMONS:
        pid = _read_pid(layout, daemon)
        lines.append(f"{daemon}: {f'pid {pid}' if pid else 'not running'}")
    if node_state(root) is not None:
        lines.append(_run(["sinfo"], root=root).stdout.rstrip())
    return "\n".join(lines)


def wait_for_jobs(jobs: Iterable[Any], *, timeout_s: float, root: Path | None = None) -> None:
    """Waits until every submitit job is done, or raises with their logs.

    Without slurmdbd, ``sacct`` fails and submitit cannot tell a job that died
    without writing its result from one still running, so ``job.result()``
    alone could wait forever.

    Args:
        jobs: submitit ``Job`` objects.
        timeout_s: Seconds to wait for all of them.
        root: Cluster directory, for the log tails in the error message.

    Raises:
        TimeoutError: If a job is not done in time; the message has its stderr,
            ``squeue`` and the daemons' log tails.
    """
    pending = list(jobs)
    deadline = time.monotonic() + timeout_s
    while pending:
        pending = [job for job in pending if not job.done()]
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    if pending:
        root = root or cluster_dir()
        queue = _run(["squeue", "--all"], root=root).stdout
        stderrs = "\n".join(f"--- job {job.job_id} stderr ---\n{(job.stderr() or '')[-2000:]}" for job in pending)
        raise TimeoutError(
            f"{len(pending)} SLURM job(s) not done after {timeout_s:.0f}s: {[job.job_id for job in pending]}\n"
            f"{stderrs}\n--- squeue ---\n{queue}\n{log_tails(root)}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``start``, ``stop`` or ``status`` of the cluster in :func:`cluster_dir`."""
    parser = argparse.ArgumentParser(description="Start, stop or inspect the local one-node SLURM test cluster.")
    parser.add_argument("command", choices=("start", "stop", "status"))
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the node to be idle")
    args = parser.parse_args(argv)
    if args.command == "start":
        try:
            started = start(timeout_s=args.timeout)
        except RuntimeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print("started" if started else "already running")
        print(status())
        print(f"\nexport SLURM_CONF={conf_path()}")
    elif args.command == "stop":
        stop()
        print("stopped")
    else:
        print(status())
        return 0 if is_running() else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
