"""Bounded JSON parsing for bytes that come from clients: a nesting limit checked before any deep parse.

orjson recurses as it parses, and before 3.9 it has no depth limit for objects: a body nested about
100,000 levels deep (600 KB) overflows the C stack and kills the process with SIGSEGV. Bodies nested more
than 255 levels do parse, but `orjson.dumps` refuses them again ("Recursion limit reached"), and Python's
`json` raises RecursionError at about 1,000. So every untrusted body is checked here first:

1. `{` + `[` counted over the raw bytes (two C-level scans): fewer than the limit means the body cannot
   be nested deeper, whatever the brackets are. Almost every request stops here (the hot path).
2. Otherwise the brackets outside strings are found (escaped backslashes and quotes dropped, then a split
   on `"`: even pieces are outside strings, in any valid JSON prefix) and counted again.
3. Only if that count is still over the limit is the depth computed: a running sum over the brackets
   (`itertools.accumulate`, C-level), a block at a time, stopping at the first block that goes too deep.

The check is exact for every valid JSON prefix, so a body that orjson would recurse into deeply is refused
even when its end is malformed. Its cost is at most about that of parsing the same body (measured in
docs/security.md), and nothing is allocated per bracket on the way.
"""

from __future__ import annotations

from itertools import accumulate
from typing import Any

import orjson

DEFAULT_MAX_DEPTH = 64  # why 64: docs/security.md
MAX_DEPTH_CEILING = 200  # any setting stays below orjson.dumps's 255 levels, with room for the wrappers

_BRACKETS = b"[]{}"
_NOT_BRACKETS = bytes(b for b in range(256) if b not in _BRACKETS)
_STEP = [0] * 256  # +1 for an opening bracket, -1 for a closing one
for _c in b"[{":
    _STEP[_c] = 1
for _c in b"]}":
    _STEP[_c] = -1
_BLOCK = 16384  # brackets summed at a time: a too-deep body is refused after its first block that is


class TooDeep(ValueError):
    """The JSON text nests deeper than `limit` levels (raised before it is parsed)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"JSON nested deeper than {limit} levels")
        self.limit = limit


def _outside_strings(raw: bytes) -> bytes:
    """The text outside strings. Without a quote after a backslash every quote ends or starts a string;
    else escapes go first: `\\\\` (left to right, as a parser reads them), then `\\"`."""
    if b'\\"' in raw:
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    return b"".join(raw.split(b'"')[::2])


def exceeds_depth(raw: bytes, limit: int) -> bool:
    """True when the JSON text `raw` nests containers deeper than `limit` levels."""
    if raw.count(b"{") + raw.count(b"[") <= limit:
        return False
    outside = _outside_strings(raw)
    if outside.count(b"{") + outside.count(b"[") <= limit:
        return False
    brackets = outside.translate(None, _NOT_BRACKETS)
    depth = 0
    step = _STEP.__getitem__
    for start in range(0, len(brackets), _BLOCK):
        block = brackets[start:start + _BLOCK]
        if max(accumulate(map(step, block), initial=depth)) > limit:
            return True
        depth += 2 * (block.count(b"{") + block.count(b"[")) - len(block)
    return False


def check_depth(raw: bytes, limit: int = DEFAULT_MAX_DEPTH) -> None:
    """Raise TooDeep when `raw` nests deeper than `limit` levels."""
    if exceeds_depth(raw, limit):
        raise TooDeep(limit)


def loads(raw: bytes | bytearray | memoryview | str, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """orjson.loads, after the nesting check. Raises TooDeep or orjson.JSONDecodeError (both ValueError);
    neither message contains the body."""
    data = raw if type(raw) is bytes else raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) \
        else bytes(raw)
    if data.count(b"{") + data.count(b"[") > max_depth and exceeds_depth(data, max_depth):  # cheap test inline
        raise TooDeep(max_depth)
    return orjson.loads(data)
