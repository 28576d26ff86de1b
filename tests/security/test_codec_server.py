"""`keel codec-server` over real HTTP: the remote codec protocol, CORS, the bearer token, bad input.

Decoding a real workflow's history through it (and through `temporal workflow show
--codec-endpoint`) is in test_payload_encryption.py.
"""

from __future__ import annotations

import asyncio
import base64
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest
from google.protobuf import json_format
from pydantic import ValidationError
from temporalio.api.common.v1 import Payload, Payloads

from api.server import serving
from infra.codec_server import create_codec_app, uvicorn_config
from infra.payload_codec import (
    ENCRYPTED_ENCODING,
    KEY_ID_METADATA,
    EncryptionCodec,
    EncryptionKey,
    new_key,
)
from infra.settings import KeelSettings

UI_ORIGIN = "http://localhost:8233"
OTHER_ORIGIN = "https://evil.example"
TOKEN = "codec-token-5f1c9a77d2e04b6b"
KEY = new_key("server-key")


def codec_with(*keys: EncryptionKey) -> EncryptionCodec:
    return EncryptionCodec(keys or (KEY,), source="KEEL_ENCRYPTION_KEYS")


@pytest.fixture
async def codec_url() -> AsyncIterator[str]:
    app = create_codec_app(
        codec_with(), allowed_origins=[UI_ORIGIN, "http://127.0.0.1:8233"], max_body_bytes=4096
    )
    async with serving(uvicorn_config(app)) as url:
        yield url


@pytest.fixture
async def guarded_url() -> AsyncIterator[str]:
    app = create_codec_app(codec_with(), allowed_origins=[UI_ORIGIN], token=TOKEN)
    async with serving(uvicorn_config(app)) as url:
        yield url


@pytest.fixture
async def http(codec_url: str) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(base_url=codec_url, timeout=10) as client:
        yield client


def body_of(*payloads: Payload) -> str:
    return json_format.MessageToJson(Payloads(payloads=payloads))


def payloads_of(response: httpx2.Response) -> list[Payload]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    return list(json_format.Parse(response.text, Payloads()).payloads)


PLAIN = Payload(metadata={"encoding": b"json/plain"}, data=b'"the secret plan"')


async def test_encode_then_decode_round_trips_in_the_protocols_json(
    http: httpx2.AsyncClient,
) -> None:
    (encrypted,) = payloads_of(await http.post("/encode", content=body_of(PLAIN)))
    assert encrypted.metadata["encoding"] == ENCRYPTED_ENCODING
    assert encrypted.metadata[KEY_ID_METADATA] == b"server-key"
    assert b"secret plan" not in encrypted.data
    # Only the last path segment counts (the protocol), so it works under any prefix.
    decoded = payloads_of(
        await http.post(
            "/default/decode", content=body_of(encrypted), headers={"X-Namespace": "default"}
        )
    )
    assert decoded == [PLAIN]
    # The wire format by hand: base64 metadata values and data, as the Web UI sends them.
    raw = {
        "payloads": [
            {
                "metadata": {
                    k: base64.b64encode(v).decode() for k, v in encrypted.metadata.items()
                },
                "data": base64.b64encode(encrypted.data).decode(),
            }
        ]
    }
    answer = (await http.post("/decode", json=raw)).json()
    assert base64.b64decode(answer["payloads"][0]["data"]) == PLAIN.data


async def test_decode_passes_unencrypted_payloads_through_and_keeps_their_order(
    http: httpx2.AsyncClient,
) -> None:
    (encrypted,) = payloads_of(await http.post("/encode", content=body_of(PLAIN)))
    other = Payload(metadata={"encoding": b"binary/null"})
    assert payloads_of(await http.post("/decode", content=body_of(other, encrypted, other))) == [
        other,
        PLAIN,
        other,
    ]
    assert payloads_of(await http.post("/decode", content="{}")) == []


async def test_a_payload_of_an_unknown_key_is_a_400_naming_the_key_and_the_setting(
    http: httpx2.AsyncClient,
) -> None:
    (foreign,) = await codec_with(new_key("retired-key")).encode([PLAIN])
    response = await http.post("/decode", content=body_of(foreign))
    assert response.status_code == 400
    error = response.json()["error"]
    assert "'retired-key'" in error and "KEEL_ENCRYPTION_KEYS" in error and "'server-key'" in error

    (mine,) = await codec_with().encode([PLAIN])
    mine.data = mine.data[:-1] + bytes([mine.data[-1] ^ 0xFF])
    response = await http.post("/decode", content=body_of(mine))
    assert response.status_code == 400 and "failed authentication" in response.json()["error"]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b'{"payloads": "nope"}',
        b'{"payloads": [{"data": "***not base64***"}]}',
        b'{"payloads": [{"metadata": {"encoding": 7}}]}',
        b'{"unknown": []}',
        b"\xff\xfe\x00",
    ],
    ids=["empty", "text", "array", "not-a-list", "bad-base64", "bad-metadata", "field", "binary"],
)
async def test_malformed_bodies_are_a_400_with_what_is_expected(
    http: httpx2.AsyncClient, body: bytes
) -> None:
    for operation in ("/encode", "/decode"):
        response = await http.post(operation, content=body)
        assert response.status_code == 400, (operation, response.text)
        assert "must be the Payloads protobuf as JSON" in response.json()["error"]


