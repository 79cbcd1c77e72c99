"""Entry storage: in-process (LRU dict) or Redis (hashes + an event stream for other replicas).

Redis layout (``P`` = key prefix, ``NS`` = namespace tag):
- ``P:NS:e:<exact hash>``  HASH  b=body, u=usage JSON, p=partition, t=last user text, v=vector (float16),
  c=created (unix s), x=expires at (unix s, empty = never); the key carries the TTL (``PEXPIRE``), and
  reads never touch it, so a hit does not extend the TTL.
- ``P:events``             STREAM  ``op=add k=<entry key>`` / ``op=clear ns=<NS or *>``, trimmed (~) to
  ``stream_maxlen``; replicas follow it with XREAD to feed their in-process vector index.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson


@dataclass
class Entry:
    namespace: str
    key: str                       # exact hash
    body: bytes
    usage: dict[str, Any] | None
    created: float
    expires_at: float | None
    partition: str | None = None
    text: str | None = None
    vector: bytes | None = None    # float16 little-endian


class MemoryStore:
    """In-process store (no Redis configured): LRU-bounded, expiry checked on read."""

    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._data: OrderedDict[tuple[str, str], Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    async def get(self, namespace: str, key: str) -> Entry | None:
        entry = self._data.get((namespace, key))
        if entry is None:
            return None
        if entry.expires_at is not None and entry.expires_at <= time.time():
            self._data.pop((namespace, key), None)
            return None
        self._data.move_to_end((namespace, key))
        return entry

    async def put(self, entry: Entry) -> list[Entry]:
        """Store; returns the entries evicted to make room."""
        self._data[(entry.namespace, entry.key)] = entry
        self._data.move_to_end((entry.namespace, entry.key))
        evicted = []
        while len(self._data) > self._max:
            evicted.append(self._data.popitem(last=False)[1])
        return evicted

    async def delete(self, namespace: str, key: str) -> None:
        self._data.pop((namespace, key), None)

    async def clear(self, namespace: str | None) -> int:
        keys = [k for k in self._data if namespace is None or k[0] == namespace]
        for k in keys:
            del self._data[k]
        return len(keys)


def _f(value: Any) -> float | None:
    if value in (None, b"", ""):
        return None
    return float(value)


class RedisStore:
    """Redis backend (redis-py asyncio).  Every command on the request path has a timeout.

    `is_outage(exc)` decides whether a failed command means Redis is down: a refused, reset or closed
    connection does at once; a timeout does only when commands have kept timing out, with no reply in
    between, for `timeout` seconds more. A timeout is measured on our own event loop's clock, so a busy
    moment of this process (a loop stall of a few hundred ms under load, bench/redis_rtt.py) or one slow
    reply times out the requests waiting at that moment together — and is not an outage.
    """

    FIELDS = (b"b", b"u", b"p", b"t", b"v", b"c", b"x")

    def __init__(self, url: str, prefix: str, timeout: float, stream_maxlen: int) -> None:
        import redis.asyncio as aioredis
        from redis.backoff import NoBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.retry import Retry

        self.prefix = prefix
        self.stream = f"{prefix}:events"
        self._maxlen = stream_maxlen
        self.timeout = timeout
        self._slow_since: float | None = None  # first timeout of the current run with no reply since
        # one immediate retry on a connection error: a pooled connection broken by a Redis restart is replaced
        # at once (never the default multi-second backoff); none on a timeout, which would double the wait
        self.client = aioredis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                              retry=Retry(NoBackoff(), 1, (RedisConnectionError,)),
                                              health_check_interval=0, max_connections=64)
        # a separate connection for the blocking XREAD of the follower
        self.follower = aioredis.Redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=max(timeout, 0.5),
                                                retry=Retry(NoBackoff(), 1), max_connections=4)

    def entry_key(self, namespace: str, key: str) -> str:
        return f"{self.prefix}:{namespace}:e:{key}"

    def split_key(self, full: str) -> tuple[str, str]:
        rest = full[len(self.prefix) + 1:]
        namespace, _, key = rest.rpartition(":e:")
        return namespace, key

    def _decode(self, namespace: str, key: str, values: list[Any]) -> Entry | None:
        b, u, p, t, v, c, x = values
        if b is None or c is None:
            return None
        return Entry(namespace=namespace, key=key, body=b, usage=orjson.loads(u) if u else None,
                     created=float(c), expires_at=_f(x), partition=p.decode() if p else None,
                     text=t.decode() if t else None, vector=v or None)

    def is_outage(self, exc: BaseException) -> bool:
        """Does this failed command mean Redis is down (see the class docstring)?"""
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import MaxConnectionsError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        if isinstance(exc, RedisTimeoutError | asyncio.TimeoutError | MaxConnectionsError):  # slow or busy
            now = time.monotonic()
            if self._slow_since is None:
                self._slow_since = now
            return now - self._slow_since >= self.timeout
        return isinstance(exc, RedisConnectionError | OSError)

    async def ping(self) -> bool:
        ok = bool(await self.client.ping())
        self._slow_since = None
        return ok

    async def get(self, namespace: str, key: str) -> Entry | None:
        values = await self.client.hmget(self.entry_key(namespace, key), list(self.FIELDS))
        self._slow_since = None
        return self._decode(namespace, key, values)

    async def put(self, entry: Entry) -> list[Entry]:
        full = self.entry_key(entry.namespace, entry.key)
        mapping: dict[str, Any] = {"b": entry.body, "u": orjson.dumps(entry.usage) if entry.usage else b"",
                                   "c": repr(entry.created), "x": repr(entry.expires_at) if entry.expires_at else b""}
        if entry.partition and entry.vector is not None and entry.text is not None:
            mapping.update({"p": entry.partition, "t": entry.text, "v": entry.vector})
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(full)
            pipe.hset(full, mapping=mapping)
            if entry.expires_at is not None:
                pipe.pexpireat(full, int(entry.expires_at * 1000))
            if "p" in mapping:
                pipe.xadd(self.stream, {"op": "add", "k": full}, maxlen=self._maxlen, approximate=True)
            await pipe.execute()
        self._slow_since = None
        return []

    async def delete(self, namespace: str, key: str) -> None:
        await self.client.delete(self.entry_key(namespace, key))

    async def clear(self, namespace: str | None) -> int:
        pattern = f"{self.prefix}:{namespace}:e:*" if namespace else f"{self.prefix}:*:e:*"
        removed = 0
        batch: list[bytes] = []
        async for k in self.follower.scan_iter(match=pattern, count=1000):
            batch.append(k)
            if len(batch) >= 1000:
                removed += await self.follower.unlink(*batch)
                batch = []
        if batch:
            removed += await self.follower.unlink(*batch)
        await self.follower.xadd(self.stream, {"op": "clear", "ns": namespace or "*"}, maxlen=self._maxlen,
                                 approximate=True)
        return int(removed)

    async def last_event_id(self) -> str:
        last = await self.follower.xrevrange(self.stream, count=1)
        return last[0][0].decode() if last else "0-0"

    async def scan_semantic(self, batch: int = 1000) -> AsyncIterator[list[Entry]]:
        """All entries that carry a vector, in batches (for a replica's initial index load)."""
        keys: list[bytes] = []
        async for k in self.follower.scan_iter(match=f"{self.prefix}:*:e:*", count=batch):
            keys.append(k)
            if len(keys) >= batch:
                yield await self._fetch_index_fields(keys)
                keys = []
        if keys:
            yield await self._fetch_index_fields(keys)

    async def _fetch_index_fields(self, keys: list[bytes]) -> list[Entry]:
        async with self.follower.pipeline(transaction=False) as pipe:
            for k in keys:
                pipe.hmget(k, ["p", "t", "v", "c", "x"])
            rows = await pipe.execute()
        out = []
        for k, (p, t, v, c, x) in zip(keys, rows, strict=True):
            if not (p and t and v and c):
                continue
            namespace, key = self.split_key(k.decode())
            out.append(Entry(namespace=namespace, key=key, body=b"", usage=None, created=float(c),
                             expires_at=_f(x), partition=p.decode(), text=t.decode(), vector=v))
        return out

    async def read_events(self, last_id: str, block_ms: int) -> list[tuple[str, dict[bytes, bytes]]]:
        resp = await self.follower.xread({self.stream: last_id}, count=1000, block=block_ms)
        out: list[tuple[str, dict[bytes, bytes]]] = []
        for _stream, events in resp or []:
            for event_id, fields in events:
                out.append((event_id.decode(), fields))
        return out

    async def fetch_index_fields(self, full_keys: list[str]) -> list[Entry]:
        return await self._fetch_index_fields([k.encode() for k in full_keys])

    async def close(self) -> None:
        await self.client.aclose()
        await self.follower.aclose()
