"""The arithmetic of a paged batch (contracts/batch_pacing.py): page sizes, history room, the
budget's launch rule and its gate's proposal, the failure-rate limit. Pure: no servers."""

from __future__ import annotations

from decimal import Decimal

from contracts.batch_pacing import (
    EVENTS_PER_PAGE,
    EVENTS_PER_SLOW_ITEM,
    EVENTS_RESERVE,
    ITEMS_PER_SLOT,
    MAX_SLOW_ITEMS,
    budget_allows_one_more,
    failure_rate_crossed,
    full_page_quota,
    history_room,
    history_room_for_pages,
    page_quota,
    page_slots,
    page_worst_slow_items,
    suggested_budget,
)


def test_a_page_takes_its_slots_worth_unless_the_history_could_not_absorb_it() -> None:
    assert page_quota(slots=4, room=1_000_000) == 4 * ITEMS_PER_SLOT
    # 200 events of room: every item could fall to the slow path and cost 8 events.
    assert page_quota(slots=200, room=200) == (200 - EVENTS_PER_PAGE) // EVENTS_PER_SLOW_ITEM
    assert page_quota(slots=200, room=EVENTS_PER_PAGE + EVENTS_PER_SLOW_ITEM - 1) == 0
    assert page_quota(slots=1, room=EVENTS_PER_PAGE + EVENTS_PER_SLOW_ITEM) == 1


def test_history_room_keeps_the_reserve_and_the_worst_case_of_items_taken() -> None:
    assert history_room(length=50, limit=9000, items_taken=0) == 9000 - 50 - EVENTS_RESERVE
    assert history_room(length=50, limit=300, items_taken=22) == 300 - 50 - 100 - 22 * 8
    # A run at the default limit takes about 1,100 items before it continues-as-new.
    quota = page_quota(200, history_room(length=12, limit=9000, items_taken=0))
    assert 1000 < quota < 1200
    assert page_quota(200, history_room(length=20, limit=9000, items_taken=quota)) == 0


def test_a_run_reserves_history_for_a_pages_slow_cap_not_for_every_item_taken() -> None:
    # A page stops claiming at min(slots, MAX_SLOW_ITEMS) slow items; its calls in flight may
    # add one slot's worth more.
    assert page_worst_slow_items(3) == 6
    assert page_worst_slow_items(1000) == MAX_SLOW_ITEMS + 1000
    # Only running slow-path calls are reserved; finished ones are in the history's length.
    assert history_room_for_pages(length=50, limit=9000, slow_in_flight=0) == 9000 - 50 - 100
    assert history_room_for_pages(length=50, limit=9000, slow_in_flight=10) == 8850 - 80
    # At the default limit a run takes full pages, however many items they hold...
    room = history_room_for_pages(length=12, limit=9000, slow_in_flight=0)
    assert full_page_quota(200, room) == 200 * ITEMS_PER_SLOT
    # ... until the worst page no longer fits: then as page_quota, every item reserved.
    worst = EVENTS_PER_PAGE + page_worst_slow_items(200) * EVENTS_PER_SLOW_ITEM
    assert full_page_quota(200, worst) == 200 * ITEMS_PER_SLOT
    assert full_page_quota(200, worst - 1) == page_quota(200, worst - 1) < 200 * ITEMS_PER_SLOT
    assert full_page_quota(200, EVENTS_PER_PAGE) == 0


def test_slow_path_calls_hold_their_slots() -> None:
    assert page_slots(concurrency=8, slow_in_flight=3) == 5
    assert page_slots(concurrency=2, slow_in_flight=5) == 0


def test_the_first_item_runs_alone_then_spend_plus_what_is_in_flight_must_fit() -> None:
    assert budget_allows_one_more(None, Decimal(5), 0, 100)
    assert budget_allows_one_more(Decimal(1), Decimal(0), 0, 0)
    assert not budget_allows_one_more(Decimal(1), Decimal(0), 0, 1)
    # 4 items cost 0.4: with 5 in flight, one more projects to 0.4 + 6 x 0.1 = 1.0.
    assert budget_allows_one_more(Decimal(1), Decimal("0.4"), 4, 5)
    assert not budget_allows_one_more(Decimal(1), Decimal("0.4"), 4, 6)


def test_the_gate_proposes_enough_to_finish_and_always_more_than_the_budget() -> None:
    assert suggested_budget(Decimal("0.9"), Decimal(1), 9, 11) == Decimal("2.00")
    # Nothing priced (or everything left free): a cent above the current budget.
    assert suggested_budget(Decimal(0), Decimal(1), 0, 5) == Decimal("1.01")


def test_the_failure_rate_is_judged_after_the_sample_and_names_the_numbers() -> None:
    assert failure_rate_crossed(None, 100, 100, 100) is None
    assert failure_rate_crossed(0.25, 19, 19, 100) is None  # under the sample of 20
    reason = failure_rate_crossed(0.25, 20, 6, 100)
    assert reason == "failure rate 30.0% crossed the limit of 25.0% after 20 items ran (6 failed)"
    assert failure_rate_crossed(0.25, 20, 5, 100) is None
    # A batch smaller than the sample is judged once all of it ran.
    assert failure_rate_crossed(0.5, 3, 2, 3) is not None
    assert failure_rate_crossed(0.5, 2, 2, 3) is None
