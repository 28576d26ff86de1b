"""The reviewer console's pages and forms (``/console``), served by ``keel api``.

Server-rendered HTML (Jinja2, autoescaped) that works without JavaScript; ``static/console.js``
only adds live countdowns, polling that takes gates decided elsewhere off the page, and a live
diff in the editor. Forms are plain ``application/x-www-form-urlencoded`` POSTs, each carrying
the session's CSRF token (api/console/sessions.py).

Decisions go through services/approval_client.py's DecisionSender, as ``keel approve`` and
``POST /v1/approvals/…`` do: the same reviewer checks, refusals (recorded in the trail), audit
rows, and idempotent Update ids. The reviewer and the tenant are the session's token's, never
the form's.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import jinja2
import structlog
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from activities.approvals import decided_by_humans, reviewed_pair, reviewer_roles
from api.console.queries import (
    AGE_CHOICES,
    GateKind,
    QueueFilter,
    ToolCallView,
    draft_diff,
    gate_page,
    kind_of,
    payload_text,
    reviewer_queue,
    tenant_gate,
    tool_edit_text,
    trail_page,
)
from api.console.sessions import (
    SESSION_COOKIE,
    SIGN_IN_CSRF_COOKIE,
    Reviewer,
    SignInRefused,
    current_reviewer,
    new_csrf_token,
    record_refusal,
    same_token,
    sign_in,
    sign_out,
)
from api.state import KeelApi
from contracts.approvals import (
    ApproveDecision,
    Decision,
    EditDecision,
    GateStatus,
    RefusalType,
    RejectDecision,
)
from infra.database import session_factory
from services.approval_client import DecisionProblem, DecisionRefused, DecisionSender

log = structlog.get_logger("keel.console")

router = APIRouter(prefix="/console", include_in_schema=False)
STATIC_DIR = Path(__file__).parent / "static"
_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


def _duration(seconds: float) -> str:
    seconds = int(abs(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h {seconds % 3600 // 60}m"
    return f"{seconds // 86400}d {seconds % 86400 // 3600}h"


def _until(deadline: datetime, now: datetime) -> str:
    left = (deadline - now).total_seconds()
    return f"in {_duration(left)}" if left > 0 else f"overdue by {_duration(left)}"


def _since(moment: datetime, now: datetime) -> str:
    return _duration((now - moment).total_seconds())


_KIND_LABELS = {
    GateKind.REVIEW: "draft review",
    GateKind.BUDGET: "batch budget",
    GateKind.TENANT_BUDGET: "tenant budget",
    GateKind.TOOL: "tool call",
}
_STATUS_TEXT = {
    GateStatus.PENDING.value: "Pending",
    GateStatus.APPROVED.value: "Approved",
    GateStatus.EDITED.value: "Approved with edits",
    GateStatus.REJECTED.value: "Rejected",
    GateStatus.TIMED_OUT.value: "Timed out (default action)",
    GateStatus.CANCELLED.value: "Cancelled",
}
_templates.globals.update(
    until=_until,
    since=_since,
    kind_label=lambda kind: _KIND_LABELS[GateKind(kind)],
    status_text=lambda status: _STATUS_TEXT.get(status, status),
)
# A refusal's kind → the HTTP status of the page that explains it.
_REFUSAL_STATUS: dict[str, int] = {
    DecisionProblem.NO_SUCH_WORKFLOW: 404,
    RefusalType.NOT_AUTHORIZED.value: 403,
    RefusalType.NOT_WAITING.value: 409,
    DecisionProblem.FINISHED_BEFORE: 409,
    RefusalType.ALREADY_DECIDED.value: 409,
    RefusalType.INVALID.value: 400,
    DecisionProblem.UNCONFIRMED: 504,
    DecisionProblem.FAILED: 502,
}
_ACTIONS = ("approve", "reject", "edit")
MAX_FORM_FIELD = 200_000
# How often the page asks whether what it shows is still pending (static/console.js).
POLL_MILLISECONDS = 2000

# Pages never cached (they show who is signed in and what is pending); scripts and styles only
# from keel itself; no framing (clickjacking a decision button).
_SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


def _api(request: Request) -> KeelApi:
    api: KeelApi = request.app.state.keel
    return api


def _page(
    name: str,
    context: dict[str, Any],
    status: int = 200,
    reviewer: Reviewer | None = None,
) -> HTMLResponse:
    body = _templates.get_template(name).render(
        reviewer=reviewer, poll_ms=POLL_MILLISECONDS, now=datetime.now(UTC), **context
    )
    return HTMLResponse(body, status_code=status, headers=_SECURITY_HEADERS)


def _to(path: str, **query: str) -> RedirectResponse:
    target = f"/console{path}" + (f"?{urlencode(query)}" if query else "")
    return RedirectResponse(target, status_code=303, headers=_SECURITY_HEADERS)


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form's fields (the first value of each). Anything else is no form."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return {}
    parsed = parse_qs((await request.body()).decode("utf-8", "replace"), keep_blank_values=True)
    # Browsers send a textarea's line breaks as CRLF (HTML's form encoding); drafts use LF, and
    # an edit must differ from its draft only where the reviewer changed it.
    return {
        key: values[0][:MAX_FORM_FIELD].replace("\r\n", "\n")
        for key, values in parsed.items()
        if values
    }


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


async def _signed_in(request: Request) -> Reviewer | None:
    return await current_reviewer(request.cookies.get(SESSION_COOKIE))


async def _checked_post(
    request: Request,
) -> tuple[Reviewer | None, dict[str, str], Response | None]:
    """The reviewer and form of a state-changing POST, or the refusal to send: no session
    (sign in again), or a CSRF token that is not this session's (refused and recorded)."""
    reviewer = await _signed_in(request)
    form = await _form(request)
    if reviewer is None:
        # Logged, not audited: an audit row per anonymous request would let anyone write to
        # the trail. A forged form that rides on a real session is audited below.
        log.info("console.no_session", path=request.url.path)
        return (
            None,
            form,
            _page(
                "error.html",
                {
                    "title": "Signed out",
                    "message": "You are not signed in (or your session has ended): nothing "
                    "was changed. Sign in again.",
                },
                status=401,
            ),
        )
    if not same_token(reviewer.csrf_token, form.get("csrf_token")):
        await record_refusal(reviewer, request.url.path, "missing or wrong CSRF token")
        log.info("console.csrf_refused", reviewer=reviewer.reviewer, path=request.url.path)
        return (
            reviewer,
            form,
            _page(
                "error.html",
                {
                    "title": "Request refused",
                    "message": "This form did not come from your console session (its security "
                    "token is missing or wrong). Nothing was changed; the attempt is recorded. "
                    "Reload the page and try again.",
                },
                status=403,
                reviewer=reviewer,
            ),
        )
    return reviewer, form, None


