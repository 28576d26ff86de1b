"""`keel dev up | down | status` against real processes (Temporal dev server, embedded Postgres).

The tests share one stack (module fixture, brought up once); each calls the idempotent ``up()``
first, so any of them also runs alone.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import psutil
import pytest
from devstack_helpers import (
    HAS_MIGRATIONS,
    Stack,
    cli_env,
    make_settings,
    processes_under,
    quiet_console,
)
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes

from contracts.search_attributes import ALL_SEARCH_ATTRIBUTES, KEEL_TENANT
from devstack import embedded_postgres, stack, temporal_dev_server
from devstack.errors import DevStackError
from devstack.layout import StackLayout
from devstack.processes import probe, read_record
from infra.callback_signing import signing_secret
from infra.payload_codec import EncryptionCodec, configured_keys
from infra.settings import KeelSettings

pytestmark = pytest.mark.slow  # real dev stacks (Temporal, Postgres, keel processes)

REPO = Path(__file__).resolve().parents[2]
ALL_PARTS = {
    "temporal",
    "postgres",
    "simulator",
    "codec-server",
    "worker-keel-interactive",
    "worker-keel-batch",
}


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _run_cli(settings: KeelSettings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "starters.dev", *args],
        cwd=REPO,
        env=cli_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_up_starts_every_part(dev_stack: Stack) -> None:
    result = dev_stack.first_up
    assert result is not None
    settings = dev_stack.settings
    layout = StackLayout(settings.home)

    assert set(result.started) == ALL_PARTS
    for name in ALL_PARTS:
        part = result.part(name)
        assert part.state == "running", part
        assert part.pid is not None
        assert _alive(part.pid)
        assert layout.pid_file(name).read_text().strip() == str(part.pid)
        assert layout.log_file(name).exists()
    if HAS_MIGRATIONS:  # alembic ran against the embedded database
        tables = subprocess.run(
            [
                embedded_postgres.pg_bin("psql"),
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "keel",
                "-p",
                str(settings.dev_postgres_port),
                "-tAc",
                "SELECT count(*) FROM alembic_version",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        assert tables.stdout.strip() == "1"

    # Temporal: persistence file, frontend answers, keel's search attributes registered.
    assert layout.temporal_db.exists()
    cli = temporal_dev_server.find_temporal_cli()
    names = temporal_dev_server.search_attribute_names(cli, settings.effective_temporal_address)
    assert {key.name for key in ALL_SEARCH_ATTRIBUTES} <= names

    # Postgres: TCP on the configured port, database `keel` there, not running as root.
    assert embedded_postgres.is_ready(settings.dev_postgres_port)
    assert embedded_postgres.ensure_database(settings.dev_postgres_port) is False
    postmaster = psutil.Process(result.part("postgres").pid)
    cluster = embedded_postgres.resolve_cluster(layout, embedded_postgres.run_as_user())
    assert str(cluster.data) in postmaster.cmdline()
    if os.geteuid() == 0:
        assert postmaster.username() == embedded_postgres.SYSTEM_USER
    embedded_postgres.check_database_url(settings.effective_database_url)

    # Simulator answers; workers got the environment that points them at this stack.
    assert stack.http_ok(f"http://127.0.0.1:{settings.simulator_port}/health")
    worker_env = psutil.Process(result.part("worker-keel-batch").pid).environ()
    assert worker_env["KEEL_HOME"] == str(settings.home)
    assert worker_env["KEEL_DEV_TEMPORAL_PORT"] == str(settings.dev_temporal_port)
    assert worker_env["KEEL_DEV_POSTGRES_PORT"] == str(settings.dev_postgres_port)
    assert "DATABASE_URL" not in worker_env
    assert "TEMPORAL_ADDRESS" not in worker_env


def test_second_up_starts_nothing(dev_stack: Stack) -> None:
    dev_stack.up()
    before = stack.status(dev_stack.settings).pids
    result = dev_stack.up()
    assert result.started == []
    assert result.pids == before
    assert {p.name for p in result.parts if p.action == "already running"} == ALL_PARTS


def test_status_cli_shows_every_part(dev_stack: Stack) -> None:
    dev_stack.up()
    settings = dev_stack.settings
    pids = stack.status(settings).pids

    table = _run_cli(settings, "status")
    assert table.returncode == 0, table.stderr
    assert f"http://127.0.0.1:{settings.dev_temporal_ui_port}" in table.stdout
    assert table.stdout.count("running") == len(ALL_PARTS)
    for pid in pids.values():
        assert str(pid) in table.stdout
    assert str(settings.home / "logs" / "temporal.log") in table.stdout

    as_json = _run_cli(settings, "status", "--json")
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert {p["name"]: p["pid"] for p in data["parts"] if p["pid"]} == pids
    assert data["web_ui_url"] == f"http://127.0.0.1:{settings.dev_temporal_ui_port}"
    assert data["codec_server_url"] == f"http://127.0.0.1:{settings.codec_server_port}"


def test_up_creates_a_key_and_the_web_ui_decodes_through_the_codec_server(
    dev_stack: Stack,
) -> None:
    dev_stack.up()
    settings = dev_stack.settings  # no KEEL_ENCRYPTION_KEYS, as on a fresh machine
    key_file = settings.effective_encryption_keys_file
    assert key_file.parent == settings.home
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    (key,) = configured_keys(settings).keys

    codec_url = f"http://127.0.0.1:{settings.codec_server_port}"
    temporal = psutil.Process(stack.status(settings).part("temporal").pid).cmdline()
    assert temporal[temporal.index("--ui-codec-endpoint") + 1] == codec_url

    plain = Payload(metadata={"encoding": b"json/plain"}, data=b'"a prompt"')
    (sealed,) = asyncio.run(EncryptionCodec([key], source="the key file").encode([plain]))
    origin = f"http://localhost:{settings.dev_temporal_ui_port}"
    request = urllib.request.Request(
        f"{codec_url}/decode",
        data=json_format.MessageToJson(Payloads(payloads=[sealed])).encode(),
        headers={"Origin": origin, "Content-Type": "application/json", "X-Namespace": "default"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["access-control-allow-origin"] == origin
        assert list(json_format.Parse(response.read(), Payloads()).payloads) == [plain]

    dev_stack.up()
    assert configured_keys(settings).keys == (key,), "a later up must never replace the key"


def test_up_creates_the_callback_signing_secret_and_gives_it_to_every_part(
    dev_stack: Stack,
) -> None:
    result = dev_stack.up()
    settings = dev_stack.settings  # no KEEL_CALLBACK_SIGNING_SECRET, as on a fresh machine
    secret_file = settings.effective_callback_signing_secret_file
    assert secret_file.parent == settings.home
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    secret = signing_secret(settings)
    assert secret is not None and len(secret) == 64
    # `keel api` reads the same file from the same home; every part the stack started is
    # pointed at it and allows loopback receivers (the README's local example).
    for name in ("worker-keel-interactive", "worker-keel-batch", "simulator"):
        environ = psutil.Process(result.part(name).pid).environ()
        assert environ["KEEL_CALLBACK_SIGNING_SECRET_FILE"] == str(secret_file), name
        assert environ["KEEL_CALLBACK_ALLOWED_DESTINATIONS"] == "loopback", name

    dev_stack.up()
    assert signing_secret(settings) == secret, "a later up must never replace the secret"


def test_database_url_check_against_a_live_server(dev_stack: Stack) -> None:
    dev_stack.up()
    port = dev_stack.settings.dev_postgres_port
    embedded_postgres.check_database_url(f"postgresql://postgres@127.0.0.1:{port}/keel")
    with pytest.raises(DevStackError, match="has no database 'nosuchdb'") as info:
        embedded_postgres.check_database_url(f"postgresql://postgres:pw@127.0.0.1:{port}/nosuchdb")
    assert "CREATE DATABASE nosuchdb" in str(info.value)
    assert ":pw@" not in str(info.value)


def test_stale_pid_files_are_replaced(dev_stack: Stack) -> None:
    dev_stack.up()
    settings = dev_stack.settings
    layout = StackLayout(settings.home)
    before = stack.status(settings).pids

    # 1. The simulator died behind keel's back: its pid file names a dead process.
    simulator = psutil.Process(before["simulator"])
    simulator.kill()
    simulator.wait(5)
    assert probe(layout, "simulator").state == "stale"
    assert stack.status(settings).part("simulator").state == "stopped"

    # 2. A worker's pid now belongs to an unrelated program (pid reuse): never signalled.
    worker = psutil.Process(before["worker-keel-batch"])
    worker.kill()
    worker.wait(5)
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        layout.pid_file("worker-keel-batch").write_text(f"{stranger.pid}\n")
        meta = json.loads(layout.meta_file("worker-keel-batch").read_text())
        meta["pid"] = stranger.pid
        layout.meta_file("worker-keel-batch").write_text(json.dumps(meta))

        result = dev_stack.up()

        assert set(result.started) == {"simulator", "worker-keel-batch"}
        notes = "\n".join(result.notes)
        assert "stale pid file of simulator" in notes
        assert f"pid {stranger.pid} now belongs to another program" in notes
        assert result.part("simulator").pid != before["simulator"]
        assert result.part("worker-keel-batch").pid not in (
            before["worker-keel-batch"],
            stranger.pid,
        )
        assert stranger.poll() is None, "keel must not touch a process it did not start"
        assert read_record(layout, "worker-keel-batch").pid == result.part("worker-keel-batch").pid  # type: ignore[union-attr]
        for name in ("temporal", "postgres", "worker-keel-interactive"):
            assert result.part(name).pid == before[name]
    finally:
        stranger.kill()
        stranger.wait()


def test_down_then_up_keeps_temporal_data(dev_stack: Stack) -> None:
    dev_stack.up()
    settings = dev_stack.settings
    layout = StackLayout(settings.home)
    workflow_id = f"devstack-{uuid.uuid4()}"

    async def start_workflow() -> None:
        client = await Client.connect(settings.effective_temporal_address)
        await client.start_workflow(
            "KeelDevstackProbe",
            id=workflow_id,
            task_queue="devstack-probe-no-worker",
            search_attributes=TypedSearchAttributes([SearchAttributePair(KEEL_TENANT, "devstack")]),
        )

    asyncio.run(start_workflow())

    running = stack.status(settings).pids
    tree = set(running.values())
    for pid in running.values():
        tree |= {child.pid for child in psutil.Process(pid).children(recursive=True)}

    started = time.monotonic()
    outcomes = dev_stack.down()
    down_seconds = time.monotonic() - started
    assert {o.name for o in outcomes if o.result == "stopped"} == ALL_PARTS
    assert not [pid for pid in tree if _alive(pid)], "down left processes behind"
    assert processes_under(settings.home) == []
    assert list(layout.run_dir.glob("*")) == []
    assert down_seconds < 15
    assert {p.state for p in stack.status(settings).parts} == {"stopped"}
    assert dev_stack.down() == []  # idempotent

    result = dev_stack.up()
    assert set(result.started) == ALL_PARTS

    async def listed() -> list[str]:
        client = await Client.connect(settings.effective_temporal_address)
        for _ in range(50):
            ids = [
                wf.id
                async for wf in client.list_workflows(
                    f"KeelTenant = 'devstack' AND WorkflowId = '{workflow_id}'"
                )
            ]
            if ids:
                return ids
            await asyncio.sleep(0.2)
        return []

    assert asyncio.run(listed()) == [workflow_id]
    cli = temporal_dev_server.find_temporal_cli()
    names = temporal_dev_server.search_attribute_names(cli, settings.effective_temporal_address)
    assert {key.name for key in ALL_SEARCH_ATTRIBUTES} <= names
    # The Postgres cluster was reused, not re-initialised.
    assert not any("initialised a new Postgres cluster" in n for n in result.notes)


def test_down_purge_removes_data(dev_stack: Stack) -> None:
    dev_stack.up()
    settings = dev_stack.settings
    layout = StackLayout(settings.home)
    service_dir = embedded_postgres.service_dir_of(layout)
    pids = stack.status(settings).pids
    dev_stack.down(purge=True)
    assert not [pid for pid in pids.values() if _alive(pid)]
    if service_dir is not None:  # as root, with the home out of reach of keel-postgres
        assert not service_dir.exists()
    assert not layout.temporal_dir.exists()
    assert not layout.postgres_dir.exists()
    assert not layout.run_dir.exists()


# --- failures with a clear message ----------------------------------------------------------


def test_up_under_another_home_refuses_beside_a_running_stack(
    dev_stack: Stack, scratch_home: Path
) -> None:
    """`keel dev up` from a second home on the running stack's ports: refused before it makes
    a second encryption key; `status` there points at the stack that runs."""
    dev_stack.up()
    running = dev_stack.settings
    second = make_settings(
        scratch_home,
        dev_temporal_port=running.dev_temporal_port,
        dev_temporal_ui_port=running.dev_temporal_ui_port,
        dev_postgres_port=running.dev_postgres_port,
        simulator_port=running.simulator_port,
        codec_server_port=running.codec_server_port,
    )

    result = _run_cli(second, "up")
    assert result.returncode == 1, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    assert f"already running from another home: {running.home}" in output
    assert f"KEEL_HOME={running.home}" in output
    assert not second.effective_encryption_keys_file.exists(), "a second key was created"
    assert not StackLayout(scratch_home).run_dir.exists()
    assert processes_under(scratch_home) == []

    status = _run_cli(second, "status", "--json")
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    assert shown["home"] == str(scratch_home)
    assert {other["home"] for other in shown["other_stacks"]} == {str(running.home)}
    table = _run_cli(second, "status").stdout
    assert f"export KEEL_HOME={running.home}" in table

    still = stack.status(running)
    assert still.part("temporal").state == "running"
    assert still.other_stacks == []  # its own parts are not "another stack"
    (key,) = configured_keys(running).keys
    assert key.key_id in running.effective_encryption_keys_file.read_text()


def test_port_held_by_a_foreign_socket_fails_clearly(scratch_home: Path) -> None:
    settings = make_settings(scratch_home)
    with socket.socket() as foreign:
        foreign.bind(("127.0.0.1", settings.dev_temporal_port))
        foreign.listen()
        result = _run_cli(settings, "up")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert f"Port {settings.dev_temporal_port}" in output
    assert f"pid {os.getpid()}" in output  # the holder, named via psutil
    assert "KEEL_DEV_TEMPORAL_PORT" in output
    assert "TEMPORAL_ADDRESS" in output
    assert not list(StackLayout(scratch_home).run_dir.glob("*.pid"))
    assert processes_under(scratch_home) == []


def test_embedded_postgres_port_in_use(scratch_home: Path) -> None:
    """Temporal external (a plain address), the Postgres port held by someone else."""
    with socket.socket() as foreign:
        foreign.bind(("127.0.0.1", 0))
        foreign.listen()
        port = foreign.getsockname()[1]
        settings = make_settings(
            scratch_home, temporal_address="127.0.0.1:1", dev_postgres_port=port
        )
        with pytest.raises(DevStackError) as info:
            stack.up(settings, migrate=False, workers=False, console=quiet_console())
    message = str(info.value)
    assert f"Port {port} (embedded Postgres)" in message
    assert "KEEL_DEV_POSTGRES_PORT" in message
    assert "DATABASE_URL" in message
    assert processes_under(scratch_home) == []


def test_refusing_database_url_is_named_with_password_masked(scratch_home: Path) -> None:
    closed_port = _closed_port()
    url = f"postgresql://keel:s3cret-pw@127.0.0.1:{closed_port}/keel"
    settings = make_settings(scratch_home, temporal_address="127.0.0.1:1", database_url=url)
    with pytest.raises(DevStackError) as info:
        stack.up(settings, migrate=False, workers=False, console=quiet_console())
    message = str(info.value)
    assert f"postgresql://keel:***@127.0.0.1:{closed_port}/keel" in message
    assert "s3cret-pw" not in message
    assert "refuses connections" in message
    assert "unset DATABASE_URL" in message


def test_down_never_signals_a_process_keel_did_not_start(scratch_home: Path) -> None:
    layout = StackLayout(scratch_home)
    layout.ensure()
    stranger = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    try:
        layout.pid_file("temporal").write_text(f"{stranger.pid}\n")  # no record: not ours
        outcomes = stack.down(make_settings(scratch_home), console=quiet_console(), grace=1.0)
        assert [(o.name, o.result) for o in outcomes] == [("temporal", "stale")]
        time.sleep(0.2)
        assert stranger.poll() is None
        assert not layout.pid_file("temporal").exists()
    finally:
        os.killpg(stranger.pid, signal.SIGKILL)
        stranger.wait()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
