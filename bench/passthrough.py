"""The floor the gateway is compared to: a bare raw-ASGI + aiohttp pass-through.

    BENCH_UPSTREAM=http://127.0.0.1:8080 uvicorn passthrough:app --app-dir bench \
        --loop uvloop --http httptools --workers 1

Any request is forwarded as-is (same method, path and body) to BENCH_UPSTREAM with one shared aiohttp
session; a JSON answer comes back whole, an SSE answer piece by piece. No parsing, no routing.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp

Message = MutableMapping[str, Any]
UPSTREAM = os.environ.get("BENCH_UPSTREAM", "http://127.0.0.1:8080").rstrip("/")
_session: aiohttp.ClientSession | None = None


async def app(scope: Message, receive: Callable[[], Awaitable[Message]],
              send: Callable[[Message], Awaitable[None]]) -> None:
    global _session
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                _session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000), auto_decompress=False)
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                if _session is not None:
                    await _session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    assert _session is not None
    body, more = b"", True
    while more:
        msg = await receive()
        body += msg.get("body", b"")
        more = msg.get("more_body", False)
    async with _session.request(scope["method"], UPSTREAM + scope["path"], data=body,
                                headers={"Content-Type": "application/json"}) as resp:
        ctype = resp.headers.get("Content-Type", "application/json").encode()
        if ctype.startswith(b"text/event-stream"):
            await send({"type": "http.response.start", "status": resp.status, "headers": [(b"content-type", ctype)]})
            async for piece in resp.content.iter_any():
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        else:
            data = await resp.read()
            await send({"type": "http.response.start", "status": resp.status,
                        "headers": [(b"content-type", ctype), (b"content-length", str(len(data)).encode())]})
            await send({"type": "http.response.body", "body": data})
