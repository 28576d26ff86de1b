"""A page retried after its worker died resumes its items on their original deadline: the call's
time runs from the item's first attempt, as Temporal's schedule-to-close does for one call, not
from whenever the page happens to be retried."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update
from temporalio.testing import ActivityEnvironment

from activities.batch.files import BatchFileLimits, parse_lines
from activities.batch.items import create_batch, insert_items
from activities.batch.pages import BatchPageActivities
from activities.llm.ledger import AttemptRecord
from activities.llm.pipeline import write_completed
from activities.llm.providers import ProviderClients
from contracts.batch import BatchOptions, PageInput
from contracts.llm import ErrorClass, Usage
from infra.database import sessions_for
from infra.settings import KeelSettings
from infra.tables import BatchItem
from llmsim import SimServer
from tests.batch.conftest import CHEAP, items_of, prompt_lines, simulator_requests
from tests.conftest import reconfigure
from tests.helpers import ledger_rows

BATCH, WORKFLOW, RUN, ACTIVITY = "resumed", "batch-resumed", "run-1", "7"
TOKEN = f"{RUN}/page-1"


async def a_page_whose_first_attempt_died(settings: KeelSettings, first_try_ago: float) -> None:
    """Item q0 claimed by the page, its first call rate-limited ``first_try_ago`` seconds ago,
    then the worker died (the page's next attempt takes over)."""
    sessions = sessions_for(settings)
    options = BatchOptions(model=CHEAP)
    async with sessions.begin() as session:
        await create_batch(session, BATCH, options, source_name="t.jsonl")
        lines = parse_lines(prompt_lines(1), BatchFileLimits.from_settings(settings))
        await insert_items(session, BATCH, lines)
        await session.execute(
            update(BatchItem)
            .where(BatchItem.batch_id == BATCH)
            .values(status="running", claim_token=TOKEN, run_count=1)
        )
        ended = datetime.now(UTC) - timedelta(seconds=first_try_ago)
        await write_completed(
            session,
            [
                AttemptRecord(
                    workflow_id=WORKFLOW,
                    run_id=RUN,
                    activity_id=f"page-{ACTIVITY}/1",
                    attempt=1,
                    tenant="default",
                    route=None,
                    provider="openai",
                    model=CHEAP,
                    prompt_hash="h",
                    usage=Usage(),
                    cost_usd=None,
                    latency_ms=200,
                    first_token_ms=None,
                    streamed=True,
                    outcome="error",
                    error_class=ErrorClass.RATE_LIMITED.value,
                    error_message="429",
                    finished_at=ended,
                )
            ],
        )


async def run_page_again(settings: KeelSettings) -> None:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(
        env.info, workflow_id=WORKFLOW, workflow_run_id=RUN, activity_id=ACTIVITY, attempt=2
    )
    page = BatchPageActivities(settings, sessions_for(settings), ProviderClients(settings))
    await env.run(
        page.run_batch_page,
        PageInput(
            batch_id=BATCH,
            page_token=TOKEN,
            options=BatchOptions(model=CHEAP),
            quota=1,
            slots=1,
            seconds=30,
        ),
    )


@pytest.fixture
def settings(keel_settings: KeelSettings, monkeypatch: pytest.MonkeyPatch) -> KeelSettings:
    """Batch calls with a one-minute deadline."""
    policy = keel_settings.batch_policy.model_copy(update={"schedule_to_close_seconds": 60})
    return reconfigure(monkeypatch, KEEL_BATCH_POLICY=policy.model_dump_json())


async def test_an_item_past_its_deadline_is_not_called_again_by_a_retried_page(
    settings: KeelSettings, simulator: SimServer
) -> None:
    await a_page_whose_first_attempt_died(settings, first_try_ago=90)

    await run_page_again(settings)

    (item,) = await items_of(BATCH)
    assert (item.status, item.error_class) == ("failed", ErrorClass.TIMEOUT.value)
    assert "past the call's deadline (60s from its first attempt)" in (item.error_message or "")
    assert simulator_requests(simulator.stats()) == 0
    assert [row.attempt for row in await ledger_rows(WORKFLOW)] == [1]


async def test_an_item_within_its_deadline_is_resumed(
    settings: KeelSettings, simulator: SimServer
) -> None:
    await a_page_whose_first_attempt_died(settings, first_try_ago=10)

    await run_page_again(settings)

    (item,) = await items_of(BATCH)
    assert item.status == "ok"
    assert [(row.attempt, row.outcome) for row in await ledger_rows(WORKFLOW)] == [
        (1, "error"),
        (2, "ok"),
    ]
