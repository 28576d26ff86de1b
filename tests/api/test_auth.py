"""API authentication: every /v1 route needs a keel token; the token's role says what it may do,
its tenant is the request's tenant, and the secret is stored hashed and never shows up in a log
line, an error or the audit trail."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import secrets
from datetime import timedelta

import httpx2
import pytest
import structlog
from sqlalchemy import select, text, update
from temporalio.client import Client
from temporalio.worker import Worker

from api.app import create_app
from infra.database import session_factory
from infra.settings import KeelSettings
from infra.structured_logging import configure_logging
from infra.tables import ApiToken, AuditEvent, ChatSession
from llmsim import SimServer
from services.api_tokens import TOKEN_PATTERN, IssuedToken, TokenRole
from tests.api.tokens import bearer, http_client, issue_token, openai_client
from tests.helpers import KeelCli

MODEL = "gpt-4o-mini"
OPEN_PATHS = ("/healthz", "/openapi.json", "/docs")


def chat(question: str) -> dict[str, object]:
    return {"model": MODEL, "messages": [{"role": "user", "content": question}]}


def well_formed_stranger() -> str:
    """A token with keel's exact shape that keel never issued."""
    return f"keel_tok_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"


def v1_routes() -> list[tuple[str, str]]:
    """Every (method, path) the app documents under /v1, path parameters filled in."""
    paths = create_app().openapi()["paths"]
    return [
        (method.upper(), re.sub(r"\{[^}]+\}", "x", path))
        for path, operations in paths.items()
        if path.startswith("/v1")
        for method in operations
    ]


