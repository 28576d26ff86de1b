"""Another home's keel dev stack on the ports this home's stack needs.

Two homes sharing one set of ports is how a second encryption key is made beside a running
stack: ``keel dev up`` under home B finds Temporal's port held by home A's server, yet B's first
``up`` has already written B's key, and whatever a client of B starts is encrypted with a key A's
workers do not hold. ``up`` asks :func:`stack_on_port` before it creates anything and refuses,
naming A; ``status`` names A too, instead of reporting B's parts as merely "stopped".
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import psutil

from devstack.layout import StackLayout
from devstack.processes import listener_pid, probe, recorded_parts


@dataclass(frozen=True)
class RunningStack:
    """A part of another home's stack, found listening on a port."""

    home: Path
    part: str
    pid: int
    port: int


def stack_on_port(port: int, *, besides: Path) -> RunningStack | None:
    """The part of a keel stack under another home than ``besides`` that listens on ``port``.

    The home is read from the listening process or its parents (KEEL_HOME in the environment,
    which keel gives every Python part; or the data path keel passes Temporal and Postgres), and
    it counts only when that home's pid files prove keel started the process: a stranger that
    merely mentions a path is never taken for a stack.
    """
    pid = listener_pid(port)
    if pid is None:
        return None
    try:
        listener = psutil.Process(pid)
        lineage = [listener, *listener.parents()]
    except psutil.Error:
        return None
    lineage_pids = {process.pid for process in lineage}
    own = besides.resolve()
    for process in lineage:
        for home in _homes_named_by(process):
            if home == own:
                continue
            layout = StackLayout(home)
            for name in recorded_parts(layout):
                found = probe(layout, name)
                if found.state == "running" and found.pid in lineage_pids:
                    assert found.pid is not None
                    return RunningStack(home, name, found.pid, port)
    return None


def _homes_named_by(process: psutil.Process) -> list[Path]:
    homes: list[Path] = []
    with contextlib.suppress(psutil.Error):
        named = process.environ().get("KEEL_HOME")
        if named:
            homes.append(Path(named).resolve())
    with contextlib.suppress(psutil.Error):
        argv = process.cmdline()
        for flag in ("--db-filename", "-D"):  # Temporal's database, Postgres's data directory
            if flag in argv[:-1]:
                path = Path(argv[argv.index(flag) + 1])
                if len(path.parents) < 2:
                    continue
                home = path.parents[1].resolve()
                layout = StackLayout(home)
                if path.resolve() in (layout.temporal_db, layout.postgres_data):
                    homes.append(home)
    return list(dict.fromkeys(homes))
