"""The providers' batch APIs: OpenAI Files + Batches and Anthropic Message Batches.

Both answer each line with the same engine as the live endpoints (same text, same token counts),
so a batch and a live call of the same request bill the same tokens. A batch progresses with
time, read lazily whenever it is looked at: no background task, so a stopped client never leaves
work running here. Every submission is logged (``BatchStore.submissions``), which is what a test
checks "nothing was submitted twice" against.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from llmsim.anthropic_api import AnthropicAdapter
from llmsim.config import BatchSimConfig
from llmsim.engine import complete
from llmsim.openai_api import OpenAIAdapter
from llmsim.pipeline import Answer, ApiError, CacheInfo, ProviderAdapter

if TYPE_CHECKING:
    from llmsim.state import SimState

OPENAI_MAX_REQUESTS = 50_000
OPENAI_MAX_FILE_BYTES = 200 * 1024 * 1024
ANTHROPIC_MAX_REQUESTS = 100_000
ANTHROPIC_MAX_BYTES = 256 * 1024 * 1024
OPENAI_ENDPOINT = "/v1/chat/completions"
# Real providers keep results for 24 h (OpenAI's window) / 29 days (Anthropic): reported, not
# enforced here.
COMPLETION_WINDOW_S = 24 * 3600
CANCEL_SETTLE_S = 0.2
"""A cancelled batch is ``cancelling`` / ``canceling`` this long before it ends, as the real
APIs show the state while they stop their workers."""

Provider = Literal["openai", "anthropic"]
LineOutcome = Literal["succeeded", "errored", "expired", "canceled"]


@dataclass(frozen=True)
class Submission:
    """One batch a client created: what a test counts to prove nothing was submitted twice."""

    provider: Provider
    batch_id: str
    created_at: float
    requests: int
    metadata: dict[str, str]
    custom_ids: tuple[str, ...]


@dataclass
class LineResult:
    outcome: LineOutcome
    status_code: int = 200
    body: dict[str, Any] | None = None
    request_id: str = ""


@dataclass
class SimBatch:
    provider: Provider
    id: str
    created_at: float
    config: BatchSimConfig
    lines: list[tuple[str, dict[str, Any]]]
    """(custom_id, request body)"""
    metadata: dict[str, str] = field(default_factory=dict)
    input_file_id: str | None = None
    failed_reason: str | None = None
    cancel_at: float | None = None
    results: dict[str, LineResult] = field(default_factory=dict)
    output_file_id: str | None = None
    error_file_id: str | None = None
    ended_at: float | None = None
    ended_as: str | None = None
    # How many batches of this provider carried each line before this one (seeds its faults, so
    # a line that failed once is not doomed to fail again, and a run repeats exactly).
    earlier_submissions: dict[str, int] = field(default_factory=dict)

    @property
    def started_at(self) -> float:
        return self.created_at + self.config.validating_s

    def answered_by(self, at: float) -> int:
        """How many lines the provider has answered at ``at`` (an even pace)."""
        if at < self.started_at:
            return 0
        if self.config.processing_s <= 0:
            return len(self.lines)
        share = (at - self.started_at) / self.config.processing_s
        return min(len(self.lines), math.floor(share * len(self.lines)))

    @property
    def expires_at(self) -> float | None:
        if self.config.expire_after_s is None:
            return None
        return self.started_at + self.config.expire_after_s


class BatchStore:
    """Files, batches and the submission log, shared by both APIs (one lock, no awaits)."""

    def __init__(self, state: SimState) -> None:
        self._state = state
        self._lock = threading.Lock()
        self.files: dict[str, tuple[str, str, bytes]] = {}
        """id → (purpose, filename, content)"""
        self.batches: dict[str, SimBatch] = {}
        self._submissions: list[Submission] = []
        self._line_submissions: dict[tuple[Provider, str], int] = {}
        self._adapters: dict[Provider, ProviderAdapter] = {
            "openai": OpenAIAdapter(),
            "anthropic": AnthropicAdapter(),
        }

    def submissions(self) -> list[Submission]:
        with self._lock:
            return list(self._submissions)

    def reset(self) -> None:
        with self._lock:
            self.files.clear()
            self.batches.clear()
            self._submissions.clear()
            self._line_submissions.clear()

    def add_file(self, purpose: str, filename: str, content: bytes) -> str:
        file_id = "file-" + uuid.uuid4().hex[:24]
        with self._lock:
            self.files[file_id] = (purpose, filename, content)
        return file_id

    def create(
        self,
        provider: Provider,
        lines: list[tuple[str, dict[str, Any]]],
        metadata: dict[str, str],
        input_file_id: str | None = None,
        failed_reason: str | None = None,
    ) -> SimBatch:
        prefix = "batch_" if provider == "openai" else "msgbatch_"
        batch = SimBatch(
            provider=provider,
            id=prefix + uuid.uuid4().hex[:24],
            created_at=time.time(),
            config=self._state.config.batch.model_copy(),
            lines=lines,
            metadata=metadata,
            input_file_id=input_file_id,
            failed_reason=failed_reason,
        )
        with self._lock:
            for custom_id, _ in lines:
                key = (provider, custom_id)
                batch.earlier_submissions[custom_id] = self._line_submissions.get(key, 0)
                self._line_submissions[key] = batch.earlier_submissions[custom_id] + 1
            self.batches[batch.id] = batch
            self._submissions.append(
                Submission(
                    provider=provider,
                    batch_id=batch.id,
                    created_at=batch.created_at,
                    requests=len(lines),
                    metadata=dict(metadata),
                    custom_ids=tuple(custom_id for custom_id, _ in lines),
                )
            )
        return batch

    def cancel(self, batch: SimBatch) -> None:
        with self._lock:
            if batch.ended_at is None and batch.cancel_at is None:
                batch.cancel_at = time.time()

    def advance(self, batch: SimBatch) -> None:
        """Bring the batch up to now: answer the lines due, end it when it is done."""
        now = time.time()
        with self._lock:
            if batch.ended_at is not None or batch.failed_reason is not None:
                return
            horizon = now
            ending: str | None = None
            expires = batch.expires_at
            if batch.cancel_at is not None:
                horizon = batch.cancel_at
                ending = "cancelled" if now >= batch.cancel_at + CANCEL_SETTLE_S else None
            if expires is not None and expires <= horizon:
                horizon, ending = expires, "expired"
            due = batch.answered_by(horizon)
            for custom_id, body in batch.lines[:due]:
                if custom_id not in batch.results:
                    batch.results[custom_id] = self._answer(batch, custom_id, body)
            if ending is None and due == len(batch.lines):
                ending = "completed"
            if ending is None or (ending == "completed" and batch.cancel_at is not None):
                # (a batch cancelled after its last line still ends cancelled, after settling)
                return
            rest: LineOutcome = "expired" if ending == "expired" else "canceled"
            for custom_id, _ in batch.lines:
                batch.results.setdefault(custom_id, LineResult(outcome=rest, status_code=0))
            batch.ended_at, batch.ended_as = max(horizon, batch.started_at), ending
            if batch.provider == "openai":
                self._write_openai_files(batch)

    def _answer(self, batch: SimBatch, custom_id: str, body: dict[str, Any]) -> LineResult:
        """One line through the live endpoints' engine (no latency: the batch paces itself)."""
        adapter = self._adapters[batch.provider]
        request_id, response_id = adapter.new_ids()
        model = str(body.get("model") or "")
        spec = self._state.catalog.get(model)
        try:
            if spec is None:
                raise adapter.model_not_found(model)
            nth = batch.earlier_submissions.get(custom_id, 0)
            if _unlucky(self._state.config.seed, batch.provider, custom_id, nth, batch.config):
                raise ApiError(500, _server_error(batch.provider), reason="server_error")
            parsed = adapter.parse({**body, "stream": False}, spec)
            adapter.check_limits(spec, parsed)
        except ApiError as err:
            return LineResult("errored", err.status, err.body, request_id)
        canned = self._state.find_canned(model, parsed.prompt.last_user_text)
        completions = [
            complete(
                spec=spec,
                config=self._state.config,
                prompt=parsed.prompt,
                mode=parsed.mode,
                max_tokens=parsed.max_tokens,
                stop=parsed.stop,
                choice_index=i,
                request_seed=parsed.request_seed,
                canned=canned,
            )
            for i in range(parsed.n)
        ]
        answer = Answer(
            request_id=request_id,
            response_id=response_id,
            created=int(time.time()),
            spec=spec,
            requested_model=model,
            parsed=parsed,
            completions=completions,
            # Batches are not served from the prompt cache: every line bills its full prompt.
            cache=CacheInfo(read_tokens=0, longest_prefix=0),
        )
        self._state.record_success(
            model, parsed.prompt.tokens, sum(c.completion_tokens for c in completions)
        )
        return LineResult("succeeded", 200, adapter.response_body(answer), request_id)

    def _write_openai_files(self, batch: SimBatch) -> None:
        """OpenAI's output file (2xx answers) and error file (the rest), as it writes them."""
        output: list[str] = []
        errors: list[str] = []
        for custom_id, _ in batch.lines:
            result = batch.results[custom_id]
            line_id = "batch_req_" + uuid.uuid4().hex[:24]
            if result.outcome in ("succeeded", "errored"):
                line = {
                    "id": line_id,
                    "custom_id": custom_id,
                    "response": {
                        "status_code": result.status_code,
                        "request_id": result.request_id,
                        "body": result.body,
                    },
                    "error": None,
                }
                (output if result.outcome == "succeeded" else errors).append(json.dumps(line))
            else:
                code = "batch_expired" if result.outcome == "expired" else "batch_cancelled"
                message = (
                    "This request could not be executed before the completion window expired."
                    if result.outcome == "expired"
                    else "This request was not executed because the batch was cancelled."
                )
                errors.append(
                    json.dumps(
                        {
                            "id": line_id,
                            "custom_id": custom_id,
                            "response": None,
                            "error": {"code": code, "message": message},
                        }
                    )
                )
        for lines, attribute in ((output, "output_file_id"), (errors, "error_file_id")):
            if lines:
                file_id = "file-" + uuid.uuid4().hex[:24]
                self.files[file_id] = (
                    "batch_output",
                    f"{batch.id}_{attribute}.jsonl",
                    _jsonl(lines),
                )
                setattr(batch, attribute, file_id)


