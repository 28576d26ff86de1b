"""Sessions over HTTP: a session's report, and a turn's token stream in keel's own SSE format.

``curl -N $KEEL/v1/sessions/$SESSION/turns/$TURN/events`` follows a turn live; with
``Last-Event-ID: <seq>`` (or ``?after=<seq>``) it resumes after that event.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from api.auth import client_caller
from api.errors import ApiError
from api.sse import KEEP_ALIVE, SSE_HEADERS, follow_turn, native_event
from api.state import KeelApi, keel_api
from contracts.sessions import turn_stream_key
from services.api_tokens import VerifiedToken
from services.session_reports import SessionReport, session_report, session_tenant

router = APIRouter(tags=["sessions"])


@router.get("/v1/sessions/{session_id}", response_model=SessionReport)
async def get_session(
    session_id: str, caller: VerifiedToken = Depends(client_caller)
) -> SessionReport:
    """A session's turns, running summary, tokens and cost."""
    report = await session_report(session_id, tenant=caller.tenant)
    if report is None:
        raise ApiError(404, f"no session {session_id}", code="session_not_found")
    return report


@router.get("/v1/sessions/{session_id}/turns/{turn_id}/events")
async def turn_events(
    session_id: str,
    turn_id: str,
    request: Request,
    after: int | None = Query(default=None, ge=0, description="Resume after this event id."),
    api: KeelApi = Depends(keel_api),
    caller: VerifiedToken = Depends(client_caller),
) -> StreamingResponse:
    """A turn's token stream (SSE): `attempt`, `delta`, then `done` or `error`."""
    owner = await session_tenant(session_id)
    if owner is not None and owner != caller.tenant:
        raise ApiError(404, f"no session {session_id}", code="session_not_found")
    header = request.headers.get("Last-Event-ID")
    try:
        after_seq = after if after is not None else int(header or 0)
    except ValueError:
        raise ApiError(400, "Last-Event-ID must be an event id (an integer)") from None

    async def stream() -> AsyncIterator[str]:
        with api.shedder.track():
            key = turn_stream_key(session_id, turn_id)
            async for event in follow_turn(
                api.hub,
                key,
                after_seq,
                handle=None,
                keep_alive_seconds=api.settings.stream_keep_alive_seconds,
            ):
                yield KEEP_ALIVE if event is None else native_event(event)

    return StreamingResponse(stream(), media_type="text/event-stream", headers=SSE_HEADERS)
