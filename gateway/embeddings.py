"""Embeddings from one of the gateway's own aliases, for the semantic cache.

`litellm_settings.cache_params.redis_semantic_cache_embedding_model: <alias>` (LiteLLM's key) makes the
semantic cache embed with that alias's deployments (e.g. a vLLM embedding model) instead of the local int8
MiniLM. The call goes straight to a deployment of the alias through the gateway's upstream client and
router, off the client's request accounting. The vector size is `cache_params.embedding_dim`, or asked of
the model at start. The matcher's confirm model was fitted on MiniLM similarities: with another model,
re-fit it (`python -m gateway.cache.fit`) before relying on its hit rates.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from gateway.config import GatewayConfig
from gateway.router import RouterState
from gateway.upstreams import OpenAICompatible, UpstreamError

if TYPE_CHECKING:
    import numpy as np


class AliasEmbedder:
    def __init__(self, config: Callable[[], GatewayConfig], router: RouterState, upstream: OpenAICompatible,
                 alias: str, dim: int | None) -> None:
        self.config = config
        self.router = router
        self.upstream = upstream
        self.alias = alias
        self.dim = dim or 0
        self.model_id = f"alias:{alias}"

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        from gateway.cache.embedder import _normalise

        config = self.config()
        deployments = config.aliases.get(self.alias)
        if not deployments:
            raise RuntimeError(f"embeddings alias '{self.alias}' is not in the config")
        dep = self.router.pick(self.alias, deployments, config.router.routing_strategy).deployment
        body = orjson.dumps({"model": dep.served_model, "input": list(texts)})
        reply = await self.upstream.request(dep, "/embeddings", body, os.urandom(16).hex())
        data: Any = orjson.loads(reply.body).get("data")
        if not isinstance(data, list) or len(data) != len(texts):
            raise UpstreamError("status", "embeddings answer without one vector per input", 502, reply.body[:200])
        vectors = [d["embedding"] for d in sorted(data, key=lambda d: d.get("index", 0))]
        return _normalise(vectors)

    async def probe(self) -> None:
        """Learn the vector size from the model when the config does not say it."""
        if not self.dim:
            self.dim = int((await self.embed(["dimension probe"])).shape[1])

    def embed_sync(self, texts: Sequence[str]) -> np.ndarray:
        raise RuntimeError("the alias embedder has no blocking variant")

    def close(self) -> None:
        return None
