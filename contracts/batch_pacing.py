"""The arithmetic of a paged batch, shared by the workflow and the page activity: page sizes, the
batch budget's launch rule and its gate's proposal, the failure-rate limit, history room.

Pure functions over numbers: no I/O, no clock, so both sides (and replay) decide alike.
"""

from __future__ import annotations

from decimal import ROUND_UP, Decimal

# A page keeps claiming for this long, then drains and reports: short enough that pauses, budget
# gates and counts in the workflow stay current, long enough that its tail (the last calls
# draining while no new ones start) is a small share of it.
PAGE_SECONDS = 30.0
# Items a page may take per slot; the time slice usually ends a page first.
ITEMS_PER_SLOT = 50
# What one slow-path item may add to the workflow's history: its call activity (scheduled,
# started, completed), the fallback audit marker, its share of workflow tasks and outcome writes.
EVENTS_PER_SLOW_ITEM = 8
# What a page adds (scheduled, started, completed, workflow tasks) and a margin for the finish.
EVENTS_PER_PAGE = 10
EVENTS_RESERVE = 100
# Temporal warns at 10 MB of history and fails a run at 50 MB.
HISTORY_BYTES_LIMIT = 8_000_000
# The failure rate is judged once this many items ran (or all of a smaller batch).
FAILURE_RATE_MIN_SAMPLE = 20
# A page hands back at most this many slow-path items (each carries its request: payload size).
MAX_SLOW_ITEMS = 200


def history_room(length: int, limit: int, items_taken: int) -> int:
    """Events the run may still add before it must continue-as-new, keeping room for the worst
    case: every item its pages took (``items_taken``) falling to the slow path. A page reports
    its slow items only when it ends, and the run cannot continue-as-new while a page runs, so
    the room is reserved when items are taken, not when they fail."""
    return limit - length - EVENTS_RESERVE - items_taken * EVENTS_PER_SLOW_ITEM


def page_quota(slots: int, room: int) -> int:
    """Items the next page may take: ``ITEMS_PER_SLOT`` per slot, but never more than the run's
    history could absorb if every one of them fell to the per-item slow path. 0: no room (the
    run continues-as-new)."""
    if room < EVENTS_PER_PAGE + EVENTS_PER_SLOW_ITEM:
        return 0
    return max(0, min(slots * ITEMS_PER_SLOT, (room - EVENTS_PER_PAGE) // EVENTS_PER_SLOW_ITEM))


def page_worst_slow_items(slots: int) -> int:
    """Slow-path items one page can hand back: it stops claiming once it holds
    ``min(slots, MAX_SLOW_ITEMS)`` of them, and the calls then in flight (at most ``slots``) may
    fail too."""
    return min(slots, MAX_SLOW_ITEMS) + slots


def history_room_for_pages(length: int, limit: int, slow_in_flight: int) -> int:
    """Events the run may still add before it must continue-as-new: the reserve, and the worst
    case of the slow-path calls still running (a finished one's events are in ``length``)."""
    return limit - length - EVENTS_RESERVE - slow_in_flight * EVENTS_PER_SLOW_ITEM


def full_page_quota(slots: int, room: int) -> int:
    """Items the next page may take: a full page (``ITEMS_PER_SLOT`` per slot) when the run's
    history can absorb the most slow-path items any page hands back; else only as many items
    as could all fall to the slow path (``page_quota``). A run's size is then bounded by its
    pages' failures, not by the items they take: a 5,000-item batch is one run, not five, and
    so not five drains of the page in flight."""
    if room >= EVENTS_PER_PAGE + page_worst_slow_items(slots) * EVENTS_PER_SLOW_ITEM:
        return slots * ITEMS_PER_SLOT
    return page_quota(slots, room)


def page_slots(concurrency: int, slow_in_flight: int) -> int:
    """Calls the next page may have in flight: the batch's cap less its slow-path calls."""
    return max(0, concurrency - slow_in_flight)


def budget_allows_one_more(
    budget: Decimal | None, spent: Decimal, priced_items: int, in_flight: int
) -> bool:
    """May one more item start? Spent + (in flight + 1) x the average item cost must stay
    within the budget; before any item is priced, one runs alone to price one. This is the
    budget's promise: never over by more than what was in flight, with even costs not at all."""
    if budget is None:
        return True
    if priced_items <= 0:
        return in_flight == 0
    estimate = spent / priced_items
    return spent + (in_flight + 1) * estimate <= budget


def cents_up(amount: Decimal) -> Decimal:
    return amount.quantize(Decimal("0.01"), rounding=ROUND_UP)


def suggested_budget(
    spent: Decimal, budget: Decimal, priced_items: int, remaining_items: int
) -> Decimal:
    """What the budget gate proposes: enough to finish at the average cost so far, and always
    at least a cent above the current budget."""
    estimate = spent / priced_items if priced_items > 0 else Decimal(0)
    return max(
        cents_up(spent + max(remaining_items, 1) * estimate), cents_up(budget) + Decimal("0.01")
    )


def failure_rate_crossed(
    limit: float | None, ran: int, ran_failed: int, runnable_total: int
) -> str | None:
    """Why the batch must abort (its failure rate crossed ``limit``), or None. Judged once
    ``FAILURE_RATE_MIN_SAMPLE`` items ran, or all of a smaller batch; malformed lines (never
    sent to a model) count in neither ``ran`` nor ``runnable_total``."""
    sample = min(FAILURE_RATE_MIN_SAMPLE, max(1, runnable_total))
    if limit is None or ran < sample:
        return None
    rate = ran_failed / ran
    if rate <= limit:
        return None
    return (
        f"failure rate {rate:.1%} crossed the limit of {limit:.1%} after {ran} items ran "
        f"({ran_failed} failed)"
    )
