"""Re-fit the matcher's confirmation weights: ``python -m gateway.cache.fit [--data DIR] [--out FILE]``.

Training pairs: the dev QQP pairs (duplicates = positive), the paraphrases (positive), the rule-generated
"fit" hard negatives, and, for every second request, its nearest *other* first requests (the wrong
entries a store-everything-then-ask run would offer).  Only pairs that pass the guards are fitted (the
guards refuse the rest anyway).  5-fold cross-validation gives out-of-fold probabilities; the threshold
is the lowest one that keeps out-of-fold false hits at or under ``--target`` on QQP non-duplicates and on
the distractors, then the weights are refitted on everything.  Embeddings are cached on disk.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import zlib
from pathlib import Path
from typing import Any

from .evaldata import Pair, generate_hard_negatives, load_eval
from .matcher import FEATURES, WEIGHTS_FILE, analyse, features, guard

DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "cache-eval"


def embed_cached(texts: list[str], cache_dir: Path) -> Any:
    """Embed unique texts with MiniLM, caching vectors in ``cache_dir`` (keyed by text hash)."""
    import numpy as np

    from .embedder import MiniLMEmbedder

    cache_dir.mkdir(parents=True, exist_ok=True)
    store = cache_dir / "minilm-vectors.npz"
    known: dict[str, Any] = {}
    if store.exists():
        data = np.load(store)
        known = dict(zip(data["keys"].tolist(), data["vecs"], strict=True))
    keys = [hashlib.blake2b(t.encode(), digest_size=12).hexdigest() for t in texts]
    missing = [(k, t) for k, t in zip(keys, texts, strict=True) if k not in known]
    if missing:
        emb = MiniLMEmbedder()
        t0 = time.time()
        for i, (k, t) in enumerate(dict(missing).items()):
            known[k] = emb.embed_sync([t])[0]
            if i and i % 2000 == 0:
                print(f"  embedded {i}/{len(missing)} ({time.time() - t0:.0f}s)", file=sys.stderr)
        np.savez(store, keys=np.array(list(known)), vecs=np.stack(list(known.values())))
    return np.stack([known[k] for k in keys])


def _fit_logistic(x: Any, y: Any, w: Any, l2: float = 1.0, iters: int = 50) -> Any:
    import numpy as np

    beta = np.zeros(x.shape[1])
    reg = np.full(x.shape[1], l2)
    reg[0] = 1e-6
    for _ in range(iters):
        z = np.clip(x @ beta, -30, 30)
        p = 1 / (1 + np.exp(-z))
        grad = x.T @ (w * (p - y)) + reg * beta
        hess = (x * (w * p * (1 - p))[:, None]).T @ x + np.diag(reg)
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.abs(step).max() < 1e-8:
            break
    return beta


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def build_rows(sets: dict[str, list[Pair]], vec: dict[str, Any], min_cosine: float,
               distractors: int = 5, long_words: int = 8, long_cosine: float = 0.85,
               same_words_cosine: float = 0.97) -> list[dict[str, Any]]:
    """Feature rows for every pair (and distractor) that passes the guards and the cosine floor."""
    import numpy as np

    rows: list[dict[str, Any]] = []
    cache: dict[str, Any] = {}

    def an(t: str) -> Any:
        if t not in cache:
            cache[t] = analyse(t)
        return cache[t]

    for name, pairs in sets.items():
        firsts = sorted({p.a for p in pairs})
        mat = np.stack([vec[t] for t in firsts]) if firsts else None
        normed = {_norm(t) for t in firsts}
        for i, p in enumerate(pairs):
            group = f"{name}:{i}"
            cands = [(p.a, 1.0 if p.same else 0.0, "own")]
            # in store-everything-then-ask an identical stored question is served by the exact cache first
            shadowed = _norm(p.b) in normed
            if mat is not None and distractors:
                sims = mat @ vec[p.b]
                top = np.argsort(-sims)[: distractors + 1]
                cands += [(firsts[j], 0.0, "distractor") for j in top if firsts[j] != p.a][:distractors]
            for a, label, role in cands:
                if _norm(a) == _norm(p.b):
                    continue  # the very same question: serving it is right (the bench does not count it)
                cos = float(vec[a] @ vec[p.b])
                if cos < min_cosine:
                    continue
                qa, ca = an(p.b), an(a)
                if guard(qa, ca) is not None:
                    continue
                n_words = min(len(qa.sequence), len(ca.sequence))
                same_words = cos >= same_words_cosine and qa.sequence == ca.sequence
                rows.append({"x": features(qa, ca, cos), "y": label, "set": name, "role": role, "a": a, "b": p.b,
                             "long": (n_words >= long_words and cos >= long_cosine) or same_words,
                             "group": group, "same": p.same, "shadowed": shadowed})
    return rows


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--out", default=str(WEIGHTS_FILE))
    ap.add_argument("--emb-cache", default="/tmp/oss-gateway-cache-fit")
    ap.add_argument("--min-cosine", type=float, default=0.70)
    ap.add_argument("--target", type=float, default=0.006, help="max out-of-fold false-hit rate")
    ap.add_argument("--target-store-all", type=float, default=0.008,
                    help="max out-of-fold share of non-duplicate pairs whose own entry or one of its 5 nearest "
                         "other entries passes (an upper bound of store-everything-then-ask false hits)")
    ap.add_argument("--l2", type=float, default=0.3)
    ap.add_argument("--long-words", type=int, default=8, help="long-text rule: content words in both texts")
    ap.add_argument("--long-cosine", type=float, default=0.85, help="long-text rule: cosine")
    ap.add_argument("--same-words-cosine", type=float, default=0.97,
                    help="same content words in the same order: cosine")
    args = ap.parse_args(argv)

    sets = load_eval(args.data)
    sets["generated"] = generate_hard_negatives("fit")
    texts = sorted({t for pairs in sets.values() for p in pairs for t in (p.a, p.b)})
    print(f"{len(texts)} unique texts", file=sys.stderr)
    vec = dict(zip(texts, embed_cached(texts, Path(args.emb_cache)), strict=True))
    rows = build_rows(sets, vec, args.min_cosine, long_words=args.long_words, long_cosine=args.long_cosine,
                      same_words_cosine=args.same_words_cosine)
    long_ok = np.array([r["long"] for r in rows])
    x = np.array([r["x"] for r in rows])
    y = np.array([r["y"] for r in rows])
    groups = np.array([zlib.crc32(r["group"].encode()) % 5 for r in rows])  # stable folds, pairs kept whole
    # balance: paraphrases and QQP weigh alike; distractors count as negatives
    weight = np.ones(len(rows))
    oof = np.zeros(len(rows))
    for fold in range(5):
        tr, te = groups != fold, groups == fold
        beta = _fit_logistic(x[tr], y[tr], weight[tr], args.l2)
        oof[te] = 1 / (1 + np.exp(-np.clip(x[te] @ beta, -30, 30)))

    own = np.array([r["role"] == "own" for r in rows])
    same = np.array([r["same"] for r in rows])
    in_set = {k: np.array([r["set"] == k for r in rows]) for k in sets}
    none = np.zeros(len(rows), dtype=bool)
    qqp_rows = in_set.get("qqp", none)
    n_qqp_f = max(sum(1 for p in sets.get("qqp", []) if not p.same), 1)
    n_qqp_t = max(sum(1 for p in sets.get("qqp", []) if p.same), 1)
    n_para = max(len(sets.get("paraphrase", [])), 1)
    group_ids = np.unique([r["group"] for r in rows], return_inverse=True)[1]
    shadowed = np.array([r["shadowed"] for r in rows])

    def rates(th: float) -> dict[str, float]:
        sel = (oof >= th) | long_ok
        false_rows = sel & qqp_rows & ~same
        # store-everything-then-ask: a non-duplicate pair is served wrongly when its own first request
        # or any of its distractors passes
        served = false_rows & ~shadowed
        any_false = np.bincount(group_ids[served], minlength=group_ids.max() + 1) > 0
        return {"qqp_false": float((false_rows & own).sum()) / n_qqp_f,
                "qqp_false_store_all": float(any_false.sum()) / n_qqp_f,
                "qqp_hit": float((sel & own & qqp_rows & same).sum()) / n_qqp_t,
                "para_hit": float((sel & own & in_set.get("paraphrase", none)).sum()) / n_para}

    chosen = 0.99
    for th in np.arange(0.30, 0.995, 0.005):
        r = rates(float(th))
        if r["qqp_false"] <= args.target and r["qqp_false_store_all"] <= args.target_store_all:
            chosen = float(th)
            break
    print(f"threshold {chosen:.3f} out-of-fold: {rates(chosen)}", file=sys.stderr)
    beta = _fit_logistic(x, y, weight, args.l2)
    payload = {"features": list(FEATURES), "weights": [round(float(b), 6) for b in beta],
               "threshold": round(chosen, 4), "min_cosine": args.min_cosine,
               "long_text": {"min_words": args.long_words, "min_cosine": args.long_cosine},
               "same_words": {"min_cosine": args.same_words_cosine},
               "meta": {"fitted_rows": len(rows), "target": args.target, "target_store_all": args.target_store_all, "oof": rates(chosen),
                        "data": Path(args.data).name}}
    Path(args.out).write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
