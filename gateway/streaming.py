"""OpenAI streams between an upstream and the client, on top of the SSE codec (`gateway.sse`).

The gateway forwards whole events as soon as they are complete; it does not re-chunk or buffer beyond
the event in progress. It decides per event: an event whose data is exactly `[DONE]` ends the stream
(`[DONE]` inside generated text does not); an event's data is parsed only when it mentions `usage`,
to count tokens and to drop the usage-only chunk the client did not ask for. The raw events are kept
(by reference) so that token estimates and the cache can read them after the stream, off the hot path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from gateway import sse

DONE = sse.DONE
_JSON_EVENT = b"data: {"  # how nearly every event of an OpenAI stream starts


def error_event(message: str, type_: str, code: str | None = None) -> bytes:
    """The events that end a stream that failed after its first byte: the error, then `[DONE]`."""
    return sse.encode_json({"error": {"message": message, "type": type_, "param": None, "code": code}}) + DONE


class StreamTally:
    """What the gateway learned from a stream while forwarding it."""

    __slots__ = ("strip_usage", "usage", "blocks", "events", "done")

    def __init__(self, strip_usage: bool) -> None:
        self.strip_usage = strip_usage
        self.usage: dict[str, Any] | None = None
        self.blocks: list[bytes] = []  # the complete events as they came (before any usage was dropped)
        self.events = 0  # events with data, other than [DONE]
        self.done = False  # an event's data was exactly [DONE]

    def process(self, block: bytes) -> bytes:
        """Inspect a block of complete events (as `sse.Decoder` frames them); returns what to forward."""
        self.blocks.append(block)
        # the common case, with memchr-fast scans: one event, one `data: {…}` line, LF line ends
        if block.startswith(_JSON_EVENT) and block.find(b"\n") == len(block) - 2 and b"\r" not in block:
            self.events += 1
        else:
            self._count(block)
        if b'"usage"' not in block:
            return block
        kept: list[bytes] = []
        changed = False
        for raw in sse.split_events(block):
            if b'"usage"' in raw:
                ev = sse.parse_event(raw)
                if ev is not None and self._usage(ev.data):
                    changed = True  # the usage-only chunk the client did not ask for
                    continue
            kept.append(raw)
        if not changed:
            return block
        return b"".join(raw + b"\n\n" for raw in kept)

    def _count(self, block: bytes) -> None:
        for raw in sse.split_events(block):
            if raw.startswith(_JSON_EVENT):
                self.events += 1  # data that starts with "{" is never [DONE]
                continue
            ev = sse.parse_event(raw)
            if ev is None:
                continue
            if ev.data == sse.DONE_DATA:
                self.done = True
            else:
                self.events += 1

    def _usage(self, data: bytes) -> bool:
        """Note the usage of a chunk; True when the chunk is to be dropped."""
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return False
        usage = chunk.get("usage") if isinstance(chunk, dict) else None
        if not isinstance(usage, dict):
            return False
        self.usage = usage
        return self.strip_usage and not chunk.get("choices")

    def chunks(self) -> list[dict[str, Any]]:
        """The parsed JSON chunks of the stream (for estimates and the cache)."""
        out: list[dict[str, Any]] = []
        for block in self.blocks:
            for raw in sse.split_events(block):
                if raw.startswith(_JSON_EVENT) and b"\n" not in raw:
                    data = raw[6:]
                else:
                    ev = sse.parse_event(raw)
                    if ev is None or ev.data == sse.DONE_DATA:
                        continue
                    data = ev.data
                try:
                    chunk = orjson.loads(data)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(chunk, dict):
                    out.append(chunk)
        return out


class EventTally:
    """What the gateway learned from a stream of typed events (Anthropic Messages, OpenAI Responses) while
    forwarding it unchanged: the endpoint reads usage from the events that carry it and decides which event
    ends the stream (`message_stop`, `response.completed`, …)."""

    __slots__ = ("usage_of", "is_end", "usage", "blocks", "events", "done", "final")

    def __init__(self, usage_of: Callable[[dict[str, Any]], dict[str, Any] | None],
                 is_end: Callable[[str], bool]) -> None:
        self.usage_of = usage_of
        self.is_end = is_end
        self.usage: dict[str, Any] | None = None  # merged over the events (input and output come apart)
        self.blocks: list[bytes] = []
        self.events = 0
        self.done = False
        self.final: dict[str, Any] | None = None  # the event that ended the stream

    def process(self, block: bytes) -> bytes:
        self.blocks.append(block)
        for raw in sse.split_events(block):
            ev = sse.parse_event(raw)
            if ev is None or not ev.data or ev.data == sse.DONE_DATA:
                continue
            self.events += 1
            if b'"usage"' not in ev.data and not ev.event:
                continue
            try:
                data = orjson.loads(ev.data)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(data, dict):
                continue
            usage = self.usage_of(data)
            if usage:
                self.usage = {**(self.usage or {}), **{k: v for k, v in usage.items() if v is not None}}
            kind = data.get("type")
            if isinstance(kind, str) and self.is_end(kind):
                self.done = True
                self.final = data
        return block

    def chunks(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for block in self.blocks:
            for raw in sse.split_events(block):
                ev = sse.parse_event(raw)
                if ev is None or not ev.data or ev.data == sse.DONE_DATA:
                    continue
                try:
                    data = orjson.loads(ev.data)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(data, dict):
                    out.append(data)
        return out
