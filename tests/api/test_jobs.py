"""Async jobs: POST answers at once with an id, GET gives status and result, and a callback is
delivered signed, retried until acknowledged, and acknowledged once."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx2
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from temporalio.client import Client
from temporalio.worker import Worker

from api.server import running_api, serving
from infra.callback_signing import SIGNATURE_HEADER, verify_signature
from infra.database import session_factory
from infra.settings import KeelSettings
from infra.tables import Job
from llmsim import SimServer
from tests.api.tokens import http_client, issue_token
from tests.conftest import reconfigure

SECRET = "callback-secret-for-tests"


@dataclass
class Receiver:
    """A callback receiver that fails its first ``failures`` deliveries with 500."""

    url: str
    failures: int
    deliveries: list[tuple[dict[str, str], bytes]] = field(default_factory=list)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    state = Receiver(url="", failures=2)

    async def hook(request: Request) -> JSONResponse:
        state.deliveries.append((dict(request.headers), await request.body()))
        if len(state.deliveries) <= state.failures:
            return JSONResponse({"error": "try again"}, status_code=500)
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/hook", hook, methods=["POST"])])
    async with serving(uvicorn.Config(app, log_config=None, lifespan="off")) as url:
        state.url = f"{url}/hook"
        yield state


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
    interactive_worker: Worker,
    simulator: SimServer,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = reconfigure(monkeypatch, KEEL_CALLBACK_SIGNING_SECRET=SECRET)
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
) -> None:
    token = await issue_token()
    async with running_api(keel_settings, client) as url, http_client(url, token) as http:
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
