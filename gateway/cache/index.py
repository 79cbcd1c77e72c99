"""In-process vector index, one per semantic partition.

A partition starts as a numpy matrix searched exactly; at ``hnsw_min_size`` entries it switches to an
hnswlib HNSW graph (inner product on unit vectors = cosine).  Entries carry their key, text, creation and
expiry time; expired or deleted entries are tombstoned and skipped.  Thread-safe (one lock per index);
numpy and hnswlib are imported on first use.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .matcher import Analysis, analyse


@dataclass
class IndexEntry:
    key: str
    text: str
    created: float
    expires_at: float | None
    analysis: Analysis | None = None

    def get_analysis(self) -> Analysis:
        if self.analysis is None:
            self.analysis = analyse(self.text)
        return self.analysis


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
    matrix: Any = None          # numpy (capacity, dim) while small
    hnsw: Any = None            # hnswlib.Index once large
    capacity: int = 0
    deleted_in_graph: int = 0   # tombstones hnswlib may reuse

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

    def _to_hnsw(self) -> None:
        import hnswlib
        import numpy as np

        index = hnswlib.Index(space="ip", dim=self.dim)
        self.capacity = max(1024, 2 * len(self.entries))
        index.init_index(max_elements=self.capacity, ef_construction=100, M=16, allow_replace_deleted=True)
        index.set_ef(self.ef)
        labels = np.fromiter(self.entries.keys(), dtype=np.int64)
        if len(labels):
            index.add_items(self.matrix[labels], labels, num_threads=1)
        self.hnsw = index
        self.matrix = None

    def add_many(self, items: list[tuple[IndexEntry, Any]]) -> None:
        import numpy as np

        for entry, _ in items:
            old = self.by_key.pop(entry.key, None)
            if old is not None:
                self._remove_label(old)
        labels = []
        for entry, _ in items:
            label = self.next_label
            self.next_label += 1
            self.entries[label] = entry
            self.by_key[entry.key] = label
            labels.append(label)
        vecs = np.asarray([v for _, v in items], dtype=np.float32).reshape(len(items), self.dim)
        if self.hnsw is None and len(self.entries) < self.hnsw_min_size:
            self._grow_matrix(self.next_label)
            self.matrix[labels] = vecs
            return
        if self.hnsw is None:
            self._grow_matrix(self.next_label)
            self.matrix[labels] = vecs
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

    def remove(self, key: str) -> None:
        label = self.by_key.pop(key, None)
        if label is not None:
            self._remove_label(label)

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


class VectorIndex:
    """All partitions of one process: ``(namespace, partition) -> PartitionIndex``."""

    def __init__(self, dim: int, hnsw_min_size: int = 512, ef: int = 64) -> None:
        self.dim = dim
        self.hnsw_min_size = hnsw_min_size
        self.ef = ef
        self._parts: dict[tuple[str, str], PartitionIndex] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return sum(len(p) for p in self._parts.values())

    def partitions(self) -> int:
        return len(self._parts)

    def _part(self, namespace: str, partition: str) -> PartitionIndex:
        key = (namespace, partition)
        part = self._parts.get(key)
        if part is None:
            part = PartitionIndex(dim=self.dim, hnsw_min_size=self.hnsw_min_size, ef=self.ef)
            self._parts[key] = part
        return part

    def add(self, namespace: str, partition: str, entry: IndexEntry, vec: Any) -> None:
        self.add_many(namespace, partition, [(entry, vec)])

    def add_many(self, namespace: str, partition: str, items: list[tuple[IndexEntry, Any]]) -> None:
        with self._lock:
            part = self._part(namespace, partition)
            fresh = []
            for entry, vec in items:
                label = part.by_key.get(entry.key)
                if label is not None and part.entries[label].created >= entry.created:
                    continue  # already known (our own write echoed back by the event stream)
                fresh.append((entry, vec))
            if fresh:
                part.add_many(fresh)

    def remove(self, namespace: str, partition: str, key: str) -> None:
        with self._lock:
            part = self._parts.get((namespace, partition))
            if part is not None:
                part.remove(key)

    def search(self, namespace: str, partition: str, vec: Any, k: int, now: float | None = None) -> list[Candidate]:
        now = time.time() if now is None else now
        with self._lock:
            part = self._parts.get((namespace, partition))
            if part is None:
                return []
            found = part.search(vec, k)
            out: list[Candidate] = []
            for label, cos in found:
                entry = part.entries.get(label)
                if entry is None:
                    continue
                if entry.expires_at is not None and entry.expires_at <= now:
                    part.remove(entry.key)
                    continue
                out.append(Candidate(entry, cos))
        out.sort(key=lambda c: -c.cosine)
        return out

    def drop_namespace(self, namespace: str | None) -> None:
        with self._lock:
            if namespace is None:
                self._parts.clear()
            else:
                for key in [k for k in self._parts if k[0] == namespace]:
                    del self._parts[key]

    def sweep(self, now: float | None = None) -> int:
        """Forget expired entries; returns how many."""
        now = time.time() if now is None else now
        removed = 0
        with self._lock:
            for key, part in list(self._parts.items()):
                dead = [e.key for e in part.entries.values() if e.expires_at is not None and e.expires_at <= now]
                for k in dead:
                    part.remove(k)
                removed += len(dead)
                if not part.entries:
                    del self._parts[key]
        return removed
