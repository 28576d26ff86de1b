"""What the console shows, read from Postgres (and, for a review's source, the run's start input
in Temporal). Every read is scoped to one tenant: a gate or run of another tenant is answered
as one that does not exist.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import func, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.client import Client
from temporalio.service import RPCError

from activities.approvals import pending_gates, reviewer_roles
from infra.audit_chain import ChainReport, verify_trail
from infra.tables import Approval, AuditEvent, LlmCall
from workflows.document_review import ReviewInput
from workflows.tool_loop import edited_arguments, tool_gate_draft

MAX_SOURCE_CHARS = 20_000


class GateKind(StrEnum):
    """What a gate asks."""

    REVIEW = "review"  # a draft to publish (DocumentReview)
    BUDGET = "budget"  # a batch over its budget: raise it, or stop
    # A batch its tenant's budget (keel budget set) holds: raise that, then resume; or stop.
    TENANT_BUDGET = "tenant-budget"
    TOOL = "tool"  # a sensitive tool's call in a durable tool loop (workflows/tool_loop.py)


TOOL_SUBJECT = "tool call "


def kind_of(gate: Approval) -> GateKind:
    # Batch budget gates are named budget-N and tenant budget gates tenant-budget-N by
    # workflows/batch.py and workflows/provider_batch.py, tool calls' gates tool-S-P with subject
    # "tool call NAME" by workflows/tool_loop.py; there is no kind column.
    if gate.gate.startswith("tenant-budget-"):
        return GateKind.TENANT_BUDGET
    if gate.gate.startswith("budget-"):
        return GateKind.BUDGET
    if gate.gate.startswith("tool-") and (gate.subject or "").startswith(TOOL_SUBJECT):
        return GateKind.TOOL
    return GateKind.REVIEW


@dataclass(frozen=True)
class ToolCallView:
    """A tool call waiting at its gate: the tool and its arguments as the model wrote them."""

    name: str
    arguments: dict[str, Any] | None  # None: the draft's arguments are not a JSON object
    arguments_text: str  # pretty JSON, or the draft's text as it is

    @classmethod
    def of(cls, gate: Approval) -> ToolCallView:
        name = (gate.subject or "").removeprefix(TOOL_SUBJECT)
        draft = gate.draft or ""
        arguments = edited_arguments(name, draft)
        if arguments is None:
            return cls(name, None, draft)
        return cls(name, arguments, json.dumps(arguments, indent=2, ensure_ascii=False))


def tool_edit_text(asked: ToolCallView, text: str) -> str:
    """A reviewer's edited arguments as the gate's edit text (``name({...})``, the draft's
    form); ValueError saying what is wrong with them."""
    try:
        arguments = json.loads(text)
    except ValueError as bad:
        raise ValueError(f"The edited arguments are not valid JSON: {bad}.") from None
    if not isinstance(arguments, dict):
        raise ValueError(
            f"The edited arguments must be a JSON object ({{...}}), not a "
            f"{type(arguments).__name__}."
        )
    if arguments == asked.arguments:
        raise ValueError("These are the arguments the model asked for: approve them instead.")
    return tool_gate_draft(asked.name, json.dumps(arguments, ensure_ascii=False))


@dataclass(frozen=True)
class GateCard:
    """One pending gate as the queue shows it."""

    row: Approval
    kind: GateKind
    roles_now: list[str]
    roles_ever: list[str]

    @property
    def key(self) -> str:
        return f"{self.row.workflow_id}/{self.row.gate}"


@dataclass(frozen=True)
class QueueFilter:
    role: str | None = None
    kind: GateKind | None = None
    older_than: timedelta | None = None


AGE_CHOICES: dict[str, timedelta] = {
    "1h": timedelta(hours=1),
    "4h": timedelta(hours=4),
    "24h": timedelta(hours=24),
}


RequestedRoles = dict[tuple[str, str | None, str], tuple[str, list[str]]]


async def _requested_roles(session: AsyncSession, gates: Sequence[Approval]) -> RequestedRoles:
    """Each gate's first role and escalation roles, from its ``approval.requested`` row (one
    query for the whole queue)."""
    if not gates:
        return {}
    rows = await session.execute(
        select(AuditEvent.workflow_id, AuditEvent.run_id, AuditEvent.payload).where(
            AuditEvent.event_type == "approval.requested",
            tuple_(AuditEvent.workflow_id, AuditEvent.run_id).in_(
                [(g.workflow_id, g.run_id) for g in gates]
            ),
        )
    )
    return _roles_requested((r.workflow_id, r.run_id, r.payload) for r in rows)


def _roles_requested(rows: Iterable[tuple[str, str | None, dict[str, Any]]]) -> RequestedRoles:
    """(workflow id, run id, payload) of ``approval.requested`` rows → each gate's roles."""
    found: RequestedRoles = {}
    for workflow_id, run_id, payload in rows:
        later = [str(step["role"]) for step in payload.get("escalation") or [] if "role" in step]
        found[(workflow_id, run_id, str(payload.get("gate")))] = (str(payload.get("role")), later)
    return found


