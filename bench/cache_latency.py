"""Cache latency with N entries in one partition: ``python bench/cache_latency.py [--entries 100000]``.

Starts its own redis-server, fills one semantic partition with N entries written straight into Redis
(vectors: real MiniLM embeddings of a few thousand texts plus jittered copies of them), lets a
ResponseCache load its index, then measures in-process: exact hit, semantic hit, semantic miss,
bypass (no-cache), store, and the index load time and process RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.cache import CacheRequest, CacheSettings, MiniLMEmbedder, ResponseCache  # noqa: E402
from gateway.cache.evaldata import load_eval  # noqa: E402
from gateway.cache.keys import prepare  # noqa: E402
from tests.procs import start_redis  # noqa: E402

ALIAS = "bench"


def request(text: str, **extra: object) -> CacheRequest:
    body: dict[str, object] = {"model": ALIAS, "messages": [{"role": "user", "content": text}], "temperature": 0}
    body.update(extra)
    return CacheRequest(alias=ALIAS, endpoint="chat", body=body, tenant="bench")


def answer(text: str) -> bytes:
    return json.dumps({"id": "b", "object": "chat.completion", "created": 0, "model": ALIAS,
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                    "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000


async def fill(cache: ResponseCache, emb: MiniLMEmbedder, texts: list[str], n: int) -> float:
    """Write n entries of one partition straight into Redis (pipelined); returns seconds."""
    import numpy as np

    assert cache.redis is not None
    t0 = time.perf_counter()
    base = emb.embed_sync(texts)
    rng = np.random.default_rng(0)
    settings = cache.settings
    keys = prepare(request("x"), settings, emb.model_id)
    client = cache.redis.client
    now = time.time()
    batch = 2000
    for start in range(0, n, batch):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(n, start + batch)):
            j = i % len(texts)
            vec = base[j] if i < len(texts) else base[j] + rng.normal(0, 0.02, base.shape[1]).astype(np.float32)
            vec = (vec / np.linalg.norm(vec)).astype("<f2")
            text = texts[j] if i < len(texts) else f"{texts[j]} #{i}"
            full = cache.redis.entry_key(keys.namespace, f"fill{i:08d}")
            pipe.hset(full, mapping={"b": answer(text), "u": b"", "c": repr(now), "x": b"", "p": keys.partition,
                                     "t": text, "v": vec.tobytes()})
        await pipe.execute()
    return time.perf_counter() - t0


async def timed(cache: ResponseCache, reqs: list[CacheRequest]) -> tuple[list[float], dict[str, int]]:
    out: list[float] = []
    statuses: dict[str, int] = {}
    for r in reqs:
        t0 = time.perf_counter()
        res = await cache.lookup(r)
        out.append(time.perf_counter() - t0)
        statuses[res.status] = statuses.get(res.status, 0) + 1
    return out, statuses


async def run(args: argparse.Namespace) -> None:
    sets = load_eval(args.data)
    qqp = sets.get("qqp", [])
    para = sets.get("paraphrase", [])
    fill_texts = list(dict.fromkeys(p.a for p in qqp))[: args.real]
    probes_miss = [p.b for p in qqp[-args.n:]]
    redis = start_redis(extra_args=["--maxmemory", "4gb", "--maxmemory-policy", "allkeys-lru"])
    emb = MiniLMEmbedder()
    emb.load()
    settings = CacheSettings(type="redis-semantic", redis_url=f"redis://127.0.0.1:{redis.port}/0", ttl=None,
                             max_entries=2 * args.entries)  # the whole fill in one index
    try:
        writer = ResponseCache(settings, embedder=emb)
        await writer.start()
        fill_s = await fill(writer, emb, fill_texts, args.entries)
        await writer.close()
        cache = ResponseCache(settings, embedder=emb)
        t0 = time.perf_counter()
        await cache.start()
        await cache.wait_ready(timeout=900)
        load_s = time.perf_counter() - t0
        # entries to hit: paraphrase firsts stored through the cache (so they are real entries)
        hits = para[: args.n]
        for p in hits:
            await cache.store(request(p.a), answer(p.a))
        rows = []
        for name, reqs in (
            ("exact hit", [request(p.a) for p in hits]),
            ("semantic lookup of a paraphrase", [request(p.b) for p in hits]),
            ("miss (question not stored)", [request(t) for t in probes_miss]),
            ("bypass (no-cache)", [request(t, cache={"no-cache": True}) for t in probes_miss]),
        ):
            await timed(cache, reqs[:5])  # warm
            times, statuses = await timed(cache, reqs)
            rows.append((name, len(reqs), pct(times, 0.5), pct(times, 0.95), statistics.mean(times) * 1000, statuses))
        sem = [request(p.b) for p in hits]
        results = [await cache.lookup(r) for r in sem]
        sem_hit_times = []
        for r, res in zip(sem, results, strict=True):
            if res.status == "semantic_hit":
                r.prepared = None
                t0 = time.perf_counter()
                await cache.lookup(r)
                sem_hit_times.append(time.perf_counter() - t0)
        if sem_hit_times:
            rows.insert(2, ("semantic hit only", len(sem_hit_times), pct(sem_hit_times, 0.5),
                            pct(sem_hit_times, 0.95), statistics.mean(sem_hit_times) * 1000, {}))
        store_times = []
        for t in probes_miss[:100]:
            r = request(t + " (store)")
            t0 = time.perf_counter()
            await cache.store(r, answer(t))
            store_times.append(time.perf_counter() - t0)
        rows.append(("store (off the hot path, incl. embedding)", len(store_times), pct(store_times, 0.5),
                     pct(store_times, 0.95), statistics.mean(store_times) * 1000, {}))
        emb_times = []
        for t in probes_miss[:100]:
            t0 = time.perf_counter()
            emb.embed_sync([t])
            emb_times.append(time.perf_counter() - t0)
        rows.append(("embedding alone (MiniLM int8, 1 thread)", len(emb_times), pct(emb_times, 0.5),
                     pct(emb_times, 0.95), statistics.mean(emb_times) * 1000, {}))
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        info = await cache.redis.client.info("memory") if cache.redis else {}
        stats = cache.stats()
        await cache.close()
    finally:
        redis.stop()
    print(f"entries in the partition: {stats['index_entries']} (fill {fill_s:.1f}s, replica index load "
          f"{load_s:.1f}s), process max RSS {rss:.0f} MiB, Redis used_memory {info.get('used_memory_human', '?')}")
    print("| operation | n | p50 ms | p95 ms | mean ms | statuses |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for name, n, p50, p95, mean, statuses in rows:
        st = ", ".join(f"{k} {v}" for k, v in sorted(statuses.items()))
        print(f"| {name} | {n} | {p50:.2f} | {p95:.2f} | {mean:.2f} | {st} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--real", type=int, default=3000, help="real embedded texts among the entries")
    ap.add_argument("--n", type=int, default=300, help="probes per row")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cache-eval"))
    args = ap.parse_args(argv)
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
