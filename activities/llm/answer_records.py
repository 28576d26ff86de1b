"""What a call writes with its answer (``AttemptInput.records``), in its ledger row's transaction.

A chat turn's answer is stored and its stream ended here, and an ask's completion audited, so
the caller's own local activity after the call (``finish_turn``, the ``ask.completed`` audit) is
off the path between the provider's last token and the reply: the stream's ``done`` event is
committed with the ledger row, not a workflow task and a local activity later.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from activities.audit_trail import write_audit_event
from activities.sessions import store_turn_answer
from contracts.llm import AttemptInput, LlmAnswer, answered_audit
from contracts.sessions import turn_answer


async def write_answer_records(
    db: AsyncSession, call: AttemptInput, answer: LlmAnswer
) -> LlmAnswer:
    """Write ``call.records`` for ``answer`` in ``db``'s transaction; the answer as returned
    (for a turn, with the stored answer, which a retried call finds already there)."""
    records = call.records
    if records is None:
        return answer
    if records.audit is not None:
        await write_audit_event(db, answered_audit(records.audit, answer))
    stored = None
    if records.turn is not None:
        stored = await store_turn_answer(db, turn_answer(records.turn, answer))
    return answer.model_copy(update={"records_written": True, "stored": stored})
