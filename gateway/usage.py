"""Usage accounting after a response is out: tokens and cost into the metrics (and, once keys exist,
into spend). Token counts come from the upstream's own `usage`; where there is none, the gateway
counts them itself and labels them `estimated="true"` — never a silent zero."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.streaming import StreamTally, estimate_completion_tokens, streamed_text
from gateway.tokens import estimate_prompt_tokens, estimate_text_tokens

log = logging.getLogger("gateway.usage")


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    estimated: bool

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def usage_from(data: Mapping[str, Any] | None) -> Usage | None:
    if not isinstance(data, Mapping):
        return None
    p = data.get("prompt_tokens")
    c = data.get("completion_tokens", 0)
    if not isinstance(p, int):
        return None
    return Usage(p, c if isinstance(c, int) else 0, False)


def usage_tail(body: bytes) -> Usage | None:
    """The `usage` object of a response body without parsing the whole body (it is near the end)."""
    at = body.rfind(b'"usage"')
    if at < 0:
        return None
    start = body.find(b"{", at + 7, at + 16)
    if start < 0:
        return None
    end = start
    while True:  # the first "}" that closes as many braces as were opened (usage may nest *_details)
        end = body.find(b"}", end + 1, start + 4096)
        if end < 0:
            return None
        if body.count(b"{", start, end) == body.count(b"}", start, end) + 1:
            break
    try:
        return usage_from(orjson.loads(body[start:end + 1]))
    except orjson.JSONDecodeError:
        return None


def parse_plain(body: bytes) -> tuple[dict[str, Any] | None, Usage | None]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(data, dict):
        return None, None
    return data, usage_from(data.get("usage"))


def completion_text(data: Mapping[str, Any]) -> str:
    parts: list[str] = []
    for choice in data.get("choices") or ():
        if not isinstance(choice, Mapping):
            continue
        if isinstance(choice.get("text"), str):
            parts.append(choice["text"])
        msg = choice.get("message")
        if isinstance(msg, Mapping):
            if isinstance(msg.get("content"), str):
                parts.append(msg["content"])
            for call in msg.get("tool_calls") or ():
                fn = call.get("function") if isinstance(call, Mapping) else None
                if isinstance(fn, Mapping) and isinstance(fn.get("arguments"), str):
                    parts.append(fn["arguments"])
    return "".join(parts)


def estimate_plain(body: Mapping[str, Any], data: Mapping[str, Any] | None) -> Usage:
    completion = estimate_text_tokens(completion_text(data)) if data else 0
    return Usage(estimate_prompt_tokens(body), completion, True)


def estimate_stream(body: Mapping[str, Any], tally: StreamTally) -> tuple[Usage, str]:
    chunks = tally.chunks()
    return Usage(estimate_prompt_tokens(body), estimate_completion_tokens(chunks), True), streamed_text(chunks)
