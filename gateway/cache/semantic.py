"""The semantic side of the cache: embedder, matcher and vector index, fed from Redis.

`SemanticIndex` runs in the process that owns the index: the worker itself with one worker (or in
tests), else the replica's cache process (`process.py`), which the workers reach through
`client.RemoteSemantic` with the same methods.  Vectors cross this interface as float16 bytes (as they
are stored in Redis), so a worker never needs numpy for them.

Embeddings are batched: texts asked for while the embedder is busy are embedded together in the next
run (one ONNX batch, identical texts once).  A caller may give a deadline (the workers do: their
timeout): a text that would wait past it, by the measured time per text and the queue ahead of it, is
refused at once (`SemanticBusy`), and one whose deadline passes in the queue is dropped, so an overloaded
embedder sheds load (those requests bypass) instead of building a queue of answers nobody waits for.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .backend import Match, SemanticBackend, SemanticBusy, SemanticUnavailable, cancel_all
from .index import IndexEntry, VectorIndex, cached_analysis
from .types import CacheSettings

if TYPE_CHECKING:  # pragma: no cover
    from .embedder import Embedder
    from .matcher import Matcher
    from .store import Entry, RedisStore

log = logging.getLogger("gateway.cache")

__all__ = ["Match", "SemanticBackend", "SemanticBusy", "SemanticIndex", "SemanticUnavailable", "f16_to_f32", "to_f16"]

MAX_BATCH = 8  # texts per ONNX run (fewer when a deadline in the batch is near)


def f16_to_f32(raw: bytes) -> Any:
    import numpy as np

    return np.frombuffer(raw, dtype="<f2").astype(np.float32)


def to_f16(vec: Any) -> bytes:
    return bytes(vec.astype("<f2").tobytes())


class SemanticIndex:
    """Embedder + matcher + bounded vector index; with ``settings.redis_url`` the index follows Redis.

    ``on_error(kind, exc)`` is called for follower errors (Redis unreachable, ...).
    """

    def __init__(self, settings: CacheSettings, embedder: Embedder | None, matcher: Matcher | None = None,
                 follow_redis: bool = True) -> None:
        self.settings = settings
        self.embedder = embedder
        self._matcher = matcher
        self.index = VectorIndex(embedder.dim if embedder is not None else 0, settings.hnsw_min_size,
                                 settings.index_ef, settings.max_entries)
        self.redis: RedisStore | None = None
        self._follow = follow_redis and settings.redis_url is not None
        self.on_error: Callable[[str, BaseException], None] | None = None
        self._queue: deque[tuple[str, asyncio.Future[bytes], float | None]] | None = None
        self._wakeup = asyncio.Event()
        self._embed_workers = 1
        self._per_text = 0.005      # seconds per text, measured (moving average)
        self._measured = False
        self._embedding = 0         # texts in a run right now
        self.shed = 0               # texts refused or dropped for their deadline
        self._tasks: list[asyncio.Task[None]] = []
        self._ready = asyncio.Event()
        self._closed = False
        self._need_resync = True
        self._last_id = "0-0"
        self._follow_ok = True

    @property
    def matcher(self) -> Matcher:
        if self._matcher is None:
            from .matcher import Matcher

            self._matcher = Matcher(floor=self.settings.similarity_threshold)
        return self._matcher

    # ---- life cycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.embedder is not None:
            load = getattr(self.embedder, "load", None)
            if load is not None:
                await loop.run_in_executor(None, load)
            self._queue = deque()
            self._embed_workers = max(1, int(getattr(self.embedder, "workers", 1)))
            for i in range(self._embed_workers):
                self._tasks.append(asyncio.create_task(self._embed_loop(), name=f"cache-embed-{i}"))
        _ = self.matcher
        self._tasks.append(asyncio.create_task(self._sweep_loop(), name="cache-index-sweep"))
        if self._follow:
            from .store import RedisStore

            assert self.settings.redis_url is not None
            self.redis = RedisStore(self.settings.redis_url, self.settings.key_prefix, self.settings.redis_timeout,
                                    self.settings.stream_maxlen)
            self._tasks.append(asyncio.create_task(self._follow_loop(), name="cache-index-follow"))
        else:
            self._ready.set()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until the initial index load from Redis is done (tests, benchmarks)."""
        await asyncio.wait_for(self._ready.wait(), timeout)

    async def close(self) -> None:
        self._closed = True
        await cancel_all(self._tasks)
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.close()
        close = getattr(self.embedder, "close", None)
        if close is not None:
            close()

    def _error(self, kind: str, exc: BaseException) -> None:
        if self.on_error is not None:
            with contextlib.suppress(Exception):
                self.on_error(kind, exc)

    # ---- embeddings (batched) ---------------------------------------------------------------------
    async def embed(self, text: str, deadline: float | None = None) -> bytes:
        """The text's unit vector as float16 bytes; ``deadline`` (``time.time()``) sheds load (see above)."""
        if self._queue is None:
            raise SemanticUnavailable("no embedder here: the caller sends vectors")
        ahead = len(self._queue) + self._embedding
        if deadline is not None and ahead >= self._embed_workers:  # (an idle runner always takes it: re-measures)
            if time.time() + (ahead / self._embed_workers + 1) * self._per_text > deadline:
                self.shed += 1
                raise SemanticBusy(f"embedder busy ({ahead} texts ahead)")
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._queue.append((text, fut, deadline))
        self._wakeup.set()
        return await fut

    async def _embed_loop(self) -> None:
        assert self._queue is not None and self.embedder is not None
        queue = self._queue
        while True:
            while not queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            # one ONNX run: the oldest texts, as many as can finish before the earliest deadline among them
            now = time.time()
            live: list[tuple[str, asyncio.Future[bytes], float | None]] = []
            earliest: float | None = None
            while queue and len(live) < MAX_BATCH:
                if earliest is not None and now + (len(live) + 1) * self._per_text > earliest:
                    break
                item = queue.popleft()
                if item[1].done():
                    continue
                if item[2] is not None and item[2] < now:
                    self.shed += 1
                    item[1].set_exception(SemanticBusy("deadline passed in the embedder's queue"))
                    continue
                live.append(item)
                if item[2] is not None:
                    earliest = item[2] if earliest is None else min(earliest, item[2])
            if not live:
                continue
            texts = list(dict.fromkeys(t for t, _, _ in live))
            self._embedding += len(texts)
            t0 = time.perf_counter()
            try:
                vecs = await self.embedder.embed(texts)
                by_text = {t: to_f16(v) for t, v in zip(texts, vecs, strict=True)}
            except Exception as exc:  # noqa: BLE001 - every waiter gets the error
                for _, fut, _ in live:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            finally:
                self._embedding -= len(texts)
            took = (time.perf_counter() - t0) / len(texts)
            # down at once (refusing work the embedder could do loses hits), up by halves (one stalled run
            # does not shut it)
            self._per_text = took if not self._measured or took < self._per_text else (self._per_text + took) / 2
            self._measured = True
            for text, fut, _ in live:
                if not fut.done():
                    fut.set_result(by_text[text])

    # ---- lookups and updates ----------------------------------------------------------------------
    async def match(self, namespace: str, partition: str, text: str, vec: bytes | None,
                    k: int, deadline: float | None = None) -> tuple[bytes, list[Match]]:
        """Embed ``text`` (unless ``vec`` is given) and return the stored entries the matcher accepts for
        it, best first, with the vector (float16 bytes) for storing the answer later."""
        if vec is None:
            vec = await self.embed(text, deadline)
        cands = self.index.search(namespace, partition, f16_to_f32(vec), k)
        if not cands:
            return vec, []
        query = cached_analysis(text)
        matcher = self.matcher
        judged: list[tuple[float, float, str]] = []
        for cand in cands:
            if cand.cosine < matcher.min_cosine:
                continue
            verdict = matcher.judge(query, cand.entry.get_analysis(), cand.cosine)
            if verdict.ok:
                judged.append((verdict.probability, cand.cosine, cand.entry.key))
        judged.sort(key=lambda pck: (-pck[0], -pck[1]))
        return vec, [Match(key, prob, cos) for prob, cos, key in judged]

    async def add(self, namespace: str, partition: str, key: str, text: str, created: float,
                  expires_at: float | None, vec: bytes) -> None:
        self.index.add(namespace, partition, IndexEntry(key, text, created, expires_at), f16_to_f32(vec))

    def remove(self, namespace: str, partition: str, key: str) -> None:
        self.index.remove(namespace, partition, key)

    def touch(self, namespace: str, partition: str, key: str) -> None:
        self.index.touch(namespace, partition, key)

    async def drop_namespace(self, namespace: str | None) -> None:
        self.index.drop_namespace(namespace)

    def entries(self) -> int:
        return len(self.index)

    def stats(self) -> dict[str, Any]:
        return {"entries": len(self.index), "partitions": self.index.partitions(), "ready": self.ready,
                "max_entries": self.index.max_entries, "evicted": self.index.evicted, "shed": self.shed,
                "embed_ms": round(self._per_text * 1000, 2)}

    # ---- the Redis feed ---------------------------------------------------------------------------
    def _index_entries(self, entries: list[Entry], index: VectorIndex) -> None:
        groups: dict[tuple[str, str], list[tuple[IndexEntry, Any]]] = {}
        for e in entries:
            if e.partition is None or e.vector is None or e.text is None:
                continue
            groups.setdefault((e.namespace, e.partition), []).append(
                (IndexEntry(e.key, e.text, e.created, e.expires_at), f16_to_f32(e.vector)))
        for (ns, part), items in groups.items():
            index.add_many(ns, part, items)

    async def _resync(self) -> None:
        """Rebuild the index from Redis into a new object and swap it in (lookups keep the old one meanwhile).
        Only the newest ``max_entries`` entries are loaded, oldest first (so the newest are the most
        recently used)."""
        assert self.redis is not None
        loop = asyncio.get_running_loop()
        last = await self.redis.last_event_id()
        limit = self.index.max_entries
        newest: list[tuple[float, int, Entry]] = []  # a min-heap of at most `limit` entries
        seq = 0
        async for batch in self.redis.scan_semantic():
            for e in batch:
                seq += 1
                item = (e.created, seq, e)
                if limit is None or len(newest) < limit:
                    heapq.heappush(newest, item)
                elif item > newest[0]:
                    heapq.heapreplace(newest, item)
        fresh = VectorIndex(self.index.dim, self.settings.hnsw_min_size, self.settings.index_ef, limit)
        ordered = [e for _, _, e in sorted(newest)]
        newest.clear()
        for start in range(0, len(ordered), 1000):
            await loop.run_in_executor(None, self._index_entries, ordered[start:start + 1000], fresh)
        self.index = fresh
        self._last_id = last
        self._need_resync = False
        self._ready.set()

    async def _follow_loop(self) -> None:
        assert self.redis is not None
        loop = asyncio.get_running_loop()
        while not self._closed:
            try:
                if self._need_resync:
                    await self._resync()
                    if not self._follow_ok:
                        log.info("semantic index: following Redis again (%d entries)", len(self.index))
                    self._follow_ok = True
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
                    await loop.run_in_executor(None, self._index_entries, entries, self.index)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                self._error("follow", exc)
                if self._follow_ok:
                    log.warning("semantic index: cannot follow Redis (%r); it reloads when Redis answers", exc)
                self._follow_ok = False
                self._need_resync = True  # events may be lost (or Redis restarted empty): reload
                await asyncio.sleep(self.settings.redis_retry_interval)

    async def _sweep_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closed:
            await asyncio.sleep(60)
            await loop.run_in_executor(None, self.index.sweep, time.time())
