"""token streams: one round trip per append (``keel_append_stream_events``)

The append took four round trips: BEGIN, the stream's advisory lock, the insert + NOTIFY,
COMMIT — a streamed turn flushes every 30 ms, so about thirty round trips a turn, a fifth of the
worker's event loop under load. The function takes the lock and appends in one call, so a
publisher runs it alone in autocommit (its statement is its transaction) and a caller inside a
transaction (a turn's answer and its ``done`` event) still gets the lock until its commit.

Inside the function each statement takes its own snapshot (READ COMMITTED, a VOLATILE plpgsql
function), so the insert after the lock sees the rows its predecessor committed before
releasing it: numbering stays dense without a retry.

Revision ID: 0013_stream_append_function
Revises: 0012_provider_batches
Create Date: 2026-12-06 18:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0013_stream_append_function"
down_revision: str | None = "0012_provider_batches"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
CREATE FUNCTION keel_append_stream_events(
    stream text, events jsonb, channel text, max_notify_bytes integer
) RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    appended_through integer;
    full_payload text;
BEGIN
    -- Writers of one stream queue here until the caller's transaction ends.
    PERFORM pg_advisory_xact_lock(hashtextextended(stream, 0));
    WITH last AS (
        SELECT coalesce(max(seq), 0) AS seq FROM stream_events WHERE stream_key = stream
    ), inserted AS (
        INSERT INTO stream_events (stream_key, seq, type, attempt, data)
        SELECT stream, last.seq + e.ord, e.item->>'type', e.item->>'attempt',
               coalesce(e.item->'data', '{}'::jsonb)
        FROM last, jsonb_array_elements(events) WITH ORDINALITY AS e(item, ord)
        RETURNING seq, type, attempt, data
    )
    SELECT max(seq),
           json_build_object(
               'k', stream,
               'e', json_agg(json_build_object(
                   'seq', seq, 'type', type, 'attempt', attempt, 'data', data) ORDER BY seq)
           )::text
    INTO appended_through, full_payload
    FROM inserted;
    -- The rows themselves, or, when too big for a notification, only the last seq.
    PERFORM pg_notify(
        channel,
        CASE WHEN octet_length(full_payload) <= max_notify_bytes THEN full_payload
             ELSE json_build_object('k', stream, 'last', appended_through)::text END
    );
    RETURN appended_through;
END
$$
"""
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION keel_append_stream_events(text, jsonb, text, integer)")
