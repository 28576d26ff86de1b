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
from contracts.llm import AttemptInput, LlmAnswer
from contracts.sessions import FinishTurnInput


async def write_answer_records(
    db: AsyncSession, call: AttemptInput, answer: LlmAnswer
) -> LlmAnswer:
    """Write ``call.records`` for ``answer`` in ``db``'s transaction; the answer as returned
    (for a turn, with the stored answer, which a retried call finds already there)."""
    records = call.records
    if records is None:
        return answer
    if records.audit is not None:
        audit = records.audit
        payload = {
            "model": answer.model,
            **audit.payload,
            "output_tokens": answer.usage.output_tokens,
        }
        await write_audit_event(db, audit.model_copy(update={"payload": payload}))
    stored = None
    if records.turn is not None:
        turn = records.turn
        stored = await store_turn_answer(
            db,
            FinishTurnInput(
                session_id=turn.session_id,
                turn_id=turn.turn_id,
                text=answer.text,
                model=answer.model,
                usage=answer.usage,
                cost_usd=answer.cost_usd,
                stream_key=turn.stream_key,
                tool_calls=answer.tool_calls,
                finish_reason=answer.finish_reason,
            ),
        )
    return answer.model_copy(update={"records_written": True, "stored": stored})
