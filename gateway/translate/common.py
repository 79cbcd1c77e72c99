"""Pieces shared by the translators: the error they raise, ids, SSE framing, chat usage."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import orjson


class TranslationError(ValueError):
    """A request that cannot be translated: the client gets `status` (400 unless said) in its API's shape.

    `param` names the offending field (a dotted path such as `messages.2.content.0.source`)."""

    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status


def new_id(prefix: str) -> str:
    return prefix + os.urandom(12).hex()


def sse_event(event: Mapping[str, Any]) -> bytes:
    """One SSE event named after its `type` (both APIs frame events as `event: T` + `data: {...}`)."""
    return b"event: " + str(event["type"]).encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def want_dict(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TranslationError(f"{param} must be an object", param)
    return value


def want_str(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise TranslationError(f"{param} must be a string", param)
    return value


def chat_usage(usage: Any) -> tuple[int, int, int, int]:
    """(prompt, completion, cached prompt, reasoning) tokens of a chat `usage` object (0 where absent)."""
    if not isinstance(usage, Mapping):
        return 0, 0, 0, 0

    def count(obj: Any, key: str) -> int:
        value = obj.get(key) if isinstance(obj, Mapping) else None
        return value if is_int(value) and value > 0 else 0

    return (
        count(usage, "prompt_tokens"),
        count(usage, "completion_tokens"),
        count(usage.get("prompt_tokens_details"), "cached_tokens"),
        count(usage.get("completion_tokens_details"), "reasoning_tokens"),
    )


def first_choice(response: Mapping[str, Any]) -> dict[str, Any]:
    """The first choice of a chat.completion (a translated API has one answer per request)."""
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise TranslationError("the upstream answer has no choices", status=502)
    return choices[0]


def reasoning_text(message: Mapping[str, Any]) -> str:
    """Reasoning text of a chat message or delta: `reasoning_content` (llama.cpp, DeepSeek) or `reasoning` (vLLM)."""
    for key in ("reasoning_content", "reasoning"):
        value = message.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def passthrough(body: Mapping[str, Any], known: frozenset[str]) -> dict[str, Any]:
    """Fields the source API does not define: passed to the upstream untouched (engine extensions such
    as vLLM's `chat_template_kwargs`, the simulator's `sim`), like every unknown field on the chat path."""
    return {k: v for k, v in body.items() if k not in known}
