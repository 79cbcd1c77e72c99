"""Semantic-cache quality on the cache-eval pairs: ``python bench/cache_quality.py [--data DIR]``.

For every pair, store ``a`` (with an answer that names the pair), then look up ``b``.  Two modes:
- ``alone``: a fresh cache namespace per pair;
- ``store-all``: all first requests of a data set are stored before any second one is asked, so a
  lookup may match the WRONG entry.  A hit is correct only if it returns the entry of its own ``a`` and
  the pair is same=true; every hit on a same=false pair is a false hit.

The scoring functions take ``store(ns, text, answer_id)`` / ``lookup(ns, text) -> (status, answer_id)``
callables, so the same scoring runs in-process (here) or through the gateway's HTTP path.
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
    by_kind: dict[str, list[int]] = field(default_factory=dict)  # kind -> [n, false hits]

    @property
    def hit_rate(self) -> float | None:
        return self.correct_hits / self.same if self.same else None

    @property
    def false_rate(self) -> float | None:
        return self.false_hits / self.different if self.different else None


def _record(score: Score, pair: Pair, own_id: str, status: str, got: str | None) -> None:
    score.pairs += 1
    hit = status in HIT
    if pair.same:
        score.same += 1
        if hit and got == own_id:
            score.correct_hits += 1
        elif hit:
            score.wrong_entry_hits += 1
    else:
        score.different += 1
        score.false_hits += int(hit)
        if hit and got is not None and " ".join(got.lower().split()) == " ".join(pair.b.lower().split()):
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


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:5.1f}%"


def print_table(scores: list[Score], out=sys.stdout) -> None:  # noqa: ANN001
    print("| data set | mode | pairs | hit rate (same=true) | wrong-entry hits | false-hit rate (same=false) "
          "| of which identical text |", file=out)
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |", file=out)
    for s in scores:
        print(f"| {s.name} | {s.mode} | {s.pairs} | {_pct(s.hit_rate)} | {s.wrong_entry_hits} | "
              f"{_pct(s.false_rate)} ({s.false_hits}/{s.different}) | {s.false_identical} |", file=out)


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
    args = ap.parse_args(argv)
    scores = asyncio.run(run(Path(args.data), not args.no_generated, args.limit, args.modes.split(","),
                             args.emb_cache or None, args.only.split(",") if args.only else None))
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