async def test_a_body_over_the_limit_is_a_413_and_wrong_routes_say_so(
    http: httpx2.AsyncClient,
) -> None:
    big = Payload(metadata={"encoding": b"json/plain"}, data=b"x" * 5000)
    response = await http.post("/decode", content=body_of(big))
    assert response.status_code == 413 and "4096 bytes" in response.json()["error"]

    response = await http.post("/decrypt", content=body_of(PLAIN))
    assert response.status_code == 404 and "…/decode" in response.json()["error"]
    assert (await http.get("/decode")).status_code == 405
    assert (await http.get("/health")).json() == {"status": "ok"}


# --- CORS: only the Web UI's origin ------------------------------------------------------------


def preflight(origin: str) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-namespace",
    }


async def test_the_web_uis_origin_may_call_and_any_other_may_not(http: httpx2.AsyncClient) -> None:
    allowed = await http.options("/decode", headers=preflight(UI_ORIGIN))
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == UI_ORIGIN
    assert "POST" in allowed.headers["access-control-allow-methods"]
    assert "x-namespace" in allowed.headers["access-control-allow-headers"].lower()

    refused = await http.options("/decode", headers=preflight(OTHER_ORIGIN))
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers

    body = body_of(PLAIN)
    from_ui = await http.post("/decode", content=body, headers={"Origin": UI_ORIGIN})
    assert from_ui.headers["access-control-allow-origin"] == UI_ORIGIN
    from_other = await http.post("/decode", content=body, headers={"Origin": OTHER_ORIGIN})
    # The browser withholds the answer from a page without the header.
    assert "access-control-allow-origin" not in from_other.headers
    assert (await http.post("/decode", content=body)).status_code == 200  # the CLI: no Origin


@pytest.mark.parametrize("wildcard", ["*", "null", "http://localhost:8080,*"])
def test_a_wildcard_origin_is_refused_since_it_would_admit_every_web_page(wildcard: str) -> None:
    # With credentials on, Starlette answers "*" by echoing whichever origin asks.
    with pytest.raises(ValidationError, match="KEEL_CODEC_SERVER_CORS_ORIGINS may not contain"):
        KeelSettings(codec_server_cors_origins=wildcard)
    with pytest.raises(ValueError, match="never"):
        create_codec_app(codec_with(), allowed_origins=[UI_ORIGIN, wildcard.rpartition(",")[2]])


# --- The bearer token ---------------------------------------------------------------------------


async def test_with_a_token_every_call_needs_it_and_it_is_never_logged(
    guarded_url: str, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    body = body_of(PLAIN)
    async with httpx2.AsyncClient(base_url=guarded_url, timeout=10) as http:
        for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": TOKEN}):
            for operation in ("/encode", "/decode"):
                response = await http.post(operation, content=body, headers=headers)
                assert response.status_code == 401, (operation, headers)
                assert response.headers["www-authenticate"] == "Bearer"
                assert "KEEL_CODEC_SERVER_TOKEN" in response.json()["error"]
        good = {"Authorization": f"Bearer {TOKEN}"}
        assert payloads_of(await http.post("/decode", content=body, headers=good)) == [PLAIN]
        # A browser's preflight never carries credentials: it must pass without the token,
        # and the 401 itself carries the CORS header so the Web UI can show why.
        assert (await http.options("/decode", headers=preflight(UI_ORIGIN))).status_code == 200
        denied = await http.post("/decode", content=body, headers={"Origin": UI_ORIGIN})
        assert denied.status_code == 401
        assert denied.headers["access-control-allow-origin"] == UI_ORIGIN
    logged = capsys.readouterr()
    for text in (logged.out, logged.err, caplog.text):
        assert TOKEN not in text and "wrong-token" not in text


# --- The `keel codec-server` command ------------------------------------------------------------


@pytest.mark.slow  # a real `keel` process
async def test_the_command_refuses_to_start_without_a_key(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_ENCRYPTION")}
    env.update(KEEL_HOME=str(tmp_path), COLUMNS="250")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "starters.codec_server", "--port", "0",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 1, out
    message = " ".join(err.decode().split())
    assert "payload encryption is on but no key is configured" in message
    assert "KEEL_ENCRYPTION_KEYS" in message