async def reviewer_queue(
    session: AsyncSession,
    tenant: str,
    reviewer: str,
    configured_reviewers: dict[str, list[str]],
    wanted: QueueFilter | None = None,
) -> tuple[list[GateCard], list[str]]:
    """The pending gates of ``tenant`` that ``reviewer`` may decide now (one of the gate's
    current roles, and not already approved by them), soonest deadline first; and the roles
    the reviewer holds (the role filter's choices)."""
    wanted = wanted or QueueFilter()
    held = set((await reviewer_roles(session, configured_reviewers)).get(reviewer, []))
    gates = await pending_gates(session, tenant)
    roles = await _requested_roles(session, gates)
    now = datetime.now(UTC)
    cards = []
    for gate in gates:
        first, later = roles.get(
            (gate.workflow_id, gate.run_id, gate.gate), (gate.required_role, [])
        )
        roles_now = list(dict.fromkeys([first, *later[: gate.escalation_level]]))
        card = GateCard(gate, kind_of(gate), roles_now, list(dict.fromkeys([first, *later])))
        if not held.intersection(roles_now) or reviewer in gate.decided_by:
            continue
        if wanted.role is not None and wanted.role not in roles_now:
            continue
        if wanted.kind is not None and card.kind != wanted.kind:
            continue
        if wanted.older_than is not None and now - gate.requested_at < wanted.older_than:
            continue
        cards.append(card)
    far = datetime.max.replace(tzinfo=UTC)
    cards.sort(key=lambda c: (c.row.deadline_at or far, c.row.requested_at))
    return cards, sorted(held)


# --- One gate ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SelfCheckView:
    confidence: float | None
    policy_flags: list[str]
    issues: str


@dataclass
class GatePage:
    gate: Approval
    kind: GateKind
    roles_now: list[str]
    run_gates: list[Approval]
    decisions: list[AuditEvent]
    self_check: SelfCheckView | None
    cost_usd: Decimal | None
    cost_unknown_calls: int
    source_name: str | None = None
    source: str | None = None
    source_note: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    tool: ToolCallView | None = None


async def tenant_gate(
    session: AsyncSession, tenant: str, workflow_id: str, gate: str
) -> Approval | None:
    row = (
        await session.execute(
            select(Approval).where(
                Approval.workflow_id == workflow_id,
                Approval.gate == gate,
                Approval.tenant == tenant,
            )
        )
    ).scalar_one_or_none()
    return row


