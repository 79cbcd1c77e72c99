"""The cache's public data types: settings, the request the gateway hands in, the result it gets back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # pragma: no cover
    from .embedder import Embedder

CacheStatus = Literal["hit", "semantic_hit", "miss", "bypass"]
Endpoint = Literal["chat", "completions", "embeddings"]

DEFAULT_MAX_ENTRIES = 50_000  # ~3 kB each at 384 dimensions and ~100-char prompts (docs/cache.md, "Memory")

SEMANTIC_TYPES = ("redis-semantic", "local-semantic", "semantic", "qdrant-semantic")


@dataclass(frozen=True)
class CacheSettings:
    """How the cache runs; built from ``litellm_settings.cache_params`` by the config loader.

    ``type``: ``redis-semantic`` (exact + semantic), ``redis`` (exact only), ``local`` (exact only,
    in-process) or ``local-semantic``.  Whatever the type, ``redis_url=None`` means an in-process store.
    ``similarity_threshold`` is a floor on the MiniLM cosine: the matcher's own checks still apply.
    ``max_temperature``: the semantic cache serves requests whose temperature is None or at most this.
    ``max_entries``: the semantic index of the replica holds at most this many entries (least recently
    used out first); Redis entries keep their TTL.
    """

    enabled: bool = True
    type: str = "redis-semantic"
    ttl: float | None = 3600.0
    similarity_threshold: float | None = None
    redis_url: str | None = None
    namespace: str | None = None
    max_temperature: float = 0.0
    # --- tuning knobs (defaults are the measured ones; see docs/cache.md) ---
    key_prefix: str = "oss:cache"
    redis_timeout: float = 1.0          # seconds for one Redis command (measured: docs/operations.md)
    redis_retry_interval: float = 0.5   # seconds between health probes while Redis is down
    candidates: int = 8                 # nearest neighbours the matcher examines
    index_ef: int = 64                  # hnswlib search breadth
    hnsw_min_size: int = 512            # partitions smaller than this are searched exactly (numpy)
    max_entries: int = DEFAULT_MAX_ENTRIES  # semantic index of this replica: LRU bound (cache_params.max_entries)
    local_max_entries: int | None = None  # in-process store (no Redis): LRU bound; None = max_entries
    process_timeout: float = 0.5        # seconds a worker waits for the replica's cache process, then bypasses
    process_start_wait: float = 15.0    # seconds a starting worker waits for the cache process to answer
    embed_workers: int = 0              # parallel embedding runs in the cache process (0: min(4, CPUs))
    stream_maxlen: int = 200_000        # Redis event stream (approximate trim)
    max_text_chars: int = 2_000         # longer last messages are cached exactly only
    embedder: Embedder | None = field(default=None, compare=False, hash=False)  # default: MiniLM int8

    @property
    def semantic(self) -> bool:
        return self.type in SEMANTIC_TYPES or self.type.endswith("semantic")


@dataclass
class CacheRequest:
    """One request as the gateway parsed it."""

    alias: str
    endpoint: str  # "chat" | "completions" | "embeddings"
    body: dict[str, Any]
    tenant: str | None = None
    cache_control_header: str | None = None
    # filled by lookup() and reused by store(): keys and the vector are computed once per request
    prepared: Any = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class CacheResult:
    status: CacheStatus
    body: bytes | None = None
    usage: dict[str, Any] | None = None
    reason: str | None = None       # why a bypass / miss ("no-cache", "redis-down", "temperature", ...)
    score: float | None = None      # semantic hits: the matcher's probability
    similarity: float | None = None  # semantic hits: MiniLM cosine
    age: float | None = None        # seconds since the entry was stored
    key: str | None = None          # entry id (exact hash)
