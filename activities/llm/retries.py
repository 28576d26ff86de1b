"""When a failed attempt is tried again, and after how long: two budgets, not one.

A 429 says "come back after Retry-After", not "this model is broken". So rate-limit retries are
bounded by the call's deadline (the activity's schedule-to-close), honouring every Retry-After,
and the call's error budget (``CallPolicy.maximum_attempts``) counts only the other failures.
Temporal's RetryPolicy counts every attempt alike, so the workflow schedules the call with
unlimited attempts and schedule-to-close as the bound (workflows/llm_calls.py), and this module
decides each failure's fate: the activity raises the ApplicationError it describes.

A rate limit whose wait would end past the deadline is not retried: the workflow moves on to the
next model of the chain at once, instead of holding the call until Temporal's timeout says so.

Pure functions, no I/O: the activity reads the attempt's history from the ledger.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from contracts.llm import CallPolicy, ErrorClass

# "Not now" rather than "not working": the provider's 429 and keel's own shared rate limiter
# (activities/llm/rate_limits.py, outcome ``throttled``) are both this class, with a wait.
RATE_LIMITED = ErrorClass.RATE_LIMITED.value


@dataclass(frozen=True)
class PriorAttempts:
    """What earlier attempts of this activity did, from the ledger."""

    attempts: int = 0
    rate_limited: int = 0
    # The class of the previous attempt's failure (None: first attempt).
    last_error_class: ErrorClass | None = None

    @classmethod
    def from_ledger(cls, attempt: int, rows: list[tuple[int, str, str | None]]) -> PriorAttempts:
        """From the ledger rows ``(attempt, outcome, error_class)`` of the attempts before
        ``attempt``. An attempt with no row, or one left in flight, ended without the activity
        seeing why (Temporal's timeout, a dead worker): an error, not a rate limit."""
        rate_limited = sum(1 for _, _, error_class in rows if error_class == RATE_LIMITED)
        previous = next((row for row in rows if row[0] == attempt - 1), None)
        last: ErrorClass | None = None
        if attempt > 1:
            last = ErrorClass.TIMEOUT
            if previous is not None and previous[2] is not None:
                last = ErrorClass(previous[2])
        return cls(attempts=attempt - 1, rate_limited=rate_limited, last_error_class=last)

    def errors(self, counting_rate_limits: bool) -> int:
        """Failed attempts charged to the error budget."""
        return self.attempts if counting_rate_limits else self.attempts - self.rate_limited


@dataclass(frozen=True)
class RetryDecision:
    retry: bool
    # The wait before the next attempt (None: not retried).
    delay: timedelta | None
    # Why the call stops on this model, for the error message (None: retried).
    reason: str | None = None


def backoff(policy: CallPolicy, count: int) -> timedelta:
    """The policy's exponential backoff after the ``count``-th failure of a kind (1-based)."""
    seconds = policy.initial_interval_seconds * policy.backoff_coefficient ** max(count - 1, 0)
    return timedelta(seconds=min(seconds, policy.maximum_interval_seconds))


def call_deadline(scheduled: datetime, schedule_to_close: timedelta | None) -> datetime | None:
    """When the call (every attempt on this model) must be over; None: no deadline set."""
    if not schedule_to_close:
        return None
    return scheduled + schedule_to_close


def error_budget_spent(prior: PriorAttempts, policy: CallPolicy, deadline: datetime | None) -> bool:
    """True when earlier attempts already used the error budget: the previous one ended in a way
    the activity could not see (Temporal's own timeout, a dead worker), and Temporal, counting
    only the deadline, started one more."""
    return prior.errors(counting_rate_limits=deadline is None) >= policy.maximum_attempts


def decide(
    error_class: ErrorClass,
    retry_after: timedelta | None,
    prior: PriorAttempts,
    policy: CallPolicy,
    now: datetime,
    deadline: datetime | None,
) -> RetryDecision:
    """The fate of an attempt that failed with ``error_class`` (and the provider's Retry-After).

    - not retryable: not retried (the chain decides);
    - a rate limit: retried after Retry-After (else the policy's backoff over the rate limits so
      far) while that wait ends before the deadline; with no deadline set, it is an error;
    - any other retryable error: retried after the policy's backoff over the errors so far (or
      the provider's Retry-After, if it sent one) until ``policy.maximum_attempts`` errors.
    """
    if not error_class.retryable:
        return RetryDecision(retry=False, delay=None, reason="not retryable")
    if error_class == ErrorClass.RATE_LIMITED and deadline is not None:
        delay = retry_after if retry_after is not None else backoff(policy, prior.rate_limited + 1)
        left = deadline - now
        if delay >= left:
            return RetryDecision(
                retry=False,
                delay=None,
                reason=f"Retry-After {delay.total_seconds():.1f}s ends past the call's deadline "
                f"({max(left.total_seconds(), 0):.1f}s left)",
            )
        return RetryDecision(retry=True, delay=delay)
    errors = prior.errors(counting_rate_limits=deadline is None) + 1
    if errors >= policy.maximum_attempts:
        return RetryDecision(
            retry=False,
            delay=None,
            reason=f"{errors} failed attempts, the most the policy allows",
        )
    return RetryDecision(
        retry=True, delay=retry_after if retry_after is not None else backoff(policy, errors)
    )
