"""`keel batch ...` as a user runs it: the real CLI in a subprocess, against this test's Temporal
server, Postgres database and an in-process batch worker."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.worker import Worker

from activities.batch.files import BatchFileLimits, parse_line
from infra.settings import KeelSettings
from llmsim import SimServer
from tests.batch.conftest import CHEAP, items_of
from tests.conftest import KeelWorkers, reconfigure
from tests.helpers import KEEL, CliResult, KeelCli

KeelRun = Callable[..., Awaitable[CliResult]]


@pytest.fixture
def keel(client: Client, keel_settings: KeelSettings) -> KeelRun:
    return KeelCli(client, keel_settings, columns=200)


def write_lines(path: Path, lines: Sequence[object]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def mixed_file(tmp_path: Path) -> Path:
    """Six keel lines, one OpenAI Batch API line, one malformed line (line 5)."""
    lines: list[object] = [
        {"custom_id": f"k{n}", "prompt": f"Question {n}?", "model": CHEAP, "max_tokens": 16}
        for n in range(4)
    ]
    lines.append('{"custom_id": "broken", ')
    lines.append(
        {
            "custom_id": "oa",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": CHEAP, "messages": [{"role": "user", "content": "Hi"}]},
        }
    )
    lines += [
        {"custom_id": f"m{n}", "messages": [{"role": "user", "content": "Hello"}], "model": CHEAP}
        for n in range(2)
    ]
    return write_lines(tmp_path / "mixed.jsonl", lines)


@pytest.mark.slow
async def test_start_watch_status_results_and_list(
    keel: KeelRun,
    batch_worker: Worker,
    simulator: SimServer,
    tmp_path: Path,
) -> None:
    run = keel
    started = await run(
        "batch", "start", str(mixed_file(tmp_path)), "--id", "cli1", "--concurrency", "3", "--watch"
    )
    assert started.code == 0, started.err
    assert "8 line(s): 7 valid, 1 malformed" in started.out
    assert "line 5: invalid JSON" in started.out
    assert "keel batch status cli1 --watch" in started.out
    assert "7 done · 1 failed · 0 skipped · 0 to go · 8 total" in started.out
    assert "completed" in started.out

    # --watch ends with the status report: what happened and the next command.
    assert "batch cli1  completed" in started.out
    assert "keel batch results cli1" in started.out

    output = tmp_path / "results.jsonl"
    results = await run("batch", "results", "cli1", "-o", str(output))
    assert results.code == 0 and "8 line(s) to" in results.err
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert [line["custom_id"] for line in lines] == [
        "k0", "k1", "k2", "k3", "line-5", "oa", "m0", "m1",
    ]  # fmt: skip
    ok = lines[0]
    assert ok["error"] is None and ok["response"]["status_code"] == 200
    body = ok["response"]["body"]
    assert body["object"] == "chat.completion" and body["model"] == CHEAP
    assert body["choices"][0]["message"]["content"]
    assert body["usage"]["total_tokens"] == (
        body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    )
    broken = lines[4]
    assert broken["response"] is None and broken["error"]["code"] == "invalid_request"
    assert "line 5" in broken["error"]["message"]

    listed = await run("batch", "list")
    assert listed.code == 0 and "cli1" in listed.out and "completed" in listed.out


@pytest.mark.slow  # a real `keel` process
async def test_a_file_with_duplicate_ids_is_refused_with_the_lines(
    keel: KeelRun, batch_worker: Worker, simulator: SimServer, tmp_path: Path
) -> None:
    run = keel
    dupes = write_lines(
        tmp_path / "dupes.jsonl",
        [{"custom_id": "a", "prompt": "x"}, {"custom_id": "b", "prompt": "y"},
         {"custom_id": "a", "prompt": "z"}],
    )  # fmt: skip
    refused = await run("batch", "start", str(dupes))
    assert refused.code == 1
    assert "duplicate custom_id 'a' on lines 1, 3" in refused.out
    assert "each custom_id must be unique" in refused.err


@pytest.mark.slow
async def test_the_budget_gate_from_the_command_line(
    keel: KeelRun,
    client: Client,
    keel_settings: KeelSettings,
    keel_workers: KeelWorkers,
    simulator: SimServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = keel
    settings = reconfigure(monkeypatch, KEEL_REVIEWERS='{"alice": ["batch-owner"]}')
    await keel_workers.start(settings, settings.batch_task_queue)  # the worker's roster
    lines = [{"custom_id": f"i{n}", "prompt": f"Item {n}", "model": CHEAP, "max_tokens": 32}
             for n in range(12)]  # fmt: skip
    path = write_lines(tmp_path / "budget.jsonl", lines)
    started = await run(
        "batch", "start", str(path), "--id", "cli2", "--concurrency", "2",
        "--budget-usd", "0.0001", "--watch",
    )  # fmt: skip
    assert started.code == 0, started.err
    # --watch stops at the gate and says how to decide it.
    assert "waiting at budget-1" in started.out
    assert "keel batch budget cli2 --raise-to AMOUNT" in started.out

    # The CLI checks the reviewers table as it is now (the worker also has KEEL_REVIEWERS).
    added = await run("reviewers", "add", "alice", "--role", "batch-owner")
    assert added.code == 0, added.err
    # The same sender as `keel approve`: someone off the roster is refused (exit 5), recorded.
    outsider = await run("batch", "budget", "cli2", "--raise-to", "1", "--by", "mallory")
    assert outsider.code == 5, outsider.err
    assert "mallory" in outsider.err
    trail = await run("audit", "batch-cli2", "--json")
    assert any(
        json.loads(line)["event"] == "approval.refused" and json.loads(line)["actor"] == "mallory"
        for line in trail.out.splitlines()
    ), trail.out

    decided = await run("batch", "budget", "cli2", "--raise-to", "1", "--by", "alice")
    assert decided.code == 0, decided.err

    handle = client.get_workflow_handle("batch-cli2")
    await asyncio.wait_for(handle.result(), timeout=timedelta(seconds=60).total_seconds())
    assert {i.status for i in await items_of("cli2")} == {"ok"}


@pytest.mark.slow  # real `keel` processes
async def test_pause_resume_cancel_and_retry_from_the_command_line(
    keel: KeelRun,
    client: Client,
    batch_worker: Worker,
    simulator: SimServer,
    tmp_path: Path,
) -> None:
    run = keel
    simulator.configure(fixed_latency_s=1.0)  # 20 items one at a time: ~20 s to steer it in
    lines = [{"custom_id": f"c{n}", "prompt": f"Item {n}", "model": CHEAP, "max_tokens": 8}
             for n in range(20)]  # fmt: skip
    batch_id = f"ctl-{uuid.uuid4().hex[:6]}"
    started = await run(
        "batch", "start", str(write_lines(tmp_path / "steer.jsonl", lines)),
        "--id", batch_id, "--concurrency", "1",
    )  # fmt: skip
    assert started.code == 0, started.err

    paused = await run("batch", "pause", batch_id, "--by", "alice", "--reason", "look first")
    assert paused.code == 0, paused.err
    assert f"batch {batch_id}: paused — no new items start" in paused.out
    assert f"keel batch resume {batch_id}" in paused.out
    # The workflow's refusal, in its words, with exit 1.
    twice = await run("batch", "pause", batch_id, "--by", "bob")
    assert twice.code == 1
    assert f"batch {batch_id} is already paused (by alice)" in twice.err
    assert f"keel batch status {batch_id}" in twice.err

    resumed = await run("batch", "resume", batch_id, "--by", "alice")
    assert resumed.code == 0, resumed.err
    assert f"batch {batch_id}: running — items start again" in resumed.out
    cancelled = await run("batch", "cancel", batch_id, "--by", "alice")
    assert cancelled.code == 0, cancelled.err
    assert f"batch {batch_id}: cancelling — pending items will be skipped" in cancelled.out

    handle = client.get_workflow_handle(f"batch-{batch_id}")
    await asyncio.wait_for(handle.result(), timeout=60)
    statuses = {i.status for i in await items_of(batch_id)}
    assert "skipped" in statuses and "failed" not in statuses

    ended = await run("batch", "pause", batch_id)
    assert ended.code == 1
    assert f"batch {batch_id} is not running (status: cancelled)" in ended.err
    nothing = await run("batch", "retry-failed", batch_id)
    assert nothing.code == 1
    assert f"batch {batch_id} has no failed items that can run again" in nothing.err
    missing = await run("batch", "retry-failed", "no-such-batch")
    assert missing.code == 1
    assert "no batch 'no-such-batch'" in missing.err and "keel batch list" in missing.err


@pytest.mark.slow  # real `keel` processes
async def test_batch_schedules_from_the_command_line(
    keel: KeelRun, client: Client, tmp_path: Path
) -> None:
    run = keel
    path = write_lines(tmp_path / "nightly.jsonl", [{"custom_id": "n0", "prompt": "Score"}])
    schedule_id = f"nightly-{uuid.uuid4().hex[:6]}"
    created = await run("batch", "schedule", str(path), "--cron", "0 2 * * *", "--id", schedule_id)
    assert created.code == 0, created.err
    assert f"schedule {schedule_id}: 0 2 * * * → batch of {path}" in created.out
    try:
        again = await run(
            "batch", "schedule", str(path), "--cron", "0 3 * * *", "--id", schedule_id
        )
        assert again.code == 1
        assert f"schedule {schedule_id} already exists" in again.err
        assert f"keel batch schedule-delete {schedule_id}" in again.err

        listed = await run("batch", "schedule-list")
        assert listed.code == 0, listed.err
        (row,) = [line for line in listed.out.splitlines() if schedule_id in line]
        assert "0 2 * * *" in row and str(path) in row

        paused = await run("batch", "schedule-pause", schedule_id)
        assert paused.code == 0 and f"schedule {schedule_id} paused" in paused.out
        description = await client.get_schedule_handle(schedule_id).describe()
        assert description.schedule.state.paused
        unpaused = await run("batch", "schedule-pause", schedule_id, "--unpause")
        assert unpaused.code == 0 and f"schedule {schedule_id} resumed" in unpaused.out
        description = await client.get_schedule_handle(schedule_id).describe()
        assert not description.schedule.state.paused
    finally:
        deleted = await run("batch", "schedule-delete", schedule_id)
    assert deleted.code == 0 and f"schedule {schedule_id} deleted" in deleted.out
    gone = await run("batch", "schedule-delete", schedule_id)
    assert gone.code == 1
    assert f"no schedule '{schedule_id}'" in gone.err and "keel batch schedule-list" in gone.err
    gone_pause = await run("batch", "schedule-pause", schedule_id)
    assert gone_pause.code == 1 and f"no schedule '{schedule_id}'" in gone_pause.err


@pytest.mark.slow  # a real `keel` process
def test_start_help_shows_the_line_format_with_examples_that_parse() -> None:
    """The line format is where a person looks for it: `keel batch start --help`, with
    examples of both shapes that keel's own parser accepts."""
    shown = subprocess.run(
        [str(KEEL), "batch", "start", "--help"],
        env={**os.environ, "COLUMNS": "250", "NO_COLOR": "1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    for field in (
        "custom_id",
        "prompt",
        "messages",
        "system",
        "max_tokens",
        "metadata",
        "--strict",
    ):
        assert field in shown.stdout, field
    examples = [
        line.strip()
        for line in shown.stdout.splitlines()
        if line.strip().startswith('{"custom_id"')
    ]
    limits = BatchFileLimits.from_settings(KeelSettings())
    parsed = [
        parse_line(number, example, limits) for number, example in enumerate(examples, start=1)
    ]
    assert [(p.line_format, p.problem) for p in parsed if p] == [
        ("keel", None),
        ("keel", None),
        ("openai", None),
    ]
