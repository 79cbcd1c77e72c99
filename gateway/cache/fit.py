"""Re-fit the matcher's confirmation model: ``python -m gateway.cache.fit [--data DIR] [--out FILE]``.

Training pairs: the dev QQP pairs (duplicates = positive), the paraphrases (positive), the dev hard
negatives, the rule-generated "fit" hard negatives, and, for every second request, its nearest *other*
first requests (the wrong entries a store-everything-then-ask run would offer).  Only pairs that pass the
guards are fitted (the guards refuse the rest anyway).  The model is gradient-boosted trees (numpy
histogram boosting, exported to JSON and evaluated in pure Python by ``MatcherModel``; ``--model
logistic`` for the old logistic regression).  5-fold cross-validation grouped by question text (texts
joined by a pair share a fold) gives out-of-fold probabilities; the threshold is the lowest one that keeps
out-of-fold false hits at or under ``--target`` on QQP non-duplicates, ``--target-store-all`` in the
store-everything estimate and zero on the hard negatives; then the model is refitted on everything.
Embeddings are cached on disk.
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
from .matcher import FEATURES, WEIGHTS_FILE, MatcherModel, analyse, features, guard

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



def _grow(xb: Any, edges: list[Any], g: Any, h: Any, idx: Any, depth: int, min_leaf: int, l2: float,
          nodes: list[list[float]], level: int = 0) -> int:
    """Grow one regression tree on binned features (Newton leaf values); returns the node's id."""
    import numpy as np

    big_g, big_h = g[idx].sum(), h[idx].sum()
    node_id = len(nodes)
    nodes.append([-1, 0.0, -1, -1, float(-big_g / (big_h + l2))])
    if level >= depth or len(idx) < 2 * min_leaf:
        return node_id
    best: tuple[float, int, int] = (0.0, -1, -1)
    parent = big_g * big_g / (big_h + l2)
    for j in range(xb.shape[1]):
        nb = len(edges[j]) + 1
        if nb < 2:
            continue
        gb = np.bincount(xb[idx, j], weights=g[idx], minlength=nb)
        hb = np.bincount(xb[idx, j], weights=h[idx], minlength=nb)
        cb = np.bincount(xb[idx, j], minlength=nb)
        gl, hl, cl = np.cumsum(gb)[:-1], np.cumsum(hb)[:-1], np.cumsum(cb)[:-1]
        gain = gl * gl / (hl + l2) + (big_g - gl) ** 2 / (big_h - hl + l2) - parent
        gain[(cl < min_leaf) | (len(idx) - cl < min_leaf)] = -1
        k = int(np.argmax(gain))
        if gain[k] > best[0]:
            best = (float(gain[k]), j, k)
    _, j, k = best
    if j < 0:
        return node_id
    mask = xb[idx, j] <= k          # bins <= k hold the values < edges[j][k]
    nodes[node_id][0], nodes[node_id][1] = j, float(edges[j][k])
    left = _grow(xb, edges, g, h, idx[mask], depth, min_leaf, l2, nodes, level + 1)
    right = _grow(xb, edges, g, h, idx[~mask], depth, min_leaf, l2, nodes, level + 1)
    nodes[node_id][2], nodes[node_id][3] = left, right
    return node_id


def fit_gbt(x: Any, y: Any, w: Any = None, n_trees: int = 150, depth: int = 3, lr: float = 0.1, bins: int = 32,
            min_leaf: int = 20, l2: float = 1.0) -> tuple[float, list[Any]]:
    """Histogram gradient boosting with logistic loss (numpy only).

    Returns ``(base, trees)``; a tree is a list of nodes ``[feature, threshold, left, right, value]``
    (feature -1: a leaf; ``x[feature] < threshold`` goes left), the format ``MatcherModel`` reads."""
    import numpy as np

    n, d = x.shape
    w = np.ones(n) if w is None else w
    edges = []
    xb = np.zeros((n, d), dtype=np.int64)
    for j in range(d):
        qs = np.unique(np.quantile(x[:, j], np.linspace(0, 1, bins + 1)[1:-1]))
        edges.append(qs)
        xb[:, j] = np.searchsorted(qs, x[:, j], side="right")
    p0 = np.clip((w * y).sum() / w.sum(), 1e-4, 1 - 1e-4)
    base = float(np.log(p0 / (1 - p0)))
    f = np.full(n, base)
    trees: list[Any] = []
    for _ in range(n_trees):
        p = 1 / (1 + np.exp(-f))
        nodes: list[list[float]] = []
        _grow(xb, edges, w * (p - y), w * p * (1 - p), np.arange(n), depth, min_leaf, l2, nodes)
        for nd in nodes:
            nd[4] *= lr
        trees.append(nodes)
        f += predict_raw_trees([nodes], x, 0.0)
    return base, trees


