"""Responses as ASGI apps (as Starlette has them): a JSON body, an error in the API's own shape, and the
start of a server-sent event stream. Every response the gateway writes itself goes through here."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from gateway.asgi import Headers, Receive, Scope, Send
from gateway.errors import GatewayError

JSON_CT = (b"content-type", b"application/json")
SSE_HEADERS: Headers = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class Response:
    """A complete response: status, headers and body bytes."""

    __slots__ = ("status", "body", "headers")

    def __init__(self, body: bytes, status: int = 200, headers: Sequence[tuple[bytes, bytes]] = (),
                 content_type: tuple[bytes, bytes] = JSON_CT) -> None:
        self.status = status
        self.body = body
        self.headers: Headers = [content_type, (b"content-length", str(len(body)).encode()), *headers]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.send_to(send)

    async def send_to(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body})


def json_response(payload: Any, status: int = 200, headers: Sequence[tuple[bytes, bytes]] = ()) -> Response:
    return Response(orjson.dumps(payload), status, headers)


def error_response(exc: GatewayError, headers: Sequence[tuple[bytes, bytes]] = (), style: str = "openai") -> Response:
    """The error in the API's shape (`style`: "openai", or "anthropic" on /v1/messages), with its headers."""
    return Response(exc.body(style), exc.status, [*headers, *exc.header_list()])


async def start_sse(send: Send, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [*SSE_HEADERS, *headers]})
