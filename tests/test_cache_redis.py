"""ResponseCache against a real redis-server: hits, partitions, controls, TTL, replicas, outages."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from gateway.cache import CacheRequest, CacheSettings, MiniLMEmbedder, ResponseCache
from tests.procs import Proc, start_redis


@pytest.fixture(scope="module")
def redis_proc() -> Iterator[Proc]:
    proc = start_redis()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    emb = MiniLMEmbedder()
    emb.load()
    return emb


def settings(port: int, **kw: object) -> CacheSettings:
    base: dict[str, object] = {"type": "redis-semantic", "redis_url": f"redis://127.0.0.1:{port}/0", "ttl": 60.0,
                               "redis_retry_interval": 0.1}
    base.update(kw)
    return CacheSettings(**base)  # type: ignore[arg-type]


@pytest.fixture
async def cache(redis_proc: Proc, embedder: MiniLMEmbedder) -> AsyncIterator[ResponseCache]:
    c = ResponseCache(settings(redis_proc.port), embedder=embedder)
    await c.start()
    await c.wait_ready()
    await c.clear(None)
    yield c
    await c.close()


def req(text: str, *, system: str = "You are helpful.", alias: str = "smart", tenant: str | None = "team-a",
        header: str | None = None, **body: object) -> CacheRequest:
    b: dict[str, object] = {"model": alias, "messages": [{"role": "system", "content": system},
                                                         {"role": "user", "content": text}], "temperature": 0}
    b.update(body)
    return CacheRequest(alias=alias, endpoint="chat", body=b, tenant=tenant, cache_control_header=header)


def answer(text: str) -> bytes:
    return json.dumps({"id": "c1", "object": "chat.completion", "created": 1, "model": "m",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                    "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}}).encode()


def content(body: bytes | None) -> str:
    assert body is not None
    return json.loads(body)["choices"][0]["message"]["content"]


async def eventually(pred: Callable[[], bool], timeout: float) -> bool:
    for _ in range(int(timeout / 0.05)):
        if pred():
            return True
        await asyncio.sleep(0.05)
    return pred()


Q = "How do I use time more efficiently?"
P = "How can I use my time more efficiently?"
FR = "What is the capital of France?"
FR2 = "What's the capital of France?"


async def test_exact_hit_and_usage(cache: ResponseCache) -> None:
    r = req(Q)
    assert (await cache.lookup(r)).status == "miss"
    await cache.store(r, answer("plan your day"))
    res = await cache.lookup(req(Q, stream=True, stream_options={"include_usage": True}))
    assert res.status == "hit" and content(res.body) == "plan your day"
    assert res.usage == {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}


async def test_semantic_hit_on_paraphrase(cache: ResponseCache) -> None:
    await cache.store(req("What is the capital of France?"), answer("Paris"))
    res = await cache.lookup(req("What's the capital of France?"))
    assert res.status == "semantic_hit", res
    assert content(res.body) == "Paris" and res.similarity is not None


@pytest.mark.parametrize("other", [
    {"tenant": "team-b"}, {"system": "You are a pirate."}, {"alias": "fast"},
    {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
    {"response_format": {"type": "json_object"}}, {"max_tokens": 5}, {"cache": {"namespace": "other"}},
])
async def test_no_hit_across_partitions(cache: ResponseCache, other: dict[str, object]) -> None:
    await cache.store(req(Q), answer("x"))
    kw = dict(other)
    r = req(Q, **kw)  # type: ignore[arg-type]
    assert (await cache.lookup(r)).status == "miss"
    r2 = req(Q.replace("do I", "can I"), **kw)  # type: ignore[arg-type]
    assert (await cache.lookup(r2)).status == "miss"


async def test_earlier_turns_partition(cache: ResponseCache) -> None:
    def conv(first: str, last: str) -> CacheRequest:
        return CacheRequest(alias="smart", endpoint="chat", tenant="t", body={"messages": [
            {"role": "user", "content": first}, {"role": "assistant", "content": "ok"},
            {"role": "user", "content": last}]})
    await cache.store(conv("Talk about cats", "Tell me more"), answer("cats"))
    assert (await cache.lookup(conv("Talk about cats", "Tell me more"))).status == "hit"
    assert (await cache.lookup(conv("Talk about dogs", "Tell me more"))).status == "miss"


HARD_NEGATIVES = [
    ("What is 20% of 150?", "What is 25% of 150?"),
    ("How do I turn on Bluetooth on a Mac?", "How do I turn off Bluetooth on a Mac?"),
    ("Convert 10 pounds to kilograms", "Convert 10 kilograms to pounds"),
    ("What is the capital of Sweden?", "What is the capital of Switzerland?"),
    ("Write a limerick about a cat", "Write a limerick about a dog"),
    ("How do I enable dark mode in Chrome?", "How do I disable dark mode in Chrome?"),
    ("Why is my laptop charging?", "Why is my laptop not charging?"),
    ("What was the weather in Paris in March 2020?", "What was the weather in Paris in April 2020?"),
]


async def test_hard_negatives_refused(cache: ResponseCache) -> None:
    for a, _b in HARD_NEGATIVES:
        await cache.store(req(a), answer(a))
    for a, b in HARD_NEGATIVES:
        res = await cache.lookup(req(b))
        assert res.status == "miss", (a, b, res)


async def test_temperature_rule(cache: ResponseCache) -> None:
    await cache.store(req("What is the capital of France?", temperature=0.8), answer("Paris"))
    # exact cache serves any temperature (the key includes it), the semantic one only temperature 0/None
    assert (await cache.lookup(req("What is the capital of France?", temperature=0.8))).status == "hit"
    res = await cache.lookup(req("What's the capital of France?", temperature=0.8))
    assert res.status == "miss" and res.reason == "temperature"


async def test_controls(cache: ResponseCache) -> None:
    r = req(Q, cache={"no-store": True})
    await cache.store(r, answer("x"))
    assert (await cache.lookup(req(Q))).status == "miss"
    await cache.store(req(Q, header="no-store"), answer("x"))
    assert (await cache.lookup(req(Q))).status == "miss"
    await cache.store(req(Q), answer("stored"))
    assert (await cache.lookup(req(Q))).status == "hit"
    res = await cache.lookup(req(Q, cache={"no-cache": True}))
    assert res.status == "bypass" and res.reason == "no-cache"
    assert (await cache.lookup(req(Q, header="no-cache"))).status == "bypass"
    await asyncio.sleep(0.3)
    assert (await cache.lookup(req(Q, cache={"s-maxage": 0.1}))).status == "miss"
    assert (await cache.lookup(req(Q, cache={"s-maxage": 30}))).status == "hit"
    # namespace: separate, and clear() drops only that namespace
    await cache.store(req(Q, cache={"namespace": "ns1"}), answer("ns1"))
    assert content((await cache.lookup(req(Q, cache={"namespace": "ns1"}))).body) == "ns1"
    assert await cache.clear("ns1") == 1
    assert (await cache.lookup(req(Q, cache={"namespace": "ns1"}))).status == "miss"
    assert (await cache.lookup(req(Q))).status == "hit"


async def test_errors_never_stored(cache: ResponseCache) -> None:
    await cache.store(req(Q), json.dumps({"error": {"message": "boom", "type": "upstream_error"}}).encode())
    await cache.store(req(Q), b"not json")
    assert (await cache.lookup(req(Q))).status == "miss"


async def test_ttl_expiry_and_hit_does_not_extend(cache: ResponseCache) -> None:
    r = req(Q, cache={"ttl": 1.2})
    await cache.store(r, answer("short"))
    await asyncio.sleep(0.6)
    assert (await cache.lookup(req(Q))).status == "hit"
    assert (await cache.lookup(req(Q.lower()))).status == "semantic_hit"
    await asyncio.sleep(0.8)  # 1.4 s after the store: gone although it was hit at 0.6 s
    assert (await cache.lookup(req(Q))).status == "miss"
    assert (await cache.lookup(req(Q.lower()))).status == "miss"


async def test_two_replicas_share_entries(redis_proc: Proc, embedder: MiniLMEmbedder) -> None:
    a = ResponseCache(settings(redis_proc.port, namespace="replicas"), embedder=embedder)
    b = ResponseCache(settings(redis_proc.port, namespace="replicas"), embedder=embedder)
    await a.start()
    await b.start()
    await a.wait_ready()
    await b.wait_ready()
    try:
        await a.store(req("What is the capital of Italy?"), answer("Rome"))
        t0 = time.monotonic()
        while True:
            res = await b.lookup(req("What's the capital of Italy?"))
            if res.status == "semantic_hit" or time.monotonic() - t0 > 1.0:
                break
            await asyncio.sleep(0.02)
        assert res.status == "semantic_hit" and content(res.body) == "Rome"
        # a third replica started later loads the entry from Redis
        c = ResponseCache(settings(redis_proc.port, namespace="replicas"), embedder=embedder)
        await c.start()
        await c.wait_ready()
        assert (await c.lookup(req("What's the capital of Italy?"))).status == "semantic_hit"
        await c.close()
    finally:
        await a.close()
        await b.close()


async def test_redis_killed_and_restarted(embedder: MiniLMEmbedder) -> None:
    proc = start_redis()
    port = proc.port
    errors: list[str] = []
    c = ResponseCache(settings(port), embedder=embedder)
    c.on_error = lambda kind, exc: errors.append(kind)
    await c.start()
    await c.wait_ready()
    try:
        await c.store(req(Q), answer("x"))
        assert (await c.lookup(req(Q))).status == "hit"
        proc.stop()
        t0 = time.monotonic()
        statuses = [(await c.lookup(req(Q))).status for _ in range(5)]
        assert time.monotonic() - t0 < 1.5
        assert set(statuses) == {"bypass"} and not c.redis_up and errors
        await c.store(req(P), answer("y"))  # dropped quietly
        proc = start_redis(port=port)
        assert await eventually(lambda: c.redis_up, 5.0)
        assert (await c.lookup(req(Q))).status == "miss"   # a fresh Redis: empty, but served
        await c.store(req(Q), answer("again"))
        assert (await c.lookup(req(Q))).status == "hit"
        await c.store(req(FR), answer("Paris"))
        assert (await c.lookup(req(FR2))).status == "semantic_hit"
    finally:
        await c.close()
        proc.stop()


CAPITALS = ["France", "Italy", "Spain", "Japan", "Canada"]


async def test_index_bound_and_reload_keep_the_newest(redis_proc: Proc, embedder: MiniLMEmbedder) -> None:
    """max_entries bounds the index (LRU); Redis keeps every entry until its TTL (exact hits), and a replica
    that loads its index from Redis takes the newest max_entries."""
    a = ResponseCache(settings(redis_proc.port, namespace="bound", max_entries=3), embedder=embedder)
    await a.start()
    await a.wait_ready()
    await a.clear(None)
    try:
        for country in CAPITALS:
            await a.store(req(f"What is the capital of {country}?"), answer(country))
        assert a.index_entries() == 3
        assert (await a.lookup(req("What is the capital of France?"))).status == "hit"  # still in Redis
        assert (await a.lookup(req("What's the capital of France?"))).status == "miss"  # out of the index
        res = await a.lookup(req("What's the capital of Canada?"))
        assert res.status == "semantic_hit" and content(res.body) == "Canada"
        b = ResponseCache(settings(redis_proc.port, namespace="bound", max_entries=3), embedder=embedder)
        await b.start()
        await b.wait_ready()
        try:
            assert b.index_entries() == 3
            texts = {e.text for part in b.index._parts.values() for e in part.entries.values()}
            assert texts == {f"What is the capital of {c}?" for c in CAPITALS[2:]}
        finally:
            await b.close()
    finally:
        await a.close()