def predict_raw_trees(trees: list[list[list[float]]], x: Any, base: float) -> Any:
    import numpy as np

    out = np.full(len(x), base, dtype=float)
    rows = np.arange(len(x))
    for nodes in trees:
        a = np.array(nodes, dtype=float)
        feat, thr, val = a[:, 0].astype(int), a[:, 1], a[:, 4]
        left, right = a[:, 2].astype(int), a[:, 3].astype(int)
        cur = np.zeros(len(x), dtype=int)
        for _ in range(12):
            f = feat[cur]
            leaf = f < 0
            if leaf.all():
                break
            xv = x[rows, np.where(leaf, 0, f)]
            cur = np.where(leaf, cur, np.where(xv < thr[cur], left[cur], right[cur]))
        out += val[cur]
    return out


def build_idf(sets: dict[str, list[Pair]], out: Path, min_df: int = 3) -> int:
    """Write the IDF table of content stems (``data/idf.json.gz``): stems in >= ``min_df`` unique texts."""
    import gzip
    import math
    from collections import Counter

    texts = sorted({t for name, pairs in sets.items() if name in ("qqp", "paraphrase") for p in pairs
                    for t in (p.a, p.b)})
    df: Counter[str] = Counter()
    for t in texts:
        df.update(analyse(t).content)
    n = len(texts)
    idf = {w: round(math.log((n + 1) / (c + 1)), 2) for w, c in sorted(df.items()) if c >= min_df}
    blob = {"docs": n, "default": round(math.log((n + 1) / 2), 2), "idf": idf}
    out.write_bytes(gzip.compress(json.dumps(blob, separators=(",", ":")).encode(), mtime=0))
    return len(idf)


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def question_groups(sets: dict[str, list[Pair]], folds: int = 5) -> dict[str, int]:
    """Fold of every text: texts joined by a pair share a fold (connected components), so no question is
    seen both in training and in the out-of-fold scores."""
    parent: dict[str, str] = {}

    def find(t: str) -> str:
        while parent.setdefault(t, t) != t:
            parent[t] = parent[parent[t]]
            t = parent[t]
        return t

    for pairs in sets.values():
        for p in pairs:
            ra, rb = find(_norm(p.a)), find(_norm(p.b))
            if ra != rb:
                parent[ra] = rb
    return {t: zlib.crc32(find(t).encode()) % folds for t in list(parent)}


