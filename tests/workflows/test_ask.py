"""AskWorkflow and ask_llm's orchestration: the chain of models, fallbacks, and what is audited."""

from __future__ import annotations

import pytest
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError

from contracts.llm import (
    ErrorClass,
    FallbackPolicy,
)
from tests.workflows.conftest import Rig
from workflows.ask import AskInput, AskWorkflow


async def ask(rig: Rig, params: AskInput) -> tuple[str, object]:
    handle = await rig.start(AskWorkflow.run, params)
    return handle.id, await handle.result()


async def test_a_non_retryable_failure_falls_back_to_the_next_model(rig: Rig) -> None:
    rig.mocks.llm.failures["model-a"] = [ErrorClass.MODEL_NOT_FOUND]

    handle = await rig.start(AskWorkflow.run, AskInput(prompt="What is keel?", tenant="acme"))
    result = await handle.result()

    assert result.answer.model == "model-b"
    assert result.answer.text == "model-b answers: What is keel?"
    assert result.fallback_used is True
    assert result.answer.failed_models == [("model-a", "model_not_found")]
    assert result.cost_usd == rig.mocks.llm.cost
    # model-a is asked once (not retried: the class is non-retryable), then model-b.
    attempts = rig.mocks.llm.attempts()
    assert [a.model for a in attempts] == ["model-a", "model-b"]
    assert attempts[1].fallback_from == "model-a"
    assert attempts[0].request.purpose == "ask" and attempts[0].request.tenant == "acme"
    audit = rig.mocks.audit
    assert audit.types(handle.id) == ["ask.started", "llm.fallback", "ask.completed"]
    assert audit.of_type("llm.fallback")[0].payload == {
        "purpose": "ask",
        "from_model": "model-a",
        "cause": "model_not_found",
        "to_model": "model-b",
    }
    completed = audit.of_type("ask.completed")[0]
    assert completed.tenant == "acme"
    assert completed.payload["model"] == "model-b"
    assert completed.payload["fallback_used"] is True
    assert completed.payload["failed_models"] == [["model-a", "model_not_found"]]
    # The answering call wrote that row with its ledger row: each attempt carried its own
    # (what failed before it), and no local activity ran after the answer.
    assert result.answer.records_written
    carried = [a.records.audit for a in attempts if a.records and a.records.audit]
    assert [(r.event_type, r.payload["fallback_used"]) for r in carried] == [
        ("ask.completed", False),
        ("ask.completed", True),
    ]
    assert completed.event_key == carried[1].event_key


async def test_a_retryable_failure_is_retried_on_the_same_model(rig: Rig) -> None:
    rig.mocks.llm.failures["model-a"] = [ErrorClass.SERVER_ERROR, ErrorClass.OVERLOADED]

    handle = await rig.start(AskWorkflow.run, AskInput(prompt="hi"))
    result = await handle.result()

    assert result.answer.model == "model-a" and result.answer.attempts == 3
    assert result.fallback_used is False and result.answer.failed_models == []
    assert rig.mocks.llm.models_called() == ["model-a"] * 3
    assert "llm.fallback" not in rig.mocks.audit.types(handle.id)


async def test_a_content_policy_refusal_stops_the_chain(rig: Rig) -> None:
    rig.mocks.llm.failures["model-a"] = [ErrorClass.CONTENT_POLICY]

    handle = await rig.start(AskWorkflow.run, AskInput(prompt="something refused"))
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()

    cause = failure.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "LlmChainExhausted"
    assert "model-a: content_policy" in cause.message and cause.non_retryable
    # The refusal is about the prompt: model-b is never asked.
    assert rig.mocks.llm.models_called() == ["model-a"]
    exhausted = rig.mocks.audit.of_type("llm.chain_exhausted")[0]
    assert exhausted.payload["failures"] == [["model-a", "content_policy"]]
    assert "ask.completed" not in rig.mocks.audit.types(handle.id)


async def test_an_open_breaker_is_skipped_without_a_call(rig: Rig) -> None:
    rig.mocks.llm.breaker_open.add("model-a")

    result = await (await rig.start(AskWorkflow.run, AskInput(prompt="hi"))).result()

    assert result.answer.model == "model-b"
    assert result.answer.failed_models == [("model-a", "circuit_open")]
    assert rig.mocks.llm.models_called() == ["model-b"]


async def test_an_exhausted_chain_answers_with_the_fallback_response(rig: Rig) -> None:
    rig.mocks.llm.failures["model-a"] = [ErrorClass.AUTHENTICATION]
    rig.mocks.llm.failures["model-b"] = [ErrorClass.BAD_REQUEST]

    handle = await rig.start(
        AskWorkflow.run,
        AskInput(
            prompt="hi",
            fallback_policy=FallbackPolicy.RESPONSE,
            fallback_response="Sorry, try again later.",
        ),
    )
    result = await handle.result()

    assert result.answer.text == "Sorry, try again later."
    assert result.answer.model == "fallback" and result.answer.fallback_used
    assert result.fallback_used is True and result.cost_usd is None
    assert result.answer.failed_models == [
        ("model-a", "authentication"),
        ("model-b", "bad_request"),
    ]
    assert rig.mocks.audit.types(handle.id) == [
        "ask.started",
        "llm.fallback",
        "llm.chain_exhausted",
        "ask.completed",
    ]
    completed = rig.mocks.audit.of_type("ask.completed")[0].payload
    assert completed["fallback_response"] is True and completed["model"] == "fallback"
    assert not result.answer.records_written  # no model answered: the workflow wrote the row


async def test_an_exhausted_chain_fails_the_workflow_naming_each_model(rig: Rig) -> None:
    rig.mocks.llm.failures["model-a"] = [ErrorClass.MODEL_NOT_FOUND]
    rig.mocks.llm.failures["model-b"] = [ErrorClass.CONTEXT_WINDOW]

    handle = await rig.start(
        AskWorkflow.run, AskInput(prompt="hi", fallback_policy=FallbackPolicy.FAIL)
    )
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()

    cause = failure.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "LlmChainExhausted"
    assert "model-a: model_not_found; model-b: context_window" in cause.message
    assert "keel audit" in cause.message
    assert rig.mocks.llm.models_called() == ["model-a", "model-b"]
