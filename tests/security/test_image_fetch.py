"""Images keel fetches itself (to inline them for a provider that takes base64) go through the
destination guard job callbacks use, with a size limit and an image content type; image URLs for
a provider that fetches them pass untouched. Through the API: an image URL for an OpenAI model
reaches it as a URL (and its tokens are counted), one at a refused address for an Anthropic model
is a 400, never a fetch."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import pytest

from activities.llm.images import ALLOWED_DESTINATIONS_VARIABLE, ImageInliner, ImageRefused
from infra.outbound_guard import OutboundPolicy
from llmsim import SimServer
from services.api_tokens import IssuedToken
from tests.api.tokens import openai_client
from tests.outbound import LoopbackOnlyTransport, StubResolver

# A 1x1 PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


class _Images(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/pixel.png":
            body, kind = PNG, "image/png"
        elif self.path == "/big.png":
            body, kind = b"\x89PNG" + b"\0" * 5000, "image/png"
        else:
            body, kind = b"<html></html>", "text/html"
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def image_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def inliner(
    *allowed: str, max_bytes: int = 1000, resolver: StubResolver | None = None
) -> ImageInliner:
    policy = OutboundPolicy.parse(ALLOWED_DESTINATIONS_VARIABLE, allowed)
    if resolver is None:
        return ImageInliner(policy, max_bytes, 5, transport=LoopbackOnlyTransport())
    return ImageInliner(policy, max_bytes, 5, resolver, LoopbackOnlyTransport())


async def test_a_loopback_or_metadata_image_url_is_refused_before_any_connection(
    image_server: str,
) -> None:
    refusing = inliner()
    with pytest.raises(ImageRefused, match=f"loopback address.*{ALLOWED_DESTINATIONS_VARIABLE}"):
        await refusing.source(f"{image_server}/pixel.png")
    metadata = inliner(resolver=StubResolver({"images.example": ["169.254.169.254"]}))
    with pytest.raises(ImageRefused, match="cloud metadata address"):
        await metadata.source("http://images.example/cat.png")


async def test_an_allowed_image_is_inlined_as_base64(image_server: str) -> None:
    source = await inliner("loopback").source(f"{image_server}/pixel.png")
    assert source == {
        "type": "base64",
        "media_type": "image/png",
        "data": base64.b64encode(PNG).decode(),
    }


async def test_an_image_over_the_limit_or_not_an_image_is_refused(image_server: str) -> None:
    with pytest.raises(ImageRefused, match="over 1000 bytes"):
        await inliner("loopback").source(f"{image_server}/big.png")
    with pytest.raises(ImageRefused, match="text/html"):
        await inliner("loopback").source(f"{image_server}/page")


async def test_a_data_url_is_inlined_without_a_fetch_and_checked() -> None:
    data = base64.b64encode(PNG).decode()
    assert (await inliner().source(f"data:image/png;base64,{data}"))["data"] == data
    with pytest.raises(ImageRefused, match="base64 data URL"):
        await inliner().source("data:text/plain;base64,aGk=")


def claude_requests(simulator: SimServer) -> int:
    return int(simulator.stats()["models"].get("claude-3-5-haiku-latest", {}).get("requests", 0))


async def test_image_urls_through_the_api(
    keel_url: str, api_token: IssuedToken, simulator: SimServer, image_server: str
) -> None:
    async with openai_client(keel_url, api_token) as client:
        plain = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Describe nothing."}]
        )
        seen = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Describe nothing."},
                        {"type": "image_url", "image_url": {"url": "https://images.example/c.png"}},
                    ],
                }
            ],
        )
        claude_before = claude_requests(simulator)
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(
                model="claude-3-5-haiku-latest",
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "What is this?"},
                            {
                                "type": "image_url",
                                "image_url": {"url": f"{image_server}/pixel.png"},
                            },
                        ],
                    }
                ],
            )
    # The refused image never reached the provider: the call failed before it was sent.
    assert claude_requests(simulator) == claude_before
    assert plain.usage is not None and seen.usage is not None
    # OpenAI got the URL and billed it as a high-detail image.
    assert seen.usage.prompt_tokens - plain.usage.prompt_tokens >= 765
