"""Context management: a long conversation stays within the model's token budget because the
oldest turns are folded into a running summary by a cheap model; the originals stay in Postgres."""

from __future__ import annotations

import statistics
import uuid

import pytest
from temporalio.client import Client

from contracts.sessions import session_workflow_id
from infra.settings import KeelSettings
from llmsim import SimServer, count_message_tokens
from services.chat_client import TurnRequest, run_turn
from tests.conftest import KeelWorkers, reconfigure
from tests.helpers import ledger_rows
from tests.sessions.conftest import stored_messages, stored_session

MODEL = "gpt-4o-mini"
WINDOW = 1000
ANSWER_RESERVE = 200
BUDGET = WINDOW - ANSWER_RESERVE
TURNS = 60
SYSTEM = "You are a patient geography tutor."


@pytest.mark.slow
async def test_sixty_turns_stay_within_budget_with_flat_input_and_half_the_tokens(
    client: Client,
    keel_settings: KeelSettings,
    keel_workers: KeelWorkers,
    simulator: SimServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = reconfigure(
        monkeypatch,
        KEEL_MODEL_CONTEXT_WINDOWS=f'{{"{MODEL}": {WINDOW}}}',
        KEEL_SESSION_ANSWER_TOKENS=str(ANSWER_RESERVE),
        KEEL_ROUTES=f'{{"cheap": ["{MODEL}"], "balanced": ["{MODEL}"]}}',
    )
    await keel_workers.start(settings)
    session_id = f"s-{uuid.uuid4().hex[:8]}"
    outputs = []
    for number in range(1, TURNS + 1):
        request = TurnRequest(
            session_id=session_id,
            content=f"Question {number}: tell me about river number {number} and its delta.",
            system_prompt=SYSTEM,
            models=[MODEL],
            stream=False,
        )
        outputs.append(await run_turn(client, settings, request))

    input_per_turn = [o.usage.input_tokens for o in outputs]
    # Within budget on every turn, as the simulator counted it (not as keel estimated it).
    assert max(input_per_turn) <= BUDGET
    first_fold = next(i for i, o in enumerate(outputs) if o.summarized)
    assert 3 < first_fold < 30
    folds = sum(o.summarized for o in outputs)
    assert folds >= 3
    # Flat once summarization starts: no upward trend between the two halves after it.
    after = input_per_turn[first_fold:]
    half = len(after) // 2
    early, late = statistics.mean(after[:half]), statistics.mean(after[half:])
    assert late <= early * 1.25, (early, late)

    # The originals stay in Postgres, marked summarized up to the summary's cursor.
    messages = await stored_messages(session_id)
    assert len(messages) == 2 * TURNS
    session = await stored_session(session_id)
    assert session is not None and session.summary and session.summarized_through_seq > 0
    assert all(m.summarized == (m.seq <= session.summarized_through_seq) for m in messages)

    # Total input tokens, summarization calls included, against resending the full history.
    rows = await ledger_rows(session_workflow_id(session_id))
    assert len(rows) == TURNS + folds  # one call per turn, one per fold
    keel_total = sum(r.input_tokens for r in rows)
    full_history_total = 0
    for number in range(1, TURNS + 1):
        history = [m.content or "" for m in messages[: 2 * number - 1]]
        full_history_total += count_message_tokens([SYSTEM, *history])
    assert keel_total <= 0.5 * full_history_total, (keel_total, full_history_total)
