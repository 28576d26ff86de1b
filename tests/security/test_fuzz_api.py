"""Fuzzing the HTTP API: schemathesis against the running app's own ``/openapi.json``, and
hypothesis throwing malformed bodies, wrong content types, deep nesting, huge numbers, invalid
UTF-8 and odd headers at it.

The app is the real one (uvicorn on a socket, the dev server, Postgres, the simulator and a
worker, via tests/api/conftest.py's ``keel_url``); every request carries a real API token.
Properties: never a 5xx, every response conforms to the schema (status, content type, body),
every error is OpenAI-shaped (``{"error": {message, type, param, code}}``), schema-invalid
requests are refused, and without a valid token every operation answers 401.

Deterministic and bounded for CI: derandomized hypothesis, a fixed number of examples per
operation and generation mode, no example database. The calls run in a worker thread (the
generated requests are synchronous) while the app serves from the test's event loop.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import httpx2
import openai
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from llmsim import SimServer
from services.api_tokens import IssuedToken, TokenRole
from tests.api.tokens import bearer, issue_token, openai_client

pytestmark = pytest.mark.slow  # hundreds of generated requests against the API

# Per operation and generation mode (positive: valid by the schema; negative: not).
EXAMPLES_PER_MODE = 25
# A turn's event stream follows the turn until it ends, and a turn that never happens never
# ends (the stream sends keep-alives until the client leaves): schemathesis would only measure
# its own read timeout. It gets its own test below, which reads the status and headers.
STREAMING_PATHS = frozenset({"/v1/sessions/{session_id}/turns/{turn_id}/events"})
ERROR_FIELDS = {"message", "type", "param", "code"}


def fuzz_profile(examples: int) -> Any:
    return settings(
        max_examples=examples,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


def assert_openai_error(status: int, body: bytes | str, where: str) -> None:
    """A 4xx/5xx body is exactly OpenAI's error object — Anthropic's on the Messages API."""
    try:
        payload = json.loads(body)
    except ValueError:
        raise AssertionError(f"{where}: {status} with a non-JSON body {body[:200]!r}") from None
    if "/v1/messages" in where:
        assert isinstance(payload, dict) and set(payload) == {"type", "error"}, (
            f"{where}: {payload}"
        )
        assert payload["type"] == "error", f"{where}: {payload}"
    else:
        assert set(payload) == {"error"}, f"{where}: {payload}"
    error = payload["error"]
    assert isinstance(error, dict) and set(error) == ERROR_FIELDS, f"{where}: {error}"
    assert isinstance(error["message"], str) and error["message"], f"{where}: {error}"
    assert isinstance(error["type"], str) and error["type"], f"{where}: {error}"


@schemathesis.check
def openai_error_shape(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> None:
    if response.status_code >= 400:
        assert_openai_error(response.status_code, response.content, case.operation.label)


@pytest.fixture
async def admin_token(api_token: IssuedToken) -> IssuedToken:
    """For the review queue's operations (a client token may not use them)."""
    return await issue_token(role=TokenRole.ADMIN)


@pytest.fixture
async def schema(keel_url: str) -> schemathesis.BaseSchema:
    """The schema as the running app serves it (not as the code would build it)."""
    async with httpx2.AsyncClient(base_url=keel_url) as http:
        served = await http.get("/openapi.json")
    assert served.status_code == 200
    return schemathesis.openapi.from_dict(served.json())


def operations(schema: schemathesis.BaseSchema) -> list[schemathesis.APIOperation]:
    found = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # the schema FastAPI serves is valid
        found.append(result.ok())
    assert found, "the schema lists no operations"
    return found


def token_for(path: str, client: IssuedToken, admin: IssuedToken) -> IssuedToken:
    return admin if path.startswith("/v1/approvals") else client


