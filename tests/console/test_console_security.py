"""The console's doors, over plain HTTP: a form without this session's CSRF token, a reviewer of
another tenant, a reviewer without the gate's role, and no session at all are each refused,
change nothing, and (for a POST) leave a row in the trail."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

import asyncpg

from contracts.approvals import GateRequest
from infra.settings import KeelSettings
from services.api_tokens import IssuedToken, TokenRole
from starters.console_demo import console_url, demo_reviewer_token
from starters.review_demo import REVIEWER
from tests.api.tokens import issue_token
from tests.approvals.records import gate_row, pending_gate, seed_reviewers
from tests.console.conftest import ConsoleRig, reviewer_token
from tests.helpers import audit_events

_CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass
class Session:
    cookie: str
    csrf: str


async def sign_in(console: ConsoleRig, token: IssuedToken) -> Session:
    async with console.http() as http:
        form = await http.get("/console/sign-in")
        match = _CSRF_FIELD.search(form.text)
        assert match is not None
        signed_in = await http.post(
            "/console/sign-in", data={"token": token.secret, "csrf_token": match.group(1)}
        )
        assert signed_in.status_code == 303, signed_in.text
        assert signed_in.headers["location"] == "/console/queue"
        cookie = signed_in.cookies["keel_console"]
        set_cookie = signed_in.headers["set-cookie"].lower()
        assert "httponly" in set_cookie and "samesite=strict" in set_cookie
        queue = await http.get("/console/queue")  # the client keeps the cookie, as a browser
        csrf = _CSRF_FIELD.search(queue.text)
        assert csrf is not None
        return Session(cookie, csrf.group(1))


def decide_form(workflow_id: str, gate: str, csrf: str | None) -> dict[str, str]:
    form = {"workflow": workflow_id, "gate": gate, "action": "approve", "comment": "forged"}
    if csrf is not None:
        form["csrf_token"] = csrf
    return form


async def open_gate(console: ConsoleRig, tenant: str = "acme") -> str:
    handle = await console.open_gates(
        GateRequest(
            gate="publish",
            draft="the draft",
            reason="policy: every draft is reviewed",
            role="editor",
            subject="review of notes.md",
            deadline=timedelta(hours=2),
        ),
        tenant=tenant,
    )
    await pending_gate(handle.id)
    return handle.id


async def refusals() -> list[tuple[str, str]]:
    return [
        (e.actor, e.payload["why"])
        for e in await audit_events("keel/console")
        if e.event_type == "console.request_refused"
    ]


async def test_a_post_without_this_sessions_csrf_token_is_refused_and_recorded(
    console: ConsoleRig,
) -> None:
    await seed_reviewers(alice="editor", bob="editor")
    workflow_id = await open_gate(console)
    alice = await sign_in(console, await reviewer_token("alice"))
    bob = await sign_in(console, await reviewer_token("bob"))
    assert alice.csrf != bob.csrf

    async with console.http(keel_console=alice.cookie) as http:
        missing = await http.post(
            "/console/gate/decide", data=decide_form(workflow_id, "publish", None)
        )
        borrowed = await http.post(
            "/console/gate/decide", data=decide_form(workflow_id, "publish", bob.csrf)
        )
        signed_out = await http.post("/console/sign-out", data={})
    for refused in (missing, borrowed, signed_out):
        assert refused.status_code == 403
        assert "Nothing was changed" in refused.text
    async with console.http() as http:
        anonymous = await http.post(
            "/console/gate/decide", data=decide_form(workflow_id, "publish", alice.csrf)
        )
    assert anonymous.status_code == 401

    row = await gate_row(workflow_id)
    assert row is not None and row.status == "pending" and row.decided_by == []
    assert not [e for e in await audit_events(workflow_id) if e.event_type == "approval.approved"]
    assert await refusals() == [
        ("alice", "missing or wrong CSRF token"),
        ("alice", "missing or wrong CSRF token"),
        ("alice", "missing or wrong CSRF token"),
    ]  # the anonymous POST is logged only: nobody writes to the trail without a session
    # Alice's session still works, with her own token.
    async with console.http(keel_console=alice.cookie) as http:
        decided = await http.post(
            "/console/gate/decide", data=decide_form(workflow_id, "publish", alice.csrf)
        )
    assert decided.status_code == 303
    row = await gate_row(workflow_id)
    assert row is not None and row.status == "approved" and row.decided_by == ["alice"]


async def test_a_sign_in_form_without_its_token_is_refused(console: ConsoleRig) -> None:
    await seed_reviewers(alice="editor")
    alice = await reviewer_token("alice")
    async with console.http() as http:
        forged = await http.post("/console/sign-in", data={"token": alice.secret})
    assert forged.status_code == 403 and "keel_console" not in forged.cookies
    client_token = await issue_token(tenant="acme", role=TokenRole.CLIENT)
    async with console.http() as http:
        form = await http.get("/console/sign-in")
        match = _CSRF_FIELD.search(form.text)
        assert match is not None
        refused = await http.post(
            "/console/sign-in", data={"token": client_token.secret, "csrf_token": match.group(1)}
        )
    assert refused.status_code == 401 and "needs a reviewer token" in refused.text
    assert client_token.secret not in refused.text


async def test_another_tenants_reviewer_sees_nothing_and_cannot_decide_by_url(
    console: ConsoleRig,
) -> None:
    await seed_reviewers(alice="editor", mallory="editor", carol="legal")
    workflow_id = await open_gate(console, tenant="acme")
    mallory = await sign_in(console, await reviewer_token("mallory", tenant="globex"))
    carol = await sign_in(console, await reviewer_token("carol", tenant="acme"))

    for session, who in ((mallory, "mallory"), (carol, "carol")):
        async with console.http(keel_console=session.cookie) as http:
            queue = await http.get("/console/queue")
            live = await http.get("/console/queue/live")
        assert queue.status_code == 200 and workflow_id not in queue.text, who
        assert "Nothing waiting for you" in queue.text
        assert live.json()["pending"] == []

    async with console.http(keel_console=mallory.cookie) as http:
        page = await http.get("/console/gate", params={"workflow": workflow_id, "gate": "publish"})
        trail = await http.get("/console/trail", params={"workflow": workflow_id})
        gate_live = await http.get(
            "/console/gate/live", params={"workflow": workflow_id, "gate": "publish"}
        )
        export = await http.get("/console/export.jsonl")
        forged = await http.post(
            "/console/gate/decide", data=decide_form(workflow_id, "publish", mallory.csrf)
        )
    assert page.status_code == 404 and "the draft" not in page.text
    assert trail.status_code == 404 and gate_live.status_code == 404
    assert export.status_code == 200 and export.text == ""
    assert forged.status_code == 404
    # Carol is of the tenant but holds no role of the gate's: her page offers no decision, and
    # a forged form is refused by the gate's own check.
    async with console.http(keel_console=carol.cookie) as http:
        carols_page = await http.get(
            "/console/gate", params={"workflow": workflow_id, "gate": "publish"}
        )
        assert carols_page.status_code == 200 and 'id="decide"' not in carols_page.text
        assert "This gate needs role editor; you hold legal" in carols_page.text
        refused = await http.post(
            "/console/gate/decide", data=decide_form(workflow_id, "publish", carol.csrf)
        )
    assert refused.status_code == 403 and "not authorized" in refused.text

    row = await gate_row(workflow_id)
    assert row is not None and row.status == "pending" and row.decided_by == []
    (mallory_try,) = await refusals()
    assert mallory_try[0] == "mallory" and "tenant globex" in mallory_try[1]
    (carol_try,) = [
        e for e in await audit_events(workflow_id) if e.event_type == "approval.refused"
    ]
    assert carol_try.actor == "carol" and carol_try.payload["via"] == "console"


async def test_pages_without_a_session_send_to_sign_in_and_are_never_cached(
    console: ConsoleRig,
) -> None:
    async with console.http() as http:
        for path in ("/console", "/console/queue", "/console/gate", "/console/trail"):
            response = await http.get(path)
            assert response.status_code == 303, path
            assert response.headers["location"] == "/console/sign-in"
        sign_in_page = await http.get("/console/sign-in")
        live = await http.get("/console/queue/live")
    assert live.status_code == 401
    headers = sign_in_page.headers
    assert headers["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert "script-src 'self'" in headers["content-security-policy"]


async def test_the_trail_page_says_whether_the_hash_chain_verifies(
    console: ConsoleRig, database_url: str
) -> None:
    await seed_reviewers(alice="editor")
    workflow_id = await open_gate(console)
    alice = await sign_in(console, await reviewer_token("alice"))
    async with console.http(keel_console=alice.cookie) as http:
        intact = await http.get("/console/trail", params={"workflow": workflow_id})
    assert intact.status_code == 200
    assert "Hash chain verified" in intact.text and "approval.requested" in intact.text

    # Someone with database access rewrites who asked: the page says the chain is broken.
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(
            "UPDATE audit_events SET actor = 'mallory' WHERE workflow_id = $1 AND seq = 1",
            workflow_id,
        )
    finally:
        await connection.close()
    async with console.http(keel_console=alice.cookie) as http:
        tampered = await http.get("/console/trail", params={"workflow": workflow_id})
    assert "Hash chain does NOT verify: seq 1 changed" in tampered.text


async def test_the_demo_reviewer_token_signs_in_to_the_console(
    console: ConsoleRig, keel_settings: KeelSettings
) -> None:
    await seed_reviewers(**{REVIEWER: "editor"})
    token = await demo_reviewer_token(keel_settings)
    assert console_url(keel_settings) == f"http://127.0.0.1:{keel_settings.api_port}/console"
    session = await sign_in(console, token)
    async with console.http(keel_console=session.cookie) as http:
        queue = await http.get("/console/queue")
    assert f"Signed in as <strong>{REVIEWER}</strong>" in queue.text


async def test_the_session_cookie_is_secure_when_served_over_tls(console: ConsoleRig) -> None:
    """Behind a TLS-terminating proxy on this host (uvicorn trusts its X-Forwarded-Proto)."""
    await seed_reviewers(alice="editor")
    alice = await reviewer_token("alice")
    tls = {"X-Forwarded-Proto": "https"}
    async with console.http() as http:
        form = await http.get("/console/sign-in", headers=tls)
        match = _CSRF_FIELD.search(form.text)
        assert match is not None and "secure" in form.headers["set-cookie"].lower()
        csrf_cookie = form.cookies["keel_console_sign_in"]
        signed_in = await http.post(
            "/console/sign-in",
            data={"token": alice.secret, "csrf_token": match.group(1)},
            headers={**tls, "Cookie": f"keel_console_sign_in={csrf_cookie}"},
        )
    assert signed_in.status_code == 303
    session_cookie = next(
        value
        for name, value in signed_in.headers.multi_items()
        if name == "set-cookie" and value.startswith("keel_console=")
    )
    assert "; secure" in session_cookie.lower() and "httponly" in session_cookie.lower()
    async with console.http() as http:
        plain = await http.get("/console/sign-in")
    assert "secure" not in plain.headers["set-cookie"].lower()
