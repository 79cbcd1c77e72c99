"""POST /v1/completions."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from pydantic import BaseModel

from gateway.endpoints.base import Endpoint, type_name
from gateway.endpoints.chat import output_count
from gateway.errors import invalid_request


@functools.cache
def completion_request_model() -> type[BaseModel]:
    """The OpenAPI request model (built on first use: the hot path never needs it)."""
    from pydantic import ConfigDict, Field

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

    return CompletionRequest


class Completions(Endpoint):
    name: ClassVar[str] = "completions"
    paths: ClassVar[tuple[str, ...]] = ("/v1/completions", "/completions")
    upstream_path: ClassVar[str] = "/completions"
    prompt_param: ClassVar[str] = "prompt"
    openapi_model = staticmethod(completion_request_model)
    support: ClassVar[str] = "completions"
    summary: ClassVar[str] = "Text completion"

    def check(self, body: Mapping[str, Any]) -> None:
        prompt = body.get("prompt")
        if prompt is None:
            raise invalid_request("Missing required parameter: 'prompt'", "prompt")
        if not isinstance(prompt, (str, list)):
            raise invalid_request(f"'prompt' must be a string or an array, got {type_name(prompt)}", "prompt")

    def prompt_text(self, body: Mapping[str, Any]) -> str:
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            return prompt
        if isinstance(prompt, list):
            return "\n".join(x for x in prompt if isinstance(x, str))
        return ""

    def worst_case_output(self, body: Mapping[str, Any], default: int) -> int:
        return output_count(body, body.get("max_tokens"), default)

    def output_text(self, data: Mapping[str, Any]) -> str:
        return "".join(c["text"] for c in data.get("choices") or ()
                       if isinstance(c, Mapping) and isinstance(c.get("text"), str))

    def stream_output(self, chunks: Iterable[Mapping[str, Any]]) -> tuple[str, int]:
        parts: list[str] = []
        n = 0
        for chunk in chunks:
            for choice in chunk.get("choices") or ():
                text = choice.get("text") if isinstance(choice, dict) else None
                if isinstance(text, str) and text:
                    parts.append(text)
                    n += 1
        return "".join(parts), n