def fuzz_operation(
    operation: schemathesis.APIOperation,
    mode: GenerationMode,
    base_url: str,
    headers: dict[str, str],
    seen: Counter[str],
) -> None:
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
        openai_error_shape,
    ]
    if mode is GenerationMode.NEGATIVE:
        checks.append(negative_data_rejection)

    @fuzz_profile(EXAMPLES_PER_MODE)
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case) -> None:
        response = case.call(base_url=base_url, headers=headers, timeout=60)
        seen[f"{operation.label} {mode.value} {response.status_code}"] += 1
        case.validate_response(response, checks=checks, headers=headers)

    try:
        run()
    except Unsatisfiable:
        # An operation without parameters or body has no schema-invalid request to make.
        assert mode is GenerationMode.NEGATIVE, operation.label
        seen[f"{operation.label} negative: nothing to negate"] += 0


async def test_every_operation_survives_schema_generated_requests(
    keel_url: str,
    api_token: IssuedToken,
    admin_token: IssuedToken,
    schema: schemathesis.BaseSchema,
    simulator: SimServer,
) -> None:
    seen: Counter[str] = Counter()

    def fuzz_all() -> None:
        for operation in operations(schema):
            if operation.path in STREAMING_PATHS:
                continue
            headers = bearer(token_for(operation.path, api_token, admin_token))
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                fuzz_operation(operation, mode, keel_url, headers, seen)

    await asyncio.to_thread(fuzz_all)
    print_counts("schemathesis", seen)
    assert sum(seen.values()) >= 100


# --- requests shaped to pass validation: the fuzz reaches workflows, the LLM and Postgres ------

printable = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
any_text = st.text(max_size=120) | st.sampled_from(
    ["\x00", "a\u0000b", "\ud800", "é" * 50, "\u2028", " ", "Name a river."]
)
model_names = st.sampled_from(
    ["gpt-4o-mini", "keel", "default", "balanced", "cheap", "claude-3-5-haiku-latest"]
) | st.text(min_size=1, max_size=40)
token_counts = st.integers(1, 512) | st.integers(1, 10**9)


@st.composite
def chat_bodies(draw: st.DrawFn) -> dict[str, Any]:
    earlier = draw(
        st.lists(
            st.fixed_dictionaries(
                {
                    "role": st.sampled_from(["system", "developer", "user", "assistant"]),
                    "content": any_text,
                }
            ),
            max_size=3,
        )
    )
    question = draw(
        st.sampled_from(["Name a river.", "Describe a glacier."]) | any_text.filter(str.strip)
    )
    body: dict[str, Any] = {
        "model": draw(model_names),
        "messages": [*earlier, {"role": "user", "content": question}],
    }
    optional: dict[str, st.SearchStrategy[Any]] = {
        "max_tokens": token_counts,
        "max_completion_tokens": token_counts,
        "temperature": st.floats(0, 2),
        "stream": st.booleans(),
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
        "session_id": st.sampled_from(["s-fuzz-1", "s-fuzz-2"]) | st.text(max_size=40),
        "top_p": st.floats(0, 1),
        "user": any_text,
    }
    for name, strategy in optional.items():
        if draw(st.booleans()):
            body[name] = draw(strategy)
    return body


@st.composite
def job_bodies(draw: st.DrawFn) -> dict[str, Any]:
    ask: dict[str, Any] = {"prompt": draw(st.sampled_from(["Name a lake."]) | any_text)}
    optional: dict[str, st.SearchStrategy[Any]] = {
        "system": any_text,
        "route": st.sampled_from(["cheap", "balanced", "nope"]) | st.text(max_size=30),
        "models": st.lists(model_names, min_size=1, max_size=2),
        "max_tokens": token_counts,
        "temperature": st.floats(0, 2) | st.floats(-5, 5),
        "fallback_policy": st.sampled_from(["fail", "response", "safe_default", "bogus"]),
        "use_cache": st.booleans(),
        "budget_policy": st.sampled_from(["downgrade", "refuse", "pause", "bogus"]),
    }
    for name, strategy in optional.items():
        if draw(st.booleans()):
            ask[name] = draw(strategy)
    body: dict[str, Any] = {"kind": "ask", "input": ask}
    if draw(st.booleans()):
        body["id"] = draw(st.text(st.sampled_from("abc-_.:09"), min_size=1, max_size=20))
    if draw(st.booleans()):
        body["callback_url"] = "http://127.0.0.1:9/" + draw(st.text(printable, max_size=20))
    return body


