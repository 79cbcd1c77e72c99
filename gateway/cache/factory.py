"""`CacheSettings` from router.yaml's `litellm_settings.cache_params` (shared by the workers and the
replica's cache process, so both read the config the same way)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .types import DEFAULT_MAX_ENTRIES, CacheSettings

if TYPE_CHECKING:  # pragma: no cover
    from gateway.config import CacheParams


def cache_settings(cp: CacheParams, default_redis_url: str | None) -> CacheSettings | None:
    """None when the cache is off."""
    if not cp.enabled:
        return None
    local = cp.type.startswith("local")
    max_temperature = cp.params.get("max_temperature", 0.0)
    max_entries = cp.params.get("max_entries", DEFAULT_MAX_ENTRIES)  # validated by gateway.config
    return CacheSettings(
        enabled=True, type=cp.type, ttl=cp.ttl if cp.ttl is not None else CacheSettings.ttl,
        similarity_threshold=cp.similarity_threshold,
        redis_url=None if local else (cp.redis_url or default_redis_url),
        namespace=cp.namespace,
        max_temperature=float(max_temperature) if isinstance(max_temperature, (int, float)) else 0.0,
        max_entries=int(max_entries),
    )
