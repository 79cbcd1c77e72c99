"""POST /v1/messages (Anthropic Messages API) and POST /v1/messages/count_tokens.

Passed through to deployments that serve it natively (vLLM does: `model_info.supports` has `messages`),
translated to chat/completions and back for the others (gateway/translate/anthropic.py). Errors are in
Anthropic's shape; usage is `input_tokens` (+ cached) / `output_tokens`."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import orjson
from pydantic import BaseModel

from gateway.endpoints.base import (
    PER_MESSAGE_OVERHEAD,
    Check,
    Endpoint,
    estimate_text_tokens,
    is_int,
    is_number,
    tools_tokens,
    type_name,
)
from gateway.errors import invalid_request
from gateway.streaming import EventTally
from gateway.translate import anthropic
from gateway.translate.common import TranslationError
from gateway.usage import Usage


@functools.cache
def messages_request_model() -> type[BaseModel]:
    """The OpenAPI request model (built on first use: the hot path never needs it)."""
    from pydantic import ConfigDict, Field

    class MessagesRequest(BaseModel):
        model_config = ConfigDict(extra="allow")
        model: str = Field(description="an alias from router.yaml, e.g. smart")
        messages: list[dict[str, Any]] = Field(min_length=1)
        max_tokens: int = Field(ge=1)
        system: str | list[dict[str, Any]] | None = None
        stream: bool | None = None
        temperature: float | None = Field(None, ge=0, le=1)
        top_p: float | None = Field(None, ge=0, le=1)
        stop_sequences: list[str] | None = None
        tools: list[dict[str, Any]] | None = None
        tool_choice: dict[str, Any] | None = None

    return MessagesRequest


@functools.cache
def count_tokens_request_model() -> type[BaseModel]:
    """The OpenAPI request model (built on first use: the hot path never needs it)."""
    from pydantic import ConfigDict, Field

    class CountTokensRequest(BaseModel):
        model_config = ConfigDict(extra="allow")
        model: str
        messages: list[dict[str, Any]] = Field(min_length=1)
        system: str | list[dict[str, Any]] | None = None
        tools: list[dict[str, Any]] | None = None

    return CountTokensRequest


CHECKS: dict[str, Check] = {
    "stream": (lambda v: isinstance(v, bool), "a boolean"),
    "max_tokens": (lambda v: is_int(v) and v >= 1, "an integer >= 1"),
    "temperature": (lambda v: is_number(v) and 0 <= v <= 1, "a number between 0 and 1"),
    "top_p": (lambda v: is_number(v) and 0 <= v <= 1, "a number between 0 and 1"),
    "top_k": (lambda v: is_int(v) and v >= 0, "an integer >= 0"),
    "stop_sequences": (lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v), "an array of strings"),
    "system": (lambda v: isinstance(v, (str, list)), "a string or an array of text blocks"),
    "tools": (lambda v: isinstance(v, list) and all(isinstance(t, dict) for t in v), "an array of objects"),
    "tool_choice": (lambda v: isinstance(v, dict), "an object"),
    "metadata": (lambda v: isinstance(v, dict), "an object"),
    "cache": (lambda v: isinstance(v, dict), "an object"),
}
END = frozenset({"message_stop"})


def _block_text(content: Any) -> Iterable[str]:
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for block in content:
            if not isinstance(block, Mapping):
                continue
            if isinstance(block.get("text"), str):
                yield block["text"]
            elif block.get("type") == "tool_use":
                try:
                    yield orjson.dumps(block.get("input")).decode()
                except TypeError:
                    pass
            elif block.get("type") == "tool_result":
                yield from _block_text(block.get("content"))


def _check_messages(body: Mapping[str, Any]) -> None:
    messages = body.get("messages")
    if messages is None:
        raise invalid_request("Missing required parameter: 'messages'", "messages")
    if not isinstance(messages, list) or not messages:
        raise invalid_request(f"'messages' must be a non-empty array, got {type_name(messages)}", "messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise invalid_request(f"'messages.{i}' must be an object, got {type_name(m)}", f"messages.{i}")
        if m.get("role") not in ("user", "assistant"):
            raise invalid_request(f"'messages.{i}.role' must be 'user' or 'assistant'", f"messages.{i}.role")
        if not isinstance(m.get("content"), (str, list)):
            raise invalid_request(f"'messages.{i}.content' must be a string or an array of content blocks",
                                  f"messages.{i}.content")


def _prompt_text(body: Mapping[str, Any]) -> str:
    parts = list(_block_text(body.get("system")))
    for m in body.get("messages") or ():
        if isinstance(m, Mapping):
            parts.extend(_block_text(m.get("content")))
    return "\n".join(parts)


def _estimate(body: Mapping[str, Any]) -> int:
    messages = body.get("messages")
    n = len(messages) if isinstance(messages, list) else 0
    return estimate_text_tokens(_prompt_text(body)) + PER_MESSAGE_OVERHEAD * n + tools_tokens(body)


def _translated(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except TranslationError as exc:
        raise invalid_request(exc.message, exc.param) from None


def anthropic_usage(data: Mapping[str, Any] | None) -> Usage | None:
    if not isinstance(data, Mapping):
        return None
    inp = data.get("input_tokens")
    out = data.get("output_tokens", 0)
    if not is_int(inp) and not is_int(out):
        return None
    cached = sum(v for k in ("cache_read_input_tokens", "cache_creation_input_tokens")
                 if is_int(v := data.get(k)))
    return Usage((inp if is_int(inp) else 0) + cached, out if is_int(out) else 0, False)


def _stream_usage(event: dict[str, Any]) -> dict[str, Any] | None:
    kind = event.get("type")
    if kind == "message_start":
        message = event.get("message")
        usage = message.get("usage") if isinstance(message, dict) else None
    elif kind == "message_delta":
        usage = event.get("usage")
    else:
        return None
    return usage if isinstance(usage, dict) else None


class Messages(Endpoint):
    name: ClassVar[str] = "messages"
    paths: ClassVar[tuple[str, ...]] = ("/v1/messages",)
    upstream_path: ClassVar[str] = "/messages"
    prompt_param: ClassVar[str] = "messages"
    checks: ClassVar[Mapping[str, Check]] = CHECKS
    stream_usage_option: ClassVar[bool] = False
    openapi_model = staticmethod(messages_request_model)
    summary: ClassVar[str] = "Anthropic Messages (streaming with stream=true)"
    tag: ClassVar[str] = "anthropic"
    error_style: ClassVar[str] = "anthropic"
    support: ClassVar[str] = "messages"
    passed_headers: ClassVar[tuple[bytes, ...]] = (b"anthropic-version", b"anthropic-beta")
    cacheable: ClassVar[bool] = True
    replayable: ClassVar[bool] = False  # exact cache for plain answers; streams are not replayed

    def check(self, body: Mapping[str, Any]) -> None:
        _check_messages(body)
        if "max_tokens" not in body:
            raise invalid_request("Missing required parameter: 'max_tokens'", "max_tokens")

    def prompt_text(self, body: Mapping[str, Any]) -> str:
        return _prompt_text(body)

    def estimate_prompt_tokens(self, body: Mapping[str, Any]) -> int:
        return _estimate(body)

    def worst_case_output(self, body: Mapping[str, Any], default: int) -> int:
        mt = body.get("max_tokens")
        return mt if is_int(mt) and mt >= 0 else default


    def usage(self, data: Mapping[str, Any] | None) -> Usage | None:
        return anthropic_usage(data)

    def output_text(self, data: Mapping[str, Any]) -> str:
        return "".join(_block_text(data.get("content")))

    def stream_output(self, chunks: Iterable[Mapping[str, Any]]) -> tuple[str, int]:
        parts: list[str] = []
        for ev in chunks:
            delta = ev.get("delta") if ev.get("type") == "content_block_delta" else None
            if isinstance(delta, Mapping):
                for key in ("text", "partial_json", "thinking"):
                    if isinstance(delta.get(key), str):
                        parts.append(delta[key])
        return "".join(parts), len(parts)

    def new_tally(self, wants_usage: bool) -> EventTally:
        return EventTally(_stream_usage, END.__contains__)

    def stream_tail(self, tally: Any) -> bytes:
        return b""

    def stream_error(self, status: int, message: str, type_: str, code: str | None) -> bytes:
        return anthropic.MessagesStream.encode(anthropic.error_event(status, message))

    def to_chat(self, body: Mapping[str, Any], context: Any) -> dict[str, Any] | None:
        return _translated(anthropic.messages_to_chat, body)

    def from_chat(self, reply: Mapping[str, Any], body: Mapping[str, Any], alias: str, context: Any) -> dict[str, Any]:
        stops = body.get("stop_sequences")
        return anthropic.chat_to_message(reply, model=alias, stop_sequences=stops if isinstance(stops, list) else ())

    def chat_stream(self, body: Mapping[str, Any], alias: str, context: Any) -> anthropic.MessagesStream:
        stops = body.get("stop_sequences")
        return anthropic.MessagesStream(model=alias, stop_sequences=stops if isinstance(stops, list) else (),
                                        input_tokens=_estimate(body))


class CountTokens(Endpoint):
    name: ClassVar[str] = "count_tokens"
    paths: ClassVar[tuple[str, ...]] = ("/v1/messages/count_tokens",)
    upstream_path: ClassVar[str] = "/messages/count_tokens"
    prompt_param: ClassVar[str] = "messages"
    streams: ClassVar[bool] = False
    checks: ClassVar[Mapping[str, Check]] = CHECKS
    stream_usage_option: ClassVar[bool] = False
    openapi_model = staticmethod(count_tokens_request_model)
    summary: ClassVar[str] = "Anthropic token count of a Messages request"
    tag: ClassVar[str] = "anthropic"
    error_style: ClassVar[str] = "anthropic"
    support: ClassVar[str] = "messages"
    passed_headers: ClassVar[tuple[bytes, ...]] = (b"anthropic-version", b"anthropic-beta")
    metered: ClassVar[bool] = False
    cacheable: ClassVar[bool] = False

    def check(self, body: Mapping[str, Any]) -> None:
        _check_messages(body)

    def prompt_text(self, body: Mapping[str, Any]) -> str:
        return _prompt_text(body)

    def estimate_prompt_tokens(self, body: Mapping[str, Any]) -> int:
        return _estimate(body)

    def upstream_body(self, body: Mapping[str, Any], served_model: str, stream: bool, wants_usage: bool
                      ) -> dict[str, Any]:
        return {**body, "model": served_model}

    def answer_locally(self, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """No native upstream: the gateway's own estimate (about 4 bytes a token)."""
        return {"input_tokens": _estimate(body)}
