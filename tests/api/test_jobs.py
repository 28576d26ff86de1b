"""Async jobs: POST answers at once with an id, GET gives status and result, and a callback is
delivered signed, retried until acknowledged, and acknowledged once; signed with the secret the
dev stack creates, never dropped by a worker that cannot sign, and never sent to loopback,
private, link-local or metadata addresses unless allowed (checked at acceptance and at delivery,
on the address connected to, with no redirect followed).

Nothing here sends a packet to a non-loopback address: test names resolve through a stub
resolver, and the delivery's HTTP transport connects to loopback only."""

from __future__ import annotations

import asyncio
import contextlib
import json
import stat
from collections.abc import AsyncIterator, Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest
import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse
from starlette.routing import Route
from temporalio.client import Client
from temporalio.service import RPCError
from temporalio.worker import Worker

from activities.jobs import JobActivities
from api.server import running_api, serving
from contracts.activities import DELIVER_JOB_CALLBACK
from contracts.jobs import JobOutput
from devstack import stack
from infra.callback_signing import (
    SIGNATURE_HEADER,
    ensure_secret_file,
    signing_secret,
    verify_signature,
)
from infra.database import session_factory, sessions_for
from infra.outbound_guard import Resolver, system_resolver
from infra.settings import KeelSettings
from infra.tables import Job
from llmsim import SimServer
from tests.api.tokens import http_client, issue_token
from tests.conftest import KeelWorkers, reconfigure
from tests.outbound import LoopbackOnlyTransport, StubResolver
from workers.registry import queue_contents

SECRET = "callback-secret-for-tests"


@dataclass
class Receiver:
    """A callback receiver that fails its first ``failures`` deliveries with 500; ``/redirect``
    answers every delivery with a redirect to the cloud metadata address."""

    url: str
    failures: int
    port: int = 0
    deliveries: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    redirected: list[dict[str, str]] = field(default_factory=list)


METADATA_URL = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    state = Receiver(url="", failures=2)

    async def hook(request: Request) -> JSONResponse:
        state.deliveries.append((dict(request.headers), await request.body()))
        if len(state.deliveries) <= state.failures:
            return JSONResponse({"error": "try again"}, status_code=500)
        return JSONResponse({"ok": True})

    async def redirect(request: Request) -> RedirectResponse:
        state.redirected.append(dict(request.headers))
        return RedirectResponse(METADATA_URL, status_code=307)

    app = Starlette(
        routes=[
            Route("/hook", hook, methods=["POST"]),
            Route("/redirect", redirect, methods=["POST"]),
        ]
    )
    async with serving(uvicorn.Config(app, log_config=None, lifespan="off")) as url:
        state.url = f"{url}/hook"
        state.port = int(url.rsplit(":", 1)[1])
        yield state


def activity_name(function: Callable[..., Any]) -> str:
    return str(getattr(function, "__temporal_activity_definition").name)


@contextlib.asynccontextmanager
async def job_worker(
    client: Client,
    settings: KeelSettings,
    worker_settings: KeelSettings | None = None,
    resolver: Resolver = system_resolver,
) -> AsyncIterator[LoopbackOnlyTransport]:
    """The interactive queue's worker, its callback delivery built with the given settings (None:
    ``settings``) and resolver, sending through a loopback-only transport (yielded)."""
    transport = LoopbackOnlyTransport()
    contents = queue_contents(settings.interactive_task_queue, settings)
    jobs = JobActivities(worker_settings or settings, sessions_for(settings), resolver, transport)
    delivery = jobs.deliver_job_callback
    activities = [a for a in contents.activities if activity_name(a) != DELIVER_JOB_CALLBACK.name]
    worker = Worker(
        client,
        task_queue=settings.interactive_task_queue,
        workflows=list(contents.workflows),
        activities=[*activities, delivery],
    )
    async with worker:
        yield transport


