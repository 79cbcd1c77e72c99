"""Exact and semantic response cache (issue 5).  See docs/cache.md.

Importing this package is cheap: numpy, onnxruntime, tokenizers and hnswlib load only when a semantic
cache starts.
"""

from .cache import ResponseCache
from .embedder import CallableEmbedder, Embedder, MiniLMEmbedder
from .keys import Controls, parse_controls
from .sse import assemble_stream, sse_replay
from .types import CacheRequest, CacheResult, CacheSettings

__all__ = ["CacheRequest", "CacheResult", "CacheSettings", "CallableEmbedder", "Controls", "Embedder",
           "MiniLMEmbedder", "ResponseCache", "assemble_stream", "parse_controls", "sse_replay"]
