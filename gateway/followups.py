"""Where an answer that a later request may continue lives (Responses' `previous_response_id`): response
id → the deployment that holds it, and for a deployment the gateway translates for, the conversation so
far. Per tenant (another tenant's id is unknown), with a TTL. In the shared store when a Redis is
configured (every replica sees it), else in this process (bounded, least recently used out first)."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any

import orjson

log = logging.getLogger("gateway.followups")

MAX_ITEMS_BYTES = 1 << 20  # a conversation larger than this is not kept (its follow-up gets a clear 404)
MAX_LOCAL_BYTES = 64 << 20  # the in-process store (no Redis) holds at most this much, oldest use out first


class FollowUps:
    def __init__(self, redis_url: str | None, prefix: str, ttl: float = 3600.0, max_local: int = 20_000,
                 timeout: float = 1.0, max_local_bytes: int = MAX_LOCAL_BYTES) -> None:
        self.ttl = ttl
        self.max_local = max_local
        self.max_local_bytes = max_local_bytes
        self._local_bytes = 0
        self.prefix = prefix
        self._url = redis_url
        self._timeout = timeout
        self._redis: Any = None
        self._local: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    async def start(self) -> None:
        if self._url:
            import redis.asyncio as aioredis

            self._redis = aioredis.from_url(self._url, socket_timeout=self._timeout,
                                            socket_connect_timeout=self._timeout)

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()

    def _key(self, tenant: str, rid: str) -> str:
        return f"{self.prefix}:followup:{tenant}:{rid}"

    async def put(self, tenant: str, rid: str, deployment: str, items: list[dict[str, Any]] | None,
                  answer: dict[str, Any] | None = None) -> None:
        value = orjson.dumps({"d": deployment, "items": items, "answer": answer})
        if len(value) > MAX_ITEMS_BYTES:
            value = orjson.dumps({"d": deployment, "items": None, "too_large": True})
        key = self._key(tenant, rid)
        if self._redis is not None:
            try:
                await self._redis.set(key, value, ex=max(1, int(self.ttl)))
                return
            except Exception as exc:  # noqa: BLE001 - the store is down: keep it in this process
                log.warning("follow-up store unreachable (%s): keeping %s in this process", type(exc).__name__, rid)
        old = self._local.pop(key, None)
        if old is not None:
            self._local_bytes -= len(old[1])
        self._local[key] = (time.monotonic() + self.ttl, value)
        self._local_bytes += len(value)
        while len(self._local) > self.max_local or self._local_bytes > self.max_local_bytes:
            self._local_bytes -= len(self._local.popitem(last=False)[1][1])

    async def get(self, tenant: str, rid: str
                  ) -> tuple[str, list[dict[str, Any]] | None, bool, dict[str, Any] | None] | None:
        """(deployment id, conversation items or None, whether the conversation was too large, the answer as
        the gateway made it (translated deployments)) or None."""
        key = self._key(tenant, rid)
        raw: bytes | None = None
        if self._redis is not None:
            try:
                raw = await self._redis.get(key)
            except Exception:  # noqa: BLE001
                raw = None
        if raw is None:
            hit = self._local.get(key)
            if hit is not None and hit[0] > time.monotonic():
                self._local.move_to_end(key)
                raw = hit[1]
        if raw is None:
            return None
        data = orjson.loads(raw)
        return str(data["d"]), data.get("items"), bool(data.get("too_large")), data.get("answer")

    async def delete(self, tenant: str, rid: str) -> bool:
        key = self._key(tenant, rid)
        old = self._local.pop(key, None)
        if old is not None:
            self._local_bytes -= len(old[1])
        found = old is not None
        if self._redis is not None:
            try:
                found = bool(await self._redis.delete(key)) or found
            except Exception:  # noqa: BLE001
                pass
        return found
