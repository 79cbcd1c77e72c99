"""OpenAPI declarations of the OpenAI endpoints.

The hot path parses raw bytes and never goes through FastAPI; these routes exist so the served
OpenAPI spec documents every request schema. Should a request reach them (they are not reached
through `GatewayASGI`), they hand it to the same proxy, unparsed.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(description="an alias from router.yaml, e.g. smart")
    messages: list[dict[str, Any]] = Field(min_length=1, description="chat messages, each with a role")
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = Field(None, ge=0)
    max_completion_tokens: int | None = Field(None, ge=0)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    seed: int | None = None
    user: str | None = None
    cache: dict[str, Any] | None = Field(None, description="cache controls: no-cache, no-store, ttl, s-maxage, namespace")


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    prompt: str | list[Any]
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = Field(None, ge=0)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    cache: dict[str, Any] | None = None


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    input: str | list[Any]
    encoding_format: str | None = None
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None


class _HandOff(Response):
    """Serve the request through the proxy (the body has not been read)."""

    def __init__(self, request: Request, endpoint: str) -> None:
        super().__init__()
        self._request = request
        self._endpoint = endpoint

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        gw = self._request.app.state.gateway
        await gw.proxy(self._endpoint, scope, receive, send)


def _body(model: type[BaseModel]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


def _handler(endpoint: str) -> Any:
    def handler(request: Request) -> Response:
        return _HandOff(request, endpoint)

    return handler


def declare_openai_routes(api: FastAPI) -> None:
    for path, endpoint, model, summary in (
        ("/v1/chat/completions", "chat", ChatCompletionRequest, "Chat completion (streaming with stream=true)"),
        ("/v1/completions", "completions", CompletionRequest, "Text completion"),
        ("/v1/embeddings", "embeddings", EmbeddingRequest, "Embeddings"),
    ):
        api.add_api_route(path, _handler(endpoint), methods=["POST"], tags=["openai"], summary=summary,
                          openapi_extra=_body(model), response_class=Response)
