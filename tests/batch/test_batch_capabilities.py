"""A page skips the models of the route that cannot honour what an item needs, as ask_llm does,
and items with different needs do not share a route plan."""

from __future__ import annotations

import json

import pytest
from temporalio.client import Client

from infra.settings import KeelSettings
from llmsim import SimServer
from tests.batch.conftest import BACKUP, CHEAP, items_of, start_batch
from tests.conftest import KeelWorkers, reconfigure
from tests.cost.support import requests_to

SCHEMA = {"type": "object", "properties": {"river": {"type": "string"}}, "required": ["river"]}


def line(custom_id: str, *, structured: bool) -> str:
    body: dict[str, object] = {
        "model": CHEAP,
        "messages": [{"role": "user", "content": f"{custom_id}: name a river."}],
        "max_tokens": 32,
    }
    if structured:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "river", "schema": SCHEMA},
        }
    return json.dumps(
        {"custom_id": custom_id, "url": "/v1/chat/completions", "method": "POST", "body": body}
    )


async def test_items_needing_a_json_schema_skip_the_model_without_one(
    client: Client,
    keel_settings: KeelSettings,
    keel_workers: KeelWorkers,
    simulator: SimServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The route's first model cannot do JSON schemas; its second can.
    settings = reconfigure(
        monkeypatch, KEEL_MODEL_CAPABILITIES=json.dumps({CHEAP: ["tools", "images", "seed"]})
    )
    await keel_workers.start(settings, settings.batch_task_queue)
    # One at a time, a structured item first: each shape is planned by the item that meets it
    # first, and the plain items come after a structured one (and the other way round).
    lines = [
        line("s0", structured=True),
        line("p1", structured=False),
        line("p2", structured=False),
        line("s3", structured=True),
    ]
    batch_id, handle = await start_batch(client, settings, lines, concurrency=1, route="balanced")
    result = await handle.result()

    assert (result.ok, result.failed) == (4, 0)
    answered = {
        i.custom_id: (i.model, i.response["failed_models"] if i.response else None)
        for i in await items_of(batch_id)
    }
    assert answered == {
        "s0": (BACKUP, [[CHEAP, "unsupported"]]),
        "p1": (CHEAP, []),
        "p2": (CHEAP, []),
        "s3": (BACKUP, [[CHEAP, "unsupported"]]),
    }
    # No structured item was sent to the model that would have dropped its schema.
    assert requests_to(simulator, CHEAP) == 2