def build_rows(sets: dict[str, list[Pair]], vec: dict[str, Any], min_cosine: float, short_words: int,
               distractors: int = 5, same_words_cosine: float = 0.97, long_words: int = 0,
               long_cosine: float = 2.0) -> list[dict[str, Any]]:
    """Feature rows for every pair (and distractor) that passes the guards and the cosine floor."""
    import numpy as np

    rows: list[dict[str, Any]] = []
    cache: dict[str, Any] = {}
    fold_of = question_groups(sets)

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
                if guard(qa, ca, short_words) is not None:
                    continue
                rule = MatcherModel(weights=(), threshold=1.0, min_cosine=min_cosine, meta={},
                                    same_words_cosine=same_words_cosine, long_words=long_words,
                                    long_cosine=long_cosine).rule_ok(qa, ca, cos)
                rows.append({"x": features(qa, ca, cos), "y": label, "set": name, "role": role, "a": a, "b": p.b,
                             "rule": rule,
                             "group": group, "fold": fold_of[_norm(p.b)], "same": p.same, "shadowed": shadowed})
    return rows


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--out", default=str(WEIGHTS_FILE))
    ap.add_argument("--emb-cache", default="/tmp/oss-gateway-cache-fit")
    ap.add_argument("--model", choices=("gbt", "logistic"), default="gbt")
    ap.add_argument("--min-cosine", type=float, default=0.70)
    ap.add_argument("--short-words", type=int, default=6,
                    help="the wording guards (question, order, swap, caps) refuse outright when a text has at most "
                         "this many content words; above, they are model features")
    ap.add_argument("--target", type=float, default=0.007, help="max out-of-fold false-hit rate (QQP non-duplicates)")
    ap.add_argument("--target-store-all", type=float, default=0.009,
                    help="max out-of-fold share of non-duplicate pairs whose own entry or one of its 5 nearest "
                         "other entries passes (an upper bound of store-everything-then-ask false hits)")
    ap.add_argument("--trees", type=int, default=150)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--lr", type=float, default=0.07)
    ap.add_argument("--l2", type=float, default=0.3, help="logistic model: L2 penalty")
    ap.add_argument("--same-words-cosine", type=float, default=0.97,
                    help="same content words in the same order: cosine")
    ap.add_argument("--long-words", type=int, default=8, help="long-text rule: content words in both texts (0: off)")
    ap.add_argument("--long-cosine", type=float, default=0.85, help="long-text rule: cosine")
    ap.add_argument("--write-idf", action="store_true", help="rebuild data/idf.json.gz from --data first")
    args = ap.parse_args(argv)

    sets = load_eval(args.data)
    if args.write_idf:
        from . import matcher

        print(f"idf: {build_idf(sets, matcher.IDF_FILE)} stems", file=sys.stderr)
        matcher._IDF.clear()
    sets["generated"] = generate_hard_negatives("fit")
    texts = sorted({t for pairs in sets.values() for p in pairs for t in (p.a, p.b)})
    print(f"{len(texts)} unique texts", file=sys.stderr)
    vec = dict(zip(texts, embed_cached(texts, Path(args.emb_cache)), strict=True))
    rows = build_rows(sets, vec, args.min_cosine, args.short_words, same_words_cosine=args.same_words_cosine,
                      long_words=args.long_words, long_cosine=args.long_cosine)
    rule_ok = np.array([r["rule"] for r in rows])
    x = np.array([r["x"] for r in rows])
    y = np.array([r["y"] for r in rows])
    folds = np.array([r["fold"] for r in rows])  # grouped by question text (connected components)
    weight = np.ones(len(rows))

    def fit(tr: Any) -> Any:
        if args.model == "gbt":
            return fit_gbt(x[tr], y[tr], weight[tr], n_trees=args.trees, depth=args.depth, lr=args.lr)
        return _fit_logistic(x[tr], y[tr], weight[tr], args.l2)

    def predict(model: Any, xs: Any) -> Any:
        z = predict_raw_trees(model[1], xs, model[0]) if args.model == "gbt" else xs @ model
        return 1 / (1 + np.exp(-np.clip(z, -30, 30)))

    oof = np.zeros(len(rows))
    for fold in range(5):
        tr, te = folds != fold, folds == fold
        oof[te] = predict(fit(tr), x[te])

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
        sel = (oof >= th) | rule_ok
        false_rows = sel & qqp_rows & ~same
        # store-everything-then-ask: a non-duplicate pair is served wrongly when its own first request
        # or any of its distractors passes
        served = false_rows & ~shadowed
        any_false = np.bincount(group_ids[served], minlength=group_ids.max() + 1) > 0
        return {"qqp_false": float((false_rows & own).sum()) / n_qqp_f,
                "qqp_false_store_all": float(any_false.sum()) / n_qqp_f,
                "qqp_hit": float((sel & own & qqp_rows & same).sum()) / n_qqp_t,
                "para_hit": float((sel & own & in_set.get("paraphrase", none)).sum()) / n_para,
                "generated_false": int((sel & in_set.get("generated", none)).sum()),
                "hard_negatives_false": int((sel & in_set.get("hard_negatives", none)).sum())}

    chosen = 0.99
    for th in np.arange(0.30, 0.995, 0.005):
        r = rates(float(th))
        if r["qqp_false"] <= args.target and r["qqp_false_store_all"] <= args.target_store_all \
                and r["generated_false"] == 0 and r["hard_negatives_false"] == 0:
            chosen = float(th)
            break
    print(f"threshold {chosen:.3f} out-of-fold: {rates(chosen)}", file=sys.stderr)
    model = fit(np.ones(len(rows), dtype=bool))
    payload: dict[str, Any] = {"features": list(FEATURES), "model": args.model}
    if args.model == "gbt":
        payload["base"] = round(float(model[0]), 6)
        payload["trees"] = [[[int(n[0]), round(float(n[1]), 6), int(n[2]), int(n[3]), round(float(n[4]), 6)]
                             for n in tree] for tree in model[1]]
    else:
        payload["weights"] = [round(float(b), 6) for b in model]
    payload.update({"threshold": round(chosen, 4), "min_cosine": args.min_cosine, "short_words": args.short_words,
                    "same_words": {"min_cosine": args.same_words_cosine},
                    "long_text": {"min_words": args.long_words, "min_cosine": args.long_cosine},
                    "meta": {"fitted_rows": len(rows), "folds": "5, grouped by question text",
                             "target": args.target, "target_store_all": args.target_store_all,
                             "oof": rates(chosen), "data": Path(args.data).name,
                             "params": {"trees": args.trees, "depth": args.depth, "lr": args.lr}
                             if args.model == "gbt" else {"l2": args.l2}}})
    Path(args.out).write_text(json.dumps(payload, separators=(",", ":")) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