async def test_requests_that_pass_validation_never_get_a_server_error(
    keel_url: str,
    api_token: IssuedToken,
    schema: schemathesis.BaseSchema,
    simulator: SimServer,
) -> None:
    by_label = {op.label: op for op in operations(schema)}
    seen: Counter[str] = Counter()
    headers = bearer(api_token)
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
        openai_error_shape,
    ]

    def fuzz(label: str, bodies: st.SearchStrategy[dict[str, Any]], examples: int) -> None:
        operation = by_label[label]

        @fuzz_profile(examples)
        @given(body=bodies)
        def run(body: dict[str, Any]) -> None:
            case = operation.Case(body=body, media_type="application/json")
            response = case.call(base_url=keel_url, headers=headers, timeout=60)
            seen[f"{label} {response.status_code}"] += 1
            case.validate_response(response, checks=checks, headers=headers)

        run()

    def fuzz_both() -> None:
        fuzz("POST /v1/chat/completions", chat_bodies(), 50)
        fuzz("POST /v1/jobs", job_bodies(), 40)

    await asyncio.to_thread(fuzz_both)
    print_counts("shaped requests", seen)
    assert seen["POST /v1/chat/completions 200"] >= 5, seen
    assert seen["POST /v1/jobs 202"] >= 5, seen


def print_counts(title: str, seen: Counter[str]) -> None:
    print(f"\n{title}: {sum(seen.values())} requests")
    for key, count in sorted(seen.items()):
        print(f"  {count:4d}  {key}")


# --- the turn event stream -------------------------------------------------------------------


async def test_the_event_stream_answers_generated_ids_without_a_server_error(
    keel_url: str,
    api_token: IssuedToken,
    schema: schemathesis.BaseSchema,
) -> None:
    (operation,) = [op for op in operations(schema) if op.path in STREAMING_PATHS]
    seen: Counter[int] = Counter()

    @fuzz_profile(EXAMPLES_PER_MODE)
    @given(case=operation.as_strategy(generation_mode=GenerationMode.POSITIVE))
    def run(case: schemathesis.Case) -> None:
        request = case.as_transport_kwargs(base_url=keel_url, headers=bearer(api_token))
        with (
            httpx2.Client(timeout=30) as http,
            http.stream(
                request["method"],
                request["url"],
                params=request.get("params"),
                headers=request.get("headers"),
            ) as response,
        ):
            seen[response.status_code] += 1
            assert response.status_code < 500
            if response.status_code == 200:  # a live stream: its head is all we need
                assert response.headers["content-type"].startswith("text/event-stream")
            else:
                assert_openai_error(response.status_code, response.read(), operation.label)

    await asyncio.to_thread(run)
    assert sum(seen.values()) > 0


# --- without a valid token: 401, everywhere --------------------------------------------------


# Values HTTP allows in a header: printable ASCII without surrounding blanks.
def header_text(max_size: int) -> st.SearchStrategy[str]:
    printable_ascii = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
    return st.text(printable_ascii, max_size=max_size).map(str.strip)


header_values = header_text(80) | st.sampled_from(
    ["Bearer", "Bearer  x", "bearer keel_", "Basic dXNlcjpwYXNz", "Bearer keel_tok_x_y"]
)


