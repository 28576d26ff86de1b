"""Token streams: how an answer's tokens reach a client while the durable LLM activity runs.

The transport is Postgres: every event is a row of ``stream_events`` (dense ``seq`` per stream)
and the same statement that inserts it sends a ``NOTIFY`` carrying it. A follower LISTENs for
the notifications and reads the table to catch up, so a client that reconnects with the last
``seq`` it saw resumes with no gap and no duplicate. Why Postgres and not Temporal's workflow
streams: ARCHITECTURE.md ("Streaming tokens"), measured by ``bench/stream_transport.py``.

Events of one stream, in order:

- ``attempt``: an LLM attempt begins (``data``: attempt number, model). Anything streamed before
  it belongs to a failed attempt: discard it. Every later ``delta`` names the attempt it came
  from (``attempt``), so deltas of an abandoned attempt still running somewhere are ignorable.
- ``delta``: text (``data.text``), or a piece of a tool call (``data.tool_call``: ``index``,
  ``arguments``, and on its first piece ``id`` and ``name``).
- ``done``: the final text exactly as stored (``data.text``) and tool calls
  (``data.tool_calls``), plus usage and cost. Terminal.
- ``error``: the turn failed (``data.message``, ``data.type``). Terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from types import TracebackType
from typing import Any

import asyncpg
import structlog
from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from infra.database import get_engine, role_server_settings

log = structlog.get_logger(__name__)

CHANNEL = "keel_stream_events"
# Postgres refuses NOTIFY payloads of 8000 bytes or more; bigger batches notify only their
# last seq and followers read the rows.
MAX_NOTIFY_BYTES = 7900
APPEND_RETRIES = 5
FLUSH_TIMEOUT_SECONDS = 5.0
# After a write that carried text, the next waits this long, gathering the deltas that arrive
# meanwhile into one row: a reader cannot tell 30 ms apart, while a row and a NOTIFY per delta
# (a fast model sends hundreds a second) cost Postgres, the worker and every listener CPU.
FLUSH_INTERVAL_SECONDS = 0.03


class StreamEventType(StrEnum):
    ATTEMPT = "attempt"
    DELTA = "delta"
    DONE = "done"
    ERROR = "error"


TERMINAL_EVENTS = frozenset({StreamEventType.DONE, StreamEventType.ERROR})


class NewStreamEvent(BaseModel):
    type: StreamEventType
    attempt: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)


class StreamEvent(NewStreamEvent):
    seq: int

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL_EVENTS


# One round trip: the stream's advisory lock, the events numbered after its last seq and
# inserted, and a NOTIFY with the rows themselves (or, when too big for a notification, only the
# last seq): migrations/versions/0013_stream_append_function.py.
_APPEND = text(
    "SELECT keel_append_stream_events(CAST(:key AS text), CAST(:events AS jsonb), "
    "CAST(:channel AS text), CAST(:max_bytes AS integer))"
)


async def append_events(
    connection: AsyncConnection | AsyncSession,
    stream_key: str,
    events: Sequence[NewStreamEvent],
) -> int:
    """Append ``events`` to the stream; returns the last seq. The notification goes out when the
    surrounding transaction commits (in autocommit: with the statement), so a follower that
    hears it can always read the rows.

    Writers of one stream are serialised by a transaction-scoped advisory lock on the stream
    key, taken by the same statement, so racing writers (a retried attempt overlapping its
    predecessor) queue instead of colliding on (stream_key, seq)."""
    payload = json.dumps([e.model_dump(mode="json") for e in events])
    result = await connection.execute(
        _APPEND,
        {"key": stream_key, "events": payload, "channel": CHANNEL, "max_bytes": MAX_NOTIFY_BYTES},
    )
    return int(result.scalar_one())


async def has_terminal_event(connection: AsyncConnection | AsyncSession, stream_key: str) -> bool:
    result = await connection.execute(
        text(
            "SELECT 1 FROM stream_events WHERE stream_key = :key AND type IN ('done', 'error') "
            "LIMIT 1"
        ),
        {"key": stream_key},
    )
    return result.first() is not None


async def read_events(
    stream_key: str, after_seq: int = 0, engine: AsyncEngine | None = None
) -> list[StreamEvent]:
    async with (engine or get_engine()).connect() as connection:
        result = await connection.execute(
            text(
                "SELECT seq, type, attempt, data FROM stream_events "
                "WHERE stream_key = :key AND seq > :after ORDER BY seq"
            ),
            {"key": stream_key, "after": after_seq},
        )
        return [
            StreamEvent(seq=row.seq, type=row.type, attempt=row.attempt, data=row.data)
            for row in result
        ]


async def prune_streams(
    connection: AsyncConnection | AsyncSession, older_than: timedelta, limit: int = 1000
) -> int:
    """Delete up to ``limit`` events older than ``older_than`` (streams are for live clients;
    the conversation itself lives in ``messages``)."""
    result = await connection.execute(
        text(
            "DELETE FROM stream_events WHERE id IN (SELECT id FROM stream_events "
            "WHERE created_at < :cutoff ORDER BY created_at LIMIT :limit)"
        ),
        {"cutoff": datetime.now(UTC) - older_than, "limit": limit},
    )
    return int(getattr(result, "rowcount", 0) or 0)


# --- Producing -------------------------------------------------------------------------------


def _coalesced(last: dict[str, Any], data: dict[str, Any]) -> bool:
    """Merge delta ``data`` into the waiting delta ``last`` when they continue each other: text
    after text, or more arguments of the same tool call. False: they stay two events."""
    if "tool_call" not in last and "tool_call" not in data:
        last["text"] = last.get("text", "") + data.get("text", "")
        return True
    if "tool_call" in last and "tool_call" in data:
        call, more = last["tool_call"], data["tool_call"]
        if call.get("index") == more.get("index") and "name" not in more:
            last["tool_call"] = {**call, "arguments": call["arguments"] + more["arguments"]}
            return True
    return False


class StreamPublisher:
    """Writes one producer's events in order, never more than one write in flight.

    The first event and the first text go out at once (time to first token); what arrives
    while a write is in flight, or within ``flush_interval`` of the last write that carried
    text, is coalesced into the next one (consecutive deltas of one attempt become one). So a
    fast stream costs one insert per ``flush_interval``, and a slow one one insert per delta.
    Closing flushes at once.

    Publishing never fails the caller: the stream is progress for a watching client, the
    answer itself is stored by the workflow and repeated, whole, in the ``done`` event.
    """

    def __init__(
        self,
        stream_key: str,
        engine: AsyncEngine | None = None,
        flush_interval: float = FLUSH_INTERVAL_SECONDS,
    ) -> None:
        self.stream_key = stream_key
        self._engine = engine
        self._flush_interval = flush_interval
        self._buffer: list[NewStreamEvent] = []
        self._wakeup = asyncio.Event()
        self._closing = False
        self._closed = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self.writes = 0
        self.failed_writes = 0

    def publish(
        self, type: StreamEventType, data: dict[str, Any], attempt: str | None = None
    ) -> None:
        last = self._buffer[-1] if self._buffer else None
        if (
            type == StreamEventType.DELTA
            and last is not None
            and last.type == StreamEventType.DELTA
            and last.attempt == attempt
            and _coalesced(last.data, data)
        ):
            pass
        else:
            self._buffer.append(NewStreamEvent(type=type, attempt=attempt, data=dict(data)))
        self._wakeup.set()

    async def __aenter__(self) -> StreamPublisher:
        self._writer = asyncio.create_task(self._write_until_closed())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Flush what is buffered and stop; a database that does not answer within
        ``FLUSH_TIMEOUT_SECONDS`` loses the tail of the stream, never the LLM call."""
        self._closing = True
        self._closed.set()
        self._wakeup.set()
        if self._writer is not None:
            try:
                # Shielded: an activity being cancelled still flushes what it already streamed.
                await asyncio.wait_for(asyncio.shield(self._writer), FLUSH_TIMEOUT_SECONDS)
            except TimeoutError:
                self._writer.cancel()
                self.failed_writes += 1
                log.warning("stream.flush_timed_out", stream=self.stream_key)
            except Exception:  # the writer logs its own failures
                pass
            self._writer = None

    async def _write_until_closed(self) -> None:
        engine = self._engine or get_engine()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._buffer:
                batch, self._buffer = self._buffer, []
                await self._write(engine, batch)
                if any(e.type == StreamEventType.DELTA for e in batch):
                    await self._gather_more()
            if self._closing:
                return

    async def _gather_more(self) -> None:
        """Let deltas accumulate for ``flush_interval`` (cut short by closing)."""
        if self._closing or self._flush_interval <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closed.wait(), self._flush_interval)

    async def _write(self, engine: AsyncEngine, batch: list[NewStreamEvent]) -> None:
        for attempt in range(1, APPEND_RETRIES + 1):
            try:
                # Autocommit: the append is one statement, so no BEGIN and COMMIT round trips.
                async with engine.connect() as connection:
                    await connection.execution_options(isolation_level="AUTOCOMMIT")
                    await append_events(connection, self.stream_key, batch)
                self.writes += 1
                return
            except IntegrityError:
                continue  # a writer outside the lock took the same seq: renumber, try again
            except Exception as error:  # the stream is best effort; the answer is not
                self.failed_writes += 1
                log.warning(
                    "stream.publish_failed",
                    stream=self.stream_key,
                    error=type(error).__name__,
                    attempt=attempt,
                )
                return
        self.failed_writes += 1


