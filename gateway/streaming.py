"""Server-sent events between an upstream and the client.

The gateway forwards whole events as soon as they are complete; it does not re-chunk or buffer
beyond the event in progress. It looks inside an event only when the event mentions `usage`, to
count tokens and to drop the usage-only chunk the client did not ask for. The raw events are kept
(by reference) so that token estimates and the cache can read them after the stream, off the hot path.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.tokens import estimate_text_tokens

DONE = b"data: [DONE]\n\n"


def error_event(message: str, type_: str, code: str | None = None) -> bytes:
    payload = orjson.dumps({"error": {"message": message, "type": type_, "param": None, "code": code}})
    return b"data: " + payload + b"\n\n" + DONE


def split_complete(buf: bytes) -> tuple[bytes, bytes]:
    """Split a buffer into (complete events, incomplete tail)."""
    end = buf.rfind(b"\n\n")
    cr = buf.rfind(b"\r\n\r\n")
    if cr >= 0 and cr + 4 > end + 2:
        return buf[: cr + 4], buf[cr + 4:]
    if end < 0:
        return b"", buf
    return buf[: end + 2], buf[end + 2:]


def iter_events(block: bytes) -> Iterable[bytes]:
    for ev in block.replace(b"\r\n", b"\n").split(b"\n\n"):
        if ev.strip():
            yield ev


def event_data(event: bytes) -> bytes | None:
    """The data field of one SSE event (joined lines), or None for comments/other fields."""
    lines = [ln[5:].lstrip(b" ") for ln in event.split(b"\n") if ln.startswith(b"data:")]
    return b"\n".join(lines) if lines else None


@dataclass
class StreamTally:
    """What the gateway learned from a stream while forwarding it."""

    strip_usage: bool
    usage: dict[str, Any] | None = None
    blocks: list[bytes] = field(default_factory=list)
    events: int = 0
    done: bool = False

    def process(self, block: bytes) -> bytes:
        """Inspect one block of complete events; returns what to forward to the client."""
        self.blocks.append(block)
        self.events += block.count(b"data:")
        if b"[DONE]" in block:
            self.done = True
        if b'"usage"' not in block:
            return block
        kept: list[bytes] = []
        changed = False
        for ev in iter_events(block):
            if b'"usage"' not in ev:
                kept.append(ev)
                continue
            data = event_data(ev)
            if data is None or data == b"[DONE]":
                kept.append(ev)
                continue
            try:
                chunk = orjson.loads(data)
            except orjson.JSONDecodeError:
                kept.append(ev)
                continue
            usage = chunk.get("usage") if isinstance(chunk, dict) else None
            if isinstance(usage, dict):
                self.usage = usage
                if self.strip_usage and not chunk.get("choices"):
                    changed = True
                    continue
            kept.append(ev)
        if not changed:
            return block
        return b"".join(ev + b"\n\n" for ev in kept)

    def chunks(self) -> list[dict[str, Any]]:
        """The parsed JSON chunks of the stream (for estimates and the cache)."""
        out: list[dict[str, Any]] = []
        for block in self.blocks:
            for ev in iter_events(block):
                data = event_data(ev)
                if not data or data == b"[DONE]":
                    continue
                try:
                    chunk = orjson.loads(data)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(chunk, dict):
                    out.append(chunk)
        return out


def streamed_text(chunks: Iterable[dict[str, Any]]) -> str:
    """All generated text of a chat or completions stream (content, reasoning and tool-call arguments)."""
    parts: list[str] = []
    for chunk in chunks:
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            continue
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            text = choice.get("text")
            if isinstance(text, str):
                parts.append(text)
            delta = choice.get("delta")
            if isinstance(delta, dict):
                for key in ("content", "reasoning_content", "reasoning"):
                    v = delta.get(key)
                    if isinstance(v, str):
                        parts.append(v)
                calls = delta.get("tool_calls")
                if isinstance(calls, list):
                    for c in calls:
                        fn = c.get("function") if isinstance(c, dict) else None
                        if isinstance(fn, dict):
                            for key in ("name", "arguments"):
                                if isinstance(fn.get(key), str):
                                    parts.append(fn[key])
    return "".join(parts)


def estimate_completion_tokens(chunks: list[dict[str, Any]]) -> int:
    """Heuristic: servers that stream token by token send about one content chunk per token."""
    text = streamed_text(chunks)
    content_chunks = 0
    for chunk in chunks:
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if (isinstance(delta, dict) and (delta.get("content") or delta.get("tool_calls")
                                             or delta.get("reasoning_content"))) or \
                    (isinstance(choice, dict) and choice.get("text")):
                content_chunks += 1
    return max(content_chunks, estimate_text_tokens(text)) if text else 0
