"""The Temporal Web UI tells a run's story: each workflow keel starts carries a static summary and
details (what, for whom), and each activity it calls a summary (model and purpose, or what the
step does). Read back as the Web UI reads them: from the workflow's description and from the
history events' user metadata, decoded with keel's codec (they are encrypted like any payload)."""

from __future__ import annotations

import uuid
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker

from contracts.approvals import ApprovalMode, ReviewPolicy
from infra.settings import KeelSettings
from llmsim import SimServer
from services.asks import start_ask
from services.reviews import start_review
from tests.approvals.reviews import DOCUMENT
from tests.batch.conftest import CHEAP
from tests.helpers import eventually
from workflows.ask import AskInput
from workflows.document_review import ReviewInput

# A local activity is recorded as a marker (a patch is a marker too, with no activity).
LOCAL_ACTIVITY_MARKER = "core_local_activity"


async def activity_summaries(client: Client, handle: WorkflowHandle[Any, Any]) -> list[str]:
    """Each activity call's summary, in history order ("" where a call has none)."""
    history = await handle.fetch_history()
    summaries = []
    for event in history.events:
        # Where an activity's summary lives: a scheduled regular activity, or a local one's marker.
        regular = event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        local = (
            event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
            and event.marker_recorded_event_attributes.marker_name == LOCAL_ACTIVITY_MARKER
        )
        if not (regular or local):
            continue
        summaries.append(await summary_of(client, event))
    return summaries


async def summary_of(client: Client, event: HistoryEvent) -> str:
    if not event.user_metadata.HasField("summary"):
        return ""
    [text] = await client.data_converter.decode([event.user_metadata.summary], [str])
    assert isinstance(text, str)
    return text


async def test_an_ask_shows_what_was_asked_for_whom_and_each_call_its_model(
    client: Client, keel_settings: KeelSettings, interactive_worker: Worker, simulator: SimServer
) -> None:
    params = AskInput(prompt="Name a river.", models=[CHEAP], tenant="acme", max_tokens=40)
    handle = await start_ask(client, keel_settings, params, f"ask-{uuid.uuid4().hex[:8]}")
    await handle.result()

    description = await handle.describe()
    assert await description.static_summary() == f"ask · {CHEAP} · tenant acme"
    assert await description.static_details() == f"Up to 40 tokens, from {CHEAP}."
    summaries = await activity_summaries(client, handle)
    assert f"{CHEAP} · ask" in summaries
    assert "route explicit · ask" in summaries
    assert all(summaries), summaries
    # The prompt is the tenant's: the summaries (kept in history) never carry it.
    assert not any("river" in text for text in summaries)


async def test_a_review_shows_its_document_and_tenant_and_each_step(
    client: Client, keel_settings: KeelSettings, interactive_worker: Worker, simulator: SimServer
) -> None:
    params = ReviewInput(
        document=DOCUMENT,
        source_name="vendor-contract.md",
        tenant="acme",
        policy=ReviewPolicy(mode=ApprovalMode.ALWAYS),
    )
    handle = await start_review(client, keel_settings, params, f"review-{uuid.uuid4().hex[:8]}")
    try:
        description = await handle.describe()
        assert await description.static_summary() == "review of vendor-contract.md · tenant acme"
        details = await description.static_details()
        assert details is not None and "draft (route quality)" in details
        # Up to the approval gate: extract, draft and check calls, then the gate's records.
        summaries = await eventually(
            lambda: activity_summaries(client, handle),
            lambda texts: any(text.startswith("open gate ") for text in texts),
            timeout=60,
        )
        for purpose in ("review.extract", "review.draft", "review.self_check"):
            assert any(
                text.endswith(f" · {purpose}") and "route" not in text for text in summaries
            ), (
                purpose,
                summaries,
            )
        assert summaries[-1] == "open gate publish · editor · acme"
        assert all(summaries), summaries
    finally:
        await handle.terminate("test done")
