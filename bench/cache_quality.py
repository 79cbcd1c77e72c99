"""Semantic-cache quality on the cache-eval pairs: ``python bench/cache_quality.py [--data DIR] [--http]``.

For every pair, store ``a`` (with an answer that names the pair), then look up ``b``.  Two modes:
- ``alone``: a fresh cache namespace per pair;
- ``store-all``: all first requests of a data set are stored before any second one is asked, so a
  lookup may match the WRONG entry.  A hit is correct only if it returns the entry of its own ``a`` and
  the pair is same=true; every hit on a same=false pair is a false hit.

The scoring functions take ``store(ns, text, answer_id)`` / ``lookup(ns, text) -> (status, answer_id)``
callables, so the same scoring runs in-process (default) or through the gateway's real HTTP path
(``--http``: a redis-server, the upstream simulator and ``gateway serve`` with ``cache: true,
cache_params: {type: redis-semantic}`` at the shipped defaults are started on free ports; every request
is a ``POST /v1/chat/completions`` and the ``x-gateway-cache`` header and the answer body are checked).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.cache import CacheRequest, CacheSettings, MiniLMEmbedder, ResponseCache  # noqa: E402
from gateway.cache.evaldata import Pair, generate_hard_negatives, load_eval  # noqa: E402
from gateway.cache.fit import embed_cached  # noqa: E402

StoreFn = Callable[[str, str, str], Awaitable[None]]
LookupFn = Callable[[str, str], Awaitable[tuple[str, str | None]]]
HIT = ("hit", "semantic_hit")


@dataclass
class Score:
    name: str
    mode: str
    pairs: int = 0
    same: int = 0
    different: int = 0
    correct_hits: int = 0       # same=true, own entry returned
    wrong_entry_hits: int = 0   # same=true, another entry returned
    false_hits: int = 0         # same=false, any hit
    false_identical: int = 0    # ... of which the entry served is for the very same text (case/space-insensitive)
    identical_hits: int = 0     # same=true, another entry whose text is the asked text (the same question)
    by_kind: dict[str, list[int]] = field(default_factory=dict)  # kind -> [n, false hits]

    @property
    def hit_rate(self) -> float | None:
        return self.correct_hits / self.same if self.same else None

    @property
    def false_rate(self) -> float | None:
        return self.false_hits / self.different if self.different else None

    @property
    def hit_rate_lenient(self) -> float | None:
        """Hits on an entry whose text is the asked question count as correct (the same question)."""
        return (self.correct_hits + self.identical_hits) / self.same if self.same else None

    @property
    def false_rate_lenient(self) -> float | None:
        return (self.false_hits - self.false_identical) / self.different if self.different else None


def _same_text(x: str, y: str) -> bool:
    return " ".join(x.lower().split()) == " ".join(y.lower().split())


def _record(score: Score, pair: Pair, own_id: str, status: str, got: str | None) -> None:
    score.pairs += 1
    hit = status in HIT
    if pair.same:
        score.same += 1
        if hit and got == own_id:
            score.correct_hits += 1
        elif hit:
            score.wrong_entry_hits += 1
            if got is not None and _same_text(got, pair.b):
                score.identical_hits += 1
    else:
        score.different += 1
        score.false_hits += int(hit)
        if hit and got is not None and _same_text(got, pair.b):
            score.false_identical += 1
        kind = score.by_kind.setdefault(pair.kind or "-", [0, 0])
        kind[0] += 1
        kind[1] += int(hit)


async def score_alone(name: str, pairs: list[Pair], store: StoreFn, lookup: LookupFn, prefix: str = "q") -> Score:
    """Each pair in its own namespace: store a, look up b."""
    score = Score(name, "alone")
    for i, p in enumerate(pairs):
        ns = f"{prefix}-{name}-{i}"
        await store(ns, p.a, p.a)
        status, got = await lookup(ns, p.b)
        _record(score, p, p.a, status, got)
    return score


async def score_store_all(name: str, pairs: list[Pair], store: StoreFn, lookup: LookupFn, prefix: str = "q") -> Score:
    """All first requests stored in one namespace, then every second request asked.

    The answer id of an entry is its text ``a`` (pairs that share a first request share its entry)."""
    score = Score(name, "store-all")
    ns = f"{prefix}-{name}-all"
    for a in dict.fromkeys(p.a for p in pairs):
        await store(ns, a, a)
    for p in pairs:
        status, got = await lookup(ns, p.b)
        _record(score, p, p.a, status, got)
    return score


class MemoEmbedder:
    """Embeds each unique text once (the bench asks the same texts in both modes)."""

    def __init__(self, inner: MiniLMEmbedder) -> None:
        self.inner = inner
        self.model_id = inner.model_id
        self.dim = inner.dim
        self.memo: dict[str, object] = {}

    def load(self) -> None:
        self.inner.load()

    def embed_sync(self, texts: list[str]):  # noqa: ANN201
        import numpy as np

        missing = [t for t in texts if t not in self.memo]
        if missing:
            for t, v in zip(missing, self.inner.embed_sync(missing), strict=True):
                self.memo[t] = v
        return np.stack([self.memo[t] for t in texts])

    async def embed(self, texts: list[str]):  # noqa: ANN201
        if all(t in self.memo for t in texts):
            return self.embed_sync(texts)
        return await asyncio.get_running_loop().run_in_executor(None, self.embed_sync, texts)

    def close(self) -> None:
        self.inner.close()


def in_process_callables(cache: ResponseCache, alias: str = "bench") -> tuple[StoreFn, LookupFn]:
    def request(ns: str, text: str) -> CacheRequest:
        return CacheRequest(alias=alias, endpoint="chat", tenant="bench",
                            body={"model": alias, "messages": [{"role": "user", "content": text}],
                                  "temperature": 0, "cache": {"namespace": ns}})

    async def store(ns: str, text: str, answer_id: str) -> None:
        body = {"id": "bench", "object": "chat.completion", "created": 0, "model": alias,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer_id},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
        await cache.store(request(ns, text), json.dumps(body).encode())

    async def lookup(ns: str, text: str) -> tuple[str, str | None]:
        res = await cache.lookup(request(ns, text))
        if res.body is None:
            return res.status, None
        return res.status, json.loads(res.body)["choices"][0]["message"]["content"]

    return store, lookup


class HttpCache:
    """store/lookup through a running gateway: ``x-gateway-cache`` header + the answer text.

    ``store`` POSTs the first request with ``s-maxage: 0`` (a MISS: the gateway answers from the simulator
    and stores the answer after the response), then polls the same request with ``no-store`` until it is an exact HIT,
    so the entry is in Redis and in the index before the second request is asked.  ``lookup`` POSTs the
    second request with ``no-store`` (a miss must not add entries) and maps the answer text back to the
    first request it was stored for (the simulator's answer depends on the prompt, so a wrong-entry hit
    is visible)."""

    def __init__(self, base_url: str, alias: str = "bench", wait: bool = True) -> None:
        self.url = f"{base_url}/v1/chat/completions"
        self.alias = alias
        self.wait = wait
        self.answers: dict[str, str] = {}    # answer text -> the first request it was stored for
        self.session = None
        self.statuses: dict[str, int] = {}
        self.unstored = 0

    async def __aenter__(self) -> HttpCache:
        import aiohttp

        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60),
                                             connector=aiohttp.TCPConnector(limit=16))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()

    async def post(self, ns: str, text: str, **controls: object) -> tuple[str, str | None]:
        body = {"model": self.alias, "messages": [{"role": "user", "content": text}], "temperature": 0,
                "cache": {"namespace": ns, **controls}}
        async with self.session.post(self.url, json=body, headers={"authorization": "Bearer none"}) as resp:
            data = await resp.json(content_type=None)
            status = resp.headers.get("x-gateway-cache", "NONE").upper()
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}: {data}")
        self.statuses[status] = self.statuses.get(status, 0) + 1
        return status, data["choices"][0]["message"]["content"]

    async def store(self, ns: str, text: str, answer_id: str) -> None:
        # s-maxage 0: no stored entry is fresh enough, so the request is a MISS and its answer is stored
        # (in store-all an earlier similar entry could otherwise answer it; `no-cache` would be the natural
        # control, but the gateway stores only after a MISS, not after a BYPASS)
        _, content = await self.post(ns, text, **{"s-maxage": 0})
        self.answers[content] = answer_id
        if not self.wait:
            return
        deadline = time.monotonic() + 15.0
        delay = 0.005
        while time.monotonic() < deadline:   # the gateway stores after the response: wait until it is served
            status, again = await self.post(ns, text, **{"no-store": True})
            if status == "HIT":
                if again != content:
                    raise RuntimeError(f"exact hit with another answer for {text!r}")
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)
        self.unstored += 1
        print(f"  warning: entry for {text!r} not served as a HIT after 15 s", file=sys.stderr)

    async def lookup(self, ns: str, text: str) -> tuple[str, str | None]:
        status, content = await self.post(ns, text, **{"no-store": True})
        if status == "HIT":
            return "hit", self.answers.get(content, "<unknown answer>")
        if status == "SEMANTIC-HIT":
            return "semantic_hit", self.answers.get(content, "<unknown answer>")
        return status.lower(), None


async def run_http(sets: dict[str, list[Pair]], modes: list[str], concurrency: int = 4) -> list[Score]:
    """Score through ``gateway serve`` + redis-server + the simulator (started here, stopped at the end)."""
    from tests.helpers import deployment
    from tests.procs import start_gateway, start_redis, start_simulator

    procs = []
    try:
        redis = start_redis()
        procs.append(redis)
        sim = start_simulator()
        procs.append(sim)
        config = {"model_list": [deployment("bench", sim)],
                  "litellm_settings": {"cache": True, "cache_params": {"type": "redis-semantic"}}}
        gw = start_gateway(config, env={"GATEWAY_REDIS_URL": f"redis://127.0.0.1:{redis.port}/0"})
        procs.append(gw)
        run_id = f"{int(time.time())}"
        scores: list[Score] = []
        async with HttpCache(gw.url) as http:
            await http.post(f"warm-{run_id}", "warm up the embedder")   # loads the model before timing
            for name, pairs in sets.items():
                for mode in modes:
                    t0 = time.perf_counter()
                    prefix = f"h{run_id}"
                    if mode == "alone":
                        s = await score_alone_concurrent(name, pairs, http.store, http.lookup, prefix, concurrency)
                    else:
                        s = await score_store_all(name, pairs, http.store, http.lookup, prefix)
                    print(f"  http {name} {mode}: {time.perf_counter() - t0:.0f}s", file=sys.stderr)
                    scores.append(s)
        print(f"  x-gateway-cache headers seen: {http.statuses}; first requests never served as HIT: "
              f"{http.unstored}", file=sys.stderr)
        return scores
    finally:
        for p in reversed(procs):
            p.stop()


async def score_alone_concurrent(name: str, pairs: list[Pair], store: StoreFn, lookup: LookupFn, prefix: str,
                                 concurrency: int) -> Score:
    """``score_alone`` with pairs run ``concurrency`` at a time (each in its own namespace)."""
    score = Score(name, "alone")
    sem = asyncio.Semaphore(concurrency)
    results: list[tuple[str, str | None] | None] = [None] * len(pairs)

    async def one(i: int, p: Pair) -> None:
        async with sem:
            ns = f"{prefix}-{name}-{i}"
            await store(ns, p.a, p.a)
            results[i] = await lookup(ns, p.b)

    await asyncio.gather(*(one(i, p) for i, p in enumerate(pairs)))
    for p, res in zip(pairs, results, strict=True):
        assert res is not None
        _record(score, p, p.a, *res)
    return score


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:5.1f}%"


def print_table(scores: list[Score], out=sys.stdout) -> None:  # noqa: ANN001
    """Strict columns: only the own entry of a same=true pair is a correct hit, any hit on a same=false pair
    is false.  ``identical`` columns: a hit on an entry whose text is the asked question (after case and
    space normalisation; only possible in store-all) counts as correct — the same question, the same answer."""
    print("| data set | mode | pairs | hit rate (same=true) | wrong-entry hits (identical text) | false-hit rate, "
          "strict (same=false) | of which identical text | false-hit rate, identical text counted correct |",
          file=out)
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |", file=out)
    for s in scores:
        lenient = "-" if s.different == 0 else f"{_pct(s.false_rate_lenient)} ({s.false_hits - s.false_identical})"
        print(f"| {s.name} | {s.mode} | {s.pairs} | {_pct(s.hit_rate)} | {s.wrong_entry_hits} ({s.identical_hits}) | "
              f"{_pct(s.false_rate)} ({s.false_hits}/{s.different}) | {s.false_identical} | {lenient} |", file=out)


async def run(data_dir: Path, generated: bool, limit: int | None, modes: list[str],
              emb_cache: str | None = None, only: list[str] | None = None) -> list[Score]:
    sets = load_eval(data_dir)
    if generated:
        sets["generated-holdout"] = generate_hard_negatives("holdout")
    settings = CacheSettings(type="local-semantic", ttl=None, local_max_entries=10_000_000)
    memo = MemoEmbedder(MiniLMEmbedder())
    if emb_cache:  # embed every text once, reusing the tuning script's on-disk vectors
        texts = sorted({t for pairs in sets.values() for p in pairs for t in (p.a, p.b)})
        memo.memo.update(zip(texts, embed_cached(texts, Path(emb_cache)), strict=True))
    cache = ResponseCache(settings, embedder=memo)
    await cache.start()
    store, lookup = in_process_callables(cache)
    scores: list[Score] = []
    for name, pairs in sets.items():
        if only and name not in only:
            continue
        if limit:
            pairs = pairs[:limit]
        groups = {"qqp": [("qqp", pairs)]}.get(name, [(name, pairs)])
        for label, rows in groups:
            for mode in modes:
                t0 = time.perf_counter()
                fn = score_alone if mode == "alone" else score_store_all
                s = await fn(label, rows, store, lookup)
                print(f"  {label} {mode}: {time.perf_counter() - t0:.0f}s", file=sys.stderr)
                scores.append(s)
    await cache.close()
    return scores


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cache-eval"))
    ap.add_argument("--no-generated", action="store_true", help="skip the rule-generated held-out hard negatives")
    ap.add_argument("--limit", type=int, default=None, help="first N pairs of each file (quick runs)")
    ap.add_argument("--modes", default="alone,store-all")
    ap.add_argument("--json", default=None, help="also write the scores here")
    ap.add_argument("--emb-cache", default="/tmp/oss-gateway-cache-fit",
                    help="directory of cached MiniLM vectors ('' to embed in process only)")
    ap.add_argument("--only", default=None, help="comma-separated data set names")
    ap.add_argument("--http", action="store_true",
                    help="score through the real HTTP path (redis-server + simulator + gateway serve)")
    ap.add_argument("--concurrency", type=int, default=4, help="--http alone mode: pairs in flight")
    args = ap.parse_args(argv)
    only = args.only.split(",") if args.only else None
    if args.http:
        sets = load_eval(Path(args.data))
        if not args.no_generated:
            sets["generated-holdout"] = generate_hard_negatives("holdout")
        sets = {k: (v[: args.limit] if args.limit else v) for k, v in sets.items() if not only or k in only}
        scores = asyncio.run(run_http(sets, args.modes.split(","), args.concurrency))
    else:
        scores = asyncio.run(run(Path(args.data), not args.no_generated, args.limit, args.modes.split(","),
                                 args.emb_cache or None, only))
    print_table(scores)
    kinds = [s for s in scores if s.by_kind and s.name.startswith("generated")]
    for s in kinds:
        print(f"\n{s.name} ({s.mode}) false hits by kind: " +
              ", ".join(f"{k} {v[1]}/{v[0]}" for k, v in sorted(s.by_kind.items())))
    if args.json:
        Path(args.json).write_text(json.dumps([{**s.__dict__, "hit_rate": s.hit_rate, "false_rate": s.false_rate}
                                               for s in scores], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