async def wait_for(
    http: httpx2.AsyncClient, job_id: str, done: Callable[[dict], bool], timeout: float = 30
) -> dict:
    """The job's view once ``done(view)`` holds (polled; fails with the last view)."""
    deadline = asyncio.get_running_loop().time() + timeout
    view: dict = {}
    while asyncio.get_running_loop().time() < deadline:
        view = (await http.get(f"/v1/jobs/{job_id}")).json()
        if done(view):
            return view
        await asyncio.sleep(0.2)
    raise TimeoutError(f"job {job_id}: condition not met; last view {view}")


async def wait_for_job(http: httpx2.AsyncClient, job_id: str, timeout: float = 30) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        view = (await http.get(f"/v1/jobs/{job_id}")).json()
        if view["status"] != "running" and (
            view.get("callback") is None or view["callback"]["acknowledged_at"]
        ):
            return view
        await asyncio.sleep(0.2)
    raise TimeoutError(f"job {job_id} still running")


async def test_a_job_answers_at_once_and_its_callback_is_signed_and_acknowledged_once(
    client: Client,
    keel_settings: KeelSettings,
    keel_workers: KeelWorkers,
    simulator: SimServer,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = reconfigure(monkeypatch, KEEL_CALLBACK_SIGNING_SECRET=SECRET)
    await keel_workers.start(settings)
    token = await issue_token()
    async with running_api(settings, client) as url, http_client(url, token) as http:
        created = await http.post(
            "/v1/jobs",
            json={
                "kind": "ask",
                "input": {"prompt": "Summarize the water cycle.", "models": ["gpt-4o-mini"]},
                "callback_url": receiver.url,
            },
        )
        assert created.status_code == 202
        job_id = created.json()["id"]
        assert created.json()["status"] == "running"
        view = await wait_for_job(http, job_id)

    assert view["status"] == "completed" and view["result"]["answer"]["text"]
    # Retried through two 500s; the third delivery was acknowledged, and nothing after it.
    await asyncio.sleep(1.5)
    assert len(receiver.deliveries) == 3
    assert view["callback"]["attempts"] == 3 and view["callback"]["last_status"] == 200
    for number, (headers, body) in enumerate(receiver.deliveries, start=1):
        assert verify_signature(SECRET, headers[SIGNATURE_HEADER.lower()], body)
        assert not verify_signature("another-secret", headers[SIGNATURE_HEADER.lower()], body)
        assert headers["x-keel-job-id"] == job_id
        assert headers["x-keel-delivery-attempt"] == str(number)
        payload = json.loads(body)
        assert payload["id"] == job_id and payload["status"] == "completed"
        assert payload["result"] == view["result"]
    # A tampered body fails verification.
    headers, body = receiver.deliveries[-1]
    assert not verify_signature(SECRET, headers[SIGNATURE_HEADER.lower()], body + b" ")
    async with session_factory()() as db:
        job = await db.get(Job, job_id)
    assert job is not None and job.callback_acknowledged_at is not None
    # The job's workflow finished: no delivery is pending.
    description = await client.get_workflow_handle(job_id).describe()
    assert description.status is not None and description.status.name == "COMPLETED"


async def test_job_requests_are_validated_and_idempotent(
    client: Client,
    keel_settings: KeelSettings,
    interactive_worker: Worker,
    simulator: SimServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    # No signing secret anywhere: neither the variable nor a secret file.
    monkeypatch.delenv("KEEL_CALLBACK_SIGNING_SECRET", raising=False)
    settings = reconfigure(monkeypatch, KEEL_CALLBACK_SIGNING_SECRET_FILE=str(tmp_path / "none"))
    token = await issue_token()
    async with running_api(settings, client) as url, http_client(url, token) as http:
        no_prompt = await http.post("/v1/jobs", json={"kind": "ask", "input": {}})
        unknown_kind = await http.post("/v1/jobs", json={"kind": "dance", "input": {}})
        unsigned = await http.post(
            "/v1/jobs",
            json={"kind": "ask", "input": {"prompt": "hi"}, "callback_url": "http://x/hook"},
        )
        missing = await http.get("/v1/jobs/job-does-not-exist")
        for response, status in ((no_prompt, 400), (unknown_kind, 400), (unsigned, 400),
                                 (missing, 404)):  # fmt: skip
            assert response.status_code == status, response.text
            assert response.json()["error"]["message"]
        assert "input.prompt" in no_prompt.json()["error"]["message"]
        assert "KEEL_CALLBACK_SIGNING_SECRET" in unsigned.json()["error"]["message"]

        job = {"kind": "ask", "input": {"prompt": "Name a sea."}, "id": "job-client-chosen-1"}
        first = await http.post("/v1/jobs", json=job)
        view = await wait_for_job(http, "job-client-chosen-1")
        again = await http.post("/v1/jobs", json=job)
    assert first.status_code == 202 and again.status_code == 200
    assert again.json()["status"] == "completed"
    assert again.json()["result"] == view["result"]
    assert simulator.stats()["totals"]["requests"] == 1


async def test_the_readme_job_callback_is_signed_with_the_secret_the_dev_stack_creates(
    client: Client,
    keel_settings: KeelSettings,
    keel_workers: KeelWorkers,
    simulator: SimServer,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """The README's POST /v1/jobs with a callback_url, on the dev stack with nothing set: the
    API and the worker both read the secret file `keel dev up` created under KEEL_HOME."""
    receiver.failures = 0
    monkeypatch.delenv("KEEL_CALLBACK_SIGNING_SECRET", raising=False)
    monkeypatch.delenv("KEEL_CALLBACK_SIGNING_SECRET_FILE", raising=False)
    monkeypatch.delenv("KEEL_CALLBACK_ALLOWED_DESTINATIONS", raising=False)
    settings = reconfigure(monkeypatch, KEEL_HOME=str(tmp_path / "keel-home"))
    await keel_workers.start(settings)  # the worker reads the same file
    secret_file = ensure_secret_file(settings)  # what `keel dev up` does on its first start
    assert secret_file == tmp_path / "keel-home" / "callback-signing-secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    secret = signing_secret(settings)
    assert secret is not None and len(secret) == 64
    # Every part the dev stack starts is pointed at that file and allows loopback receivers.
    env = stack.stack_env(settings)
    assert env["KEEL_CALLBACK_SIGNING_SECRET_FILE"] == str(secret_file)
    assert env["KEEL_CALLBACK_ALLOWED_DESTINATIONS"] == "loopback"
    assert "KEEL_CALLBACK_SIGNING_SECRET" not in env

    token = await issue_token()
    async with running_api(settings, client) as url, http_client(url, token) as http:
        created = await http.post(
            "/v1/jobs",
            json={
                "kind": "ask",
                "input": {"prompt": "Summarise the water cycle."},
                "callback_url": receiver.url,
            },
        )
        assert created.status_code == 202, created.text
        view = await wait_for_job(http, created.json()["id"])
    assert view["status"] == "completed"
    assert view["callback"]["attempts"] == 1 and view["callback"]["last_error"] is None
    ((headers, body),) = receiver.deliveries
    assert verify_signature(secret, headers[SIGNATURE_HEADER.lower()], body)


async def test_a_worker_without_the_secret_fails_each_delivery_loudly_and_retries_until_it_has_it(
    client: Client,
    keel_settings: KeelSettings,
    simulator: SimServer,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """The secret set for `keel api` only: the job completes, the callback is not sent, each
    attempt fails with an error naming the setting (job view, error log) and is retried; a worker
    that has the secret then delivers it. Before: attempts 0, nothing retried, dropped."""
    receiver.failures = 0
    api_settings = reconfigure(
        monkeypatch,
        KEEL_CALLBACK_SIGNING_SECRET=SECRET,
        KEEL_CALLBACK_SIGNING_SECRET_FILE=str(tmp_path / "absent"),
    )
    unsigned_worker = api_settings.model_copy(update={"callback_signing_secret": None})
    token = await issue_token()
    async with running_api(api_settings, client) as url, http_client(url, token) as http:
        with structlog.testing.capture_logs() as logged:
            async with job_worker(client, api_settings, unsigned_worker):
                created = await http.post(
                    "/v1/jobs",
                    json={
                        "kind": "ask",
                        "input": {"prompt": "Name a river."},
                        "callback_url": receiver.url,
                    },
                )
                assert created.status_code == 202, created.text
                job_id = created.json()["id"]

                def unsigned() -> list[MutableMapping[str, Any]]:
                    return [e for e in logged if e["event"] == "job.callback_unsigned"]

                # Two attempts have failed, each fully recorded (row, then error log).
                failing = await wait_for(
                    http, job_id, lambda v: len(unsigned()) >= 2 and v["callback"]["last_error"]
                )
        assert failing["status"] == "completed" and failing["callback"]["acknowledged_at"] is None
        assert failing["callback"]["attempts"] >= 2
        assert "KEEL_CALLBACK_SIGNING_SECRET" in failing["callback"]["last_error"]
        assert receiver.deliveries == []
        assert {e["log_level"] for e in unsigned()} == {"error"}
        description = await client.get_workflow_handle(job_id).describe()
        assert description.status is not None and description.status.name == "RUNNING"

        async with job_worker(client, api_settings):  # a worker that has the secret
            view = await wait_for_job(http, job_id)
            # The acknowledgement is in Postgres before the workflow's last task has run: keep the
            # worker until the workflow has finished, or its result would wait for a worker.
            outcome = await client.get_workflow_handle(job_id, result_type=JobOutput).result()
    assert view["callback"]["last_status"] == 200 and view["callback"]["last_error"] is None
    assert view["callback"]["attempts"] >= 3
    ((headers, body),) = receiver.deliveries
    assert verify_signature(SECRET, headers[SIGNATURE_HEADER.lower()], body)
    assert outcome.callback_acknowledged


REFUSED_CALLBACKS = {
    "http://127.0.0.1:9/hook": "loopback",
    "http://[::1]:9/hook": "loopback",
    "http://localhost:9/hook": "loopback",
    "http://10.1.2.3/hook": "private",
    "http://hooks.internal.test/hook": "private",
    "https://[fd00:ec2::254]/latest/meta-data/": "cloud metadata",
    "http://169.254.169.254/latest/meta-data/": "cloud metadata",
    "http://metadata.internal.test/latest/meta-data/": "cloud metadata",
    "http://[::ffff:169.254.169.254]/": "cloud metadata (as IPv6",
    "http://v6.internal.test/": "link-local",
    "http://100.64.0.7/": "carrier-grade NAT",
    "http://0.0.0.0:8300/": "unspecified",
}
TEST_NAMES = {
    "localhost": ["127.0.0.1", "::1"],
    "hooks.internal.test": ["10.0.0.5"],
    "metadata.internal.test": ["169.254.169.254"],
    "v6.internal.test": ["fe80::1"],
}


async def test_callbacks_to_private_or_metadata_destinations_are_refused_when_the_job_is_posted(
    client: Client, keel_settings: KeelSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = reconfigure(
        monkeypatch,
        KEEL_CALLBACK_SIGNING_SECRET=SECRET,
        KEEL_CALLBACK_ALLOWED_DESTINATIONS="none",
    )
    resolver = StubResolver(TEST_NAMES)
    token = await issue_token()
    async with (
        running_api(settings, client, resolver=resolver) as url,
        http_client(url, token) as http,
    ):
        for number, (callback_url, address_class) in enumerate(REFUSED_CALLBACKS.items()):
            response = await http.post(
                "/v1/jobs",
                json={
                    "kind": "ask",
                    "input": {"prompt": "hi"},
                    "callback_url": callback_url,
                    "id": f"job-refused-{number}",
                },
            )
            assert response.status_code == 400, (callback_url, response.text)
            error = response.json()["error"]
            assert error["param"] == "callback_url" and error["code"] == "callback_url_refused"
            assert f"a {address_class}" in error["message"], error["message"]
            assert "KEEL_CALLBACK_ALLOWED_DESTINATIONS" in error["message"]
    # Refused before anything started: no row, no workflow.
    async with session_factory()() as db:
        assert await db.get(Job, "job-refused-0") is None
    with pytest.raises(RPCError):
        await client.get_workflow_handle("job-refused-0").describe()


async def test_delivery_checks_the_address_it_connects_to_and_refuses_a_rebound_name(
    client: Client,
    keel_settings: KeelSettings,
    simulator: SimServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The name resolved to a public address when the job was accepted and to the metadata
    address at delivery (DNS rebinding): refused before any connection, not retried, and the
    job says why."""
    settings = reconfigure(monkeypatch, KEEL_CALLBACK_SIGNING_SECRET=SECRET)
    at_acceptance = StubResolver({"hooks.rebind.test": ["93.184.216.34"]})
    at_delivery = StubResolver({"hooks.rebind.test": ["169.254.169.254"]})
    token = await issue_token()
    async with (
        running_api(settings, client, resolver=at_acceptance) as url,
        http_client(url, token) as http,
        job_worker(client, settings, resolver=at_delivery) as transport,
    ):
        created = await http.post(
            "/v1/jobs",
            json={
                "kind": "ask",
                "input": {"prompt": "hi"},
                "callback_url": "http://hooks.rebind.test/hook",
            },
        )
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        handle = client.get_workflow_handle(job_id, result_type=JobOutput)
        outcome = await asyncio.wait_for(handle.result(), 30)
        view = (await http.get(f"/v1/jobs/{job_id}")).json()
    assert outcome.status == "completed" and not outcome.callback_acknowledged
    assert view["callback"]["attempts"] == 1 and view["callback"]["last_status"] is None
    assert "refused" in view["callback"]["last_error"]
    assert "169.254.169.254), a cloud metadata address" in view["callback"]["last_error"]
    assert at_delivery.asked == [("hooks.rebind.test", 80)]
    assert transport.sent == [] and transport.refused == []  # no connection was even tried


async def test_an_allowed_destination_is_reached_at_the_checked_address_no_redirect_followed(
    client: Client,
    keel_settings: KeelSettings,
    simulator: SimServer,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    receiver.failures = 0
    settings = reconfigure(
        monkeypatch,
        KEEL_CALLBACK_SIGNING_SECRET=SECRET,
        KEEL_CALLBACK_ALLOWED_DESTINATIONS="loopback",
    )
    resolver = StubResolver({"receiver.internal.test": ["127.0.0.1"]})
    name = f"receiver.internal.test:{receiver.port}"
    token = await issue_token()
    async with (
        running_api(settings, client, resolver=resolver) as url,
        http_client(url, token) as http,
        job_worker(client, settings, resolver=resolver) as transport,
    ):
        delivered = await http.post(
            "/v1/jobs",
            json={"kind": "ask", "input": {"prompt": "hi"}, "callback_url": f"http://{name}/hook"},
        )
        redirected = await http.post(
            "/v1/jobs",
            json={
                "kind": "ask",
                "input": {"prompt": "hi"},
                "callback_url": f"http://{name}/redirect",
            },
        )
        assert delivered.status_code == redirected.status_code == 202
        view = await wait_for_job(http, delivered.json()["id"])
        redirect_id = redirected.json()["id"]
        # Two redirects answered, the second one recorded.
        bounced = await wait_for(
            http,
            redirect_id,
            lambda v: len(receiver.redirected) >= 2 and v["callback"]["attempts"] >= 2,
        )
        await client.get_workflow_handle(redirect_id).terminate("test over")
    # Sent to the address the guard checked, under the name the client gave.
    assert view["callback"]["last_status"] == 200
    ((headers, body),) = receiver.deliveries
    assert headers["host"] == name
    assert verify_signature(SECRET, headers[SIGNATURE_HEADER.lower()], body)
    assert {r.url.host for r in transport.sent} == {"127.0.0.1"}
    # The redirect to the metadata address was answered, recorded and never followed.
    assert len(receiver.redirected) >= 2
    assert bounced["callback"]["last_status"] == 307 and not bounced["callback"]["acknowledged_at"]
    assert "not followed" in bounced["callback"]["last_error"]
    assert transport.refused == []
    assert all(r.url.path != "/latest/meta-data/iam/security-credentials/" for r in transport.sent)
