"""Reading server-sent events off an httpx2 response, the way a browser's EventSource does."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx2


@dataclass
class SseEvent:
    data: str
    id: int | None = None
    event: str | None = None

    def json(self) -> Any:
        return json.loads(self.data)


async def sse_events(response: httpx2.Response) -> AsyncIterator[SseEvent]:
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line.startswith(":"):
            continue
        if line == "":
            if "data" in fields:
                yield SseEvent(
                    data=fields["data"],
                    id=int(fields["id"]) if "id" in fields else None,
                    event=fields.get("event"),
                )
            fields = {}
            continue
        name, _, value = line.partition(":")
        fields[name] = value[1:] if value.startswith(" ") else value


def content_of(event: SseEvent) -> str:
    """The content an OpenAI chunk adds (empty for role, finish, usage and keel chunks)."""
    if event.data == "[DONE]":
        return ""
    return "".join(c["delta"].get("content") or "" for c in event.json().get("choices", []))
