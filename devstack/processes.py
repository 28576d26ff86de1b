"""Detached processes keel starts and stops: pid files, spawn, readiness, port checks, stop.

Every process the dev stack runs is described by a :class:`ManagedProcess` (a *part*). Starting it
writes ``<home>/run/<part>.pid`` (just the pid, so ``kill $(cat …)`` works) plus
``<home>/run/<part>.json`` (the argv, the process start time and how to stop it). A pid file only
counts as "running" when the pid is alive **and** its command line is the one keel recorded **and**
its start time matches: a pid reused by another program is treated as a stale pid file, never
signalled.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import psutil
import structlog

from devstack.errors import DevStackError
from devstack.layout import StackLayout

log = structlog.get_logger(__name__)

LOG_ROTATE_BYTES = 20 * 1024 * 1024
_START_TIME_TOLERANCE_S = 1.0


@dataclass(frozen=True)
class RunAs:
    """The unprivileged system user a part runs as (only used when keel runs as root)."""

    name: str
    uid: int
    gid: int


@dataclass(frozen=True)
class PortClaim:
    """A TCP port a part will listen on; checked to be free before the part starts."""

    port: int
    what: str
    hint: str
    host: str = "127.0.0.1"


@dataclass(frozen=True)
class ManagedProcess:
    """How to run one part of the stack as a detached process.

    ``ready`` is polled (every 0.2 s, up to ``ready_timeout``) after the spawn; without one the
    process only has to stay alive for ``settle_seconds``. ``stop_argv`` (run as ``run_as``)
    replaces SIGTERM as the polite way to stop it (e.g. ``pg_ctl stop -m fast``).
    """

    name: str
    argv: tuple[str, ...]
    what: str = ""
    address: str | None = None
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    ports: tuple[PortClaim, ...] = ()
    run_as: RunAs | None = None
    ready: Callable[[], bool] | None = field(default=None, compare=False)
    ready_timeout: float = 30.0
    settle_seconds: float = 0.0
    stop_argv: tuple[str, ...] | None = None

    @property
    def label(self) -> str:
        return self.what or self.name


@dataclass(frozen=True)
class RunRecord:
    """What keel wrote when it started a part."""

    name: str
    pid: int
    argv: tuple[str, ...] | None = None
    create_time: float | None = None
    stop_argv: tuple[str, ...] | None = None
    run_as: RunAs | None = None
    address: str | None = None
    started_at: str | None = None


ProbeState = Literal["running", "stale", "absent"]


@dataclass(frozen=True)
class Probe:
    """The state of a part according to its pid file and the live process table."""

    name: str
    state: ProbeState
    record: RunRecord | None = None
    process: psutil.Process | None = None
    reason: str | None = None

    @property
    def pid(self) -> int | None:
        return self.record.pid if self.record is not None else None


# --- pid files ------------------------------------------------------------------------------


def read_record(layout: StackLayout, name: str) -> RunRecord | None:
    """The run record of ``name``, or None when there is no (readable) pid file."""
    pid_file = layout.pid_file(name)
    try:
        pid = int(pid_file.read_text().split()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None
    meta: dict[str, Any] = {}
    with contextlib.suppress(FileNotFoundError, ValueError):
        loaded = json.loads(layout.meta_file(name).read_text())
        if isinstance(loaded, dict) and loaded.get("pid") == pid:
            meta = loaded
    run_as = meta.get("run_as")
    return RunRecord(
        name=name,
        pid=pid,
        argv=tuple(meta["argv"]) if meta.get("argv") else None,
        create_time=meta.get("create_time"),
        stop_argv=tuple(meta["stop_argv"]) if meta.get("stop_argv") else None,
        run_as=RunAs(**run_as) if isinstance(run_as, dict) else None,
        address=meta.get("address"),
        started_at=meta.get("started_at"),
    )


def write_record(layout: StackLayout, record: RunRecord) -> None:
    layout.run_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "pid": record.pid,
        "argv": list(record.argv or ()),
        "create_time": record.create_time,
        "stop_argv": list(record.stop_argv) if record.stop_argv else None,
        "run_as": (
            {"name": record.run_as.name, "uid": record.run_as.uid, "gid": record.run_as.gid}
            if record.run_as
            else None
        ),
        "address": record.address,
        "started_at": record.started_at,
    }
    _atomic_write(layout.meta_file(record.name), json.dumps(meta, indent=2) + "\n")
    _atomic_write(layout.pid_file(record.name), f"{record.pid}\n")


def remove_record(layout: StackLayout, name: str) -> None:
    layout.pid_file(name).unlink(missing_ok=True)
    layout.meta_file(name).unlink(missing_ok=True)


def recorded_parts(layout: StackLayout) -> list[str]:
    """Names of all parts that have a pid file."""
    if not layout.run_dir.is_dir():
        return []
    return sorted(p.stem for p in layout.run_dir.glob("*.pid"))


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


# --- liveness -------------------------------------------------------------------------------


def _is_alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def probe(layout: StackLayout, name: str, expected_argv: Sequence[str] | None = None) -> Probe:
    """Is the process named by ``name``'s pid file alive and really the one keel started?

    The command line is compared with the one recorded at start (or ``expected_argv`` for a pid
    file without a record) and the start time with the recorded one, so a reused pid is "stale".
    """
    record = read_record(layout, name)
    if record is None:
        if layout.pid_file(name).exists():
            return Probe(name, "stale", reason="the pid file is unreadable")
        return Probe(name, "absent")
    try:
        process = psutil.Process(record.pid)
        cmdline = tuple(process.cmdline())
        create_time = process.create_time()
    except psutil.Error:
        return Probe(name, "stale", record, reason=f"process {record.pid} is gone")
    if not _is_alive(process):
        return Probe(name, "stale", record, reason=f"process {record.pid} has exited")
    wanted = record.argv or (tuple(expected_argv) if expected_argv is not None else None)
    if wanted is None or cmdline != wanted:
        shown = shlex.join(cmdline)[:120] or process.name()
        return Probe(
            name,
            "stale",
            record,
            reason=f"pid {record.pid} now belongs to another program ({shown})",
        )
    if record.create_time is not None and (
        abs(create_time - record.create_time) > _START_TIME_TOLERANCE_S
    ):
        return Probe(
            name,
            "stale",
            record,
            reason=f"pid {record.pid} was reused by a later process with the same command line",
        )
    return Probe(name, "running", record, process)


# --- ports ----------------------------------------------------------------------------------


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def listener_pid(port: int) -> int | None:
    """The pid of the process listening on TCP ``port``, when psutil can tell."""
    try:
        connections = psutil.net_connections(kind="inet")
    except (psutil.Error, OSError):
        return None
    for conn in connections:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            return conn.pid
    return None


def port_holder(port: int) -> str | None:
    """'pid 123 (command line)' of the process listening on ``port``, when psutil can tell."""
    pid = listener_pid(port)
    if pid is None:
        return None
    try:
        process = psutil.Process(pid)
        shown = shlex.join(process.cmdline())[:160] or process.name()
    except psutil.Error:
        return f"pid {pid}"
    return f"pid {pid} ({shown})"


def ensure_port_free(claim: PortClaim) -> None:
    """Raise a :class:`DevStackError` naming the port, its holder and the way out."""
    if port_is_free(claim.port, claim.host):
        return
    holder = port_holder(claim.port)
    who = holder if holder else "a process keel cannot identify"
    raise DevStackError(
        f"Port {claim.port} ({claim.what}) is already in use by {who}, which keel did not start.",
        hint=f"stop that process, or {claim.hint}.",
    )


# --- logs -----------------------------------------------------------------------------------


def log_tail(path: Path, lines: int = 25, max_bytes: int = 16_384) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return f"(no log file at {path})"
    tail = data.splitlines()[-lines:]
    return "\n".join(tail) if tail else f"(empty log file {path})"


def _open_log(path: Path, spec: ManagedProcess) -> Any:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.stat().st_size > LOG_ROTATE_BYTES:
        path.replace(path.with_name(path.name + ".1"))
    fh = path.open("ab")
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    fh.write(f"\n===== keel dev: starting {spec.label} at {stamp} =====\n".encode())
    fh.write(f"===== {shlex.join(spec.argv)}\n".encode())
    fh.flush()
    return fh


# --- spawn ----------------------------------------------------------------------------------


def spawn(spec: ManagedProcess, layout: StackLayout) -> psutil.Process:
    """Start ``spec`` detached (own session), output appended to its log, pid file written."""
    log_path = layout.log_file(spec.name)
    kwargs: dict[str, Any] = {}
    if spec.run_as is not None and os.geteuid() == 0:
        kwargs.update(user=spec.run_as.uid, group=spec.run_as.gid, extra_groups=[])
    with _open_log(log_path, spec) as fh:
        try:
            popen = subprocess.Popen(
                list(spec.argv),
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                cwd=spec.cwd,
                env=dict(spec.env) if spec.env is not None else None,
                start_new_session=True,
                close_fds=True,
                **kwargs,
            )
        except OSError as exc:
            raise DevStackError(
                f"Could not start {spec.label}: {exc}", hint=f"check `{spec.argv[0]}` exists"
            ) from exc
    process = psutil.Process(popen.pid)
    _children[popen.pid] = popen
    try:
        create_time: float | None = process.create_time()
    except psutil.Error:
        create_time = None
    write_record(
        layout,
        RunRecord(
            name=spec.name,
            pid=popen.pid,
            argv=spec.argv,
            create_time=create_time,
            stop_argv=spec.stop_argv,
            run_as=spec.run_as,
            address=spec.address,
            started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        ),
    )
    log.debug("devstack.spawned", part=spec.name, pid=popen.pid, argv=list(spec.argv))
    return process


# Popen objects of the processes this interpreter started, so their exit codes can be collected
# (and they do not linger as zombies while this process lives, e.g. in a test run).
_children: dict[int, subprocess.Popen[bytes]] = {}


def _exit_code(process: psutil.Process) -> int | None:
    popen = _children.get(process.pid)
    if popen is not None:
        return popen.poll()
    return None if _is_alive(process) else -1


def wait_ready(spec: ManagedProcess, layout: StackLayout, process: psutil.Process) -> None:
    """Wait until ``spec.ready()`` holds (or it survived ``settle_seconds``).

    On early exit or timeout the process is stopped, its pid file removed, and a
    :class:`DevStackError` with the log tail raised.
    """
    log_path = layout.log_file(spec.name)
    started = time.monotonic()
    deadline = started + spec.ready_timeout
    while True:
        code = _exit_code(process)
        if code is not None or not _is_alive(process):
            remove_record(layout, spec.name)
            _children.pop(process.pid, None)
            status = f" with exit code {code}" if code not in (None, -1) else ""
            raise DevStackError(
                f"{spec.label} exited during startup{status}.",
                hint=f"read {log_path} for the cause",
                log_tail=log_tail(log_path),
            )
        if spec.ready is None:
            if time.monotonic() - started >= spec.settle_seconds:
                return
        elif spec.ready():
            return
        if time.monotonic() > deadline:
            terminate([process], grace=5.0)
            remove_record(layout, spec.name)
            raise DevStackError(
                f"{spec.label} did not become ready within {spec.ready_timeout:.0f}s "
                f"(pid {process.pid}; stopped it again).",
                hint=f"read {log_path} for the cause",
                log_tail=log_tail(log_path),
            )
        time.sleep(0.2)


# --- stop -----------------------------------------------------------------------------------


def _signal_tree(process: psutil.Process, sig: signal.Signals) -> None:
    """Signal the process group keel created (the process is its session leader) or the tree."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(process.pid) == process.pid:
            os.killpg(process.pid, sig)
            return
    with contextlib.suppress(psutil.Error):
        process.send_signal(sig)


