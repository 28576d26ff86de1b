"""DocumentReviewWorkflow: turn a document into a publishable text, with a human in the loop
when policy says so.

    extract (cheap model) → draft (quality model) → self-check (structured JSON: confidence,
    policy flags) → approval gate when policy says so → publish (Postgres, optional webhook)

A rejected draft goes back for a bounded number of revisions, with the reviewer's reason in the
prompt; each revision is reviewed again. What reviewers approve, edit or reject stays in the
``approvals`` rows as (draft, final) pairs (``keel approvals export``).
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError
from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from contracts.activities import DELIVER_REVIEW_WEBHOOK, PUBLISH_DOCUMENT
    from contracts.approvals import ApprovalMode, GateOutcome, GateRequest, ReviewPolicy
    from contracts.llm import ChatMessage, LlmAnswer, LlmParameters, LlmRequest
    from contracts.publishing import Publication, PublishInput, WebhookInput
    from contracts.search_attributes import KEEL_COST_USD
    from workflows.activity_calls import PUBLISH, REVIEW_WEBHOOK, call
    from workflows.approval_gate import ApprovalGate
    from workflows.llm_calls import ask_llm, audit

MAX_DOCUMENT_CHARS = 200_000
GATE_NAME = "publish"
POLICY_FLAGS = (
    "personal_data",
    "legal_claim",
    "medical_advice",
    "financial_advice",
    "unverified_claim",
    "offensive_language",
)
SELF_CHECK_SCHEMA = {
    "type": "object",
    "properties": {
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "policy_flags": {"type": "array", "items": {"type": "string", "enum": list(POLICY_FLAGS)}},
        "issues": {"type": "string"},
    },
    "required": ["confidence", "policy_flags", "issues"],
    "additionalProperties": False,
}
# The marker tests and operators can match on (e.g. the simulator's canned responses).
SELF_CHECK_MARKER = "Return the self-check JSON"


class ReviewInput(BaseModel):
    document: str = Field(min_length=1, max_length=MAX_DOCUMENT_CHARS)
    source_name: str = Field(default="document", max_length=500)
    tenant: str = "default"
    instructions: str = "a concise summary (at most 150 words) for publication"
    policy: ReviewPolicy = Field(default_factory=ReviewPolicy)
    notify_webhook: bool = False
    extract_route: str = "cheap"
    draft_route: str = "quality"
    check_route: str = "cheap"


class SelfCheck(BaseModel):
    confidence: float = Field(ge=0, le=1)
    policy_flags: list[str] = Field(default_factory=list)
    issues: str = ""


class ReviewOutput(BaseModel):
    status: Literal["published", "rejected"]
    published_id: int | None = None
    # Why a human was asked; None: policy let the draft through.
    gated_because: str | None = None
    confidence: float
    policy_flags: list[str] = Field(default_factory=list)
    approved_by: list[str] = Field(default_factory=list)
    flagged: bool = False
    revisions: int = 0
    rejection_reason: str | None = None
    cost_usd: Decimal | None = None


def parse_self_check(text: str) -> SelfCheck:
    """A self-check that is not the JSON we asked for is treated as a red flag, not a pass."""
    try:
        return SelfCheck.model_validate(json.loads(text))
    except (ValueError, ValidationError):
        return SelfCheck(confidence=0.0, policy_flags=["self_check_unreadable"], issues=text[:500])


def approval_reason(policy: ReviewPolicy, check: SelfCheck, draw: float) -> str | None:
    """Why this draft needs a human, or None. ``draw`` is uniform in [0, 1) (the QA sample)."""
    if check.policy_flags:
        return f"policy rule: the self-check flagged {', '.join(check.policy_flags)}"
    if policy.mode == ApprovalMode.ALWAYS:
        return "policy: every draft is reviewed"
    if policy.mode == ApprovalMode.BELOW_CONFIDENCE and check.confidence < (
        policy.confidence_threshold
    ):
        return f"low confidence: {check.confidence:.2f} below {policy.confidence_threshold:.2f}"
    if policy.mode == ApprovalMode.SAMPLE and draw * 100 < policy.sample_percent:
        return f"QA sample: {policy.sample_percent:g}% of drafts are reviewed"
    return None


@workflow.defn
class DocumentReviewWorkflow:
    @workflow.init
    def __init__(self, params: ReviewInput) -> None:
        self.params = params
        self.approval = ApprovalGate()
        self.cost_usd = Decimal(0)
        self.cost_known = True

    @workflow.run
    async def run(self, params: ReviewInput) -> ReviewOutput:
        await audit(
            "review.started",
            params.tenant,
            {"source_name": params.source_name, "chars": len(params.document)},
        )
        facts = await self.extract()
        draft = await self.write_draft(facts)
        check = await self.self_check(facts, draft)
        reason = approval_reason(params.policy, check, workflow.random().random())
        if reason is None:
            await audit(
                "review.auto_approved",
                params.tenant,
                {"confidence": check.confidence, "mode": params.policy.mode.value},
            )
            return await self.publish(draft, check)

        revisions = 0
        while True:
            gate = GATE_NAME if revisions == 0 else f"{GATE_NAME}-revision-{revisions}"
            outcome = await self.approval.request(self.gate_request(gate, draft, reason))
            if outcome.approved:
                return await self.publish(outcome.final or draft, check, outcome, reason, revisions)
            human_rejection = outcome.reason if outcome.decided_by else None
            if human_rejection is None or revisions >= params.policy.max_revisions:
                return await self.reject(check, outcome, reason, revisions)
            revisions += 1
            draft = await self.revise(facts, draft, human_rejection, revisions)
            check = await self.self_check(facts, draft)
            reason = f"revision {revisions} after rejection by {', '.join(outcome.decided_by)}"

    # --- Steps ---------------------------------------------------------------------------

    async def extract(self) -> str:
        self.show_step("1/5 extracting the key facts (cheap model)")
        answer = await self.llm(
            "extract",
            self.params.extract_route,
            "You extract facts. Answer with short bullet points, one fact per line, nothing else.",
            f"Extract the key facts from this document.\n\n---\n{self.params.document}\n---",
            max_tokens=600,
        )
        await self.step_done("review.extracted", answer)
        return answer.text

    async def write_draft(self, facts: str) -> str:
        self.show_step("2/5 drafting (quality model)")
        answer = await self.llm(
            "draft",
            self.params.draft_route,
            "You are a careful writer. Use only the facts given; never invent any.",
            f"Write {self.params.instructions} from these facts.\n\nFacts:\n{facts}",
            max_tokens=800,
        )
        await self.step_done("review.drafted", answer)
        return answer.text

    async def self_check(self, facts: str, draft: str) -> SelfCheck:
        self.show_step("3/5 self-checking the draft")
        answer = await self.llm(
            "self_check",
            self.params.check_route,
            "You check drafts against their source facts. Flag any claim not supported by the "
            f"facts and any of these policy concerns: {', '.join(POLICY_FLAGS)}.",
            f"Facts:\n{facts}\n\nDraft:\n{draft}\n\n{SELF_CHECK_MARKER}: your confidence (0 to "
            "1) that the draft is accurate and publishable, the policy flags that apply, and "
            "the issues found.",
            max_tokens=400,
            json_schema=SELF_CHECK_SCHEMA,
        )
        check = parse_self_check(answer.text)
        await self.step_done(
            "review.checked",
            answer,
            confidence=check.confidence,
            policy_flags=check.policy_flags,
            issues=check.issues[:500],
        )
        return check

    async def revise(self, facts: str, draft: str, reviewer_reason: str, revision: int) -> str:
        self.show_step(f"revising the draft (revision {revision}) with the reviewer's reason")
        answer = await self.llm(
            "revise",
            self.params.draft_route,
            "You are a careful writer. Use only the facts given; never invent any.",
            f"A reviewer rejected this draft. Their reason: {reviewer_reason}\n\n"
            f"Rewrite {self.params.instructions} so that it answers the reason.\n\n"
            f"Facts:\n{facts}\n\nRejected draft:\n{draft}",
            max_tokens=800,
        )
        await self.step_done("review.revised", answer, revision=revision, reason=reviewer_reason)
        return answer.text

    def gate_request(self, gate: str, draft: str, reason: str) -> GateRequest:
        policy = self.params.policy
        return GateRequest(
            gate=gate,
            draft=draft,
            reason=reason,
            role=policy.role,
            tenant=self.params.tenant,
            subject=f"review of {self.params.source_name}",
            approvals_required=policy.approvals_required,
            deadline=policy.deadline,
            default_action=policy.default_action,
            escalation=policy.escalation,
            remind_every=policy.remind_every,
        )

    async def publish(
        self,
        text: str,
        check: SelfCheck,
        outcome: GateOutcome | None = None,
        gated_because: str | None = None,
        revisions: int = 0,
    ) -> ReviewOutput:
        self.show_step("4/5 publishing")
        publication = Publication(
            workflow_id=workflow.info().workflow_id,
            tenant=self.params.tenant,
            source_name=self.params.source_name,
            approval_gate=outcome.gate if outcome else None,
            approved_by=outcome.decided_by if outcome else [],
            flagged=outcome.flagged if outcome else False,
        )
        published_id = await call(
            PUBLISH_DOCUMENT, PublishInput(**publication.model_dump(), content=text), **PUBLISH
        )
        await audit(
            "review.published",
            self.params.tenant,
            {
                "published_id": published_id,
                "approved_by": publication.approved_by,
                "flagged": publication.flagged,
            },
        )
        if self.params.notify_webhook:
            await self.notify(WebhookInput(**publication.model_dump(), published_id=published_id))
        return await self.finish(
            ReviewOutput(
                status="published",
                published_id=published_id,
                gated_because=gated_because,
                confidence=check.confidence,
                policy_flags=check.policy_flags,
                approved_by=publication.approved_by,
                flagged=publication.flagged,
                revisions=revisions,
            )
        )

    async def notify(self, request: WebhookInput) -> None:
        self.show_step("5/5 notifying the webhook")
        try:
            delivery = await call(DELIVER_REVIEW_WEBHOOK, request, **REVIEW_WEBHOOK)
        except ActivityError as error:
            # The document is published; a receiver that is down does not undo that.
            await audit(
                "review.webhook_failed", self.params.tenant, {"error": str(error.cause or error)}
            )
            return
        await audit(
            "review.webhook_delivered",
            self.params.tenant,
            {"host": delivery.host, "status": delivery.status},
        )

    async def reject(
        self, check: SelfCheck, outcome: GateOutcome, gated_because: str, revisions: int
    ) -> ReviewOutput:
        await audit(
            "review.rejected",
            self.params.tenant,
            {"gate": outcome.gate, "status": outcome.status.value, "reason": outcome.reason},
        )
        return await self.finish(
            ReviewOutput(
                status="rejected",
                gated_because=gated_because,
                confidence=check.confidence,
                policy_flags=check.policy_flags,
                approved_by=[],
                revisions=revisions,
                rejection_reason=outcome.reason,
            )
        )

    async def finish(self, output: ReviewOutput) -> ReviewOutput:
        output.cost_usd = self.cost_usd if self.cost_known else None
        # Decisions still being answered (a late duplicate, a refused signal) finish first.
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.set_current_details(
            f"Review {output.status}"
            + (f" as document {output.published_id}" if output.published_id else "")
            + (f" (approved by {', '.join(output.approved_by)})" if output.approved_by else "")
        )
        return output

    # --- Helpers -------------------------------------------------------------------------

    async def llm(
        self,
        purpose: str,
        route: str,
        system: str,
        prompt: str,
        max_tokens: int,
        json_schema: dict[str, Any] | None = None,
    ) -> LlmAnswer:
        answer = await ask_llm(
            LlmRequest(
                messages=[
                    ChatMessage(role="system", content=system),
                    ChatMessage(role="user", content=prompt),
                ],
                route=route,
                parameters=LlmParameters(
                    max_tokens=max_tokens,
                    json_schema=json_schema,
                    json_schema_name="self_check" if json_schema else "answer",
                    # The review judges an unreadable self-check itself (a red flag for a
                    # person), so keel hands it over instead of retrying it as invalid.
                    check_output=False,
                ),
                tenant=self.params.tenant,
                purpose=f"review.{purpose}",
            )
        )
        if answer.cost_usd is None and not answer.fallback_used:
            self.cost_known = False
        self.cost_usd += answer.cost_usd or Decimal(0)
        workflow.upsert_search_attributes([KEEL_COST_USD.value_set(float(self.cost_usd))])
        return answer

    async def step_done(self, event_type: str, answer: LlmAnswer, **details: object) -> None:
        await audit(
            event_type,
            self.params.tenant,
            {
                "model": answer.model,
                "output_tokens": answer.usage.output_tokens,
                "cost_usd": str(answer.cost_usd) if answer.cost_usd is not None else None,
                **details,
            },
        )

    def show_step(self, step: str) -> None:
        workflow.set_current_details(f"Step {step} · `keel show {workflow.info().workflow_id}`")
