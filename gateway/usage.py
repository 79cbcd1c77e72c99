"""Token usage of one response: the upstream's own counts (or the gateway's estimate, marked as such)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson


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


def usage_tail(body: bytes, parse: Callable[[Mapping[str, Any] | None], Usage | None] = usage_from) -> Usage | None:
    """The `usage` object of a response body without parsing the whole body (it is near the end), read by
    `parse` (the endpoint's own reading of its API's usage object)."""
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
        return parse(orjson.loads(body[start:end + 1]))
    except orjson.JSONDecodeError:
        return None