def terminate(processes: Iterable[psutil.Process], *, grace: float) -> list[psutil.Process]:
    """SIGTERM each process (and its group), SIGKILL what is left after ``grace`` seconds.

    Returns the processes that still did not exit (should be empty).
    """
    given = list(processes)
    roots = [p for p in given if _is_alive(p)]
    tree: dict[int, psutil.Process] = {}
    for root in roots:
        tree[root.pid] = root
        with contextlib.suppress(psutil.Error):
            for child in root.children(recursive=True):
                tree[child.pid] = child
    for root in roots:
        _signal_tree(root, signal.SIGTERM)
    for pid, child in tree.items():
        if pid not in {r.pid for r in roots}:
            with contextlib.suppress(psutil.Error):
                child.terminate()
    alive = _wait(list(tree.values()), grace)
    if alive:
        log.warning("devstack.sigkill", pids=[p.pid for p in alive])
        for root in roots:
            _signal_tree(root, signal.SIGKILL)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        alive = _wait(alive, 5.0)
    for proc in [*given, *tree.values()]:
        popen = _children.pop(proc.pid, None)
        if popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(timeout=0.5)
    return alive


def _wait(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    alive = [p for p in processes if _is_alive(p)]
    while alive and time.monotonic() < deadline:
        for proc in alive:
            popen = _children.get(proc.pid)
            if popen is not None:
                popen.poll()
        time.sleep(0.05)
        alive = [p for p in alive if _is_alive(p)]
    return alive


def run_stop_command(record: RunRecord, timeout: float) -> None:
    """Run the part's recorded polite stop command (e.g. ``pg_ctl stop -m fast``)."""
    assert record.stop_argv is not None
    kwargs: dict[str, Any] = {}
    if record.run_as is not None and os.geteuid() == 0:
        kwargs.update(user=record.run_as.uid, group=record.run_as.gid, extra_groups=[])
    try:
        result = subprocess.run(
            list(record.stop_argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd="/",
            check=False,
            **kwargs,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("devstack.stop_command_failed", part=record.name, error=str(exc))
        return
    if result.returncode != 0:
        log.warning(
            "devstack.stop_command_failed",
            part=record.name,
            returncode=result.returncode,
            stderr=result.stderr.strip()[-500:],
        )


@dataclass(frozen=True)
class StopOutcome:
    name: str
    result: Literal["stopped", "not running", "stale", "failed"]
    pid: int | None = None
    detail: str | None = None


def stop_parts(layout: StackLayout, names: Sequence[str], *, grace: float) -> list[StopOutcome]:
    """Stop the named parts together (only processes their pid files prove keel started)."""
    outcomes: list[StopOutcome] = []
    to_stop: list[tuple[Probe, psutil.Process]] = []
    for name in names:
        found = probe(layout, name)
        if found.state == "absent":
            outcomes.append(StopOutcome(name, "not running"))
            continue
        if found.state == "stale":
            remove_record(layout, name)
            outcomes.append(StopOutcome(name, "stale", found.pid, found.reason))
            continue
        assert found.process is not None
        assert found.record is not None
        to_stop.append((found, found.process))

    polite = [(f, p) for f, p in to_stop if f.record is not None and f.record.stop_argv]
    for found, _ in polite:
        assert found.record is not None
        run_stop_command(found.record, timeout=grace)
    remaining = terminate([p for _, p in to_stop], grace=grace)
    still = {p.pid for p in remaining}
    for found, process in to_stop:
        if process.pid in still:
            outcomes.append(
                StopOutcome(found.name, "failed", process.pid, "did not exit after SIGKILL")
            )
            continue
        remove_record(layout, found.name)
        outcomes.append(StopOutcome(found.name, "stopped", process.pid))
    return outcomes
