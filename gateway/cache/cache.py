"""ResponseCache: the object the request path talks to."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from .backend import SemanticBackend, SemanticBusy, SemanticUnavailable, cancel_all
from .embedder import Embedder, MiniLMEmbedder
from .keys import PreparedKeys, namespace_tag, prepare
from .store import Entry, MemoryStore, RedisStore
from .types import CacheRequest, CacheResult, CacheSettings

if TYPE_CHECKING:  # pragma: no cover
    from .client import CacheClient, RemoteStore
    from .index import VectorIndex
    from .matcher import Matcher

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

    Exact entries live in Redis (or an in-process LRU store); the semantic side (embedder, matcher,
    bounded vector index) lives in this process, or, with ``remote`` (the Unix socket of the replica's
    cache process, several workers), in that process.

    ``redis_up`` and ``errors_total`` reflect the shared store; ``on_error(kind, exc)`` is called on every
    cache error (hook it to ``oss_cache_errors_total``); ``on_redis_state(up)`` when Redis goes down or
    comes back (``oss_redis_up``).
    """

    def __init__(self, settings: CacheSettings, embedder: Embedder | None = None,
                 matcher: Matcher | None = None, remote: str | None = None) -> None:
        self.settings = settings
        self.semantic = settings.enabled and settings.semantic
        self._embedder: Embedder | None = embedder or settings.embedder
        self._own_embedder = self._embedder is not None  # given (alias, tests) rather than MiniLM by default
        self._matcher = matcher
        self.remote = remote
        self.client: CacheClient | None = None
        self.sem: SemanticBackend | None = None
        self.redis: RedisStore | None = None
        self.memory: MemoryStore | RemoteStore | None = None
        self.redis_up = settings.redis_url is None
        self.errors_total = 0
        self.on_error: ErrorCallback | None = None
        self.on_redis_state: Callable[[bool], None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    # ---- life cycle -------------------------------------------------------------------------------
    @classmethod
    def create(cls, settings: CacheSettings) -> ResponseCache:
        """Build without I/O; ``start()`` connects, loads the model and the index."""
        return cls(settings)

    @property
    def embedder(self) -> Embedder:
        """The embedder that names the partitions (with a cache process, MiniLM is loaded only there)."""
        if self._embedder is None:
            self._embedder = MiniLMEmbedder()
        return self._embedder

    @property
    def matcher(self) -> Matcher:
        if self._matcher is None:
            from .matcher import Matcher

            self._matcher = Matcher(floor=self.settings.similarity_threshold)
        return self._matcher

    @property
    def index(self) -> VectorIndex:
        """The in-process index (tests); not available with a cache process."""
        index = getattr(self.sem, "index", None)
        if index is None:
            raise RuntimeError("the semantic index is not in this process")
        return index

    @property
    def backend(self) -> str:
        return "redis" if self.settings.redis_url else "memory"

    async def start(self) -> None:
        if not self.settings.enabled:
            return
        if self.remote is not None:
            from .client import CacheClient, RemoteSemantic, RemoteStore

            self.client = CacheClient(self.remote, self.settings.process_timeout)
            if not await self.client.connect(wait=self.settings.process_start_wait):
                log.warning("response cache: the cache process (%s) does not answer yet: bypassing until it does",
                            self.remote)
        if self.settings.redis_url:
            self.redis = RedisStore(self.settings.redis_url, self.settings.key_prefix, self.settings.redis_timeout,
                                    self.settings.stream_maxlen)
            try:
                await self.redis.ping()
                self._set_redis_up(True)
            except Exception as exc:  # noqa: BLE001 - start degraded, the health task retries
                self._record_error("connect", exc)
            self._tasks.append(asyncio.create_task(self._health_loop(), name="cache-redis-health"))
        elif self.client is not None:
            self.memory = RemoteStore(self.client)
            log.info("response cache: no Redis configured, using the replica's cache process")
        else:
            self.memory = MemoryStore(self.settings.local_max_entries or self.settings.max_entries)
            log.info("response cache: no Redis configured, using an in-process cache")
        if not self.semantic:
            return
        if self.client is not None:
            self.sem = RemoteSemantic(self.client, self._embedder if self._own_embedder else None)
        else:
            from .semantic import SemanticIndex

            sem = SemanticIndex(self.settings, self.embedder, self.matcher)
            sem.on_error = self._record_error
            self.sem = sem
        await self.sem.start()

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until the initial index load from Redis is done (tests, benchmarks)."""
        if self.sem is not None:
            await self.sem.wait_ready(timeout)

    async def close(self) -> None:
        self._closed = True
        await cancel_all(self._tasks)
        if self.sem is not None:
            await self.sem.close()
        if self.client is not None:
            await self.client.close()
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
            log.warning("response cache: Redis is reachable again, cache resumed")
        else:
            log.warning("response cache: Redis unreachable, requests bypass the cache")
        if self.on_redis_state is not None:
            with contextlib.suppress(Exception):
                self.on_redis_state(up)

    def _count_error(self, kind: str, exc: BaseException) -> None:
        self.errors_total += 1
        if self.on_error is not None:
            with contextlib.suppress(Exception):
                self.on_error(kind, exc)

    def _record_error(self, kind: str, exc: BaseException) -> None:
        self._count_error(kind, exc)
        if isinstance(exc, SemanticUnavailable):
            return  # the cache process: its client logs when it goes and comes back
        if self.redis is not None and _is_connection_error(exc):
            if kind == "follow":  # the index follower's long-lived connection: the health probe decides
                return
            if not self.redis.is_outage(exc):  # a slow answer or a busy moment: that request bypasses, no more
                return
            self._set_redis_up(False)
        elif kind != "follow":
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

    # ---- request path -----------------------------------------------------------------------------
    def _prepare(self, req: CacheRequest) -> PreparedKeys:
        if req.prepared is None:
            model_id = self.embedder.model_id if self.semantic else "-"
            req.prepared = {"keys": prepare(req, self.settings, model_id), "vec": None}
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
        except SemanticUnavailable as exc:  # the in-process store of the cache process
            self._record_error("cache_process", exc)
            return CacheResult("bypass", reason="cache-process-down")
        except Exception as exc:  # noqa: BLE001
            self._record_error("lookup", exc)
            return CacheResult("bypass", reason="redis-error")
        if entry is not None and (max_age is None or now - entry.created <= max_age):
            if self.sem is not None and entry.partition:
                self.sem.touch(keys.namespace, entry.partition, entry.key)  # a hit keeps it in the index
            return CacheResult("hit", body=entry.body, usage=entry.usage, age=now - entry.created, key=entry.key)
        if not (self.sem is not None and keys.partition and keys.text):
            return CacheResult("miss")
        if not keys.temperature_ok:
            return CacheResult("miss", reason="temperature")
        try:
            return await self._semantic_lookup(req, keys, now)
        except SemanticUnavailable as exc:
            self._record_error("cache_process", exc)
            req.prepared["sem_failed"] = True  # the store then keeps the answer for exact hits only
            return CacheResult("bypass", reason="cache-process-busy" if isinstance(exc, SemanticBusy)
                               else "cache-process-down")
        except Exception as exc:  # noqa: BLE001
            self._record_error("semantic", exc)
            return CacheResult("bypass" if self.redis is not None and not self.redis_up else "miss",
                               reason="semantic-error")

    async def _semantic_lookup(self, req: CacheRequest, keys: PreparedKeys, now: float) -> CacheResult:
        assert keys.partition is not None and keys.text is not None and self.sem is not None
        vec, matches = await self.sem.match(keys.namespace, keys.partition, keys.text, req.prepared.get("vec"),
                                            self.settings.candidates)
        req.prepared["vec"] = vec  # float16 bytes, stored with the answer
        max_age = keys.controls.max_age
        for m in matches:
            entry = await self._get(keys.namespace, m.key)
            if entry is None or entry.partition != keys.partition:
                self.sem.remove(keys.namespace, keys.partition, m.key)  # expired or evicted in the store
                continue
            age = now - entry.created
            if max_age is not None and age > max_age:
                continue
            self.sem.touch(keys.namespace, keys.partition, entry.key)
            return CacheResult("semantic_hit", body=entry.body, usage=entry.usage, score=m.probability,
                               similarity=m.cosine, age=age, key=entry.key)
        return CacheResult("miss")

    async def store(self, req: CacheRequest, body: bytes) -> None:
        """Store a successful upstream answer (errors and non-answers are ignored)."""
        if not self.settings.enabled:
            return
        try:
            await self._store(req, body)
        except SemanticUnavailable as exc:
            self._record_error("cache_process", exc)
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
        vec: bytes | None = None
        if self.sem is not None and keys.partition and keys.text and keys.temperature_ok:
            vec = req.prepared.get("vec")
            if vec is None and not req.prepared.get("sem_failed"):  # (no second try at an overloaded embedder)
                try:
                    vec = await self.sem.embed(keys.text)
                except SemanticUnavailable as exc:  # stored for exact hits only
                    self._record_error("cache_process", exc)
            if vec is not None:
                entry.partition, entry.text, entry.vector = keys.partition, keys.text, vec
        if self.redis is not None:
            await self.redis.put(entry)
        else:
            assert self.memory is not None
            for old in await self.memory.put(entry):
                if old.partition and self.sem is not None:
                    self.sem.remove(old.namespace, old.partition, old.key)
        if vec is not None and self.sem is not None and entry.partition is not None and entry.text is not None:
            await self.sem.add(keys.namespace, entry.partition, entry.key, entry.text, entry.created,
                               entry.expires_at, vec)

    async def clear(self, namespace: str | None) -> int:
        """Delete a namespace's entries (all namespaces when None); returns how many."""
        tag = namespace_tag(namespace) if namespace is not None else None
        if self.redis is not None:
            removed = await self.redis.clear(tag)
        elif self.memory is not None:
            removed = await self.memory.clear(tag)
        else:
            return 0
        if self.sem is not None:
            await self.sem.drop_namespace(tag)
        return removed

    def index_entries(self) -> int | None:
        """Entries in the semantic index of this replica (None: no semantic cache, or not reachable)."""
        if self.sem is None:
            return None
        return self.sem.entries()

    def stats(self) -> dict[str, Any]:
        index = getattr(self.sem, "index", None)
        partitions = index.partitions() if index is not None else None
        return {"backend": self.backend, "semantic": self.semantic, "redis_up": self.redis_up,
                "errors_total": self.errors_total, "index_entries": self.index_entries() or 0,
                "index_partitions": partitions, "cache_process": self.remote}