# --- Sign-in and sign-out ------------------------------------------------------------------


@router.get("", response_class=HTMLResponse)
async def home(request: Request) -> Response:
    if await _signed_in(request) is None:
        return _to("/sign-in")
    return _to("/queue")


def _sign_in_form(
    request: Request, error: str | None = None, notice: str | None = None, status: int = 200
) -> Response:
    """The sign-in form with a fresh double-submit CSRF token (cookie and hidden field)."""
    csrf = new_csrf_token()
    response = _page(
        "sign_in.html", {"csrf": csrf, "error": error, "notice": notice}, status=status
    )
    response.set_cookie(
        SIGN_IN_CSRF_COOKIE, csrf, max_age=3600, httponly=True, samesite="strict",
        secure=_secure(request), path="/console",
    )  # fmt: skip
    return response


@router.get("/sign-in", response_class=HTMLResponse)
async def sign_in_page(request: Request, signed_out: str | None = None) -> Response:
    return _sign_in_form(request, notice="You are signed out." if signed_out else None)


@router.post("/sign-in", response_class=HTMLResponse)
async def sign_in_submit(request: Request) -> Response:
    form = await _form(request)
    if not same_token(request.cookies.get(SIGN_IN_CSRF_COOKIE), form.get("csrf_token")):
        log.info("console.sign_in_csrf_refused")  # anonymous: logged, not audited (above)
        return _sign_in_form(request, error="This sign-in form had expired: try again.", status=403)
    settings = _api(request).settings
    try:
        secret, reviewer = await sign_in(
            form.get("token", ""), timedelta(hours=settings.console_session_hours)
        )
    except SignInRefused as refused:
        return _sign_in_form(request, error=str(refused), status=401)
    log.info("console.signed_in", reviewer=reviewer.reviewer, token_id=reviewer.token_id)
    response = _to("/queue")
    response.set_cookie(
        SESSION_COOKIE,
        secret,
        expires=reviewer.expires_at,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
        path="/console",
    )
    response.delete_cookie(SIGN_IN_CSRF_COOKIE, path="/console")
    return response


