"""Images keel must send as bytes: a provider that takes base64 (Anthropic, as keel calls it)
gets an image URL fetched and inlined here; providers that fetch URLs themselves (OpenAI) get
the URL untouched.

Fetching on a client's behalf is a request from inside keel's network, so it goes through the
destination guard job callbacks use (infra/outbound_guard.py: no loopback, private, link-local or
metadata address unless KEEL_IMAGE_FETCH_ALLOWED_DESTINATIONS allows it; connected to the address
that was checked; no redirects), with a size limit and an image content type.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import httpx2

from infra.outbound_guard import (
    DestinationInvalid,
    DestinationRefused,
    OutboundPolicy,
    Resolver,
    check_url,
    pinned_request,
    system_resolver,
)
from infra.settings import KeelSettings

ALLOWED_DESTINATIONS_VARIABLE = "KEEL_IMAGE_FETCH_ALLOWED_DESTINATIONS"
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})


class ImageRefused(ValueError):
    """An image keel will not send: a refused destination, too large, not an image. About the
    request, not the provider: the call fails as a bad request and is not retried."""


class ImageUnreachable(ConnectionError):
    """The image's host did not answer (may answer later: retried like a connection error)."""


def data_url_source(url: str) -> dict[str, Any]:
    """A ``data:image/png;base64,...`` URL as an Anthropic base64 source."""
    header, _, data = url.partition(",")
    media_type = header.removeprefix("data:").split(";")[0].lower()
    if ";base64" not in header or media_type not in IMAGE_TYPES:
        raise ImageRefused(
            "an inline image must be a base64 data URL of type " + ", ".join(sorted(IMAGE_TYPES))
        )
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ImageRefused("an inline image's data is not valid base64") from None
    return {"type": "base64", "media_type": media_type, "data": data}


class ImageInliner:
    def __init__(
        self,
        policy: OutboundPolicy,
        max_bytes: int,
        timeout_seconds: float,
        resolver: Resolver = system_resolver,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        self._policy = policy
        self._max_bytes = max_bytes
        self._timeout = timeout_seconds
        self._resolver = resolver
        self._transport = transport

    async def source(self, url: str) -> dict[str, Any]:
        if url.startswith("data:"):
            return data_url_source(url)
        try:
            destination = await check_url(url, self._policy, self._resolver, what="image URL")
        except DestinationRefused as error:
            raise ImageRefused(str(error)) from None
        except DestinationInvalid as error:
            raise ImageRefused(str(error)) from None
        failure = "no address to connect to"
        async with httpx2.AsyncClient(
            timeout=self._timeout,
            follow_redirects=False,
            trust_env=False,
            transport=self._transport,
        ) as http:
            for address in destination.addresses:
                pinned, host_header, server_name = pinned_request(destination, address)
                try:
                    async with http.stream(
                        "GET",
                        pinned,
                        headers={"Host": host_header, "User-Agent": "keel-images"},
                        extensions={"sni_hostname": server_name},
                    ) as response:
                        return await self._read(url, response)
                except httpx2.ConnectError:
                    failure = "could not reach the image's host"
                    continue
                except httpx2.HTTPError as error:
                    raise ImageUnreachable(f"image URL: {type(error).__name__}") from None
        raise ImageUnreachable(f"image URL: {failure}")

    async def _read(self, url: str, response: httpx2.Response) -> dict[str, Any]:
        if response.status_code != 200:
            raise ImageRefused(f"image URL answered {response.status_code}, not 200 with an image")
        media_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type not in IMAGE_TYPES:
            raise ImageRefused(
                f"image URL is {media_type or 'of no type'}, not one of "
                + ", ".join(sorted(IMAGE_TYPES))
            )
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self._max_bytes:
            raise self._too_large()
        body = bytearray()
        async for piece in response.aiter_bytes():
            body += piece
            if len(body) > self._max_bytes:  # a lying or absent Content-Length
                raise self._too_large()
        return {
            "type": "base64",
            "media_type": media_type,
            "data": base64.b64encode(bytes(body)).decode(),
        }

    def _too_large(self) -> ImageRefused:
        return ImageRefused(
            f"image URL: the image is over {self._max_bytes} bytes (KEEL_IMAGE_FETCH_MAX_BYTES)"
        )


def image_inliner(settings: KeelSettings) -> ImageInliner:
    return ImageInliner(
        OutboundPolicy.parse(
            ALLOWED_DESTINATIONS_VARIABLE, settings.image_fetch_allowed_destinations
        ),
        settings.image_fetch_max_bytes,
        settings.image_fetch_timeout_seconds,
    )