def assert_auth_error(response: httpx2.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, (response.status_code, response.text)
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    expected = "authentication_error" if status == 401 else "permission_error"
    assert error["type"] == expected, error
    return error


async def test_every_v1_route_refuses_requests_without_a_valid_token(
    keel_url: str, api_token: IssuedToken
) -> None:
    routes = v1_routes()
    assert len(routes) >= 9  # chat, sessions (2), jobs (2), approvals (4): the list is real
    revoked = await issue_token()
    async with session_factory().begin() as session:
        await session.execute(
            update(ApiToken).where(ApiToken.id == revoked.id).values(revoked_at=text("now()"))
        )
    refusals = {
        "none": {},
        "garbage": {"Authorization": "Bearer not-a-token"},
        "basic": {"Authorization": "Basic dXNlcjpwYXNz"},
        "bare scheme": {"Authorization": "Bearer"},
        "stranger": bearer(well_formed_stranger()),
        "tampered": bearer(api_token.secret[:-4] + "AAAA"),
        "revoked": bearer(revoked),
    }
    async with httpx2.AsyncClient(base_url=keel_url, timeout=30) as http:
        for method, path in routes:
            for name, headers in refusals.items():
                # A body that would be valid, so only the token can be what is refused.
                response = await http.request(method, path, headers=headers, json=chat("hi"))
                error = assert_auth_error(response, 401)
                assert response.headers["www-authenticate"].startswith("Bearer"), (name, path)
                assert "keel token create" in str(error["message"]) or name == "revoked"
        for path in OPEN_PATHS:
            assert (await http.get(path)).status_code == 200, path
        # The same requests with the token get past authentication (404: no such session).
        found = await http.get("/v1/sessions/nobody", headers=bearer(api_token))
        assert found.status_code == 404 and found.json()["error"]["code"] == "session_not_found"


@pytest.mark.slow  # a real `keel` process
async def test_revoked_and_expired_tokens_stop_working(
    client: Client, keel_settings: KeelSettings, keel_url: str, simulator: SimServer
) -> None:
    token = await issue_token(expires_in=timedelta(days=1))
    sdk = openai_client(keel_url, token)
    answer = await sdk.chat.completions.create(**chat("Name a river."))  # type: ignore[call-overload]
    assert answer.choices[0].message.content
    async with session_factory().begin() as session:
        row = await session.get(ApiToken, token.id)
        assert row is not None and row.last_used_at is not None  # marked used

    async with http_client(keel_url, token) as http:
        async with session_factory().begin() as session:
            await session.execute(
                update(ApiToken)
                .where(ApiToken.id == token.id)
                .values(expires_at=text("now() - interval '1 second'"))
            )
        expired = assert_auth_error(await http.get("/v1/sessions/any"), 401)
        assert f"API token {token.id} expired" in str(expired["message"])

    other = await issue_token()
    keel = KeelCli(client, keel_settings)
    revoked = await keel("token", "revoke", other.id, "--by", "ops")
    assert revoked.code == 0, revoked.text
    async with http_client(keel_url, other) as http:
        refused = assert_auth_error(await http.get("/v1/sessions/any"), 401)
    assert f"API token {other.id} was revoked" in str(refused["message"])


async def test_roles_decide_which_routes_a_token_may_use(
    keel_url: str, api_token: IssuedToken, simulator: SimServer
) -> None:
    from tests.approvals.records import seed_reviewers

    await seed_reviewers(rita="editor")
    reviewer = await issue_token(role=TokenRole.REVIEWER, reviewer="rita")
    admin = await issue_token(role=TokenRole.ADMIN)
    async with (
        http_client(keel_url, api_token) as as_client,
        http_client(keel_url, reviewer) as as_reviewer,
        http_client(keel_url, admin) as as_admin,
    ):
        for response in (
            await as_client.get("/v1/approvals"),
            await as_client.post("/v1/approvals/wf-1/approve", json={}),
        ):
            error = assert_auth_error(response, 403)
            assert error["code"] == "insufficient_role"
            assert "needs a reviewer (or admin) token" in str(error["message"])
        for response in (
            await as_reviewer.post("/v1/chat/completions", json=chat("hi")),
            await as_reviewer.get("/v1/sessions/any"),
            await as_reviewer.post("/v1/jobs", json={"kind": "ask", "input": {"prompt": "x"}}),
        ):
            assert assert_auth_error(response, 403)["code"] == "insufficient_role"
        assert (await as_reviewer.get("/v1/approvals")).json() == {"object": "list", "data": []}
        # Admin: everything in its tenant; a decision still needs a reviewer identity.
        assert (await as_admin.get("/v1/approvals")).status_code == 200
        assert (await as_admin.post("/v1/chat/completions", json=chat("hi"))).status_code == 200
        nameless = assert_auth_error(
            await as_admin.post("/v1/approvals/wf-1/approve", json={}), 403
        )
        assert nameless["code"] == "no_reviewer_identity"


async def test_the_tokens_tenant_is_the_requests_tenant(
    keel_url: str, simulator: SimServer
) -> None:
    acme = await issue_token(tenant="acme")
    globex = await issue_token(tenant="globex")
    session_id = f"s-acme-{secrets.token_hex(4)}"
    async with http_client(keel_url, acme) as as_acme, http_client(keel_url, globex) as as_globex:
        turn = await as_acme.post(
            "/v1/chat/completions",
            json=chat("Remember: the code word is PELICAN."),
            headers={"X-Keel-Session-Id": session_id},
        )
        assert turn.status_code == 200, turn.text
        async with session_factory()() as db:
            stored = await db.get(ChatSession, session_id)
        assert stored is not None and stored.tenant == "acme"  # the token's, nobody chose it
        assert (await as_acme.get(f"/v1/sessions/{session_id}")).status_code == 200

        # Another tenant's session reads exactly like one that does not exist.
        foreign = await as_globex.get(f"/v1/sessions/{session_id}")
        absent = await as_globex.get("/v1/sessions/s-never-was")
        assert foreign.status_code == absent.status_code == 404
        assert foreign.json()["error"]["message"].replace(session_id, "ID") == absent.json()[
            "error"
        ]["message"].replace("s-never-was", "ID")
        hijack = await as_globex.post(
            "/v1/chat/completions",
            json=chat("What was it?"),
            headers={"X-Keel-Session-Id": session_id},
        )
        assert hijack.status_code == 404 and "PELICAN" not in hijack.text
        events = await as_globex.get(f"/v1/sessions/{session_id}/turns/t/events")
        assert events.status_code == 404

        # A request cannot pick another tenant, by header or in a job's input.
        chosen = await as_globex.get(
            f"/v1/sessions/{session_id}", headers={"X-Keel-Tenant": "acme"}
        )
        assert assert_auth_error(chosen, 403)["code"] == "tenant_mismatch"
        smuggled = await as_globex.post(
            "/v1/jobs", json={"kind": "ask", "input": {"prompt": "x", "tenant": "acme"}}
        )
        assert assert_auth_error(smuggled, 403)["code"] == "tenant_mismatch"
        same = await as_acme.get(f"/v1/sessions/{session_id}", headers={"X-Keel-Tenant": "acme"})
        assert same.status_code == 200

        # Jobs: another tenant's job is not there, even while it runs.
        job = await as_acme.post("/v1/jobs", json={"kind": "ask", "input": {"prompt": "Hi."}})
        assert job.status_code == 202
        job_id = job.json()["id"]
        assert (await as_globex.get(f"/v1/jobs/{job_id}")).status_code == 404
        assert (await as_acme.get(f"/v1/jobs/{job_id}")).status_code == 200


async def test_tokens_are_stored_as_hashes_only(database_url: str) -> None:
    token = await issue_token(tenant="acme", role=TokenRole.ADMIN)
    assert TOKEN_PATTERN.fullmatch(token.secret) and token.secret.startswith(f"keel_{token.id}_")
    random_part = token.secret.removeprefix(f"keel_{token.id}_")
    assert len(random_part) >= 43
    async with session_factory()() as db:
        row = await db.get(ApiToken, token.id)
        tables = (
            await db.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))
        ).scalars()
        everything = ""
        for table in list(tables):
            dump = await db.execute(
                text(f"SELECT coalesce(string_agg(t::text, ' '), '') FROM \"{table}\" t")
            )
            everything += dump.scalar_one()
    assert row is not None and row.token_sha256 == hashlib.sha256(token.secret.encode()).hexdigest()
    assert token.id in everything  # the dump is real: the row (and its audit event) are in it
    assert token.secret not in everything and random_part not in everything


