"""Claims and releases against Postgres: a claim hands back only the items it still holds.

A page (or a run) names its claim with a token; releasing it must put back exactly the items
still running under that token — not an item a later claim has taken since, and not leave the
claim's own items stuck ``running``."""

from __future__ import annotations

from temporalio.testing import ActivityEnvironment

from activities.batch.files import BatchFileLimits, parse_lines
from activities.batch.items import BatchItemActivities, create_batch, insert_items
from contracts.batch import BatchOptions, ClaimInput, ReleaseInput
from infra.database import sessions_for
from infra.settings import KeelSettings
from tests.batch.conftest import items_of, prompt_lines

BATCH = "claims"


async def loaded(settings: KeelSettings, count: int) -> BatchItemActivities:
    sessions = sessions_for(settings)
    limits = BatchFileLimits.from_settings(settings)
    async with sessions.begin() as session:
        await create_batch(session, BATCH, BatchOptions(), source_name="t.jsonl")
        await insert_items(session, BATCH, parse_lines(prompt_lines(count), limits))
    return BatchItemActivities(sessions, limits)


async def statuses() -> dict[str, tuple[str, str | None]]:
    return {i.custom_id: (i.status, i.claim_token) for i in await items_of(BATCH)}


async def test_releasing_a_claim_puts_back_every_item_still_running_under_it(
    keel_settings: KeelSettings,
) -> None:
    items = await loaded(keel_settings, 4)
    env = ActivityEnvironment()
    claimed = await env.run(
        items.claim_batch_items, ClaimInput(batch_id=BATCH, claim_token="run-1/page-1", limit=3)
    )
    assert [c.custom_id for c in claimed] == ["q0", "q1", "q2"]

    # What the workflow sends when a page ended without reporting: the claim, no ids.
    released = await env.run(
        items.release_batch_items, ReleaseInput(batch_id=BATCH, claim_token="run-1/page-1")
    )

    assert released == 3
    assert await statuses() == {f"q{n}": ("pending", None) for n in range(4)}


async def test_a_release_leaves_items_another_claim_holds(keel_settings: KeelSettings) -> None:
    items = await loaded(keel_settings, 3)
    env = ActivityEnvironment()
    await env.run(
        items.claim_batch_items, ClaimInput(batch_id=BATCH, claim_token="run-1/page-1", limit=2)
    )
    # Page 1's items went back (its run ended) and a later claim took them again.
    await env.run(
        items.release_batch_items, ReleaseInput(batch_id=BATCH, claim_token="run-1/page-1")
    )
    await env.run(
        items.claim_batch_items, ClaimInput(batch_id=BATCH, claim_token="run-2/page-1", limit=2)
    )

    # A late release of page 1's slow item: q0 is page 2's now, so it stays where it is.
    late = ReleaseInput(batch_id=BATCH, custom_ids=["q0"], claim_token="run-1/page-1")
    assert await env.run(items.release_batch_items, late) == 0
    # A run without tokens (BatchWorkflow) releases only what it claimed itself.
    legacy = ReleaseInput(batch_id=BATCH, custom_ids=["q0", "q1"])
    assert await env.run(items.release_batch_items, legacy) == 0

    assert await statuses() == {
        "q0": ("running", "run-2/page-1"),
        "q1": ("running", "run-2/page-1"),
        "q2": ("pending", None),
    }
    # The holder names one of its items: that one goes back, the other stays claimed.
    own = ReleaseInput(batch_id=BATCH, custom_ids=["q1"], claim_token="run-2/page-1")
    assert await env.run(items.release_batch_items, own) == 1
    assert (await statuses())["q1"] == ("pending", None)
    assert (await statuses())["q0"] == ("running", "run-2/page-1")


async def test_a_run_without_tokens_releases_the_items_it_claimed(
    keel_settings: KeelSettings,
) -> None:
    items = await loaded(keel_settings, 3)
    env = ActivityEnvironment()  # its run id is "test-run"
    await env.run(
        items.claim_batch_items, ClaimInput(batch_id=BATCH, claim_token="test-run/1", limit=3)
    )

    legacy = ReleaseInput(batch_id=BATCH, custom_ids=["q1", "q2"])
    assert await env.run(items.release_batch_items, legacy) == 2

    assert await statuses() == {
        "q0": ("running", "test-run/1"),
        "q1": ("pending", None),
        "q2": ("pending", None),
    }
