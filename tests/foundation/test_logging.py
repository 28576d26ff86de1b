"""Log lines are structured, carry who is running, and never carry a secret."""

from __future__ import annotations

import json
import logging

import pytest
import structlog
from temporalio.client import Client
from temporalio.worker import Worker

from infra.settings import KeelSettings
from infra.structured_logging import configure_logging, redact_text
from llmsim import SimServer
from workflows.ask import AskInput, AskWorkflow

SECRETS = {
    "openai": "sk-proj-A1b2C3d4E5f6G7h8I9j0",
    "anthropic": "sk-ant-api03-Zy9Xw8Vu7Ts6",
    "bearer": "eyJhbGciOiJIUzI1NiJ9.payload.signature",
    "db_password": "hunter2-very-secret",
}


@pytest.fixture
def json_logs(capsys: pytest.CaptureFixture[str]) -> pytest.CaptureFixture[str]:
    configure_logging(KeelSettings(log_format="json", log_level="debug"), force=True)
    return capsys


def _lines(capture: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    err = capture.readouterr().err
    return [json.loads(line) for line in err.splitlines() if line.strip()]


def test_secrets_are_masked_in_structlog_events(json_logs: pytest.CaptureFixture[str]) -> None:
    log = structlog.get_logger("test")
    log.info(
        "calling provider",
        api_key=SECRETS["openai"],
        headers={"Authorization": f"Bearer {SECRETS['bearer']}", "x-api-key": SECRETS["anthropic"]},
        note=f"retrying with key {SECRETS['openai']}",
        dsn=f"postgresql://keel:{SECRETS['db_password']}@db:5432/keel",
        input_tokens=12,
    )
    output = json.dumps(_lines(json_logs))
    for secret in SECRETS.values():
        assert secret not in output
    assert '"input_tokens": 12' in output  # counts named like secrets are kept


def test_secrets_are_masked_in_stdlib_records(json_logs: pytest.CaptureFixture[str]) -> None:
    logging.getLogger("httpx").warning("header Authorization: Bearer %s", SECRETS["bearer"])
    logging.getLogger("other").error("key=%s", SECRETS["anthropic"])
    output = json.dumps(_lines(json_logs))
    assert SECRETS["bearer"] not in output
    assert SECRETS["anthropic"] not in output


def test_redact_text_keeps_ordinary_text() -> None:
    text = "model gpt-4o answered in 120 ms (skill: ask-the-user)"
    assert redact_text(text) == text


def test_contextvars_are_bound_to_lines(json_logs: pytest.CaptureFixture[str]) -> None:
    with structlog.contextvars.bound_contextvars(workflow_id="wf-1", attempt=2):
        structlog.get_logger("test").info("step")
    (line,) = _lines(json_logs)
    assert line["workflow_id"] == "wf-1"
    assert line["attempt"] == 2
    assert line["event"] == "step"


async def test_worker_lines_carry_workflow_run_activity_and_attempt(
    client: Client,
    keel_settings: KeelSettings,
    interactive_worker: Worker,
    simulator: SimServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A person can follow one request through the logs: the interceptor binds the ids."""
    configure_logging(keel_settings, force=True)
    simulator.add_faults("server_error", model="gpt-4o-mini", count=1)
    workflow_id = "logging-context-check"
    handle = await client.start_workflow(
        AskWorkflow.run,
        AskInput(prompt="hello", models=["gpt-4o-mini"]),
        id=workflow_id,
        task_queue=keel_settings.interactive_task_queue,
    )
    await handle.result()
    lines = [
        line
        for line in _lines(capsys)
        if line.get("event") in ("llm.call_failed", "llm.call_succeeded")
    ]
    assert [(line["event"], line["attempt"]) for line in lines] == [
        ("llm.call_failed", 1),
        ("llm.call_succeeded", 2),
    ]
    for line in lines:
        assert line["workflow_id"] == workflow_id
        assert line["run_id"] == handle.result_run_id
        assert line["activity"] == "complete_chat"