@pytest.mark.slow  # real `keel` processes
async def test_token_secrets_never_reach_logs_errors_or_the_audit_trail(
    client: Client,
    keel_settings: KeelSettings,
    interactive_worker: Worker,
    keel_url: str,
    simulator: SimServer,
    capfd: pytest.CaptureFixture[str],
) -> None:
    configure_logging(KeelSettings(log_format="json", log_level="debug"), force=True)
    try:
        good = await issue_token(tenant="acme")
        stranger = well_formed_stranger()
        revoked = await issue_token(tenant="acme")
        keel = KeelCli(client, keel_settings)
        assert (await keel("token", "revoke", revoked.id)).code == 0
        capfd.readouterr()  # only what follows counts
        bodies = []
        async with httpx2.AsyncClient(base_url=keel_url, timeout=30) as http:
            for secret in (stranger, revoked.secret, good.secret):
                response = await http.post(
                    "/v1/chat/completions", json=chat("hello"), headers=bearer(secret)
                )
                bodies.append(response.text)
            assert [json.loads(b).get("object") for b in bodies[2:]] == ["chat.completion"]
            # The API's own log lines, and lines that carry a token by mistake.
            structlog.get_logger("test").warning(
                "request", headers={"Authorization": f"Bearer {good.secret}"}, note=good.secret
            )
            logging.getLogger("uvicorn.error").warning("client sent %s", good.secret)
        captured = capfd.readouterr()
        logs = captured.out + captured.err
    finally:
        configure_logging(force=True)
    assert "api.auth_refused" in logs and revoked.id in logs  # the capture saw the refusals
    assert f"keel_{good.id}_***" in logs  # …and the masked lines
    async with session_factory()() as db:
        trail = " ".join(
            f"{row.event_type} {row.actor} {json.dumps(row.payload)}"
            for row in (await db.execute(select(AuditEvent))).scalars()
        )
    assert "token.revoked" in trail and revoked.id in trail  # the trail was read
    for secret in (stranger, revoked.secret, good.secret):
        hidden = secret.split("_", 3)[3]
        for where, text_ in (("logs", logs), ("trail", trail), *(("body", b) for b in bodies)):
            assert hidden not in text_, where