def _jsonl(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode()


def _unlucky(seed: int, provider: str, custom_id: str, nth: int, config: BatchSimConfig) -> bool:
    """Whether the line's ``nth`` submission to ``provider`` is answered with a server error."""
    if config.line_error_rate <= 0:
        return False
    digest = hashlib.sha256(f"{seed}/{provider}/{custom_id}/{nth}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < config.line_error_rate


def _server_error(provider: Provider) -> dict[str, Any]:
    message = "The server had an error while processing your request."
    if provider == "anthropic":
        return {"type": "error", "error": {"type": "api_error", "message": message}}
    return {"error": {"message": message, "type": "server_error", "param": None, "code": None}}


def _iso(at: float | None) -> str | None:
    if at is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1e6):06d}Z"


def _openai_error(status: int, message: str, param: str | None = None) -> JSONResponse:
    body = {
        "error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}
    }
    return JSONResponse(body, status_code=status)


def _anthropic_error(status: int, message: str, kind: str = "invalid_request_error") -> Response:
    return JSONResponse(
        {"type": "error", "error": {"type": kind, "message": message}}, status_code=status
    )


def _multipart(content_type: str, raw: bytes) -> dict[str, tuple[str | None, bytes]]:
    """The parts of a multipart/form-data body: name → (filename, bytes). Small on purpose: the
    SDK's uploads are one file and one field."""
    boundary = next(
        (p.split("=", 1)[1].strip('"') for p in content_type.split(";") if "boundary=" in p), None
    )
    if not boundary:
        raise ValueError("multipart body without a boundary")
    parts: dict[str, tuple[str | None, bytes]] = {}
    for chunk in raw.split(b"--" + boundary.encode())[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, body = chunk.lstrip(b"\r\n").partition(b"\r\n\r\n")
        disposition = next(
            (
                line
                for line in head.decode().split("\r\n")
                if line.lower().startswith("content-disposition")
            ),
            "",
        )
        fields = dict(
            (k.strip(), v.strip().strip('"'))
            for k, _, v in (p.partition("=") for p in disposition.split(";")[1:])
        )
        if "name" in fields:
            parts[fields["name"]] = (fields.get("filename"), body.removesuffix(b"\r\n"))
    return parts


# --- OpenAI -------------------------------------------------------------------------------------


def openai_batch_object(store: BatchStore, batch: SimBatch) -> dict[str, Any]:
    store.advance(batch)
    results = batch.results.values()
    completed = sum(1 for r in results if r.outcome == "succeeded")
    failed = sum(1 for r in results if r.outcome == "errored")
    status: str
    ended = batch.ended_as
    if batch.failed_reason is not None:
        status = "failed"
    elif ended == "completed":
        status = "completed"
    elif ended == "expired":
        status = "expired"
    elif ended == "cancelled":
        status = "cancelled"
    elif batch.cancel_at is not None:
        status = "cancelling"
    elif time.time() < batch.started_at:
        status = "validating"
    elif len(batch.results) == len(batch.lines):
        status = "finalizing"
    else:
        status = "in_progress"
    at = batch.ended_at
    return {
        "id": batch.id,
        "object": "batch",
        "endpoint": OPENAI_ENDPOINT,
        "errors": {
            "object": "list",
            "data": [
                {
                    "code": "invalid_request",
                    "message": batch.failed_reason,
                    "param": None,
                    "line": None,
                }
            ],
        }
        if batch.failed_reason
        else None,
        "input_file_id": batch.input_file_id,
        "completion_window": "24h",
        "status": status,
        "output_file_id": batch.output_file_id,
        "error_file_id": batch.error_file_id,
        "created_at": int(batch.created_at),
        "in_progress_at": int(batch.started_at) if status != "validating" else None,
        "expires_at": int(batch.created_at + COMPLETION_WINDOW_S),
        "finalizing_at": int(at) if at is not None and ended == "completed" else None,
        "completed_at": int(at) if at is not None and ended == "completed" else None,
        "failed_at": int(batch.created_at) if batch.failed_reason else None,
        "expired_at": int(at) if at is not None and ended == "expired" else None,
        "cancelling_at": int(batch.cancel_at) if batch.cancel_at is not None else None,
        "cancelled_at": int(at) if at is not None and ended == "cancelled" else None,
        "request_counts": {"total": len(batch.lines), "completed": completed, "failed": failed},
        "metadata": batch.metadata or None,
    }


def openai_routes(store: BatchStore) -> list[Route]:
    async def upload(request: Request) -> Response:
        raw = await request.body()
        try:
            parts = _multipart(request.headers.get("content-type", ""), raw)
        except (ValueError, UnicodeDecodeError):
            return _openai_error(400, "Could not parse the multipart upload.")
        purpose = parts.get("purpose", (None, b""))[1].decode()
        if "file" not in parts:
            return _openai_error(400, "'file' is a required property", "file")
        if purpose != "batch":
            return _openai_error(
                400, f"Only purpose 'batch' is simulated, not {purpose!r}.", "purpose"
            )
        filename, content = parts["file"]
        if len(content) > OPENAI_MAX_FILE_BYTES:
            return _openai_error(
                400, "File is larger than the 200 MB a batch input may be.", "file"
            )
        file_id = store.add_file(purpose, filename or "upload.jsonl", content)
        return JSONResponse(_file_object(file_id, store.files[file_id]))

    async def retrieve_file(request: Request) -> Response:
        file_id = request.path_params["file_id"]
        found = store.files.get(file_id)
        if found is None:
            return _openai_error(404, f"No such File object: {file_id}", "id")
        return JSONResponse(_file_object(file_id, found))

    async def file_content(request: Request) -> Response:
        file_id = request.path_params["file_id"]
        found = store.files.get(file_id)
        if found is None:
            return _openai_error(404, f"No such File object: {file_id}", "id")
        return Response(found[2], media_type="application/octet-stream")

    async def create(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _openai_error(400, "We could not parse the JSON body of your request.")
        if not isinstance(body, dict):
            return _openai_error(400, "The request body must be a JSON object.")
        if body.get("endpoint") != OPENAI_ENDPOINT:
            return _openai_error(400, f"Only endpoint {OPENAI_ENDPOINT} is simulated.", "endpoint")
        if body.get("completion_window") != "24h":
            return _openai_error(400, "completion_window must be '24h'.", "completion_window")
        metadata = body.get("metadata") or {}
        if not isinstance(metadata, dict) or len(metadata) > 16:
            return _openai_error(400, "metadata: at most 16 string pairs.", "metadata")
        file_id = str(body.get("input_file_id") or "")
        found = store.files.get(file_id)
        if found is None:
            return _openai_error(400, f"No such File object: {file_id}", "input_file_id")
        lines, problem = _openai_lines(found[2])
        batch = store.create(
            "openai",
            lines if problem is None else [],
            {str(k): str(v) for k, v in metadata.items()},
            input_file_id=file_id,
            failed_reason=problem,
        )
        return JSONResponse(openai_batch_object(store, batch))

    async def retrieve(request: Request) -> Response:
        batch = store.batches.get(request.path_params["batch_id"])
        if batch is None or batch.provider != "openai":
            return _openai_error(404, "No batch found with that id.", "batch_id")
        return JSONResponse(openai_batch_object(store, batch))

    async def cancel(request: Request) -> Response:
        batch = store.batches.get(request.path_params["batch_id"])
        if batch is None or batch.provider != "openai":
            return _openai_error(404, "No batch found with that id.", "batch_id")
        store.advance(batch)
        if batch.ended_as is None and batch.failed_reason is None:
            store.cancel(batch)
        return JSONResponse(openai_batch_object(store, batch))

    async def list_batches(request: Request) -> Response:
        limit = min(100, max(1, int(request.query_params.get("limit", "20"))))
        after = request.query_params.get("after")
        newest_first = sorted(
            (b for b in store.batches.values() if b.provider == "openai"),
            key=lambda b: b.created_at,
            reverse=True,
        )
        if after:
            ids = [b.id for b in newest_first]
            newest_first = newest_first[ids.index(after) + 1 :] if after in ids else []
        page = newest_first[:limit]
        data = [openai_batch_object(store, b) for b in page]
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": len(newest_first) > limit,
            }
        )

    return [
        Route("/v1/files", upload, methods=["POST"]),
        Route("/v1/files/{file_id}", retrieve_file, methods=["GET"]),
        Route("/v1/files/{file_id}/content", file_content, methods=["GET"]),
        Route("/v1/batches", create, methods=["POST"]),
        Route("/v1/batches", list_batches, methods=["GET"]),
        Route("/v1/batches/{batch_id}", retrieve, methods=["GET"]),
        Route("/v1/batches/{batch_id}/cancel", cancel, methods=["POST"]),
    ]


