"""The two providers' batch APIs behind one small interface: submit a chunk, find one submitted
before, read its state, cancel it, read its results.

The SDKs run with ``max_retries=0`` as everywhere in keel: Temporal retries the activity, and the
activity's idempotency (the chunk row, the lookup by keel's chunk key) makes that safe.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

import anthropic
import openai

from activities.llm.providers import (
    AnthropicProvider,
    OpenAIProvider,
    ProviderClients,
    openai_options,
)
from contracts.batch import ItemRequest
from contracts.llm import ErrorClass, Usage

CHUNK_METADATA_KEY = "keel_chunk"
OPENAI_ENDPOINT: Literal["/v1/chat/completions"] = "/v1/chat/completions"
# How far back a lookup for a chunk submitted before a crash looks (newest first).
LOOKUP_PAGES = 5


def provider_custom_id(line_no: int) -> str:
    """The id a line carries at the provider: both APIs accept it (Anthropic allows only
    ``[a-zA-Z0-9_-]{1,64}``, so keel's own custom ids, which may be anything, stay home)."""
    return f"k{line_no}"


def line_no_of(custom_id: str) -> int | None:
    return int(custom_id[1:]) if custom_id.startswith("k") and custom_id[1:].isdigit() else None


@dataclass(frozen=True)
class RemoteState:
    status: str
    ended: bool
    done: int
    total: int
    counts: dict[str, int]


@dataclass(frozen=True)
class LineResult:
    line_no: int
    ok: bool
    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    error_class: str | None = None
    error_message: str | None = None
    # The provider did not answer it for a reason of its own (server error, expired, cancelled):
    # it may run again, in another provider batch or live.
    retryable: bool = False


@dataclass(frozen=True)
class Lookup:
    """What identifies a chunk at its provider after a crash between submitting and storing."""

    chunk_key: str
    first_line_no: int
    size: int
    since: datetime
    # Provider batch ids other chunks of keel already hold.
    known_ids: frozenset[str]


class BatchApi(Protocol):
    async def find(self, lookup: Lookup) -> str | None:
        """The provider's id of a batch keel submitted for the chunk, if there is one."""
        ...

    async def submit(
        self, chunk_key: str, model: str, lines: list[tuple[int, ItemRequest]]
    ) -> tuple[str, str | None]:
        """(batch id, input file id)"""
        ...

    async def state(self, batch_id: str) -> RemoteState: ...

    async def cancel(self, batch_id: str) -> None: ...

    def results(self, batch_id: str) -> AsyncIterator[LineResult]: ...


def openai_body(model: str, request: ItemRequest) -> dict[str, Any]:
    """The Chat Completions body of a line: the live path's parameters, not streamed."""
    parameters = request.parameters()
    body: dict[str, Any] = {
        "model": model,
        "messages": [m.model_dump() for m in request.messages],
        "max_completion_tokens": parameters.max_tokens,
    }
    if parameters.temperature is not None:
        body["temperature"] = parameters.temperature
    if parameters.json_schema is not None:  # as the live path sends it (name, strict...)
        body["response_format"] = openai_options(parameters)["response_format"]
    return body


def anthropic_params(model: str, request: ItemRequest) -> dict[str, Any]:
    """The Messages params of a line, as the live path sends them (system apart, a JSON schema
    asked for in the system prompt)."""
    parameters = request.parameters()
    system = "\n\n".join(m.content for m in request.messages if m.role == "system")
    if parameters.json_schema is not None:
        purpose = (
            f" ({parameters.json_schema_description})" if parameters.json_schema_description else ""
        )
        system = (
            f"{system}\n\nAnswer with one JSON object only{purpose}, valid against this JSON "
            f"schema:\n{json.dumps(parameters.json_schema)}"
        ).strip()
    params: dict[str, Any] = {
        "model": model,
        "max_tokens": parameters.max_tokens,
        "messages": [
            {"role": m.role, "content": m.content} for m in request.messages if m.role != "system"
        ],
    }
    if system:
        params["system"] = system
    if parameters.temperature is not None:
        # Never clamped: above Anthropic's 1 the provider refuses the line, and the item fails
        # saying so, instead of being answered at another temperature than asked.
        params["temperature"] = parameters.temperature
    return params


def request_bytes(provider: str, model: str, line_no: int, request: ItemRequest) -> int:
    """The size of the line as sent (what the providers' byte limits count)."""
    if provider == "anthropic":
        line: dict[str, Any] = {
            "custom_id": provider_custom_id(line_no),
            "params": anthropic_params(model, request),
        }
    else:
        line = {
            "custom_id": provider_custom_id(line_no),
            "method": "POST",
            "url": OPENAI_ENDPOINT,
            "body": openai_body(model, request),
        }
    return len(json.dumps(line).encode()) + 1


def _error_class(status: int | None, code: str | None) -> tuple[str, bool]:
    """(error class, retryable) of a line the provider did not answer, classified like a live
    call's error (activities/llm/errors.py): 429/5xx, expiry and cancellation may run again."""
    if code in ("batch_expired", "expired"):
        return "expired", True
    if code in ("batch_cancelled", "canceled"):
        return "cancelled", True
    if status is None or status == 429 or status >= 500:
        return ErrorClass.SERVER_ERROR.value, True
    if status == 404:
        return ErrorClass.MODEL_NOT_FOUND.value, False
    return ErrorClass.BAD_REQUEST.value, False


class OpenAIBatchApi:
    def __init__(self, client: openai.AsyncOpenAI) -> None:
        self._client = client

    async def find(self, lookup: Lookup) -> str | None:
        after: str | None = None
        for _ in range(LOOKUP_PAGES):
            kwargs: dict[str, Any] = {"limit": 100}
            if after:
                kwargs["after"] = after
            page = await self._client.batches.list(**kwargs)
            for batch in page.data:
                if (batch.metadata or {}).get(CHUNK_METADATA_KEY) == lookup.chunk_key:
                    return batch.id
            if not page.data or not page.has_more:
                return None
            if page.data[-1].created_at < lookup.since.timestamp() - 60:
                return None  # older than the chunk's first submission: it is not there
            after = page.data[-1].id
        return None

    async def submit(
        self, chunk_key: str, model: str, lines: list[tuple[int, ItemRequest]]
    ) -> tuple[str, str | None]:
        content = "".join(
            json.dumps(
                {
                    "custom_id": provider_custom_id(line_no),
                    "method": "POST",
                    "url": OPENAI_ENDPOINT,
                    "body": openai_body(model, request),
                }
            )
            + "\n"
            for line_no, request in lines
        ).encode()
        uploaded = await self._client.files.create(
            file=(f"{chunk_key}.jsonl", content), purpose="batch"
        )
        batch = await self._client.batches.create(
            input_file_id=uploaded.id,
            endpoint=OPENAI_ENDPOINT,
            completion_window="24h",
            metadata={CHUNK_METADATA_KEY: chunk_key},
        )
        return batch.id, uploaded.id

    async def state(self, batch_id: str) -> RemoteState:
        batch = await self._client.batches.retrieve(batch_id)
        counts = batch.request_counts
        done = (counts.completed + counts.failed) if counts else 0
        return RemoteState(
            status=batch.status,
            ended=batch.status in ("completed", "failed", "expired", "cancelled"),
            done=done,
            total=counts.total if counts else 0,
            counts=counts.model_dump() if counts else {},
        )

    async def cancel(self, batch_id: str) -> None:
        batch = await self._client.batches.retrieve(batch_id)
        if batch.status in ("validating", "in_progress", "finalizing"):
            await self._client.batches.cancel(batch_id)

    async def results(self, batch_id: str) -> AsyncIterator[LineResult]:
        batch = await self._client.batches.retrieve(batch_id)
        seen: set[int] = set()
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            content = await self._client.files.content(file_id)
            for raw in content.text.splitlines():
                if not raw.strip():
                    continue
                line = json.loads(raw)
                line_no = line_no_of(str(line.get("custom_id")))
                if line_no is None or line_no in seen:
                    continue
                seen.add(line_no)
                yield _openai_line(line_no, line)
        if batch.status == "failed":
            # Refused at validation: no line ran. They may run again (live, most likely).
            reason = (
                "; ".join(e.message or "" for e in (batch.errors.data or []))
                if batch.errors
                else ""
            )
            yield LineResult(
                line_no=-1,
                ok=False,
                error_class=ErrorClass.BAD_REQUEST.value,
                error_message=f"the provider refused the batch: {reason}",
                retryable=True,
            )


def _openai_line(line_no: int, line: dict[str, Any]) -> LineResult:
    response = line.get("response") or {}
    error = line.get("error") or {}
    status = response.get("status_code")
    body = response.get("body") or {}
    if status == 200 and isinstance(body, dict) and body.get("choices") is not None:
        choice = body["choices"][0] if body["choices"] else {}
        usage = body.get("usage") or {}
        details = usage.get("prompt_tokens_details") or {}
        completion_details = usage.get("completion_tokens_details") or {}
        return LineResult(
            line_no=line_no,
            ok=True,
            text=(choice.get("message") or {}).get("content") or "",
            finish_reason=choice.get("finish_reason"),
            usage=Usage(
                input_tokens=usage.get("prompt_tokens", 0),
                output_tokens=usage.get("completion_tokens", 0),
                cached_tokens=details.get("cached_tokens") or 0,
                reasoning_tokens=completion_details.get("reasoning_tokens") or 0,
            ),
        )
    message = error.get("message") or ((body.get("error") or {}).get("message") if body else None)
    error_class, retryable = _error_class(status, error.get("code"))
    return LineResult(
        line_no=line_no,
        ok=False,
        error_class=error_class,
        error_message=message or f"status {status}",
        retryable=retryable,
    )


class AnthropicBatchApi:
    def __init__(self, client: anthropic.AsyncAnthropic) -> None:
        self._client = client

    async def find(self, lookup: Lookup) -> str | None:
        # Message Batches carry no metadata. A batch keel submitted for the chunk was created
        # after the chunk's first submission began, holds exactly its lines and is not another
        # chunk's: an ended one is confirmed by its results (the chunk's first line id), one
        # still running by its request count, and only when exactly one such batch exists.
        first = provider_custom_id(lookup.first_line_no)
        running: list[str] = []
        page = await self._client.messages.batches.list(limit=100)
        for batch in page.data:
            if batch.created_at < lookup.since or batch.id in lookup.known_ids:
                continue
            counts = batch.request_counts
            size = (
                counts.processing
                + counts.succeeded
                + counts.errored
                + counts.canceled
                + counts.expired
            )
            if size != lookup.size:
                continue
            if batch.processing_status != "ended":
                running.append(batch.id)
                continue
            async for result in await self._client.messages.batches.results(batch.id):
                if result.custom_id == first:
                    return batch.id
        return running[0] if len(running) == 1 else None

    async def submit(
        self, chunk_key: str, model: str, lines: list[tuple[int, ItemRequest]]
    ) -> tuple[str, str | None]:
        requests: Any = [
            {"custom_id": provider_custom_id(line_no), "params": anthropic_params(model, request)}
            for line_no, request in lines
        ]
        batch = await self._client.messages.batches.create(requests=requests)
        return batch.id, None

    async def state(self, batch_id: str) -> RemoteState:
        batch = await self._client.messages.batches.retrieve(batch_id)
        counts = batch.request_counts.model_dump()
        total = sum(counts.values())
        return RemoteState(
            status=batch.processing_status,
            ended=batch.processing_status == "ended",
            done=total - counts.get("processing", 0),
            total=total,
            counts=counts,
        )

    async def cancel(self, batch_id: str) -> None:
        batch = await self._client.messages.batches.retrieve(batch_id)
        if batch.processing_status == "in_progress":
            await self._client.messages.batches.cancel(batch_id)

    async def results(self, batch_id: str) -> AsyncIterator[LineResult]:
        async for entry in await self._client.messages.batches.results(batch_id):
            line_no = line_no_of(entry.custom_id)
            if line_no is None:
                continue
            result = entry.result
            if result.type == "succeeded":
                message = result.message
                text = "".join(block.text for block in message.content if block.type == "text")
                cached = message.usage.cache_read_input_tokens or 0
                yield LineResult(
                    line_no=line_no,
                    ok=True,
                    text=text,
                    finish_reason=message.stop_reason,
                    # keel counts cache reads inside input tokens, as for live Anthropic calls.
                    usage=Usage(
                        input_tokens=message.usage.input_tokens + cached,
                        output_tokens=message.usage.output_tokens,
                        cached_tokens=cached,
                    ),
                )
            elif result.type == "errored":
                error = result.error.error
                kind = getattr(error, "type", "api_error")
                status = {
                    "invalid_request_error": 400,
                    "not_found_error": 404,
                    "rate_limit_error": 429,
                }.get(kind, 500)
                error_class, retryable = _error_class(status, None)
                yield LineResult(
                    line_no=line_no,
                    ok=False,
                    error_class=error_class,
                    error_message=getattr(error, "message", kind),
                    retryable=retryable,
                )
            else:
                error_class, retryable = _error_class(None, result.type)
                yield LineResult(
                    line_no=line_no,
                    ok=False,
                    error_class=error_class,
                    error_message=f"the provider {result.type} this request",
                    retryable=retryable,
                )


def batch_api(providers: ProviderClients, provider: str) -> BatchApi:
    """The batch API of ``provider`` as the worker's settings configure it (LookupError: no
    credentials)."""
    client = providers.get(provider)
    if isinstance(client, OpenAIProvider):
        return OpenAIBatchApi(client.client)
    if isinstance(client, AnthropicProvider):
        return AnthropicBatchApi(client.client)
    raise LookupError(f"{provider} has no batch API keel can use")
