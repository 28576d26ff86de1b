"""The embedded Postgres of a home inside a private (0700) directory: keel reaches it without
changing any permission outside the home.

As root, Postgres runs as the system user ``keel-postgres``, which cannot traverse a directory
like ``mktemp -d``'s (or root's home) holding the clone, its ``.venv`` and ``.keel/``. keel puts
that home's cluster in a service directory under /var/lib/keel-postgres instead of
``chmod o+x``-ing the user's directories.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from devstack_helpers import discard_home, make_settings, quiet_console

from devstack import embedded_postgres, stack
from devstack.errors import DevStackError
from devstack.layout import StackLayout
from devstack.processes import RunAs, probe

# Permission checks only: no process runs as this user.
NOBODY = RunAs(name="nobody", uid=65534, gid=65534)


@contextlib.contextmanager
def private_directory() -> Iterator[Path]:
    """A fresh directory only its owner may enter (mkdtemp makes it 0700)."""
    directory = Path(tempfile.mkdtemp(prefix="keel-private-"))
    try:
        assert directory.stat().st_mode & 0o777 == 0o700
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _permissions(paths: list[Path]) -> dict[Path, tuple[int, int, int]]:
    return {p: (p.lstat().st_mode, p.lstat().st_uid, p.lstat().st_gid) for p in paths}


def _everything_outside(home: Path, clone: Path) -> list[Path]:
    """The clone's ancestors and every file and directory of the clone except the home."""
    paths = [*clone.parents, clone]
    for root, dirs, files in os.walk(clone):
        dirs[:] = [d for d in dirs if Path(root) / d != home]
        paths.extend(Path(root) / name for name in dirs + files)
    return paths


@pytest.mark.slow  # starts a real Postgres
@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs Postgres as a system user")
def test_clone_in_private_directory_runs_postgres_without_touching_permissions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with private_directory() as private:
        # A clone in the private directory, with the Postgres package in its .venv (hard links:
        # the installed package's files, in the place a clone's own install would put them).
        clone = private / "keel"
        installed = embedded_postgres.bin_dir().parent.parent.parent
        site_packages = clone / ".venv" / "site-packages"
        for part in ("embedded_postgres/pginstall", "embedded_postgres.libs"):
            if (installed / part).is_dir():
                shutil.copytree(
                    installed / part,
                    site_packages / part,
                    copy_function=_link_or_copy,
                    ignore=shutil.ignore_patterns("include"),
                )
        binaries = site_packages / "embedded_postgres" / "pginstall" / "bin"
        monkeypatch.setattr(embedded_postgres, "bin_dir", lambda: binaries)
        home = clone / ".keel"
        before = _permissions(_everything_outside(home, clone))
        settings = make_settings(home)
        layout = StackLayout(home)
        try:
            stack.up_postgres_only(settings, console=quiet_console())
            cluster = embedded_postgres.resolve_cluster(layout, embedded_postgres.run_as_user())
            service_dir = cluster.service_dir
            assert service_dir is not None
            assert service_dir.parent == embedded_postgres.SERVICE_ROOT
            assert embedded_postgres.service_dir_of(layout) == service_dir

            # The server runs as the system user, from the service directory's binaries and data.
            found = probe(layout, embedded_postgres.PART)
            assert found.state == "running" and found.process is not None
            assert found.process.username() == embedded_postgres.SYSTEM_USER
            assert found.process.cmdline()[:3] == [
                str(cluster.bin / "postgres"),
                "-D",
                str(service_dir / "data"),
            ]
            assert cluster.bin.is_relative_to(service_dir)
            embedded_postgres.check_database_url(embedded_postgres.embedded_url(settings))

            # Nothing outside the home changed permission or owner: not the private directory,
            # not its ancestors, not the package's files the service directory links to.
            assert _permissions(_everything_outside(home, clone)) == before

            # A second `up` finds the running server through the link.
            assert stack.up_postgres_only(settings, console=quiet_console())
            assert probe(layout, embedded_postgres.PART).pid == found.pid

            stack.down(settings, purge=True, console=quiet_console(), grace=5.0)
            assert found.pid is not None
            assert not psutil.pid_exists(found.pid) or (
                psutil.Process(found.pid).status() == psutil.STATUS_ZOMBIE
            )
            assert not service_dir.exists()
            assert not layout.postgres_dir.exists()
            assert _permissions(_everything_outside(home, clone)) == before
        finally:
            discard_home(home)


def test_home_the_system_user_can_reach_keeps_its_cluster_inside(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with private_directory() as private:
        private.chmod(0o755)  # the test's own directory: open, like a usual checkout's
        binaries = private / "pginstall" / "bin"
        binaries.mkdir(parents=True)
        (binaries / "postgres").touch(mode=0o755)
        monkeypatch.setattr(embedded_postgres, "bin_dir", lambda: binaries)
        layout = StackLayout(private / ".keel")
        layout.ensure()
        cluster = embedded_postgres.resolve_cluster(layout, NOBODY)
        assert cluster == embedded_postgres.Cluster(layout.postgres_data, binaries)

        # The same home with binaries the system user may not run (a private .venv).
        (binaries / "postgres").chmod(0o750)
        cluster = embedded_postgres.resolve_cluster(layout, NOBODY)
        assert cluster.service_dir == embedded_postgres.service_dir_for(layout.home)
        assert cluster.reason == f"it may not execute {binaries / 'postgres'}"


def test_home_in_private_directory_gets_a_service_directory() -> None:
    with private_directory() as private:
        layout = StackLayout(private / "keel" / ".keel")
        layout.ensure()
        cluster = embedded_postgres.resolve_cluster(layout, NOBODY)
        assert cluster.service_dir == embedded_postgres.service_dir_for(layout.home)
        assert cluster.data == cluster.service_dir / "data"
        assert cluster.bin.is_relative_to(cluster.service_dir)
        assert cluster.reason == f"{private} is not traversable for it"


def test_existing_cluster_out_of_reach_is_a_clear_error() -> None:
    """A cluster made in place (say, before its directory was made private) is not moved or
    abandoned silently, and keel does not open the directory up."""
    with private_directory() as private:
        layout = StackLayout(private / ".keel")
        layout.postgres_data.mkdir(parents=True)
        (layout.postgres_data / "PG_VERSION").write_text("18\n")
        with pytest.raises(DevStackError) as caught:
            embedded_postgres.resolve_cluster(layout, NOBODY)
        message = str(caught.value)
        assert str(layout.postgres_data) in message
        assert f"{private} is not traversable" in message
        assert "keel dev down --purge" in message
        assert private.stat().st_mode & 0o777 == 0o700


def test_link_to_a_foreign_directory_is_refused_and_not_purged(tmp_path: Path) -> None:
    layout = StackLayout(tmp_path / ".keel")
    layout.postgres_dir.mkdir(parents=True)
    victim = tmp_path / "precious"
    victim.mkdir()
    (layout.postgres_dir / embedded_postgres.SERVICE_DIR_LINK).symlink_to(victim)
    with pytest.raises(DevStackError, match="not a keel Postgres service directory"):
        embedded_postgres.service_dir_of(layout)
    with pytest.raises(DevStackError):
        stack.down(make_settings(layout.home), purge=True, console=quiet_console())
    assert victim.is_dir()
    with pytest.raises(DevStackError, match="Refusing to delete"):
        embedded_postgres.remove_service_dir(victim)
    assert victim.is_dir()
