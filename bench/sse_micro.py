"""Micro-benchmark: the gateway's per-stream SSE work (event framing + tally) for a typical 200-event stream.

Runs against whatever `gateway` is importable (the old `split_complete` framing or the new `gateway.sse.Decoder`),
so before/after is `PYTHONPATH=<old checkout> python bench/sse_micro.py` vs `PYTHONPATH=. python bench/sse_micro.py`.
"""
from __future__ import annotations

import sys
import time
import timeit

import orjson

from gateway.streaming import StreamTally

try:
    from gateway.sse import Decoder
except ImportError:
    Decoder = None  # type: ignore[assignment,misc]
    from gateway.streaming import split_complete


def events(n: int = 200) -> list[bytes]:
    base = {"id": "chatcmpl-0123456789abcdef0123456789abcdef", "object": "chat.completion.chunk",
            "created": 1700000000, "model": "gpt-oss-120b"}
    out = [b"data: " + orjson.dumps({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                          "logprobs": None, "finish_reason": None}]}) + b"\n\n"]
    for i in range(n - 4):
        out.append(b"data: " + orjson.dumps({**base, "choices": [{"index": 0, "delta": {"content": f" word{i}"},
                                                                  "logprobs": None, "finish_reason": None}]}) + b"\n\n")
    out.append(b"data: " + orjson.dumps({**base, "choices": [{"index": 0, "delta": {}, "logprobs": None,
                                                              "finish_reason": "stop"}]}) + b"\n\n")
    out.append(b"data: " + orjson.dumps({**base, "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 197,
                                                                          "total_tokens": 209}}) + b"\n\n")
    out.append(b"data: [DONE]\n\n")
    return out


def pieces_one_per_event() -> list[bytes]:
    return events()


def pieces_coalesced_and_split() -> list[bytes]:
    """Network-ish: every third piece holds two events, every fifth event is split in two."""
    evs = events()
    out: list[bytes] = []
    i = 0
    while i < len(evs):
        if i % 5 == 4:
            ev = evs[i]
            out += [ev[: len(ev) // 2], ev[len(ev) // 2:]]
            i += 1
        elif i % 3 == 0 and i + 1 < len(evs):
            out.append(evs[i] + evs[i + 1])
            i += 2
        else:
            out.append(evs[i])
            i += 1
    return out


def run(pieces: list[bytes]) -> StreamTally:
    tally = StreamTally(strip_usage=True)
    if Decoder is not None:
        dec = Decoder()
        for p in pieces:
            complete = dec.feed(p)
            if complete:
                tally.process(complete)
        tail = dec.flush()
        if tail:
            tally.process(tail)
    else:
        buf = b""
        for p in pieces:
            buf += p
            complete, buf = split_complete(buf)
            if complete:
                tally.process(complete)
        if buf.strip():
            tally.process(buf)
    _ = tally.done, tally.events  # read by the pump and by the accounting after the stream
    return tally


def main() -> None:
    for name, pieces in (("one event per piece", pieces_one_per_event()),
                         ("coalesced + split", pieces_coalesced_and_split())):
        t = run(pieces)
        assert t.done and t.usage is not None, (t.done, t.usage)
        number = 2000
        # CPU time of this process (a shared machine's load shows less than in wall time); best of 9
        best = min(timeit.repeat(lambda p=pieces: run(p), number=number, repeat=9, timer=time.process_time)) / number
        print(f"{name:22s} {len(pieces):4d} pieces  {best * 1e6:7.1f} us/stream  {best * 1e9 / 200:6.0f} ns/event"
              f"  (events={t.events})")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
