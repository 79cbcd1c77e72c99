"""`oss_cache_entries`: entries in the semantic index of this replica, read at scrape time (from the
index in this process, or asked of the replica's cache process) rather than kept in a gauge file."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily

NAME = "oss_cache_entries"
DOC = "Entries in the semantic index of this replica (bounded by cache_params.max_entries)"


class CacheEntriesCollector:
    def __init__(self, cache: Any) -> None:
        self.cache = cache

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(NAME, DOC)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        value = self.cache.index_entries() if self.cache.semantic else None
        if value is not None:  # no sample while the cache process is unreachable
            yield GaugeMetricFamily(NAME, DOC, value=value)
