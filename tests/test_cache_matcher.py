"""The semantic matcher refuses near-identical requests with different answers; keys and controls."""

from __future__ import annotations

import json

import pytest

from gateway.cache import CacheRequest, CacheSettings, MiniLMEmbedder, ResponseCache, parse_controls
from gateway.cache.evaldata import generate_hard_negatives
from gateway.cache.keys import prepare
from gateway.cache.matcher import Matcher, analyse, guard


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    emb = MiniLMEmbedder()
    emb.load()
    return emb


def test_guards_on_typical_pairs() -> None:
    cases = {
        ("What is 15% of 200?", "What is 15% of 300?"): "number",
        ("How do I turn on wifi?", "How do I turn off wifi?"): "polarity",
        ("Is it safe to eat eggs?", "Is it not safe to eat eggs?"): "negation",
        ("Convert 5 miles to km", "Convert 5 km to miles"): "order",
        ("How many cups in a liter?", "How many cups in a gallon?"): "unit",
        ("Translate hello into French", "Translate hello into Spanish"): "entity",
        ("What is the boiling point of water?", "What is the boiling point of ethanol?"): "swap",
        ("Why is the sky blue?", "When is the sky blue?"): "question",
        ("What is the second law of thermodynamics?", "What is the third law of thermodynamics?"): "number",
    }
    for (a, b), reason in cases.items():
        assert guard(analyse(a), analyse(b)) == reason, (a, b)
    assert guard(analyse("How do I learn Python quickly?"), analyse("How can I learn Python fast?")) is None


def test_generated_holdout_hard_negatives_refused(embedder: MiniLMEmbedder) -> None:
    matcher = Matcher()
    pairs = generate_hard_negatives("holdout")
    assert len(pairs) > 150
    texts = sorted({t for p in pairs for t in (p.a, p.b)})
    vecs = dict(zip(texts, embedder.embed_sync(texts), strict=True))
    served = [(p.a, p.b) for p in pairs
              if matcher.judge(analyse(p.b), analyse(p.a), float(vecs[p.a] @ vecs[p.b])).ok]
    assert len(served) <= len(pairs) // 100, served


def test_controls_parsing() -> None:
    c = parse_controls({"cache": {"no-cache": True, "ttl": 30, "s-maxage": 10, "namespace": "n"}}, None)
    assert (c.no_cache, c.no_store, c.ttl, c.max_age, c.namespace) == (True, False, 30.0, 10.0, "n")
    c = parse_controls({}, "no-store, max-age=5")
    assert c.no_store and not c.no_cache and c.max_age == 5.0


def test_keys_ignore_transport_fields() -> None:
    s = CacheSettings()
    base = {"messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    k1 = prepare(CacheRequest("a", "chat", dict(base)), s, "m")
    k2 = prepare(CacheRequest("a", "chat", {**base, "stream": True, "user": "u", "cache": {"ttl": 5}}), s, "m")
    k3 = prepare(CacheRequest("a", "chat", {**base, "temperature": 0.5}), s, "m")
    assert k1.exact == k2.exact and k1.partition == k2.partition
    assert k1.exact != k3.exact and k1.partition != k3.partition and not k3.temperature_ok


async def test_memory_backend_roundtrip(embedder: MiniLMEmbedder) -> None:
    cache = ResponseCache(CacheSettings(type="local-semantic", redis_url=None, ttl=60), embedder=embedder)
    await cache.start()
    body = json.dumps({"id": "1", "object": "chat.completion", "created": 0, "model": "m",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris"},
                                    "finish_reason": "stop"}]}).encode()

    def r(text: str) -> CacheRequest:
        return CacheRequest("smart", "chat", {"messages": [{"role": "user", "content": text}]}, tenant="t")

    await cache.store(r("What is the capital of France?"), body)
    assert (await cache.lookup(r("What is the capital of France?"))).status == "hit"
    assert (await cache.lookup(r("What's the capital of France?"))).status == "semantic_hit"
    assert (await cache.lookup(r("What is the capital of Germany?"))).status == "miss"
    assert await cache.clear(None) == 1
    assert (await cache.lookup(r("What is the capital of France?"))).status == "miss"
    await cache.close()


async def test_disabled_cache_is_cheap() -> None:
    cache = ResponseCache.create(CacheSettings(enabled=False))
    await cache.start()
    assert (await cache.lookup(CacheRequest("a", "chat", {"messages": []}))).status == "bypass"
    await cache.close()