@router.post("/sign-out", response_class=HTMLResponse)
async def sign_out_submit(request: Request) -> Response:
    reviewer, _, refused = await _checked_post(request)
    if refused is not None:
        return refused
    assert reviewer is not None
    await sign_out(reviewer)
    response = _to("/sign-in", signed_out="1")
    response.delete_cookie(SESSION_COOKIE, path="/console")
    return response


# --- The queue -----------------------------------------------------------------------------


def _queue_filter(role: str | None, kind: str | None, age: str | None) -> QueueFilter:
    return QueueFilter(
        role=role or None,
        kind=GateKind(kind) if kind in {k.value for k in GateKind} else None,
        older_than=AGE_CHOICES.get(age or ""),
    )


@router.get("/queue", response_class=HTMLResponse)
async def queue(
    request: Request, role: str | None = None, kind: str | None = None, age: str | None = None
) -> Response:
    reviewer = await _signed_in(request)
    if reviewer is None:
        return _to("/sign-in")
    wanted = _queue_filter(role, kind, age)
    async with session_factory()() as session:
        cards, roles = await reviewer_queue(
            session, reviewer.tenant, reviewer.reviewer, _api(request).settings.reviewers, wanted
        )
    return _page(
        "queue.html",
        {
            "cards": cards,
            "roles": roles,
            "kinds": list(GateKind),
            "ages": list(AGE_CHOICES),
            "wanted": {"role": role or "", "kind": kind or "", "age": age or ""},
            "live_query": urlencode(
                {k: v for k, v in {"role": role, "kind": kind, "age": age}.items() if v}
            ),
        },
        reviewer=reviewer,
    )


@router.get("/queue/live")
async def queue_live(
    request: Request, role: str | None = None, kind: str | None = None, age: str | None = None
) -> Response:
    """The keys of the gates the queue page would show now (polled by console.js)."""
    reviewer = await _signed_in(request)
    if reviewer is None:
        return JSONResponse({"signed_in": False}, status_code=401, headers=_SECURITY_HEADERS)
    async with session_factory()() as session:
        cards, _ = await reviewer_queue(
            session,
            reviewer.tenant,
            reviewer.reviewer,
            _api(request).settings.reviewers,
            _queue_filter(role, kind, age),
        )
    return JSONResponse(
        {"signed_in": True, "pending": [card.key for card in cards]}, headers=_SECURITY_HEADERS
    )


# --- One gate ------------------------------------------------------------------------------


