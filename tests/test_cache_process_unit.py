"""The cache process's server and client in one event loop (no subprocess): the protocol round trip, the
shared store and index, a missing process failing fast, and an overloaded embedder shedding work."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from gateway.cache import CacheRequest, CacheSettings, ResponseCache
from gateway.cache.process import CacheServer
from gateway.cache.protocol import Op
from gateway.cache.semantic import SemanticBusy, SemanticIndex, SemanticUnavailable

DIM = 16


class FakeEmbedder:
    """Deterministic vectors from the text's words (paraphrases sharing words are close); ``delay`` per text."""

    model_id = "fake"
    dim = DIM

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls: list[int] = []

    def _vec(self, text: str) -> np.ndarray:
        v = np.zeros(DIM, dtype=np.float32)
        for w in text.lower().strip("?").split():
            v += np.random.default_rng(sum(map(ord, w))).normal(size=DIM).astype(np.float32)
        return v / np.linalg.norm(v)

    async def embed(self, texts: list[str]) -> np.ndarray:
        self.calls.append(len(texts))
        if self.delay:
            await asyncio.sleep(self.delay * len(texts))
        return np.stack([self._vec(t) for t in texts])

    def embed_sync(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError


def chat(text: str) -> CacheRequest:
    return CacheRequest(alias="smart", endpoint="chat", tenant="t",
                        body={"messages": [{"role": "user", "content": text}], "temperature": 0})


ANSWER = b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]}'


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[CacheServer]:
    settings = CacheSettings(type="local-semantic", redis_url=None, max_entries=3, local_max_entries=100, ttl=60)
    srv = CacheServer(settings, str(tmp_path / "cache.sock"), FakeEmbedder())
    task = asyncio.create_task(srv.serve())
    await asyncio.wait_for(srv.listening.wait(), 10)
    yield srv
    srv.stop()
    await task


def worker_cache(path: str, max_entries: int = 3) -> ResponseCache:
    # what a worker builds: the same settings, the socket of the cache process; no embedder of its own
    settings = CacheSettings(type="local-semantic", redis_url=None, max_entries=max_entries, ttl=60,
                             process_start_wait=0.3)
    return ResponseCache(settings, remote=path)


async def test_workers_share_the_process_store_and_bounded_index(server: CacheServer) -> None:
    a, b = worker_cache(server.path), worker_cache(server.path)
    await a.start()
    await b.start()
    try:
        q = "How do I reset my password?"
        assert (await a.lookup(chat(q))).status == "miss"
        await a.store(chat(q), ANSWER)
        assert (await b.lookup(chat(q))).status == "hit"  # stored through a, served by b
        for i in range(4):
            await b.store(chat(f"Question number {i} about trains"), ANSWER)
        # (the gauge's call blocks: from a thread, as the server shares this event loop here)
        assert await asyncio.to_thread(a.index_entries) == 3
        assert server.sem is not None and len(server.sem.index) == 3
        assert await a.clear(None) == 5  # the store keeps all 5 (its own bound: local_max_entries)
        assert (await b.lookup(chat(q))).status == "miss" and await asyncio.to_thread(b.index_entries) == 0
    finally:
        await a.close()
        await b.close()


async def test_no_process_fails_fast_as_bypass(tmp_path: Path) -> None:
    cache = worker_cache(str(tmp_path / "nobody.sock"))
    t0 = time.monotonic()
    await cache.start()  # waits a bounded time for the process, then serves without it
    try:
        t1 = time.monotonic()
        res = await cache.lookup(chat("anything at all?"))
        assert res.status == "bypass" and res.reason == "cache-process-down"
        assert time.monotonic() - t1 < 0.1
        await cache.store(chat("anything at all?"), ANSWER)  # dropped, no exception
        assert cache.errors_total >= 2 and cache.index_entries() is None
    finally:
        await cache.close()
    assert t1 - t0 < 2


async def test_overloaded_embedder_sheds_instead_of_queueing() -> None:
    """Texts that cannot be embedded before their caller's deadline are refused at once or dropped: no
    caller waits much past its deadline, and the embedder does not compute answers nobody waits for."""
    emb = FakeEmbedder(delay=0.02)  # 50 texts/s
    sem = SemanticIndex(CacheSettings(type="local-semantic", redis_url=None), emb)
    await sem.start()
    try:
        await sem.embed("warm up the estimate")
        results: list[tuple[str, float]] = []

        async def one(i: int) -> None:
            t0 = time.monotonic()
            try:
                await sem.embed(f"text {i}", deadline=time.time() + 0.2)
                results.append(("ok", time.monotonic() - t0))
            except SemanticBusy:
                results.append(("busy", time.monotonic() - t0))

        await asyncio.gather(*(one(i) for i in range(60)))  # 1.2 s of work for a 0.2 s budget
        ok = [t for r, t in results if r == "ok"]
        busy = [t for r, t in results if r == "busy"]
        assert ok and busy and len(ok) + len(busy) == 60
        assert max(ok) < 0.3  # served ones were served in time
        assert sum(emb.calls[1:]) == len(ok)  # shed texts were never embedded
        assert sem.shed == len(busy)
        # a stall (one text took longer than any deadline) does not shut the embedder for good: an idle
        # embedder always takes the next text, and that measurement replaces the stale estimate
        emb.delay = 0.5
        await sem.embed("a stalled run")
        emb.delay = 0.001
        await sem.embed("accepted although the estimate says 0.5 s", deadline=time.time() + 0.2)
        done = await asyncio.gather(*(sem.embed(f"fast {i}", deadline=time.time() + 0.2) for i in range(20)),
                                    return_exceptions=True)
        assert all(isinstance(d, bytes) for d in done)
    finally:
        await sem.close()


async def test_unavailable_is_not_a_redis_outage(server: CacheServer) -> None:
    """A cache-process failure never flips the Redis state or raises into the request."""
    cache = worker_cache(server.path)
    await cache.start()
    try:
        assert cache.client is not None
        server.stop()  # the process goes away mid-run
        await asyncio.sleep(0.05)
        res = await cache.lookup(chat("What is the boiling point of water?"))
        assert res.status == "bypass" and cache.redis_up
        with pytest.raises(SemanticUnavailable):
            await cache.client.call(Op.STATS)
    finally:
        await cache.close()
