"""The response cache on the request path: answer a request from the cache (plain or as a replayed
stream), count what that saved, and hand fresh answers to the cache off the hot path."""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from typing import Any

from gateway.asgi import Send
from gateway.call import Call
from gateway.config import GatewayConfig
from gateway.metrics import Metrics
from gateway.responses import Response, start_sse
from gateway.streaming import StreamTally

from .sse import assemble_stream, sse_replay
from .types import CacheRequest


class CacheService:
    def __init__(self, cache: Any, metrics: Metrics, config: Callable[[], GatewayConfig],
                 spawn: Callable[[Coroutine[Any, Any, Any]], None]) -> None:
        self.cache = cache  # gateway.cache.ResponseCache (or its client to the replica's cache process)
        self.metrics = metrics
        self.config = config
        self.spawn = spawn

    async def answer(self, call: Call, send: Send) -> bool:
        """Answer from the cache when it can; returns True when the response was sent."""
        # the tenant is a stable id (team_id, the key's own id, master, open), never a display label
        tenant = call.caller.tenant if call.caller is not None else None
        cc = call.headers.get(b"cache-control")
        call.cache_req = CacheRequest(alias=call.alias, endpoint=call.endpoint, body=call.body, tenant=tenant,
                                      cache_control_header=cc.decode("latin-1") if cc else None)
        result = await self.cache.lookup(call.cache_req)
        call.cache_status = result.status
        if result.status not in ("hit", "semantic_hit") or result.body is None:
            return False
        call.response_started = True
        if call.stream:
            await start_sse(send, call.response_headers(None))
            events = sse_replay(result.body, include_usage=call.wants_usage)
            await send({"type": "http.response.body", "body": b"".join(events), "more_body": False})
        else:
            await Response(result.body, 200, call.response_headers(None)).send_to(send)
        call.first_byte_at = time.perf_counter()
        self._record_saved(call, result.usage)
        return True

    def _record_saved(self, call: Call, usage: dict[str, Any] | None) -> None:
        deployments = self.config().aliases.get(call.alias)
        if not deployments or not isinstance(usage, dict):
            return
        dep = deployments[0]
        saved = dep.cost(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
        self.metrics.cache_saved.labels(call.alias, dep.served_model, call.team, call.key).inc(saved)

    def _storable(self, call: Call) -> bool:
        return call.cache_req is not None and call.api.cacheable and call.cache_status in ("miss", "bypass")  # no-cache still stores

    def store_plain(self, call: Call, body: bytes) -> None:
        if self._storable(call):
            self.spawn(self.cache.store(call.cache_req, body))

    def store_stream(self, call: Call, tally: StreamTally) -> None:
        if self._storable(call) and call.api.replayable:
            self.spawn(self.cache.store(call.cache_req, assemble_stream(tally.chunks())))
