"""``python -m llmsim`` as a real process, and the ``keel sim`` command function."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest
import typer
from typer.testing import CliRunner

import starters.sim
from infra.settings import get_settings


@pytest.mark.slow  # a real simulator process
def test_module_entry_point_serves_and_stops_promptly(tmp_path: Path) -> None:
    profile = tmp_path / "faults.json"
    profile.write_text(json.dumps({"scripted": [{"model": "gpt-4o", "kind": "hang"}]}))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llmsim",
            "--port",
            "0",
            "--profile",
            "flaky",
            "--seed",
            "3",
            "--latency-scale",
            "0",
            "--profile-file",
            str(profile),
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("llmsim listening on http://127.0.0.1:"), line
        url = line.split()[-1]
        assert proc.stdout.readline().strip() == f"OPENAI_BASE_URL={url}/v1"
        assert httpx2.get(f"{url}/health").json()["status"] == "ok"
        faults = httpx2.get(f"{url}/admin/faults").json()
        assert faults["scripted"][0]["kind"] == "hang"
        assert any(rule["model"] == "gpt-4o" for rule in faults["rules"])
        # A request held by a hang must not keep the process alive.
        with pytest.raises(httpx2.TimeoutException):
            httpx2.post(
                f"{url}/v1/chat/completions",
                timeout=0.3,
                json={"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]},
            )
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)
        assert time.monotonic() - started < 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_keel_sim_command(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []

    def fake_serve(**kwargs: Any) -> None:
        calls.append(kwargs)
        kwargs["on_ready"]("http://127.0.0.1:4321")

    monkeypatch.setattr(starters.sim, "serve", fake_serve)
    app = typer.Typer()
    app.command()(starters.sim.sim)
    runner = CliRunner()

    result = runner.invoke(app, ["--profile", "flaky", "--seed", "5", "--latency-scale", "0"])
    assert result.exit_code == 0, result.output
    assert "OPENAI_BASE_URL=http://127.0.0.1:4321/v1" in result.output
    assert "ANTHROPIC_BASE_URL=http://127.0.0.1:4321" in result.output
    assert calls[0]["port"] == get_settings().simulator_port
    assert calls[0]["profile"] == "flaky" and calls[0]["seed"] == 5
    assert calls[0]["latency_scale"] == 0

    result = runner.invoke(app, ["--port", "0", "--profile", "nope"])
    assert result.exit_code != 0 and "unknown profile" in result.output
    assert len(calls) == 1
