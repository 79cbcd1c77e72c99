"""ResponseCache: the object the request path talks to."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson

from .embedder import Embedder, MiniLMEmbedder
from .index import IndexEntry, VectorIndex
from .keys import PreparedKeys, namespace_tag, prepare
from .matcher import Analysis, Matcher, analyse
from .store import Entry, MemoryStore, RedisStore
from .types import CacheRequest, CacheResult, CacheSettings

log = logging.getLogger("gateway.cache")

ErrorCallback = Callable[[str, BaseException], None]


def _is_connection_error(exc: BaseException) -> bool:
    try:
        import redis.exceptions as rexc
    except ImportError:  # pragma: no cover
        return isinstance(exc, OSError | asyncio.TimeoutError)
    return isinstance(exc, rexc.ConnectionError | rexc.TimeoutError | OSError | asyncio.TimeoutError)


def _storable(endpoint: str, body: bytes) -> dict[str, Any] | None:
    """The parsed answer when it is a complete success worth caching, else None."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or obj.get("error") is not None:
        return None
    if endpoint == "embeddings":
        return obj if isinstance(obj.get("data"), list) and obj["data"] else None
    choices = obj.get("choices")
    if not isinstance(choices, list) or not choices:
        return None
    return obj


class ResponseCache:
    """Exact + semantic response cache (see docs/cache.md).

    ``redis_up`` and ``errors_total`` reflect the shared store; ``on_error(kind, exc)`` is called on every
    cache error (hook it to ``oss_cache_errors_total``); ``on_redis_state(up)`` when Redis goes down or
    comes back (``oss_redis_up``).
    """

    def __init__(self, settings: CacheSettings, embedder: Embedder | None = None,
                 matcher: Matcher | None = None) -> None:
        self.settings = settings
        self.semantic = settings.enabled and settings.semantic
        self._embedder: Embedder | None = embedder or settings.embedder
        self._matcher = matcher
        self._index: VectorIndex | None = None
        self.redis: RedisStore | None = None
        self.memory: MemoryStore | None = None
        self.redis_up = settings.redis_url is None
        self.errors_total = 0
        self.on_error: ErrorCallback | None = None
        self.on_redis_state: Callable[[bool], None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._need_resync = True
        self._last_id = "0-0"
        self._ready = asyncio.Event()

    # ---- life cycle -------------------------------------------------------------------------------
    @classmethod
    def create(cls, settings: CacheSettings) -> ResponseCache:
        """Build without I/O; ``start()`` connects, loads the model and the index."""
        return cls(settings)

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = MiniLMEmbedder()
        return self._embedder

    @property
    def matcher(self) -> Matcher:
        if self._matcher is None:
            self._matcher = Matcher(floor=self.settings.similarity_threshold)
        return self._matcher

    @property
    def index(self) -> VectorIndex:
        if self._index is None:
            self._index = VectorIndex(self.embedder.dim, self.settings.hnsw_min_size, self.settings.index_ef)
        return self._index

    @property
    def backend(self) -> str:
        return "redis" if self.settings.redis_url else "memory"

    async def start(self) -> None:
        if not self.settings.enabled:
            return
        if self.settings.redis_url:
            self.redis = RedisStore(self.settings.redis_url, self.settings.key_prefix, self.settings.redis_timeout,
                                    self.settings.stream_maxlen)
            try:
                await self.redis.ping()
                self._set_redis_up(True)
            except Exception as exc:  # noqa: BLE001 - start degraded, the health task retries
                self._record_error("connect", exc)
            self._tasks.append(asyncio.create_task(self._health_loop(), name="cache-redis-health"))
            if self.semantic:
                self._tasks.append(asyncio.create_task(self._follow_loop(), name="cache-index-follow"))
        else:
            self.memory = MemoryStore(self.settings.local_max_entries)
            self._ready.set()
            log.info("response cache: no Redis configured, using an in-process cache")
        if self.semantic:
            load = getattr(self.embedder, "load", None)
            if load is not None:
                await asyncio.get_running_loop().run_in_executor(None, load)
            _ = self.matcher, self.index
            self._tasks.append(asyncio.create_task(self._sweep_loop(), name="cache-index-sweep"))
        if not self.semantic:
            self._ready.set()

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until the initial index load from Redis is done (tests, benchmarks)."""
        await asyncio.wait_for(self._ready.wait(), timeout)

    async def close(self) -> None:
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.close()
        close = getattr(self._embedder, "close", None)
        if close is not None:
            close()

    # ---- errors and Redis state -------------------------------------------------------------------
    def _set_redis_up(self, up: bool) -> None:
        if up == self.redis_up:
            return
        self.redis_up = up
        if up:
            self._need_resync = True
            log.warning("response cache: Redis is reachable again, cache resumed")
        else:
            log.warning("response cache: Redis unreachable, requests bypass the cache")
        if self.on_redis_state is not None:
            with contextlib.suppress(Exception):
                self.on_redis_state(up)

    def _record_error(self, kind: str, exc: BaseException) -> None:
        self.errors_total += 1
        if self.on_error is not None:
            with contextlib.suppress(Exception):
                self.on_error(kind, exc)
        if self.redis is not None and _is_connection_error(exc):
            if kind == "follow":  # the follower's long-lived connection: the health probe decides
                return
            if not self.redis.is_outage(exc):  # a slow answer or a busy moment: that request bypasses, no more
                return
            self._set_redis_up(False)
        else:
            log.warning("response cache error (%s): %r", kind, exc)

    async def _health_loop(self) -> None:
        assert self.redis is not None
        while not self._closed:
            await asyncio.sleep(self.settings.redis_retry_interval)
            try:
                await self.redis.ping()
                self._set_redis_up(True)
            except Exception as exc:  # noqa: BLE001
                if self.redis_up:
                    self._record_error("ping", exc)
                else:
                    self._set_redis_up(False)

    # ---- index feed (Redis) -----------------------------------------------------------------------
    def _vector(self, raw: bytes) -> Any:
        import numpy as np

        return np.frombuffer(raw, dtype="<f2").astype(np.float32)

    def _index_entries(self, entries: list[Entry], index: VectorIndex | None = None) -> None:
        index = self.index if index is None else index
        groups: dict[tuple[str, str], list[tuple[IndexEntry, Any]]] = {}
        for e in entries:
            if e.partition is None or e.vector is None or e.text is None:
                continue
            groups.setdefault((e.namespace, e.partition), []).append(
                (IndexEntry(e.key, e.text, e.created, e.expires_at), self._vector(e.vector)))
        for (ns, part), items in groups.items():
            index.add_many(ns, part, items)

    async def _resync(self) -> None:
        """Rebuild the index from Redis into a new object and swap it in (lookups keep the old one meanwhile)."""
        assert self.redis is not None
        loop = asyncio.get_running_loop()
        last = await self.redis.last_event_id()
        fresh = VectorIndex(self.embedder.dim, self.settings.hnsw_min_size, self.settings.index_ef)
        async for batch in self.redis.scan_semantic():
            await loop.run_in_executor(None, self._index_entries, batch, fresh)
        self._index = fresh
        self._last_id = last
        self._need_resync = False
        self._ready.set()

    async def _follow_loop(self) -> None:
        assert self.redis is not None
        loop = asyncio.get_running_loop()
        while not self._closed:
            if not self.redis_up:
                await asyncio.sleep(self.settings.redis_retry_interval / 2)
                continue
            try:
                if self._need_resync:
                    await self._resync()
                    continue
                events = await self.redis.read_events(self._last_id, block_ms=1000)
                adds: list[str] = []
                for event_id, fields in events:
                    self._last_id = event_id
                    op = fields.get(b"op")
                    if op == b"add":
                        adds.append(fields[b"k"].decode())
                    elif op == b"clear":
                        ns = fields.get(b"ns", b"*").decode()
                        self.index.drop_namespace(None if ns == "*" else ns)
                if adds:
                    entries = await self.redis.fetch_index_fields(adds)
                    await loop.run_in_executor(None, self._index_entries, entries)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                self._record_error("follow", exc)
                self._need_resync = True  # events may be lost (or Redis restarted empty): reload
                await asyncio.sleep(self.settings.redis_retry_interval)

    async def _sweep_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(60)
            self.index.sweep()

    # ---- request path -----------------------------------------------------------------------------
    def _prepare(self, req: CacheRequest) -> PreparedKeys:
        if req.prepared is None:
            model_id = self.embedder.model_id if self.semantic else "-"
            req.prepared = {"keys": prepare(req, self.settings, model_id), "vec": None, "analysis": None}
        return req.prepared["keys"]

    async def _get(self, namespace: str, key: str) -> Entry | None:
        if self.redis is not None:
            return await self.redis.get(namespace, key)
        assert self.memory is not None
        return await self.memory.get(namespace, key)

    async def lookup(self, req: CacheRequest) -> CacheResult:
        if not self.settings.enabled:
            return CacheResult("bypass", reason="disabled")
        keys = self._prepare(req)
        if keys.controls.no_cache:
            return CacheResult("bypass", reason="no-cache")
        if self.redis is not None and not self.redis_up:
            return CacheResult("bypass", reason="redis-down")
        now = time.time()
        max_age = keys.controls.max_age
        try:
            entry = await self._get(keys.namespace, keys.exact)
        except Exception as exc:  # noqa: BLE001
            self._record_error("lookup", exc)
            return CacheResult("bypass", reason="redis-error")
        if entry is not None and (max_age is None or now - entry.created <= max_age):
            return CacheResult("hit", body=entry.body, usage=entry.usage, age=now - entry.created, key=entry.key)
        if not (self.semantic and keys.partition and keys.text):
            return CacheResult("miss")
        if not keys.temperature_ok:
            return CacheResult("miss", reason="temperature")
        try:
            return await self._semantic_lookup(req, keys, now)
        except Exception as exc:  # noqa: BLE001
            self._record_error("semantic", exc)
            return CacheResult("bypass" if self.redis is not None and not self.redis_up else "miss",
                               reason="semantic-error")

    async def _query_vector(self, req: CacheRequest, text: str) -> Any:
        if req.prepared.get("vec") is None:
            vec = (await self.embedder.embed([text]))[0]
            # vectors are stored as float16: compare like with like
            req.prepared["vec"] = vec.astype("<f2").astype("float32")
        return req.prepared["vec"]

    async def _semantic_lookup(self, req: CacheRequest, keys: PreparedKeys, now: float) -> CacheResult:
        assert keys.partition is not None and keys.text is not None
        vec = await self._query_vector(req, keys.text)
        cands = self.index.search(keys.namespace, keys.partition, vec, self.settings.candidates, now)
        if not cands:
            return CacheResult("miss")
        query: Analysis = req.prepared.get("analysis") or analyse(keys.text)
        req.prepared["analysis"] = query
        judged = []
        for cand in cands:
            if cand.cosine < self.matcher.min_cosine:
                continue
            verdict = self.matcher.judge(query, cand.entry.get_analysis(), cand.cosine)
            if verdict.ok:
                judged.append((verdict.probability, cand))
        judged.sort(key=lambda pc: (-pc[0], -pc[1].cosine))
        max_age = keys.controls.max_age
        for prob, cand in judged:
            entry = await self._get(keys.namespace, cand.entry.key)
            if entry is None or entry.partition != keys.partition:
                self.index.remove(keys.namespace, keys.partition, cand.entry.key)
                continue
            age = now - entry.created
            if max_age is not None and age > max_age:
                continue
            return CacheResult("semantic_hit", body=entry.body, usage=entry.usage, score=prob,
                               similarity=cand.cosine, age=age, key=entry.key)
        return CacheResult("miss")

    async def store(self, req: CacheRequest, body: bytes) -> None:
        """Store a successful upstream answer (errors and non-answers are ignored)."""
        if not self.settings.enabled:
            return
        try:
            await self._store(req, body)
        except Exception as exc:  # noqa: BLE001
            self._record_error("store", exc)

    async def _store(self, req: CacheRequest, body: bytes) -> None:
        keys = self._prepare(req)
        if keys.controls.no_store or (self.redis is not None and not self.redis_up):
            return
        ttl = keys.controls.ttl if keys.controls.ttl is not None else self.settings.ttl
        if ttl is not None and ttl <= 0:
            return
        obj = _storable(req.endpoint, body)
        if obj is None:
            return
        now = time.time()
        usage = obj.get("usage") if isinstance(obj.get("usage"), dict) else None
        entry = Entry(namespace=keys.namespace, key=keys.exact, body=body, usage=usage, created=now,
                      expires_at=None if ttl is None else now + ttl)
        vec = None
        if self.semantic and keys.partition and keys.text and keys.temperature_ok:
            vec = await self._query_vector(req, keys.text)
            entry.partition, entry.text, entry.vector = keys.partition, keys.text, vec.astype("<f2").tobytes()
        if self.redis is not None:
            await self.redis.put(entry)
        else:
            assert self.memory is not None
            for old in await self.memory.put(entry):
                if old.partition:
                    self.index.remove(old.namespace, old.partition, old.key)
        if vec is not None and entry.partition is not None and entry.text is not None:
            self.index.add(keys.namespace, entry.partition,
                           IndexEntry(entry.key, entry.text, entry.created, entry.expires_at,
                                      req.prepared.get("analysis")), vec)

    async def clear(self, namespace: str | None) -> int:
        """Delete a namespace's entries (all namespaces when None); returns how many."""
        tag = namespace_tag(namespace) if namespace is not None else None
        if self.redis is not None:
            removed = await self.redis.clear(tag)
        elif self.memory is not None:
            removed = await self.memory.clear(tag)
        else:
            return 0
        if self.semantic:
            self.index.drop_namespace(tag)
        return removed

    def stats(self) -> dict[str, Any]:
        return {"backend": self.backend, "semantic": self.semantic, "redis_up": self.redis_up,
                "errors_total": self.errors_total,
                "index_entries": len(self._index) if self._index is not None else 0,
                "index_partitions": self._index.partitions() if self._index is not None else 0}
