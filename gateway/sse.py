"""Server-sent events: the one codec of the gateway (upstream streams, the cache's replay, the litellm
adapter and the simulator all use it).

The format is the WHATWG one (HTML, "Server-sent events", the event stream interpretation):
- lines end with CRLF, LF or CR; an empty line ends (dispatches) an event;
- a line starting with ``:`` is a comment; ``field: value`` sets a field (one space after the colon is
  dropped; a line without a colon is a field with an empty value);
- ``data`` lines append to the event's data (joined with LF); ``event``, ``id`` and ``retry`` set those;
  other fields are ignored; an event without any ``data`` line is not dispatched.

Two halves:
- `Decoder` frames a byte stream into complete events *without changing a byte*: `feed` takes pieces as
  they arrive (any split, even inside a CRLF) and returns the complete events among what it has seen, raw,
  so the gateway forwards them as they are and keeps only the unfinished event. It scans with C-level
  ``bytes.find`` and looks at each new byte once.
- `split_events` / `parse_event` read the fields of complete events; callers parse only the events that
  matter to them (see `gateway.streaming.StreamTally`).
`encode` / `encode_json` write events; `DONE` is OpenAI's closing event.

One leniency: a stream that ends inside an event (no final empty line) is dropped by a browser; `flush`
instead hands that last event back completed, because some upstreams omit the final empty line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

DONE_DATA = b"[DONE]"
DONE = b"data: [DONE]\n\n"
_LF = 10
_LINE_END = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class Event:
    """One dispatched event. `event` is "" for the default type ("message")."""

    data: bytes
    event: str = ""
    id: str | None = None
    retry: int | None = None


def last_boundary(buf: bytes) -> int:
    """The end of the last complete event in `buf` (0 when there is none).

    An event ends at an empty line, i.e. two line ends in a row: LF LF, LF CR, CR CR, with a CR that
    starts the second line end taking its LF along (CR LF is one line end, never two)."""
    at = buf.rfind(b"\n\n")
    end = at + 2 if at >= 0 else 0
    if b"\r" not in buf:
        return end
    for pattern in (b"\n\r", b"\r\r"):
        at = buf.rfind(pattern)
        if at >= 0:
            e = at + 2
            if e < len(buf) and buf[e] == _LF:
                e += 1
            if e > end:
                end = e
    return end


class Decoder:
    """Frames an SSE byte stream into complete events, byte for byte.

    ``feed(piece)`` returns the bytes of every event completed by `piece` (b"" while the current event is
    unfinished); the unfinished rest is kept. Joined, the outputs of `feed` and `flush` are the input
    (and the line ends `flush` adds to complete an unfinished last event).
    A trailing CR is a line end already; if the next piece starts with its LF, that LF travels with the
    next event, where it reads as an empty line before the first field (which dispatches nothing)."""

    __slots__ = ("_parts", "_last")

    def __init__(self) -> None:
        self._parts: list[bytes] = []  # the unfinished event, as it arrived
        self._last = b""  # its last byte: a line end may straddle two pieces

    def feed(self, piece: bytes) -> bytes:
        parts = self._parts
        if piece.endswith(b"\n\n"):  # the common case: whole events (LF LF is an empty line, whatever came before)
            if not parts:
                return piece
            self._parts = []
            self._last = b""
            return b"".join(parts) + piece
        last = self._last
        if b"\r" not in piece and last != b"\r":  # LF line ends: an empty line is LF LF
            at = piece.rfind(b"\n\n")
            if at >= 0:
                cut = at + 2
            elif last == b"\n" and piece[:1] == b"\n":
                cut = 1
            else:
                cut = 0
        else:  # only the new bytes, and the one before them, can complete the pending event
            cut = max(0, last_boundary(last + piece) - len(last))
        if not cut:
            if piece:
                parts.append(piece)
                self._last = piece[-1:]
            return b""
        if cut == len(piece):
            if not parts:
                return piece
            out = b"".join(parts) + piece
            self._parts = []
            self._last = b""
            return out
        rest = piece[cut:]
        out = b"".join(parts) + piece[:cut] if parts else piece[:cut]
        self._parts = [rest]
        self._last = rest[-1:]
        return out

    def flush(self) -> bytes:
        """At the end of the stream: the rest, an unfinished event completed with an empty line."""
        rest = b"".join(self._parts)
        self._parts = []
        self._last = b""
        if not rest.strip():
            return rest
        if rest.endswith(b"\n"):
            return rest + b"\n"
        if rest.endswith(b"\r"):
            return rest + b"\r"
        return rest + b"\n\n"


def split_events(block: bytes) -> list[bytes]:
    """The events of a block of complete events, line ends made LF, each without its closing empty line.
    An item may start with one LF (an empty line before its fields; it dispatches nothing)."""
    if b"\r" in block:
        block = block.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return [ev for ev in block.split(b"\n\n") if ev and ev != b"\n"]


def parse_event(raw: bytes) -> Event | None:
    """The fields of one event (as `split_events` gives it); None when it has no data (not dispatched)."""
    data: list[bytes] = []
    event = ""
    id_: str | None = None
    retry: int | None = None
    for line in raw.split(b"\n"):
        if not line or line[0] == 0x3A:  # empty, or a ":" comment
            continue
        name, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            data.append(value)
        elif name == b"event":
            event = value.decode("utf-8", "replace")
        elif name == b"id":
            if b"\0" not in value:
                id_ = value.decode("utf-8", "replace")
        elif name == b"retry":
            if value.isdigit():
                retry = int(value)
    if not data:
        return None
    return Event(b"\n".join(data), event, id_, retry)


def decode(stream: bytes) -> list[Event]:
    """Every event of a whole stream (a leading BOM dropped; an unfinished last event completed)."""
    if stream.startswith(b"\xef\xbb\xbf"):
        stream = stream[3:]
    dec = Decoder()
    out: list[Event] = []
    for block in (dec.feed(stream), dec.flush()):
        for raw in split_events(block):
            ev = parse_event(raw)
            if ev is not None:
                out.append(ev)
    return out


def encode(data: bytes | str, *, event: str | None = None, id: str | None = None,
           retry: int | None = None) -> bytes:
    """One event; data with line ends becomes several data lines (and reads back as it was)."""
    if isinstance(data, str):
        data = data.encode()
    head = b""
    for name, value in ((b"event", event), (b"id", id)):
        if value is not None:
            if _LINE_END.search(value.encode()) or (name == b"id" and "\0" in value):
                raise ValueError(f"SSE {name.decode()} must be one line")
            head += name + b": " + value.encode() + b"\n"
    if retry is not None:
        head += b"retry: " + str(int(retry)).encode() + b"\n"
    if b"\n" not in data and b"\r" not in data:
        return head + b"data: " + data + b"\n\n"
    return head + b"".join(b"data: " + line + b"\n" for line in _LINE_END.split(data)) + b"\n"


def encode_json(obj: Any) -> bytes:
    """A JSON data event (JSON text has no raw line ends, so one data line)."""
    return b"data: " + orjson.dumps(obj) + b"\n\n"
