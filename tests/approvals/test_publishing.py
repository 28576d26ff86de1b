"""Publishing: the approved text in Postgres once, and the webhook told, without its secret
URL ever reaching history, logs or the audit trail."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from temporalio.client import Client

from contracts.approvals import ApprovalMode, ApproveDecision, ReviewPolicy
from infra.settings import KeelSettings
from llmsim import SimServer
from tests.approvals.records import pending_gate, seed_reviewers
from tests.approvals.reviews import published, self_check, start_review
from tests.conftest import KeelWorkers, reconfigure
from tests.helpers import KeelCli, audit_events, eventually
from tests.security.history_payloads import readable_history
from workflows.document_review import SELF_CHECK_MARKER

TOKEN = "s3cret-webhook-token"


class Receiver:
    """A webhook receiver on an ephemeral port that answers with ``status`` (once ``release``
    is set: a test can hold the workflow in its last step)."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.requests: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.release = threading.Event()
        self.release.set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), json.loads(body)))
                receiver.release.wait(60)
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/review?token={TOKEN}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver(request: pytest.FixtureRequest) -> Iterator[Receiver]:
    server = Receiver(getattr(request, "param", 204))
    yield server
    server.close()


@pytest.mark.parametrize("receiver", [204], indirect=True)
async def test_the_published_review_is_posted_to_the_webhook_once(
    client: Client,
    keel_settings: KeelSettings,
    keel_workers: KeelWorkers,
    simulator: SimServer,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The webhook URL is the worker's setting: its worker starts with it.
    await keel_workers.start(reconfigure(monkeypatch, KEEL_REVIEW_WEBHOOK_URL=receiver.url))
    simulator.add_canned_response(SELF_CHECK_MARKER, self_check(0.97))
    handle = await start_review(client, keel_settings, ReviewPolicy(), notify_webhook=True)
    result = await handle.result()

    row = await published(handle.id)
    assert row is not None and result.published_id == row.id
    ((headers, body),) = receiver.requests
    assert headers["Idempotency-Key"] == f"review.published/{handle.id}"
    assert body["event"] == "review.published" and body["published_id"] == row.id
    assert body["content"] == row.content and body["flagged"] is False
    delivered = next(
        e for e in await audit_events(handle.id) if e.event_type.startswith("review.webhook")
    )
    assert delivered.event_type == "review.webhook_delivered"
    assert delivered.payload == {"host": receiver.url.split("/")[2], "status": 204}

    history = await readable_history(client, handle.id)  # payloads decrypted
    trail = json.dumps([e.payload for e in await audit_events(handle.id)])
    assert TOKEN not in history and TOKEN not in trail


@pytest.mark.parametrize("receiver", [422], indirect=True)
async def test_a_refusing_webhook_is_recorded_and_does_not_unpublish(
    client: Client,
    keel_settings: KeelSettings,
    keel_workers: KeelWorkers,
    simulator: SimServer,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The webhook URL is the worker's setting: its worker starts with it.
    await keel_workers.start(reconfigure(monkeypatch, KEEL_REVIEW_WEBHOOK_URL=receiver.url))
    simulator.add_canned_response(SELF_CHECK_MARKER, self_check(0.97))
    handle = await start_review(client, keel_settings, ReviewPolicy(), notify_webhook=True)
    result = await handle.result()
    assert result.status == "published" and await published(handle.id) is not None
    assert len(receiver.requests) == 1  # a 422 is the receiver's final word: not retried
    failed = next(
        e for e in await audit_events(handle.id) if e.event_type.startswith("review.webhook")
    )
    assert failed.event_type == "review.webhook_failed"
    assert "answered HTTP 422" in failed.payload["error"] and TOKEN not in failed.payload["error"]


@pytest.mark.slow  # real `keel` processes
async def test_a_decision_after_the_gate_closed_is_refused_as_already_decided(
    client: Client,
    keel_settings: KeelSettings,
    keel_workers: KeelWorkers,
    simulator: SimServer,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await seed_reviewers(alice="editor", bob="editor")
    # The webhook URL is the worker's setting: its worker starts with it.
    await keel_workers.start(reconfigure(monkeypatch, KEEL_REVIEW_WEBHOOK_URL=receiver.url))
    receiver.release.clear()  # the workflow stays in its webhook step, after the gate
    handle = await start_review(
        client, keel_settings, ReviewPolicy(mode=ApprovalMode.ALWAYS), notify_webhook=True
    )
    await pending_gate(handle.id)
    await handle.execute_update("approve", ApproveDecision(reviewer="alice"))
    await eventually(lambda: _received(receiver), bool)

    keel = KeelCli(client, keel_settings)
    late = await keel("reject", handle.id, "--reviewer", "bob", "--reason", "wait")
    assert late.code == 6, late.text
    assert "gate 'publish' was already decided (approved by alice)" in late.err
    repeat = await keel("approve", handle.id, "--reviewer", "alice")
    assert repeat.code == 0 and "already counted" in repeat.out
    receiver.release.set()
    assert (await handle.result()).approved_by == ["alice"]
    refused = [e for e in await audit_events(handle.id) if e.event_type == "approval.refused"]
    assert [(e.actor, e.payload["refusal"]) for e in refused] == [("bob", "GateAlreadyDecided")]


async def _received(receiver: Receiver) -> int:
    return len(receiver.requests)