async def gate_page(
    session: AsyncSession, client: Client, tenant: str, workflow_id: str, gate_name: str
) -> GatePage | None:
    gate = await tenant_gate(session, tenant, workflow_id, gate_name)
    if gate is None:
        return None
    run_gates = list(
        (
            await session.execute(
                select(Approval)
                .where(Approval.workflow_id == workflow_id, Approval.run_id == gate.run_id)
                .order_by(Approval.id)
            )
        ).scalars()
    )
    events = list(
        (
            await session.execute(
                select(AuditEvent)
                .where(AuditEvent.workflow_id == workflow_id, AuditEvent.run_id == gate.run_id)
                .order_by(AuditEvent.seq)
            )
        ).scalars()
    )
    checks = [e for e in events if e.event_type == "review.checked"]
    self_check = None
    if checks:
        payload = checks[-1].payload
        self_check = SelfCheckView(
            confidence=payload.get("confidence"),
            policy_flags=list(payload.get("policy_flags") or []),
            issues=str(payload.get("issues") or ""),
        )
    decisions = [
        e
        for e in events
        if e.event_type.startswith(("approval.", "batch.budget", "batch.tenant_budget"))
    ]
    cost, unknown = (
        await session.execute(
            select(
                func.sum(LlmCall.cost_usd),
                func.count().filter(LlmCall.cost_usd.is_(None)),
            ).where(LlmCall.workflow_id == workflow_id)
        )
    ).one()
    # The run's trail, read above, holds the gate's approval.requested row: no second query.
    requested = _roles_requested(
        (e.workflow_id, e.run_id, e.payload) for e in events if e.event_type == "approval.requested"
    )
    first, later = requested.get(
        (gate.workflow_id, gate.run_id, gate.gate), (gate.required_role, [])
    )
    page = GatePage(
        gate=gate,
        kind=kind_of(gate),
        roles_now=list(dict.fromkeys([first, *later[: gate.escalation_level]])),
        run_gates=run_gates,
        decisions=decisions,
        self_check=self_check,
        cost_usd=cost,
        cost_unknown_calls=int(unknown or 0),
    )
    if page.kind == GateKind.REVIEW:
        await _attach_source(client, page)
    elif page.kind == GateKind.TOOL:
        page.tool = ToolCallView.of(gate)
    return page


async def _attach_source(client: Client, page: GatePage) -> None:
    """A review's source document is its start input (kept in Temporal, encrypted by keel's
    codec, which this client holds), not a Postgres row."""
    handle = client.get_workflow_handle(page.gate.workflow_id, run_id=page.gate.run_id)
    try:
        async for event in handle.fetch_history_events(page_size=1):
            started = event.workflow_execution_started_event_attributes
            if started.workflow_type.name != "DocumentReviewWorkflow":
                page.source_note = "this run is not a document review: it has no source document"
                return
            (params,) = await client.data_converter.decode(started.input.payloads, [ReviewInput])
            assert isinstance(params, ReviewInput)
            page.source_name = params.source_name
            page.source = params.document[:MAX_SOURCE_CHARS]
            if len(params.document) > MAX_SOURCE_CHARS:
                page.source_note = (
                    f"the first {MAX_SOURCE_CHARS:,} of {len(params.document):,} characters"
                )
            return
    except RPCError:
        page.source_note = "the run's history is no longer kept by Temporal"


def draft_diff(draft: str, edited: str) -> list[tuple[str, str]]:
    """A line diff of an edit against the draft: (kind, text) with kind ``same``, ``added`` or
    ``removed``, for the editor's preview and a decided edit's page."""
    result: list[tuple[str, str]] = []
    for line in difflib.ndiff(draft.splitlines(), edited.splitlines()):
        marker, text = line[:2], line[2:]
        if marker == "  ":
            result.append(("same", text))
        elif marker == "+ ":
            result.append(("added", text))
        elif marker == "- ":
            result.append(("removed", text))
    return result


# --- A run's trail -------------------------------------------------------------------------


@dataclass
class TrailPage:
    workflow_id: str
    events: list[AuditEvent]
    report: ChainReport


async def trail_page(session: AsyncSession, tenant: str, workflow_id: str) -> TrailPage | None:
    """The run's audit trail and its chain verification; None unless every row is the
    tenant's (a trail keel-internal ids such as keel/tokens share across tenants stays out)."""
    tenants = set(
        (
            await session.execute(
                select(AuditEvent.tenant).where(AuditEvent.workflow_id == workflow_id).distinct()
            )
        ).scalars()
    )
    if tenants != {tenant} or workflow_id.startswith("keel/"):
        return None
    events = list(
        (
            await session.execute(
                select(AuditEvent)
                .where(AuditEvent.workflow_id == workflow_id)
                .order_by(AuditEvent.seq)
            )
        ).scalars()
    )
    return TrailPage(workflow_id, events, await verify_trail(session, workflow_id))


def payload_text(payload: dict[str, Any]) -> str:
    return json.dumps(payload, ensure_ascii=False, sort_keys=True, default=str)