async def test_every_operation_refuses_a_missing_or_garbage_token(
    keel_url: str,
    schema: schemathesis.BaseSchema,
    simulator: SimServer,
) -> None:
    protected = [op for op in operations(schema) if op.path.startswith("/v1/")]
    assert protected
    seen: Counter[str] = Counter()

    @fuzz_profile(60)
    @given(st.sampled_from(protected), st.none() | header_values, st.data())
    def run(
        operation: schemathesis.APIOperation, authorization: str | None, data: st.DataObject
    ) -> None:
        case = data.draw(operation.as_strategy(generation_mode=GenerationMode.POSITIVE))
        headers = {} if authorization is None else {"Authorization": authorization}
        request = case.as_transport_kwargs(base_url=keel_url, headers=headers)
        if authorization is None:
            request["headers"].pop("Authorization", None)
        with httpx2.Client(timeout=30) as http:
            response = http.request(
                request["method"],
                request["url"],
                params=request.get("params"),
                headers=request.get("headers"),
                json=request.get("json"),
            )
        seen[f"{operation.label} {response.status_code}"] += 1
        assert response.status_code == 401, (operation.label, authorization, response.text)
        assert_openai_error(401, response.content, operation.label)
        assert response.json()["error"]["type"] == "authentication_error"
        assert response.headers["www-authenticate"].startswith("Bearer")

    await asyncio.to_thread(run)
    print_counts("401 path", seen)
    assert simulator.stats()["totals"]["requests"] == 0


# --- raw bodies: what no schema describes ----------------------------------------------------

valid_chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Name a river."}]}
JSON_TYPES = ["application/json", "application/json; charset=utf-8"]
OTHER_TYPES = [
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/xml",
    "",
]


def huge_number_bodies() -> st.SearchStrategy[bytes]:
    numbers = st.sampled_from(
        ["1e400", "-1e400", "1" * 5000, "9" * 400, "-0", "0.0000001", "1e-400", "2147483648"]
    )
    fields = st.sampled_from(["max_tokens", "max_completion_tokens", "temperature", "n"])
    return st.builds(
        lambda field, number: (
            json.dumps(valid_chat)[:-1] + f', "{field}": {number}' + "}"
        ).encode(),
        fields,
        numbers,
    )


def nested_bodies() -> st.SearchStrategy[bytes]:
    def nest(depth: int, kind: str) -> bytes:
        inner = "[" * depth + "]" * depth if kind == "list" else '{"a":' * depth + "1" + "}" * depth
        body = dict(valid_chat)
        return (json.dumps(body)[:-1] + f', "metadata": {inner}' + "}").encode()

    return st.builds(
        nest, st.sampled_from([10, 100, 900, 5000, 100_000]), st.sampled_from(["list", "dict"])
    )


def invalid_utf8_bodies() -> st.SearchStrategy[bytes]:
    return st.builds(
        lambda junk: json.dumps(valid_chat).encode().replace(b"river", b"riv" + junk),
        st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80", b"\xf8\x88\x80\x80"]),
    )


def structured_garbage() -> st.SearchStrategy[bytes]:
    values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
        max_leaves=10,
    )
    chat_like = st.fixed_dictionaries(
        {"model": values | st.text(max_size=30), "messages": values | st.lists(values, max_size=3)}
    )
    return (values | chat_like).map(lambda v: json.dumps(v).encode())


raw_bodies = (
    st.binary(max_size=300)
    | huge_number_bodies()
    | nested_bodies()
    | invalid_utf8_bodies()
    | structured_garbage()
    | st.just(b"")
    | st.just(b"x" * (1024 * 1024 + 1))  # over the default body limit
)
odd_headers = st.fixed_dictionaries(
    {},
    optional={
        "X-Keel-Priority": header_text(12),
        "X-Keel-Session-Id": header_text(200),
        "Idempotency-Key": header_text(300),
        "Last-Event-ID": st.sampled_from(["-1", "abc", "99999999999999999999999", "1e3", ""]),
        "X-Keel-Tenant": st.sampled_from(["default", "other", "x" * 200, ""]),
    },
)


