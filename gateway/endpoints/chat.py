"""POST /v1/chat/completions."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from pydantic import BaseModel

from gateway.endpoints.base import (
    PER_MESSAGE_OVERHEAD,
    Endpoint,
    estimate_text_tokens,
    is_int,
    tools_tokens,
    type_name,
)
from gateway.errors import invalid_request


@functools.cache
def chat_request_model() -> type[BaseModel]:
    """The OpenAPI request model (built on first use: the hot path never needs it)."""
    from pydantic import ConfigDict, Field

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

    return ChatCompletionRequest


def content_text(content: Any) -> Iterable[str]:
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, Mapping):
                text = part.get("text")
                if isinstance(text, str):
                    yield text
            elif isinstance(part, str):
                yield part


def message_text(content: Any) -> str | None:
    """The text of a message content (string or list of text parts); None when it holds non-text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts: list[str] = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                return None
        return "\n".join(texts)
    return None


def output_count(body: Mapping[str, Any], max_tokens: Any, default: int) -> int:
    """max_tokens (or `default`) times n choices (at most 128)."""
    n = body.get("n")
    asked = max_tokens if is_int(max_tokens) and max_tokens >= 0 else default
    return asked * (min(n, 128) if is_int(n) and n > 1 else 1)


class Chat(Endpoint):
    name: ClassVar[str] = "chat"
    paths: ClassVar[tuple[str, ...]] = ("/v1/chat/completions", "/chat/completions")
    upstream_path: ClassVar[str] = "/chat/completions"
    prompt_param: ClassVar[str] = "messages"
    openapi_model = staticmethod(chat_request_model)
    support: ClassVar[str] = "chat"
    summary: ClassVar[str] = "Chat completion (streaming with stream=true)"

    def check(self, body: Mapping[str, Any]) -> None:
        messages = body.get("messages")
        if messages is None:
            raise invalid_request("Missing required parameter: 'messages'", "messages")
        if not isinstance(messages, list):
            raise invalid_request(f"'messages' must be an array of message objects, got {type_name(messages)}",
                                  "messages")
        if not messages:
            raise invalid_request("'messages' must contain at least one message", "messages")
        for i, m in enumerate(messages):
            if not isinstance(m, dict):
                raise invalid_request(f"'messages[{i}]' must be an object, got {type_name(m)}", f"messages[{i}]")
            role = m.get("role")
            if not isinstance(role, str) or not role:
                raise invalid_request(f"Missing required parameter: 'messages[{i}].role'", f"messages[{i}].role")
            content = m.get("content")
            if content is not None and not isinstance(content, (str, list)):
                raise invalid_request(
                    f"'messages[{i}].content' must be a string or an array, got {type_name(content)}",
                    f"messages[{i}].content")

    def prompt_text(self, body: Mapping[str, Any]) -> str:
        parts: list[str] = []
        messages = body.get("messages")
        if isinstance(messages, list):
            for m in messages:
                if isinstance(m, Mapping):
                    parts.extend(content_text(m.get("content")))
                    calls = m.get("tool_calls")
                    if isinstance(calls, list):
                        for c in calls:
                            fn = c.get("function") if isinstance(c, Mapping) else None
                            if isinstance(fn, Mapping) and isinstance(fn.get("arguments"), str):
                                parts.append(fn["arguments"])
        return "\n".join(parts)

    def estimate_prompt_tokens(self, body: Mapping[str, Any]) -> int:
        messages = body.get("messages")
        n_messages = len(messages) if isinstance(messages, list) else 0
        return estimate_text_tokens(self.prompt_text(body)) + PER_MESSAGE_OVERHEAD * n_messages + tools_tokens(body)

    def worst_case_output(self, body: Mapping[str, Any], default: int) -> int:
        mt = body.get("max_completion_tokens")
        if not is_int(mt) or mt < 0:
            mt = body.get("max_tokens")
        return output_count(body, mt, default)

    def output_text(self, data: Mapping[str, Any]) -> str:
        parts: list[str] = []
        for choice in data.get("choices") or ():
            if not isinstance(choice, Mapping):
                continue
            msg = choice.get("message")
            if isinstance(msg, Mapping):
                for key in ("content", "reasoning_content", "reasoning"):
                    if isinstance(msg.get(key), str):
                        parts.append(msg[key])
                for call in msg.get("tool_calls") or ():
                    fn = call.get("function") if isinstance(call, Mapping) else None
                    if isinstance(fn, Mapping) and isinstance(fn.get("arguments"), str):
                        parts.append(fn["arguments"])
        return "".join(parts)

    def stream_output(self, chunks: Iterable[Mapping[str, Any]]) -> tuple[str, int]:
        parts: list[str] = []
        n = 0
        for chunk in chunks:
            choices = chunk.get("choices")
            if not isinstance(choices, list):
                continue
            for choice in choices:
                delta = choice.get("delta") if isinstance(choice, dict) else None
                if not isinstance(delta, dict):
                    continue
                counted = False
                for key in ("content", "reasoning_content", "reasoning"):
                    v = delta.get(key)
                    if isinstance(v, str) and v:
                        parts.append(v)
                        counted = True
                calls = delta.get("tool_calls")
                if isinstance(calls, list) and calls:
                    counted = True
                    for c in calls:
                        fn = c.get("function") if isinstance(c, dict) else None
                        if isinstance(fn, dict):
                            for key in ("name", "arguments"):
                                if isinstance(fn.get(key), str):
                                    parts.append(fn[key])
                n += counted
        return "".join(parts), n

    def semantic_split(self, body: Mapping[str, Any], max_chars: int) -> tuple[dict[str, Any], str] | None:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return None
        last = messages[-1]
        if not isinstance(last, dict) or last.get("role") != "user":
            return None
        text = message_text(last.get("content"))
        if text is None or not 0 < len(text.strip()) <= max_chars:
            return None
        rest = {k: v for k, v in last.items() if k != "content"}
        return {**body, "messages": [*messages[:-1], {**rest, "content": "\x00LAST\x00"}]}, text
