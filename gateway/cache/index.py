"""In-process vector index, one per semantic partition, bounded by ``max_entries`` (LRU).

A partition starts as a numpy matrix searched exactly; at ``hnsw_min_size`` entries it switches to an
hnswlib HNSW graph (inner product on unit vectors = cosine), created with ``allow_replace_deleted`` so
the slot of a removed entry is reused by the next insert.  Entries carry their key, text, creation and
expiry time.

Memory stays bounded: the whole index (every partition of the process) holds at most ``max_entries``
entries; inserting one more removes the least recently used (an insert or a served hit is a use).
Matrix slots are reused too, a partition that empties is dropped, and a graph that is mostly empty
is rebuilt smaller by ``sweep()``.  The matcher's analysis of an entry's text is not stored with the
entry (it costs ~10 kB, four times the entry): a small LRU of analyses serves the hot ones.

Thread-safe (one lock per index); numpy and hnswlib are imported on first use.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from .matcher import Analysis, analyse
from .types import DEFAULT_MAX_ENTRIES

_COMPACT_MIN_CAPACITY = 2048  # graphs at least this big are rebuilt when under a quarter full

cached_analysis = functools.lru_cache(maxsize=256)(analyse)  # ~10 kB each


@dataclass(slots=True)
class IndexEntry:
    key: str
    text: str
    created: float
    expires_at: float | None

    def get_analysis(self) -> Analysis:
        return cached_analysis(self.text)


@dataclass(frozen=True)
class Candidate:
    entry: IndexEntry
    cosine: float


@dataclass
class PartitionIndex:
    dim: int
    hnsw_min_size: int
    ef: int
    entries: dict[int, IndexEntry] = field(default_factory=dict)
    by_key: dict[str, int] = field(default_factory=dict)
    next_label: int = 0
    free: list[int] = field(default_factory=list)  # matrix rows of removed entries, reused first
    matrix: Any = None          # numpy (capacity, dim) while small
    hnsw: Any = None            # hnswlib.Index once large
    capacity: int = 0
    deleted_in_graph: int = 0   # tombstones hnswlib reuses (replace_deleted)

    def __len__(self) -> int:
        return len(self.entries)

    def _grow_matrix(self, need: int) -> None:
        import numpy as np

        if self.matrix is None:
            self.capacity = max(16, need)
            self.matrix = np.zeros((self.capacity, self.dim), dtype=np.float32)
        elif need > self.capacity:
            self.capacity = max(need, self.capacity * 2)
            grown = np.zeros((self.capacity, self.dim), dtype=np.float32)
            grown[: self.matrix.shape[0]] = self.matrix
            self.matrix = grown

    def _new_hnsw(self, capacity: int) -> Any:
        import hnswlib

        index = hnswlib.Index(space="ip", dim=self.dim)
        index.init_index(max_elements=capacity, ef_construction=100, M=16, allow_replace_deleted=True)
        index.set_ef(self.ef)
        return index

    def _to_hnsw(self) -> None:
        import numpy as np

        self.capacity = max(1024, 2 * len(self.entries))
        index = self._new_hnsw(self.capacity)
        labels = np.fromiter(self.entries.keys(), dtype=np.int64)
        if len(labels):
            index.add_items(self.matrix[labels], labels, num_threads=1)
        self.hnsw = index
        self.matrix = None
        self.free = []

    def _label(self) -> int:
        if self.hnsw is None and self.free:
            return self.free.pop()
        label = self.next_label
        self.next_label += 1
        return label

    def add_many(self, items: list[tuple[IndexEntry, Any]]) -> None:
        import numpy as np

        for entry, _ in items:
            old = self.by_key.pop(entry.key, None)
            if old is not None:
                self._remove_label(old)
        labels = []
        for entry, _ in items:
            label = self._label()
            self.entries[label] = entry
            self.by_key[entry.key] = label
            labels.append(label)
        vecs = np.asarray([v for _, v in items], dtype=np.float32).reshape(len(items), self.dim)
        if self.hnsw is None:
            self._grow_matrix(max(labels) + 1)
            self.matrix[labels] = vecs
            if len(self.entries) >= self.hnsw_min_size:
                self._to_hnsw()
            return
        need = self.hnsw.get_current_count() + max(0, len(items) - self.deleted_in_graph)
        if need > self.capacity:
            self.capacity = max(self.capacity * 2, need)
            self.hnsw.resize_index(self.capacity)
        self.hnsw.add_items(vecs, np.asarray(labels, dtype=np.int64), num_threads=1, replace_deleted=True)
        self.deleted_in_graph = max(0, self.deleted_in_graph - len(items))

    def _remove_label(self, label: int) -> None:
        self.entries.pop(label, None)
        if self.hnsw is not None:
            try:
                self.hnsw.mark_deleted(label)
                self.deleted_in_graph += 1
            except RuntimeError:
                pass
        elif self.matrix is not None and label < self.matrix.shape[0]:
            self.matrix[label] = 0.0
            self.free.append(label)

    def remove(self, key: str) -> bool:
        label = self.by_key.pop(key, None)
        if label is None:
            return False
        self._remove_label(label)
        return True

    def compact(self) -> bool:
        """Rebuild a graph that is under a quarter full (after evictions): returns True when it did."""
        import numpy as np

        if self.hnsw is None or self.capacity < _COMPACT_MIN_CAPACITY or 4 * len(self.entries) >= self.capacity:
            return False
        old_labels = list(self.entries)
        vecs = np.asarray(self.hnsw.get_items(old_labels), dtype=np.float32).reshape(len(old_labels), self.dim)
        entries = [self.entries[label] for label in old_labels]
        self.entries, self.by_key, self.next_label, self.free = {}, {}, 0, []
        self.hnsw, self.matrix, self.capacity, self.deleted_in_graph = None, None, 0, 0
        if entries:
            self.add_many(list(zip(entries, vecs, strict=True)))
        return True

    def search(self, vec: Any, k: int) -> list[tuple[int, float]]:
        import numpy as np

        n = len(self.entries)
        if n == 0:
            return []
        k = min(k, n)
        if self.hnsw is not None:
            try:
                labels, dists = self.hnsw.knn_query(vec.reshape(1, -1), k=k)
            except RuntimeError:  # fewer reachable live elements than k
                labels, dists = self.hnsw.knn_query(vec.reshape(1, -1), k=1)
            return [(int(lab), 1.0 - float(d)) for lab, d in zip(labels[0], dists[0], strict=True)]
        sims = self.matrix[: self.next_label] @ vec
        top = np.argpartition(-sims, k - 1)[:k] if k < len(sims) else np.arange(len(sims))
        return [(int(i), float(sims[i])) for i in top if int(i) in self.entries]


LruKey = tuple[str, str, str]  # (namespace, partition, entry key)


class VectorIndex:
    """All partitions of one process: ``(namespace, partition) -> PartitionIndex``, at most ``max_entries``
    entries in all (``None``: unbounded).  ``dim=0``: each partition takes the size of its first vector."""

    def __init__(self, dim: int = 0, hnsw_min_size: int = 512, ef: int = 64,
                 max_entries: int | None = DEFAULT_MAX_ENTRIES) -> None:
        self.dim = dim
        self.hnsw_min_size = hnsw_min_size
        self.ef = ef
        self.max_entries = max_entries
        self.evicted = 0  # entries removed to stay within max_entries
        self._parts: dict[tuple[str, str], PartitionIndex] = {}
        self._lru: OrderedDict[LruKey, None] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._lru)

    def __contains__(self, item: LruKey) -> bool:
        return item in self._lru

    def partitions(self) -> int:
        return len(self._parts)

    def _part(self, namespace: str, partition: str, dim: int) -> PartitionIndex:
        key = (namespace, partition)
        part = self._parts.get(key)
        if part is None:
            part = PartitionIndex(dim=self.dim or dim, hnsw_min_size=self.hnsw_min_size, ef=self.ef)
            self._parts[key] = part
        return part

    def _drop(self, namespace: str, partition: str, key: str) -> None:
        """Remove one entry (lock held)."""
        self._lru.pop((namespace, partition, key), None)
        part = self._parts.get((namespace, partition))
        if part is not None:
            part.remove(key)
            if not part.entries:
                del self._parts[(namespace, partition)]

    def add(self, namespace: str, partition: str, entry: IndexEntry, vec: Any) -> None:
        self.add_many(namespace, partition, [(entry, vec)])

    def add_many(self, namespace: str, partition: str, items: list[tuple[IndexEntry, Any]]) -> None:
        if not items:
            return
        with self._lock:
            part = self._part(namespace, partition, len(items[0][1]))
            fresh = []
            for entry, vec in items:
                label = part.by_key.get(entry.key)
                if label is not None and part.entries[label].created >= entry.created:
                    continue  # already known (our own write echoed back by the event stream)
                fresh.append((entry, vec))
            if fresh:
                part.add_many(fresh)
            for entry, _ in fresh:
                lru_key = (namespace, partition, entry.key)
                self._lru[lru_key] = None
                self._lru.move_to_end(lru_key)
            if self.max_entries is not None:
                while len(self._lru) > self.max_entries:
                    ns, p, k = next(iter(self._lru))
                    self._drop(ns, p, k)
                    self.evicted += 1
            if not part.entries:
                self._parts.pop((namespace, partition), None)

    def touch(self, namespace: str, partition: str, key: str) -> None:
        """Mark an entry as used now (a hit): the least recently used go first."""
        with self._lock:
            lru_key = (namespace, partition, key)
            if lru_key in self._lru:
                self._lru.move_to_end(lru_key)

    def remove(self, namespace: str, partition: str, key: str) -> None:
        with self._lock:
            self._drop(namespace, partition, key)

    def search(self, namespace: str, partition: str, vec: Any, k: int, now: float | None = None) -> list[Candidate]:
        now = time.time() if now is None else now
        with self._lock:
            part = self._parts.get((namespace, partition))
            if part is None:
                return []
            found = part.search(vec, k)
            out: list[Candidate] = []
            expired: list[str] = []
            for label, cos in found:
                entry = part.entries.get(label)
                if entry is None:
                    continue
                if entry.expires_at is not None and entry.expires_at <= now:
                    expired.append(entry.key)
                    continue
                out.append(Candidate(entry, cos))
            for key in expired:
                self._drop(namespace, partition, key)
        out.sort(key=lambda c: -c.cosine)
        return out

    def drop_namespace(self, namespace: str | None) -> None:
        with self._lock:
            if namespace is None:
                self._parts.clear()
                self._lru.clear()
            else:
                for key in [k for k in self._parts if k[0] == namespace]:
                    del self._parts[key]
                for lru_key in [k for k in self._lru if k[0] == namespace]:
                    del self._lru[lru_key]

    def sweep(self, now: float | None = None) -> int:
        """Forget expired entries and shrink mostly empty graphs; returns how many entries went."""
        now = time.time() if now is None else now
        removed = 0
        with self._lock:
            for (ns, p), part in list(self._parts.items()):
                dead = [e.key for e in part.entries.values() if e.expires_at is not None and e.expires_at <= now]
                for k in dead:
                    self._drop(ns, p, k)
                removed += len(dead)
                if part.entries:
                    part.compact()
        return removed

    def lru_keys(self) -> list[LruKey]:
        """Entries from least to most recently used (tests, debugging)."""
        with self._lock:
            return list(self._lru)