async def test_malformed_bodies_and_headers_get_4xx_never_5xx(
    keel_url: str,
    api_token: IssuedToken,
    simulator: SimServer,
) -> None:
    seen: Counter[str] = Counter()

    @fuzz_profile(150)
    @given(
        path=st.sampled_from(["/v1/chat/completions", "/v1/jobs"]),
        body=raw_bodies,
        content_type=st.sampled_from(JSON_TYPES + OTHER_TYPES),
        headers=odd_headers,
    )
    def run(path: str, body: bytes, content_type: str, headers: dict[str, str]) -> None:
        sent = {**headers, **bearer(api_token)}
        if content_type:
            sent["Content-Type"] = content_type
        with httpx2.Client(base_url=keel_url, timeout=60) as http:
            response = http.post(path, content=body, headers=sent)
        seen[f"POST {path} {response.status_code}"] += 1
        assert response.status_code < 500, (body[:200], headers, response.text)
        if response.status_code >= 400:
            assert_openai_error(response.status_code, response.content, path)
        if len(body) > 1024 * 1024:
            assert response.status_code == 413

    await asyncio.to_thread(run)
    print_counts("raw bodies", seen)


# --- found by the fuzzing above: each was a 5xx (or a stuck session) before its fix ----------


async def test_a_lone_surrogate_is_refused_with_400_not_a_500(
    keel_url: str, api_token: IssuedToken, simulator: SimServer
) -> None:
    """Was (chat): the JSON escape "\\ud800" decoded to a string no payload can carry;
    serializing the turn for Temporal raised, and the API answered 500."""
    lone = b'"bad \\ud800 text"'
    async with httpx2.AsyncClient(base_url=keel_url, headers=bearer(api_token)) as http:
        chat = await http.post(
            "/v1/chat/completions",
            content=b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": '
            + lone
            + b"}]}",
            headers={"content-type": "application/json"},
        )
        job = await http.post(
            "/v1/jobs",
            content=b'{"kind": "ask", "input": {"prompt": ' + lone + b"}}",
            headers={"content-type": "application/json"},
        )
    for response in (chat, job):
        assert response.status_code == 400, response.text
        assert_openai_error(400, response.content, str(response.url))
    assert "contains an unpaired surrogate (\\ud800)" in chat.json()["error"]["message"]
    assert "input.prompt" in job.json()["error"]["message"]  # pydantic's own refusal
    assert simulator.stats()["totals"]["requests"] == 0


async def test_max_tokens_past_what_any_model_allows_is_a_400_and_the_session_lives_on(
    keel_url: str, api_token: IssuedToken, simulator: SimServer
) -> None:
    """Was: accepted by the API, then refused by LlmParameters inside the session workflow's
    turn handler, which failed the workflow task over and over: the request hung until the
    Update's RPC deadline (503) and the session was stuck."""
    session = {"X-Keel-Session-Id": "s-regression-max-tokens"}
    question = [{"role": "user", "content": "Name a river."}]
    async with httpx2.AsyncClient(
        base_url=keel_url, headers={**bearer(api_token), **session}, timeout=30
    ) as http:
        too_many = await http.post(
            "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": question, "max_completion_tokens": 200_001},
        )
        after = await http.post(
            "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": question, "max_tokens": 32},
        )
    assert too_many.status_code == 400
    assert "max_completion_tokens" in too_many.json()["error"]["message"]
    assert after.status_code == 200, after.text


async def test_an_unknown_model_is_a_404_as_openai_answers_it(
    keel_url: str, api_token: IssuedToken, simulator: SimServer
) -> None:
    """Was: 502 (`upstream_error`), as if a provider were down, for the caller's own typo."""
    async with openai_client(keel_url, api_token) as sdk:
        with pytest.raises(openai.NotFoundError) as missing:
            await sdk.chat.completions.create(
                model="gpt-nonexistent", messages=[{"role": "user", "content": "Hi"}]
            )
    assert missing.value.code == "model_not_found"
    assert "gpt-nonexistent: model_not_found" in missing.value.message


async def test_a_model_that_is_down_is_still_a_502(
    keel_url: str, api_token: IssuedToken, simulator: SimServer
) -> None:
    """The 4xx mapping above is only for the caller's own faults: a provider failing every
    attempt is keel's upstream failing."""
    simulator.add_faults("server_error", model="gpt-4o-mini", count=10)
    async with openai_client(keel_url, api_token) as sdk:
        with pytest.raises(openai.APIStatusError) as down:
            await sdk.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}]
            )
    assert down.value.status_code == 502 and down.value.code == "models_failed"


