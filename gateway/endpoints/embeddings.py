"""POST /v1/embeddings."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel

from gateway.endpoints.base import Endpoint, estimate_text_tokens
from gateway.errors import invalid_request


@functools.cache
def embedding_request_model() -> type[BaseModel]:
    """The OpenAPI request model (built on first use: the hot path never needs it)."""
    from pydantic import ConfigDict, Field

    class EmbeddingRequest(BaseModel):
        model_config = ConfigDict(extra="allow")
        model: str
        input: str | list[Any]
        encoding_format: str | None = None
        dimensions: int | None = Field(None, ge=1)
        user: str | None = None

    return EmbeddingRequest


class Embeddings(Endpoint):
    name: ClassVar[str] = "embeddings"
    paths: ClassVar[tuple[str, ...]] = ("/v1/embeddings", "/embeddings")
    upstream_path: ClassVar[str] = "/embeddings"
    prompt_param: ClassVar[str] = "input"
    streams: ClassVar[bool] = False
    stream_usage_option: ClassVar[bool] = False
    openapi_model = staticmethod(embedding_request_model)
    support: ClassVar[str] = "embeddings"
    summary: ClassVar[str] = "Embeddings"

    def check(self, body: Mapping[str, Any]) -> None:
        inp = body.get("input")
        if inp is None:
            raise invalid_request("Missing required parameter: 'input'", "input")
        if not isinstance(inp, (str, list)) or (isinstance(inp, list) and not inp):
            raise invalid_request("'input' must be a string or a non-empty array", "input")
        if "stream" in body and body["stream"]:
            raise invalid_request("'stream' is not supported for embeddings", "stream")

    def estimate_prompt_tokens(self, body: Mapping[str, Any]) -> int:
        inp = body.get("input")
        texts = [inp] if isinstance(inp, str) else [x for x in inp if isinstance(x, str)] \
            if isinstance(inp, list) else []
        return sum(estimate_text_tokens(t) for t in texts) or (len(inp) if isinstance(inp, list) else 0)

    def prompt_text(self, body: Mapping[str, Any]) -> str:
        inp = body.get("input")
        if isinstance(inp, str):
            return inp
        return "\n".join(x for x in inp if isinstance(x, str)) if isinstance(inp, list) else ""

