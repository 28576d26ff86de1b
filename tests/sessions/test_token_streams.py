"""The token-stream transport on a real Postgres: dense seqs under racing writers, and followers
that keep up when the LISTEN connection dies."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from infra.token_streams import StreamEventType, StreamHub, StreamPublisher, read_events


async def test_racing_publishers_get_dense_sequence_numbers(database_url: str) -> None:
    key = f"test/{uuid.uuid4().hex}"

    async def publish(name: str) -> None:
        async with StreamPublisher(key) as publisher:
            for index in range(20):
                publisher.publish(StreamEventType.ATTEMPT, {"n": index}, attempt=name)
                await asyncio.sleep(0)

    await asyncio.gather(*(publish(f"writer-{i}") for i in range(4)))
    events = await read_events(key)
    assert [e.seq for e in events] == list(range(1, 81))
    for writer in range(4):  # each writer's events kept their order
        mine = [e.data["n"] for e in events if e.attempt == f"writer-{writer}"]
        assert mine == list(range(20))


async def test_a_follower_keeps_up_when_the_listener_connection_is_killed(
    database_url: str,
) -> None:
    key = f"test/{uuid.uuid4().hex}"
    async with StreamHub(database_url, poll_interval=0.2) as hub:
        received: list[str] = []

        async def follow() -> None:
            async for event in hub.follow(key):
                received.append(str(event.data.get("text", "")))

        follower = asyncio.create_task(follow())
        async with StreamPublisher(key) as publisher:
            publisher.publish(StreamEventType.DELTA, {"text": "before "}, attempt="a")
        await asyncio.sleep(0.3)
        admin = await asyncpg.connect(database_url)
        try:
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE query LIKE 'LISTEN%' AND datname = current_database()"
            )
        finally:
            await admin.close()
        assert killed == 1
        async with StreamPublisher(key) as publisher:
            publisher.publish(StreamEventType.DELTA, {"text": "during "}, attempt="a")
            publisher.publish(StreamEventType.DONE, {"text": "before during "})
        await asyncio.wait_for(follower, timeout=10)
        assert received == ["before ", "during ", "before during "]
        for _ in range(50):  # and the hub listens again
            if hub.listening:
                break
            await asyncio.sleep(0.1)
        assert hub.listening


async def test_a_fast_stream_is_written_every_few_tens_of_ms_and_resumes_exactly(
    database_url: str,
) -> None:
    """Deltas arriving faster than the flush interval share rows (one insert and NOTIFY per
    interval, not per delta); the first text still goes out alone, and a reader resuming after
    any seq gets exactly the rest."""
    key = f"test/{uuid.uuid4().hex}"
    pieces = [f"t{index} " for index in range(200)]
    started = asyncio.get_running_loop().time()
    async with StreamPublisher(key, flush_interval=0.03) as publisher:
        publisher.publish(StreamEventType.ATTEMPT, {"attempt": 1}, attempt="a")
        for piece in pieces:
            publisher.publish(StreamEventType.DELTA, {"text": piece}, attempt="a")
            await asyncio.sleep(0.002)
    elapsed = asyncio.get_running_loop().time() - started
    events = await read_events(key)
    deltas = [e for e in events if e.type == StreamEventType.DELTA]
    assert "".join(e.data["text"] for e in deltas) == "".join(pieces)
    assert deltas[0].data["text"] == pieces[0]  # the first token is not held back
    assert publisher.writes <= elapsed / 0.03 + 3  # one write per interval (and the first ones)
    assert len(deltas) < len(pieces) / 4
    for event in events:
        rest = await read_events(key, after_seq=event.seq)
        assert [e.seq for e in rest] == list(range(event.seq + 1, len(events) + 1))