async def _gate_response(
    request: Request,
    reviewer: Reviewer,
    workflow_id: str,
    gate: str,
    *,
    status: int = 200,
    error: str | None = None,
    notice: str | None = None,
    edited: str | None = None,
    form: dict[str, str] | None = None,
) -> Response:
    async with session_factory()() as session:
        page = await gate_page(session, _api(request).client, reviewer.tenant, workflow_id, gate)
        held = (await reviewer_roles(session, _api(request).settings.reviewers)).get(
            reviewer.reviewer, []
        )
    if page is None:
        return _not_found(reviewer, "No such gate in your tenant.")
    shown = page.gate
    # The forms are offered to whom the gate would listen now; the gate still judges (a role
    # granted or withdrawn meanwhile), and its refusal is shown as any other.
    holds_role = bool(set(held).intersection(page.roles_now))
    final_diff = None
    if shown.status == GateStatus.EDITED.value and shown.final is not None:
        final_diff = draft_diff(shown.draft or "", shown.final)
    preview = draft_diff(shown.draft or "", edited) if edited is not None else None
    if page.tool is not None:
        preview = None  # the arguments are edited as pretty JSON: a diff to one line says little
        if edited is None:
            edited = page.tool.arguments_text
    return _page(
        "gate.html",
        {
            "page": page,
            "error": error,
            "notice": notice,
            "edited": edited if edited is not None else (shown.draft or ""),
            "preview": preview,
            "final_diff": final_diff,
            "form": form or {},
            "may_decide": shown.status == GateStatus.PENDING.value
            and reviewer.reviewer not in shown.decided_by
            and holds_role,
            "holds_role": holds_role,
            "held_roles": held,
        },
        status=status,
        reviewer=reviewer,
    )


def _not_found(reviewer: Reviewer, message: str) -> HTMLResponse:
    return _page(
        "error.html", {"title": "Not found", "message": message}, status=404, reviewer=reviewer
    )


@router.get("/gate", response_class=HTMLResponse)
async def gate(
    request: Request, workflow: str = "", gate: str = "", recorded: str | None = None
) -> Response:
    reviewer = await _signed_in(request)
    if reviewer is None:
        return _to("/sign-in")
    notice = None
    if recorded in _ACTIONS:
        notice = f"Your decision ({recorded}) is recorded."
    return await _gate_response(request, reviewer, workflow, gate, notice=notice)


@router.get("/gate/live")
async def gate_live(request: Request, workflow: str = "", gate: str = "") -> Response:
    """Where a gate stands now: the page polls this to say who decided it elsewhere."""
    reviewer = await _signed_in(request)
    if reviewer is None:
        return JSONResponse({"signed_in": False}, status_code=401, headers=_SECURITY_HEADERS)
    async with session_factory()() as session:
        row = await tenant_gate(session, reviewer.tenant, workflow, gate)
    if row is None:
        return JSONResponse({"signed_in": True, "found": False}, 404, headers=_SECURITY_HEADERS)
    return JSONResponse(
        {
            "signed_in": True,
            "found": True,
            "status": row.status,
            "decided_by": list(row.decided_by),
            "approvals_required": row.approvals_required,
            "decided_at": row.decided_at.isoformat() if row.decided_at else None,
        },
        headers=_SECURITY_HEADERS,
    )


def _decision(action: str, reviewer: str, gate: str, form: dict[str, str]) -> Decision | str:
    """The decision a form asks for, or what is wrong with it."""
    comment = form.get("comment", "").strip() or None
    if action == "approve":
        return ApproveDecision(reviewer=reviewer, gate=gate, comment=comment)
    if action == "reject":
        reason = form.get("reason", "").strip()
        if not reason:
            return "A rejection needs a reason: say what must change."
        return RejectDecision(reviewer=reviewer, gate=gate, reason=reason)
    text = form.get("text", "")
    if not text.strip():
        return "The edited text is empty."
    return EditDecision(reviewer=reviewer, gate=gate, text=text, comment=comment)


