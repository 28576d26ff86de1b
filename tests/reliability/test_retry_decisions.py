"""The retry decision of a failed attempt (activities/llm/retries.py), case by case: rate limits
are bounded by the deadline, other errors by the policy's attempts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from activities.llm.retries import PriorAttempts, backoff, decide, error_budget_spent
from contracts.llm import CallPolicy, ErrorClass

POLICY = CallPolicy(
    start_to_close_seconds=60,
    heartbeat_seconds=15,
    schedule_to_close_seconds=180,
    maximum_attempts=3,
    initial_interval_seconds=0.5,
    backoff_coefficient=2.0,
    maximum_interval_seconds=10,
)
NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
DEADLINE = NOW + timedelta(seconds=30)


def test_a_rate_limit_waits_its_retry_after_however_many_came_before() -> None:
    prior = PriorAttempts(attempts=40, rate_limited=38)
    decision = decide(ErrorClass.RATE_LIMITED, timedelta(seconds=2), prior, POLICY, NOW, DEADLINE)
    assert decision.retry and decision.delay == timedelta(seconds=2)


def test_a_retry_after_longer_than_the_policy_allows_is_still_honoured() -> None:
    decision = decide(
        ErrorClass.RATE_LIMITED, timedelta(seconds=25), PriorAttempts(), POLICY, NOW, DEADLINE
    )
    assert decision.retry and decision.delay == timedelta(seconds=25)


def test_a_retry_after_past_the_deadline_is_not_waited_for() -> None:
    decision = decide(
        ErrorClass.RATE_LIMITED, timedelta(seconds=30), PriorAttempts(), POLICY, NOW, DEADLINE
    )
    assert not decision.retry and decision.delay is None
    assert decision.reason == "Retry-After 30.0s ends past the call's deadline (30.0s left)"


def test_a_rate_limit_without_retry_after_backs_off_over_the_rate_limits() -> None:
    decision = decide(
        ErrorClass.RATE_LIMITED, None, PriorAttempts(3, rate_limited=2), POLICY, NOW, DEADLINE
    )
    assert decision.retry and decision.delay == timedelta(seconds=2)  # 0.5 * 2**2


def test_errors_are_bounded_by_the_policy_not_by_the_rate_limits_between() -> None:
    one_error = PriorAttempts(attempts=5, rate_limited=4)
    decision = decide(ErrorClass.SERVER_ERROR, None, one_error, POLICY, NOW, DEADLINE)
    assert decision.retry and decision.delay == backoff(POLICY, 2) == timedelta(seconds=1)
    two_errors = PriorAttempts(attempts=6, rate_limited=4)
    decision = decide(ErrorClass.SERVER_ERROR, None, two_errors, POLICY, NOW, DEADLINE)
    assert not decision.retry
    assert decision.reason == "3 failed attempts, the most the policy allows"


def test_without_a_deadline_rate_limits_count_as_errors() -> None:
    prior = PriorAttempts(attempts=2, rate_limited=2)
    decision = decide(ErrorClass.RATE_LIMITED, timedelta(seconds=1), prior, POLICY, NOW, None)
    assert not decision.retry
    assert error_budget_spent(PriorAttempts(3, rate_limited=3), POLICY, None)
    assert not error_budget_spent(PriorAttempts(3, rate_limited=3), POLICY, DEADLINE)


def test_a_non_retryable_error_is_never_retried() -> None:
    decision = decide(ErrorClass.CONTEXT_WINDOW, None, PriorAttempts(), POLICY, NOW, DEADLINE)
    assert not decision.retry


def test_an_attempt_that_left_no_finished_row_counts_as_a_timeout() -> None:
    rows = [
        (1, "rate_limited", "rate_limited"),
        (2, "error", "server_error"),
        (3, "in_flight", None),
    ]
    prior = PriorAttempts.from_ledger(5, rows)  # attempt 4 left no row at all
    assert (prior.attempts, prior.rate_limited) == (4, 1)
    assert prior.errors(counting_rate_limits=False) == 3
    assert prior.last_error_class == ErrorClass.TIMEOUT
    assert error_budget_spent(prior, POLICY, DEADLINE)
    last = PriorAttempts.from_ledger(3, rows[:2])
    assert last.last_error_class == ErrorClass.SERVER_ERROR
    assert PriorAttempts.from_ledger(1, []).last_error_class is None