def _file_object(file_id: str, found: tuple[str, str, bytes]) -> dict[str, Any]:
    purpose, filename, content = found
    return {
        "id": file_id,
        "object": "file",
        "bytes": len(content),
        "created_at": int(time.time()),
        "filename": filename,
        "purpose": purpose,
        "status": "processed",
    }


def _openai_lines(content: bytes) -> tuple[list[tuple[str, dict[str, Any]]], str | None]:
    """The file's requests, or why OpenAI would fail the batch at validation."""
    lines: list[tuple[str, dict[str, Any]]] = []
    models: set[str] = set()
    seen: set[str] = set()
    for number, raw in enumerate(content.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            return [], f"line {number}: invalid JSON"
        if not isinstance(line, dict) or line.get("method") != "POST":
            return [], f"line {number}: method must be POST"
        if line.get("url") != OPENAI_ENDPOINT:
            return [], f"line {number}: url must be {OPENAI_ENDPOINT}"
        custom_id, body = line.get("custom_id"), line.get("body")
        if not isinstance(custom_id, str) or not isinstance(body, dict):
            return [], f"line {number}: custom_id and body are required"
        if custom_id in seen:
            return [], f"line {number}: duplicate custom_id {custom_id!r}"
        seen.add(custom_id)
        models.add(str(body.get("model")))
        lines.append((custom_id, body))
    if not lines:
        return [], "the input file has no requests"
    if len(lines) > OPENAI_MAX_REQUESTS:
        return [], f"a batch holds at most {OPENAI_MAX_REQUESTS} requests, not {len(lines)}"
    if len(models) > 1:
        return [], f"one model per batch; the file names {len(models)}: {', '.join(sorted(models))}"
    return lines, None


# --- Anthropic ----------------------------------------------------------------------------------


def anthropic_batch_object(store: BatchStore, batch: SimBatch, base_url: str) -> dict[str, Any]:
    store.advance(batch)
    counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
    for result in batch.results.values():
        counts[result.outcome] += 1
    counts["processing"] = len(batch.lines) - len(batch.results)
    if batch.ended_at is not None:
        status = "ended"
    elif batch.cancel_at is not None:
        status = "canceling"
    else:
        status = "in_progress"
    return {
        "id": batch.id,
        "type": "message_batch",
        "processing_status": status,
        "request_counts": counts,
        "ended_at": _iso(batch.ended_at),
        "created_at": _iso(batch.created_at),
        "expires_at": _iso(batch.created_at + COMPLETION_WINDOW_S),
        "archived_at": None,
        "cancel_initiated_at": _iso(batch.cancel_at),
        "results_url": f"{base_url}v1/messages/batches/{batch.id}/results"
        if batch.ended_at is not None
        else None,
    }


def anthropic_routes(store: BatchStore) -> list[Route]:
    def base(request: Request) -> str:
        return str(request.base_url)

    async def create(request: Request) -> Response:
        raw = await request.body()
        if len(raw) > ANTHROPIC_MAX_BYTES:
            return _anthropic_error(413, "A batch may be at most 256 MB.", "request_too_large")
        try:
            body = json.loads(raw)
        except ValueError:
            return _anthropic_error(400, "invalid JSON body")
        requests = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(requests, list) or not requests:
            return _anthropic_error(400, "requests: a non-empty list is required")
        if len(requests) > ANTHROPIC_MAX_REQUESTS:
            return _anthropic_error(
                400,
                f"A batch holds at most {ANTHROPIC_MAX_REQUESTS} requests, not {len(requests)}.",
            )
        lines: list[tuple[str, dict[str, Any]]] = []
        seen: set[str] = set()
        for index, item in enumerate(requests):
            custom_id = item.get("custom_id") if isinstance(item, dict) else None
            params = item.get("params") if isinstance(item, dict) else None
            if not isinstance(custom_id, str) or not isinstance(params, dict):
                return _anthropic_error(400, f"requests.{index}: custom_id and params are required")
            if not (1 <= len(custom_id) <= 64) or not all(
                c.isalnum() or c in "_-" for c in custom_id
            ):
                return _anthropic_error(
                    400, f"requests.{index}.custom_id: must match ^[a-zA-Z0-9_-]{{1,64}}$"
                )
            if custom_id in seen:
                return _anthropic_error(400, f"requests.{index}.custom_id: duplicate {custom_id!r}")
            seen.add(custom_id)
            lines.append((custom_id, params))
        batch = store.create("anthropic", lines, {})
        return JSONResponse(anthropic_batch_object(store, batch, base(request)))

    def found(request: Request) -> SimBatch | None:
        batch = store.batches.get(request.path_params["batch_id"])
        return batch if batch is not None and batch.provider == "anthropic" else None

    async def retrieve(request: Request) -> Response:
        batch = found(request)
        if batch is None:
            return _anthropic_error(404, "message batch not found", "not_found_error")
        return JSONResponse(anthropic_batch_object(store, batch, base(request)))

    async def cancel(request: Request) -> Response:
        batch = found(request)
        if batch is None:
            return _anthropic_error(404, "message batch not found", "not_found_error")
        store.advance(batch)
        store.cancel(batch)
        return JSONResponse(anthropic_batch_object(store, batch, base(request)))

    async def results(request: Request) -> Response:
        batch = found(request)
        if batch is None:
            return _anthropic_error(404, "message batch not found", "not_found_error")
        store.advance(batch)
        if batch.ended_at is None:
            return _anthropic_error(400, "the batch has not ended yet")
        lines = []
        for custom_id, _ in batch.lines:
            r = batch.results[custom_id]
            result: dict[str, Any] = {"type": r.outcome}
            if r.outcome == "succeeded":
                result["message"] = r.body
            elif r.outcome == "errored":
                result["error"] = r.body
            lines.append(json.dumps({"custom_id": custom_id, "result": result}))
        return Response(_jsonl(lines), media_type="application/binary")

    async def list_batches(request: Request) -> Response:
        limit = min(1000, max(1, int(request.query_params.get("limit", "20"))))
        after = request.query_params.get("after_id")
        newest_first = sorted(
            (b for b in store.batches.values() if b.provider == "anthropic"),
            key=lambda b: b.created_at,
            reverse=True,
        )
        if after:
            ids = [b.id for b in newest_first]
            newest_first = newest_first[ids.index(after) + 1 :] if after in ids else []
        data = [anthropic_batch_object(store, b, base(request)) for b in newest_first[:limit]]
        return JSONResponse(
            {
                "data": data,
                "has_more": len(newest_first) > limit,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            }
        )

    return [
        Route("/v1/messages/batches", create, methods=["POST"]),
        Route("/v1/messages/batches", list_batches, methods=["GET"]),
        Route("/v1/messages/batches/{batch_id}", retrieve, methods=["GET"]),
        Route("/v1/messages/batches/{batch_id}/cancel", cancel, methods=["POST"]),
        Route("/v1/messages/batches/{batch_id}/results", results, methods=["GET"]),
    ]


def batch_routes(store: BatchStore) -> list[Route]:
    return [*openai_routes(store), *anthropic_routes(store)]
