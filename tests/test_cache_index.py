"""The semantic index stays within `max_entries` (least recently used out first), its hnswlib graphs reuse
the slots of removed entries, and `cache_params.max_entries` is validated at load with its YAML path."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.cache import CacheRequest, CacheSettings, ResponseCache
from gateway.cache.index import IndexEntry, VectorIndex
from gateway.config import ConfigError, load_text

DIM = 16


def unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def entry(key: str) -> IndexEntry:
    return IndexEntry(key, f"text {key}", created=1.0, expires_at=None)


def keys_in(index: VectorIndex) -> set[str]:
    return {k for _, _, k in index.lru_keys()}


def test_lru_bound_keeps_recently_used() -> None:
    rng = np.random.default_rng(0)
    index = VectorIndex(DIM, hnsw_min_size=8, max_entries=10)
    vecs = {f"k{i}": unit(rng) for i in range(25)}
    for i in range(10):
        index.add("ns", "p", entry(f"k{i}"), vecs[f"k{i}"])
    for i in range(10, 25):  # 15 more, spread over a second partition too, while k0 and k3 keep being hit
        index.touch("ns", "p", "k0")
        index.touch("ns", "p", "k3")
        index.add("ns", "p" if i % 2 else "q", entry(f"k{i}"), vecs[f"k{i}"])
        assert len(index) <= 10
    assert len(index) == 10 and index.evicted == 15
    # the 10 most recently used survive: k0 and k3 (hit) would have gone long ago without their hits
    assert keys_in(index) == {"k0", "k3"} | {f"k{i}" for i in range(17, 25)}
    # evicted entries are no longer found; survivors are, with their own vector
    assert all(c.entry.key != "k1" for c in index.search("ns", "p", vecs["k1"], 10))
    best = index.search("ns", "p", vecs["k3"], 1)
    assert best[0].entry.key == "k3" and best[0].cosine == pytest.approx(1.0, abs=1e-5)
    best = index.search("ns", "q", vecs["k24"], 1)
    assert best[0].entry.key == "k24"


def test_hnsw_reuses_slots_and_stays_bounded() -> None:
    rng = np.random.default_rng(1)
    index = VectorIndex(DIM, hnsw_min_size=64, max_entries=300)
    for i in range(5000):
        index.add("ns", "p", entry(f"e{i}"), unit(rng))
    part = index._parts[("ns", "p")]
    assert part.hnsw is not None and len(index) == 300
    # mark_deleted + replace_deleted: the graph never holds more slots than the bound (plus a batch)
    assert part.hnsw.get_current_count() <= 301
    assert part.capacity <= 1024
    assert keys_in(index) == {f"e{i}" for i in range(4700, 5000)}


def test_small_partitions_reuse_matrix_rows() -> None:
    rng = np.random.default_rng(2)
    index = VectorIndex(DIM, hnsw_min_size=512, max_entries=20)
    for i in range(2000):  # churn through a partition that stays small (exact numpy search)
        index.add("ns", "p", entry(f"m{i}"), unit(rng))
    part = index._parts[("ns", "p")]
    assert part.hnsw is None and len(part) == 20
    assert part.next_label <= 21 and part.matrix.shape[0] <= 32


def test_emptied_partitions_go_and_sparse_graphs_shrink() -> None:
    rng = np.random.default_rng(3)
    index = VectorIndex(DIM, hnsw_min_size=64, max_entries=3000)
    big = [unit(rng) for _ in range(3000)]
    for i, v in enumerate(big):
        index.add("ns", "big", entry(f"b{i}"), v)
    assert index._parts[("ns", "big")].capacity >= 3000
    for i in range(2600):  # traffic moves to other partitions: "big" loses its oldest entries
        index.add("ns", f"other{i % 50}", entry(f"o{i}"), unit(rng))
    part = index._parts[("ns", "big")]
    assert len(part) == 400
    index.sweep()
    part = index._parts[("ns", "big")]
    assert part.capacity <= 1024  # rebuilt for its 400 live entries
    assert index.search("ns", "big", big[2999], 1)[0].entry.key == "b2999"
    for i in range(3000):  # and a partition whose last entry is evicted is dropped altogether
        index.add("ns", "new", entry(f"n{i}"), unit(rng))
    assert set(index._parts) == {("ns", "new")} and len(index) == 3000
    index.drop_namespace("ns")
    assert len(index) == 0 and index.partitions() == 0


class FakeEmbedder:
    """Deterministic 16-d vectors (a hash of the text): no model needed for the bound."""

    model_id = "fake"
    dim = DIM

    async def embed(self, texts: list[str]) -> np.ndarray:
        return np.stack([unit(np.random.default_rng(abs(hash(t)) % 2**32)) for t in texts])

    def embed_sync(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError


def chat(text: str) -> CacheRequest:
    return CacheRequest(alias="smart", endpoint="chat", tenant="t",
                        body={"messages": [{"role": "user", "content": text}], "temperature": 0})


ANSWER = b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]}'


async def test_response_cache_bounds_its_index() -> None:
    cache = ResponseCache(CacheSettings(type="local-semantic", redis_url=None, max_entries=5, local_max_entries=100),
                          embedder=FakeEmbedder())
    await cache.start()
    try:
        for i in range(8):
            await cache.store(chat(f"question {i}"), ANSWER)
        assert cache.index_entries() == 5
        assert {k for _, _, k in cache.index.lru_keys()} == {cache._prepare(chat(f"question {i}")).exact
                                                             for i in range(3, 8)}
        # exact entries are not the index: the store keeps all 8 (its own bound is local_max_entries)
        assert (await cache.lookup(chat("question 0"))).status == "hit"
    finally:
        await cache.close()


BASE = """
model_list:
  - model_name: smart
    litellm_params: {model: openai/m, api_base: "http://127.0.0.1:9/v1"}
litellm_settings:
  cache: true
  cache_params: {type: redis-semantic, max_entries: %s}
"""


@pytest.mark.parametrize("value", ["0", "-5", "1.5", "true", "lots", "20000000", "[1]"])
def test_max_entries_validated_with_its_path(value: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_text(BASE % value)
    assert any(p.startswith("litellm_settings.cache_params.max_entries: must be a whole number")
               for p in err.value.problems), err.value.problems


def test_max_entries_accepted() -> None:
    assert load_text(BASE % "5000").cache.params["max_entries"] == 5000
    assert load_text(BASE % '"5000"').cache.params["max_entries"] == 5000
    assert "max_entries" not in load_text(BASE % "null").cache.params  # the default applies
