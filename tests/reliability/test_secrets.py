"""A provider key never appears in a log line, the workflow history, the ledger or the audit trail,
even when calls fail and errors are logged."""

from __future__ import annotations

import pytest
from temporalio.client import Client

from infra.settings import KeelSettings
from infra.structured_logging import configure_logging
from llmsim import SimServer
from tests.conftest import reconfigure
from tests.helpers import audit_events, ledger_rows
from tests.reliability.test_llm_calls import CHEAP, ask
from tests.security.history_payloads import readable_history
from workers.builder import build_worker

OPENAI_KEY = "sk-proj-TopSecretKeyThatMustNeverLeak0123456789"
ANTHROPIC_KEY = "sk-ant-api03-AnotherSecretThatMustNeverLeak987"


async def test_provider_keys_never_leak(
    client: Client,
    keel_settings: KeelSettings,
    simulator: SimServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = reconfigure(
        monkeypatch,
        OPENAI_API_KEY=OPENAI_KEY,
        OPENAI_BASE_URL=simulator.openai_base_url,
        ANTHROPIC_API_KEY=ANTHROPIC_KEY,
        ANTHROPIC_BASE_URL=simulator.anthropic_base_url,
        KEEL_LOG_LEVEL="debug",
    )
    assert not settings.uses_simulator  # the keys are really in use
    configure_logging(settings, force=True)
    simulator.add_faults("server_error", model=CHEAP, count=1)
    simulator.add_faults("context_window", model=CHEAP, count=1)
    async with build_worker(client, settings.interactive_task_queue, settings):
        workflow_id, result = await ask(client, settings, models=[CHEAP, "claude-3-5-haiku-latest"])
    assert result.answer.failed_models == [(CHEAP, "context_window")]

    history = await readable_history(client, workflow_id)  # payloads decrypted, as text
    ledger = await ledger_rows(workflow_id)
    audit = await audit_events(workflow_id)
    places = {
        "stderr log lines": capsys.readouterr().err,
        "captured log records": caplog.text,
        "workflow history": history,
        "ledger": " ".join(f"{row.error_message}" for row in ledger),
        "audit trail": " ".join(str(event.payload) for event in audit),
    }
    assert "llm.call_failed" in places["stderr log lines"]  # errors were logged
    for place, text in places.items():
        for key in (OPENAI_KEY, ANTHROPIC_KEY):
            assert key not in text, f"a provider key leaked into the {place}"
            assert key[8:24] not in text, f"part of a provider key leaked into the {place}"