# --- Following ---------------------------------------------------------------------------------


class _Notification(BaseModel):
    events: list[StreamEvent] | None = None
    last_seq: int | None = None


class StreamHub:
    """One LISTEN connection per process, fanned out to every follower in it.

    If the connection drops, followers keep working by reading the table every
    ``poll_interval`` seconds while the hub reconnects.
    """

    def __init__(self, database_url: str, poll_interval: float = 1.0) -> None:
        self._dsn = database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
        self.poll_interval = poll_interval
        self._connection: asyncpg.Connection | None = None
        self._followers: dict[str, set[asyncio.Queue[_Notification]]] = defaultdict(set)
        self._reconnect: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> StreamHub:
        await self._connect()
        return self

    async def __aenter__(self) -> StreamHub:
        return await self.start()

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        if self._reconnect is not None:
            self._reconnect.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnect
        if self._connection is not None and not self._connection.is_closed():
            with contextlib.suppress(Exception):
                await self._connection.close()
        self._connection = None

    @property
    def listening(self) -> bool:
        return self._connection is not None and not self._connection.is_closed()

    async def _connect(self) -> None:
        connection = await asyncpg.connect(self._dsn, server_settings=role_server_settings())
        connection.add_termination_listener(self._on_connection_lost)
        await connection.add_listener(CHANNEL, self._on_notify)
        self._connection = connection

    def _on_connection_lost(self, _connection: object) -> None:
        if self._closed or (self._reconnect is not None and not self._reconnect.done()):
            return
        log.warning("stream.listener_lost", hint="followers fall back to polling")
        self._reconnect = asyncio.get_running_loop().create_task(self._reconnect_forever())

    async def _reconnect_forever(self) -> None:
        delay = 0.2
        while not self._closed:
            try:
                await self._connect()
                log.info("stream.listener_reconnected")
                return
            except (OSError, asyncpg.PostgresError):
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _on_notify(self, _connection: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            message = json.loads(payload)
            key = message["k"]
        except (ValueError, KeyError, TypeError):
            return
        queues = self._followers.get(key)
        if not queues:
            return
        if "e" in message:
            note = _Notification(events=[StreamEvent.model_validate(e) for e in message["e"]])
        else:
            note = _Notification(last_seq=int(message["last"]))
        for queue in queues:
            queue.put_nowait(note)

    async def follow(
        self, stream_key: str, after_seq: int = 0, engine: AsyncEngine | None = None
    ) -> AsyncIterator[StreamEvent]:
        """Every event of the stream after ``after_seq``, in order, until a terminal event.

        Listens first, then reads the table, so an event committed in between is seen once:
        by seq, events at or below the last one yielded are dropped, and a gap is filled from
        the table.
        """
        queue: asyncio.Queue[_Notification] = asyncio.Queue()
        self._followers[stream_key].add(queue)
        try:
            last = after_seq
            pending = await read_events(stream_key, last, engine)
            while True:
                for event in pending:
                    if event.seq <= last:
                        continue
                    last = event.seq
                    yield event
                    if event.terminal:
                        return
                pending = await self._next_events(queue, stream_key, last, engine)
        finally:
            queues = self._followers.get(stream_key)
            if queues is not None:
                queues.discard(queue)
                if not queues:
                    del self._followers[stream_key]

    async def _next_events(
        self,
        queue: asyncio.Queue[_Notification],
        stream_key: str,
        last: int,
        engine: AsyncEngine | None,
    ) -> list[StreamEvent]:
        try:
            note = await asyncio.wait_for(queue.get(), timeout=self.poll_interval)
        except TimeoutError:
            # Quiet, or the listener is down: the table is the truth either way.
            return await read_events(stream_key, last, engine)
        if note.events is None:
            return await read_events(stream_key, last, engine)
        fresh = [e for e in note.events if e.seq > last]
        if fresh and fresh[0].seq != last + 1:
            return await read_events(stream_key, last, engine)  # a gap: fill it from the rows
        return fresh