@pytest.mark.slow  # real `keel` processes
async def test_keel_token_commands_create_list_and_revoke(
    client: Client, keel_settings: KeelSettings, database_url: str
) -> None:
    from tests.approvals.records import seed_reviewers
    from tests.helpers import audit_events

    await seed_reviewers(alice="editor")
    keel = KeelCli(client, keel_settings)
    created, for_alice, for_nobody, nameless, bad_expiry = await asyncio.gather(
        keel("token", "create", "--tenant", "acme", "--role", "client", "--expires", "30d",
             "--description", "billing service", "--by", "ops"),
        keel("token", "create", "--tenant", "acme", "--role", "reviewer", "--reviewer", "alice"),
        keel("token", "create", "--tenant", "acme", "--role", "reviewer", "--reviewer", "zed"),
        keel("token", "create", "--tenant", "acme", "--role", "reviewer"),
        keel("token", "create", "--tenant", "acme", "--role", "client", "--expires", "soon"),
    )  # fmt: skip
    assert created.code == 0, created.text
    secret = created.out.strip()  # stdout is the token alone: TOKEN=$(keel token create …)
    match = TOKEN_PATTERN.fullmatch(secret)
    assert match is not None
    token_id = match.group(1)
    assert f"created {token_id}: tenant acme, role client" in created.err
    assert "shown once" in created.err and "keel token revoke " + token_id in created.err
    assert for_alice.code == 0 and "deciding as reviewer alice" in for_alice.err
    assert for_nobody.code == 1 and "'zed' is not a reviewer" in for_nobody.err
    assert "keel reviewers add zed --role ROLE" in for_nobody.err and not for_nobody.out
    assert nameless.code == 1 and "add --reviewer NAME" in nameless.err
    assert bad_expiry.code == 1 and "--expires 'soon'" in bad_expiry.err

    listed = await keel("token", "list", "--tenant", "acme")
    assert listed.code == 0, listed.text
    assert token_id in listed.out and "billing service" in listed.out and "active" in listed.out
    assert secret not in listed.text and match.group(2) not in listed.text
    async with session_factory()() as db:
        row = await db.get(ApiToken, token_id)
    assert row is not None and row.token_sha256[:12] not in listed.text  # no hash either

    revoked, unknown = await asyncio.gather(
        keel("token", "revoke", token_id, "--by", "ops"), keel("token", "revoke", "tok_nope")
    )
    assert revoked.code == 0 and f"{token_id} (tenant acme, role client) is revoked" in revoked.out
    again = await keel("token", "revoke", token_id)
    assert again.code == 0 and f"{token_id} was already revoked" in again.out
    assert unknown.code == 1 and "no API token 'tok_nope'" in unknown.err
    after = await keel("token", "list")
    assert "revoked" in after.out

    trail = [
        (e.event_type, e.actor, e.tenant, e.payload) for e in await audit_events("keel/tokens")
    ]
    created_events = [t for t in trail if t[0] == "token.created" and t[3]["token_id"] == token_id]
    assert created_events == [
        (
            "token.created",
            "ops",
            "acme",
            {
                "token_id": token_id,
                "role": "client",
                "reviewer": None,
                "description": "billing service",
                "expires_at": created_events[0][3]["expires_at"],
            },
        )
    ]
    assert [t[:3] for t in trail if t[0] == "token.revoked"] == [("token.revoked", "ops", "acme")]
    assert secret not in json.dumps([t[3] for t in trail])