@router.post("/gate/decide", response_class=HTMLResponse)
async def decide(request: Request) -> Response:
    reviewer, form, refused = await _checked_post(request)
    if refused is not None:
        return refused
    assert reviewer is not None
    workflow_id, gate_name = form.get("workflow", ""), form.get("gate", "")
    action = form.get("action", "")
    async with session_factory()() as session:
        row = await tenant_gate(session, reviewer.tenant, workflow_id, gate_name)
    if row is None:
        # Another tenant's gate is answered as one that does not exist, and the try recorded.
        await record_refusal(
            reviewer, request.url.path, f"no gate {gate_name!r} of "
            f"{workflow_id!r} in tenant {reviewer.tenant}",
        )  # fmt: skip
        return _not_found(reviewer, "No such gate in your tenant.")
    if action == "preview":
        if request.headers.get("x-console-fragment") == "diff":  # console.js's live diff
            return _page(
                "diff_fragment.html", {"preview": draft_diff(row.draft or "", form.get("text", ""))}
            )
        return await _gate_response(
            request, reviewer, workflow_id, gate_name, edited=form.get("text", ""), form=form
        )
    if action not in _ACTIONS:
        return await _gate_response(
            request, reviewer, workflow_id, gate_name, status=400,
            error=f"Unknown action {action[:40]!r}.", form=form,
        )  # fmt: skip
    if action == "edit" and kind_of(row) == GateKind.TENANT_BUDGET:
        return await _gate_response(
            request, reviewer, workflow_id, gate_name, status=400, form=form,
            error="A tenant budget gate has no amount to edit: raise the tenant's budget "
            "(keel budget set), then resume the batch; or stop it.",
        )  # fmt: skip
    if action == "edit" and kind_of(row) == GateKind.TOOL:
        # The editor holds the arguments as JSON; the gate's text is the call, as its draft.
        try:
            form["text"] = tool_edit_text(ToolCallView.of(row), form.get("text", ""))
        except ValueError as bad:
            return await _gate_response(
                request, reviewer, workflow_id, gate_name, status=400, error=str(bad),
                form=form, edited=form.get("text", ""),
            )  # fmt: skip
    decision = _decision(action, reviewer.reviewer, gate_name, form)
    if isinstance(decision, str):
        return await _gate_response(
            request, reviewer, workflow_id, gate_name, status=400, error=decision, form=form,
            edited=form.get("text") if action == "edit" else None,
        )  # fmt: skip
    api = _api(request)
    sender = DecisionSender(
        api.client, api.settings.reviewers, via="console", token_id=reviewer.token_id
    )
    try:
        sent = await sender.send(workflow_id, action, decision, tenant=reviewer.tenant)
    except DecisionRefused as refusal:
        message = refusal.message + (f" ({refusal.hint})" if refusal.hint else "")
        return await _gate_response(
            request, reviewer, workflow_id, gate_name,
            status=_REFUSAL_STATUS.get(refusal.kind, 502), error=message, form=form,
        )  # fmt: skip
    log.info(
        "console.decided",
        reviewer=reviewer.reviewer,
        workflow_id=workflow_id,
        action=action,
        counted=sent.receipt.counted if sent.receipt else False,
    )
    # The page reads the outcome from the gate's row; the URL carries no text to show, so it
    # cannot be used to put someone else's words on a console page.
    return _to("/gate", workflow=workflow_id, gate=gate_name, recorded=action)


# --- Trail and export ----------------------------------------------------------------------


@router.get("/trail", response_class=HTMLResponse)
async def trail(request: Request, workflow: str = "") -> Response:
    reviewer = await _signed_in(request)
    if reviewer is None:
        return _to("/sign-in")
    async with session_factory()() as session:
        page = await trail_page(session, reviewer.tenant, workflow)
    if page is None:
        return _not_found(reviewer, "No such run in your tenant.")
    return _page("trail.html", {"page": page, "payload_text": payload_text}, reviewer=reviewer)


@router.get("/export.jsonl")
async def export(request: Request, workflow: str | None = None) -> Response:
    """The (draft, final) pairs people decided in this tenant (or one run), as JSONL: the same
    lines as ``keel approvals export``."""
    reviewer = await _signed_in(request)
    if reviewer is None:
        return _to("/sign-in")
    async with session_factory()() as session:
        gates = await decided_by_humans(
            session, changed_only=False, tenant=reviewer.tenant, workflow_id=workflow or None
        )
    body = "".join(json.dumps(reviewed_pair(g), ensure_ascii=False) + "\n" for g in gates)
    name = f"keel-pairs-{reviewer.tenant}.jsonl"
    return Response(
        body,
        media_type="application/jsonl",
        headers={**_SECURITY_HEADERS, "Content-Disposition": f'attachment; filename="{name}"'},
    )
