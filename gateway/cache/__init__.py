"""Exact and semantic response cache (issue 5).  See docs/cache.md.

Importing this package is cheap: its names load on first use (PEP 562), and numpy, onnxruntime,
tokenizers and hnswlib only when a semantic cache starts (the supervisor imports `gateway.cache.process`
without any of them).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .cache import ResponseCache
    from .embedder import CallableEmbedder, Embedder, MiniLMEmbedder
    from .keys import Controls, parse_controls
    from .sse import assemble_stream, sse_replay
    from .types import CacheRequest, CacheResult, CacheSettings

_WHERE = {"ResponseCache": ".cache", "CallableEmbedder": ".embedder", "Embedder": ".embedder",
          "MiniLMEmbedder": ".embedder", "Controls": ".keys", "parse_controls": ".keys",
          "assemble_stream": ".sse", "sse_replay": ".sse", "CacheRequest": ".types", "CacheResult": ".types",
          "CacheSettings": ".types"}

__all__ = ["CacheRequest", "CacheResult", "CacheSettings", "CallableEmbedder", "Controls", "Embedder",
           "MiniLMEmbedder", "ResponseCache", "assemble_stream", "parse_controls", "sse_replay"]


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'gateway.cache' has no attribute {name!r}")
    value = getattr(importlib.import_module(where, __name__), name)
    globals()[name] = value
    return value
