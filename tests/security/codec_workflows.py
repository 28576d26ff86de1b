"""Small workflows that move text through every kind of payload: input, activity input and
result, signal, workflow result, and an activity failure's message."""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError


@activity.defn
async def shout(text: str) -> str:
    return text.upper()


@activity.defn
async def refuse(text: str) -> str:
    raise ApplicationError(f"cannot handle the prompt {text!r}", non_retryable=True)


@workflow.defn
class RelayWorkflow:
    """Shouts its input back once it has been signalled ``reply``; returns both. ``echo`` (an
    update) shouts its argument back."""

    def __init__(self) -> None:
        self.reply: str | None = None

    @workflow.signal
    def send_reply(self, text: str) -> None:
        self.reply = text

    @workflow.update
    def echo(self, text: str) -> str:
        return text.upper()

    @workflow.run
    async def run(self, text: str) -> str:
        loud = await workflow.execute_activity(
            shout, text, start_to_close_timeout=timedelta(seconds=30)
        )
        await workflow.wait_condition(lambda: self.reply is not None)
        return f"{loud} / {self.reply}"


@workflow.defn
class RefusingWorkflow:
    """Fails with an activity error whose message quotes its input."""

    @workflow.run
    async def run(self, text: str) -> str:
        return await workflow.execute_activity(
            refuse,
            text,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(maximum_attempts=1),
        )
