"""The tiny binary protocol between the workers and the replica's cache process (Unix socket).

A frame is a 13-byte header ``<IIBI``: length of what follows the header, request id, op, length of the
JSON part; then the JSON part (orjson: an object) and the binary part (bodies and float16 vectors,
concatenated; their lengths are the JSON list ``"_b"``).  A request with id 0 expects no reply
(``touch``, ``remove``).  A reply carries the request's id and ``OK`` or ``ERR`` (``{"e": message}``).
"""

from __future__ import annotations

import asyncio
import struct
from enum import IntEnum
from typing import Any

import orjson

HEADER = struct.Struct("<IIBI")
MAX_FRAME = 64 * 1024 * 1024  # a stored body larger than this is not cached through the process


class Op(IntEnum):
    OK = 0
    MATCH = 1      # {ns, p, t, k} [+ vector] -> {m: [[key, probability, cosine], ...]} + vector
    EMBED = 2      # {t} -> vector
    ADD = 3        # {ns, p, key, t, c, x} + vector
    REMOVE = 4     # {ns, p, key}
    TOUCH = 5      # {ns, p, key}
    DROP = 6       # {ns} (null: every namespace): forget index entries
    STATS = 7      # -> {entries, partitions, ready, max_entries, evicted}
    GET = 8        # in-process store (no Redis): {ns, key} -> {found, ...entry fields} + body [+ vector]
    PUT = 9        # {entry fields} + body [+ vector]
    CLEAR = 10     # {ns} -> {removed}
    ERR = 255


class ProtocolError(Exception):
    pass


def pack(rid: int, op: int, meta: dict[str, Any] | None = None, blobs: tuple[bytes, ...] | list[bytes] = ()) -> bytes:
    meta = dict(meta or {})
    if blobs:
        meta["_b"] = [len(b) for b in blobs]
    js = orjson.dumps(meta)
    size = 4 + len(js) + sum(len(b) for b in blobs)  # the JSON length field + JSON + blobs
    if size > MAX_FRAME:
        raise ProtocolError(f"frame of {size} bytes is over the {MAX_FRAME} byte limit")
    return b"".join((HEADER.pack(size, rid, op, len(js)), js, *blobs))


def unpack(js_len: int, rest: bytes) -> tuple[dict[str, Any], list[bytes]]:
    meta = orjson.loads(rest[:js_len]) if js_len else {}
    if not isinstance(meta, dict):
        raise ProtocolError("frame without a JSON object")
    blobs: list[bytes] = []
    pos = js_len
    for n in meta.pop("_b", ()):
        blobs.append(rest[pos:pos + n])
        pos += n
    return meta, blobs


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, int, dict[str, Any], list[bytes]]:
    """(request id, op, meta, blobs); raises asyncio.IncompleteReadError at EOF."""
    head = await reader.readexactly(HEADER.size)
    size, rid, op, js_len = HEADER.unpack(head)
    if size > MAX_FRAME or js_len > size - 4:
        raise ProtocolError(f"bad frame header (size {size}, json {js_len})")
    rest = await reader.readexactly(size - 4)
    meta, blobs = unpack(js_len, rest)
    return rid, op, meta, blobs


def read_frame_sync(sock: Any) -> tuple[int, int, dict[str, Any], list[bytes]]:
    """Blocking variant for a plain socket (the scrape-time gauge)."""
    def exactly(n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("cache process closed the connection")
            buf += chunk
        return bytes(buf)

    size, rid, op, js_len = HEADER.unpack(exactly(HEADER.size))
    if size > MAX_FRAME or js_len > size - 4:
        raise ProtocolError("bad frame header")
    meta, blobs = unpack(js_len, exactly(size - 4))
    return rid, op, meta, blobs
