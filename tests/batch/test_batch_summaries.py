"""The Web UI shows a batch's size and tenant, and a summary on every activity it calls (see
tests/observability/test_web_ui_summaries.py)."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.worker import Worker

from infra.settings import KeelSettings
from llmsim import SimServer
from tests.batch.conftest import prompt_lines, start_batch
from tests.observability.test_web_ui_summaries import activity_summaries


async def test_a_batch_shows_its_size_and_tenant_and_every_activity_a_summary(
    client: Client, keel_settings: KeelSettings, batch_worker: Worker, simulator: SimServer
) -> None:
    batch_id, handle = await start_batch(client, keel_settings, prompt_lines(3), concurrency=2)
    await handle.result()

    description = await handle.describe()
    assert await description.static_summary() == f"batch {batch_id} · 3 items · tenant default"
    assert await description.static_details() == (
        "From test.jsonl. 2 calls at a time, each line's model."
    )
    summaries = await activity_summaries(client, handle)
    # The items are answered inside page activities; each says which page and how many.
    assert "page 1: up to 100 items, 2 at a time" in summaries
    assert all(summaries), summaries