# --- batch file uploads: generated JSONL through POST /v1/files ---------------------------------


clean_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x2FF), min_size=1, max_size=80
).filter(str.strip)
BREAKS = ["cut", "garbage", "keel", "embeddings", "seed", "tools", "nasty", "duplicate"]


@st.composite
def batch_files(draw: st.DrawFn) -> tuple[bytes, int | None]:
    """A JSONL file of OpenAI batch lines with printable text, and maybe one line broken (cut,
    garbage, keel's shape, another url, a field keel refuses, text Postgres cannot store, a
    repeated custom_id): the file and the broken line's number."""
    lines: list[str] = []
    count = draw(st.integers(1, 6))
    for n in range(count):
        line: dict[str, Any] = {
            "custom_id": f"r{n}-{draw(clean_text)}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": draw(st.sampled_from(["gpt-4o-mini", "keel", "cheap"]) | clean_text),
                "messages": [{"role": "user", "content": draw(clean_text)}],
            },
        }
        if draw(st.booleans()):
            line["body"][draw(st.sampled_from(["user", "max_tokens", "temperature"]))] = 1
        lines.append(json.dumps(line))
    broken = draw(st.none() | st.integers(0, count - 1))
    if broken is not None:
        line = json.loads(lines[broken])
        kind = draw(st.sampled_from(BREAKS))
        if kind == "cut":
            text = lines[broken][: draw(st.integers(1, len(lines[broken]) - 1))]
        elif kind == "garbage":
            text = "x" + draw(st.text(max_size=40))
        elif kind == "keel":
            text = json.dumps({"custom_id": line["custom_id"], "prompt": "Hi"})
        elif kind == "embeddings":
            text = json.dumps({**line, "url": "/v1/embeddings"})
        elif kind in ("seed", "tools"):
            text = json.dumps({**line, "body": {**line["body"], kind: 1}})
        elif kind == "nasty":
            nasty = draw(st.sampled_from(["\x00", "a\u0000b", "\ud800"]))
            text = json.dumps({**line, "body": {**line["body"], "messages": [
                {"role": "user", "content": nasty}]}})  # fmt: skip
        else:
            text = json.dumps({**line, "custom_id": json.loads(lines[0])["custom_id"]})
            if broken == 0:
                text = json.dumps({**line, "custom_id": ""})
        lines[broken] = text
    content = ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass")
    return content, None if broken is None else broken + 1


async def test_generated_batch_files_are_stored_whole_or_refused_naming_the_line(
    keel_url: str, api_token: IssuedToken, simulator: SimServer
) -> None:
    seen: Counter[str] = Counter()

    @fuzz_profile(60)
    @given(case=batch_files())
    def run(case: tuple[bytes, int | None]) -> None:
        content, broken_line = case
        with httpx2.Client(base_url=keel_url, headers=bearer(api_token), timeout=60) as http:
            response = http.post(
                "/v1/files",
                files={"file": ("in.jsonl", content, "application/jsonl")},
                data={"purpose": "batch"},
            )
            seen[f"POST /v1/files {response.status_code}"] += 1
            if broken_line is None:
                assert response.status_code == 200, response.text
            else:
                assert response.status_code == 400, response.text
                assert_openai_error(400, response.content, "POST /v1/files")
                error = response.json()["error"]
                assert error["code"] == "invalid_batch_line", error
                assert f"line {broken_line}:" in error["message"], (content, error)
                return
            stored = http.get(f"/v1/files/{response.json()['id']}/content")
            assert stored.status_code == 200 and stored.content == content

    await asyncio.to_thread(run)
    print_counts("batch files", seen)
    assert seen["POST /v1/files 200"] >= 10 and seen["POST /v1/files 400"] >= 10, seen
    assert simulator.stats()["totals"]["requests"] == 0
