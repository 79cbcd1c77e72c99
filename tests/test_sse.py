"""The SSE codec (gateway/sse.py) and the stream tally on top of it (gateway/streaming.py)."""

from __future__ import annotations

import random

import orjson
import pytest

from gateway import sse
from gateway.sse import Decoder, Event, decode, encode, encode_json, parse_event, split_events
from gateway.streaming import StreamTally

ENDINGS = ("\n", "\r\n", "\r")


def sample(nl: str) -> tuple[bytes, list[Event]]:
    """A stream using line end `nl`, and the events a browser would dispatch from it."""
    content = {"choices": [{"index": 0, "delta": {"content": "say [DONE]\n\ndata: x"}}]}
    lines = [
        ": a comment, then a retry-only block (dispatches nothing)", "retry: 1500", "",
        "data: " + orjson.dumps(content).decode(), "",
        "event: note", "id: 7", "data: first line", "data:second line", "data:  two spaces", "",
        "data", "", "", "",  # a field without a colon: empty data; then empty lines that dispatch nothing
        "id: 8", ": only a comment and an id", "",
        "data: [DONE]", "", "",
    ]
    stream = nl.join(lines).encode()
    events = [
        Event(orjson.dumps(content)),
        Event(b"first line\nsecond line\n two spaces", "note", "7"),
        Event(b""),
        Event(b"[DONE]"),
    ]
    return stream, events


def feed_all(pieces: list[bytes]) -> list[bytes]:
    dec = Decoder()
    out = [dec.feed(p) for p in pieces]
    out.append(dec.flush())
    return [o for o in out if o]


def events_of(blocks: list[bytes]) -> list[Event]:
    out: list[Event] = []
    for block in blocks:
        for raw in split_events(block):
            ev = parse_event(raw)
            if ev is not None:
                out.append(ev)
    return out


@pytest.mark.parametrize("nl", ENDINGS, ids=("LF", "CRLF", "CR"))
def test_split_at_every_byte_offset(nl: str) -> None:
    stream, expected = sample(nl)
    assert decode(stream) == expected
    for i in range(len(stream) + 1):
        blocks = feed_all([stream[:i], stream[i:]])
        assert b"".join(blocks) == stream  # forwarded byte for byte
        assert events_of(blocks) == expected, i  # every block is whole events: none split, none lost


@pytest.mark.parametrize("nl", ENDINGS, ids=("LF", "CRLF", "CR"))
def test_split_at_every_pair_of_offsets(nl: str) -> None:
    stream, expected = sample(nl)
    for i in range(0, len(stream) + 1):
        for j in range(i, len(stream) + 1, 3):
            blocks = feed_all([stream[:i], stream[i:j], stream[j:]])
            assert b"".join(blocks) == stream
            assert events_of(blocks) == expected, (i, j)


def reference(stream: bytes) -> list[Event]:
    """The WHATWG algorithm, written out plainly: the events a browser has dispatched after `stream`."""
    events: list[Event] = []
    data: list[bytes] = []
    event, id_, retry = "", None, None
    line = b""
    skip_lf = False
    for byte in stream:
        if byte == 10 and skip_lf:
            skip_lf = False
            continue
        skip_lf = byte == 13
        if byte not in (10, 13):
            line += bytes([byte])
            continue
        if not line:  # an empty line: dispatch
            if data:
                events.append(Event(b"\n".join(data), event, id_, retry))
            data, event, id_, retry = [], "", None, None
        elif not line.startswith(b":"):
            name, _, value = line.partition(b":")
            value = value[1:] if value.startswith(b" ") else value
            if name == b"data":
                data.append(value)
            elif name == b"event":
                event = value.decode()
            elif name == b"id" and b"\0" not in value:
                id_ = value.decode()
            elif name == b"retry" and value.isdigit():
                retry = int(value)
        line = b""
    return events


@pytest.mark.parametrize("nl", ENDINGS, ids=("LF", "CRLF", "CR"))
def test_one_byte_at_a_time_hands_out_each_event_when_complete(nl: str) -> None:
    stream, expected = sample(nl)
    assert reference(stream) == expected
    dec = Decoder()
    got: list[Event] = []
    for i in range(len(stream)):
        got += events_of([dec.feed(stream[i:i + 1])])
        assert got == reference(stream[:i + 1]), i  # not later than a browser would dispatch it
    assert not dec.flush().strip()
    assert got == expected


def test_events_are_handed_out_as_soon_as_complete() -> None:
    dec = Decoder()
    assert dec.feed(b"data: a\n") == b""
    assert dec.feed(b"\n") == b"data: a\n\n"
    assert dec.feed(b"data: b\r\n") == b""
    assert dec.feed(b"\r\ndata: c") == b"data: b\r\n\r\n"
    assert dec.feed(b"\r") == b""
    assert dec.feed(b"\r") == b"data: c\r\r"  # CR CR: an empty line, whatever follows
    assert dec.feed(b"\ndata: d\n\n") == b"\ndata: d\n\n"  # that LF closed the CR's line end: harmless
    assert events_of([b"data: c\r\r", b"\ndata: d\n\n"]) == [Event(b"c"), Event(b"d")]


def test_mixed_line_ends_and_comments() -> None:
    stream = b": hi\r\ndata: a\r\n\ndata: b\n\r\ndata: c\r\r\n:\n\ndata: d\n\r"
    assert decode(stream) == [Event(b"a"), Event(b"b"), Event(b"c"), Event(b"d")]
    assert feed_all([stream]) == [stream]


def test_flush_completes_an_unterminated_last_event() -> None:
    for tail, end in ((b"data: [DONE]", b"\n\n"), (b"data: [DONE]\n", b"\n"), (b"data: [DONE]\r", b"\r"),
                      (b"data: [DONE]\r\n", b"\n")):
        dec = Decoder()
        assert dec.feed(b"data: a\n\n" + tail) == b"data: a\n\n"
        assert dec.flush() == tail + end
        assert decode(tail) == [Event(b"[DONE]")]
    dec = Decoder()
    dec.feed(b"data: a\n\n \n")
    assert dec.flush() == b" \n"  # nothing to complete: passed on as it is


def test_field_rules() -> None:
    assert parse_event(b"data:x") == Event(b"x")
    assert parse_event(b"data:  x") == Event(b" x")
    assert parse_event(b"data") == Event(b"")
    assert parse_event(b"event: e\nid: a\x00b\nretry: 12x\nfoo: bar\ndata: 1") == Event(b"1", "e")
    assert parse_event(b"id: 3\nretry: 250\ndata: 1\ndata: 2") == Event(b"1\n2", "", "3", 250)
    assert parse_event(b": comment\nevent: only") is None
    assert parse_event(b"\ndata: leading empty line") == Event(b"leading empty line")
    assert decode(b"\xef\xbb\xbfdata: bom\n\n") == [Event(b"bom")]


def test_encode_round_trips() -> None:
    for data in (b"", b"plain", b"two\nlines", b"lf\nend\n", b"[DONE]", b"\n\ndata: x"):
        assert decode(encode(data, event="e", id="1", retry=5)) == [Event(data, "e", "1", 5)]
        assert decode(encode(data)) == [Event(data)]
    assert decode(encode("cr\rcrlf\r\n")) == [Event(b"cr\ncrlf\n")]  # SSE data lines join with LF
    obj = {"content": "line\nbreak [DONE] \r data: y"}
    assert encode_json(obj).count(b"\n") == 2
    assert decode(encode_json(obj)) == [Event(orjson.dumps(obj))]
    with pytest.raises(ValueError):
        encode(b"x", event="two\nlines")
    with pytest.raises(ValueError):
        encode(b"x", id="a\rb")


# -- the tally ---------------------------------------------------------------------------------------

def chunk(content: str, **extra: object) -> dict[str, object]:
    return {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}], **extra}


USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
USAGE_ONLY = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [],
              "usage": USAGE}


def run_tally(pieces: list[bytes], strip_usage: bool = True) -> tuple[StreamTally, bytes]:
    tally = StreamTally(strip_usage=strip_usage)
    dec = Decoder()
    out = [tally.process(c) for c in (dec.feed(p) for p in pieces) if c]
    tail = dec.flush()
    if tail:
        out.append(tally.process(tail))
    return tally, b"".join(out)


def test_done_only_when_an_events_data_is_exactly_done() -> None:
    tricky = [chunk("[DONE]"), chunk("\n\ndata: [DONE]\n\n"), chunk("data: x"), chunk("\n\ndata: x")]
    body = b"".join(encode_json(c) for c in tricky)
    tally, out = run_tally([body])
    assert not tally.done and tally.events == 4 and out == body
    for closing in (b"data: [DONE]\n\n", b"data:[DONE]\n\n", b"data: [DONE]\r\n\r\n", b"id: 9\ndata: [DONE]\n\n"):
        tally, _ = run_tally([body, closing])
        assert tally.done and tally.events == 4
    for not_closing in (b"data: [DONE] \n\n", b"data: [DONE]\ndata: more\n\n", b": [DONE]\n\n",
                        b"event: [DONE]\n\n", b"data: [done]\n\n"):
        tally, _ = run_tally([body, not_closing])
        assert not tally.done


def test_usage_only_chunk_is_counted_and_stripped_unless_asked() -> None:
    events = [encode_json(chunk("a")), encode_json(chunk("b")), encode_json(USAGE_ONLY), sse.DONE]
    body = b"".join(events)
    for split in range(len(body) + 1):
        tally, out = run_tally([body[:split], body[split:]])
        assert tally.usage == USAGE and tally.done and tally.events == 3
        assert out == events[0] + events[1] + sse.DONE, split
    tally, out = run_tally([body], strip_usage=False)
    assert out == body and tally.usage == USAGE
    # usage on a chunk that also has choices is counted, and the chunk kept
    mixed = encode_json(chunk("c", usage=USAGE)) + sse.DONE
    tally, out = run_tally([mixed])
    assert out == mixed and tally.usage == USAGE
    # a word "usage" in generated text is just text
    text = encode_json(chunk('the "usage" field')) + sse.DONE
    tally, out = run_tally([text])
    assert out == text and tally.usage is None and tally.events == 1


def test_chunks_are_parsed_per_event() -> None:
    body = (encode_json(chunk("x\n\ndata: {\"y\": 1}")) + b": keepalive\n\n" + b"data: {\"a\":\ndata: 1}\n\n"
            + b"event: other\r\ndata: {\"b\": 2}\r\n\r\n" + sse.DONE)
    tally, _ = run_tally([body[:40], body[40:]])
    assert tally.chunks() == [chunk("x\n\ndata: {\"y\": 1}"), {"a": 1}, {"b": 2}]
    assert tally.events == 3 and tally.done


def random_stream(rng: random.Random) -> tuple[bytes, list[Event]]:
    """Events an upstream might send, in random line ends, and what they decode to."""
    parts: list[bytes] = []
    expected: list[Event] = []
    for _ in range(rng.randrange(1, 12)):
        nl = rng.choice(ENDINGS).encode()
        kind = rng.randrange(7)
        if kind <= 2:
            data = orjson.dumps(chunk(rng.choice(["hi", "[DONE]", "\n\ndata: x", "\r\n", "usage"])))
            parts.append(b"data: " + data + nl + nl)
            expected.append(Event(data))
        elif kind == 3:
            parts.append(b"data: " + orjson.dumps(USAGE_ONLY) + nl + nl)
            expected.append(Event(orjson.dumps(USAGE_ONLY)))
        elif kind == 4:
            parts.append(b": ping" + nl + nl)
        elif kind == 5:
            parts.append(b"event: x" + nl + b"data: {\"a\":" + nl + b"data: 1}" + nl + nl)
            expected.append(Event(b"{\"a\":\n1}", "x"))
        else:
            parts.append(nl)  # a stray empty line
    if rng.random() < 0.7:
        parts.append(b"data: [DONE]\n\n")
        expected.append(Event(b"[DONE]"))
    return b"".join(parts), expected


def test_tally_matches_a_plain_decode_on_random_streams() -> None:
    rng = random.Random(1234)
    for _ in range(3000):
        stream, expected = random_stream(rng)
        assert decode(stream) == expected == reference(stream)
        cuts = sorted(rng.sample(range(len(stream) + 1), k=min(len(stream), rng.randrange(0, 6))))
        pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        keep = rng.random() < 0.5
        tally, out = run_tally(pieces, strip_usage=not keep)
        assert tally.done == (Event(b"[DONE]") in expected)
        assert tally.events == sum(1 for e in expected if e.data != b"[DONE]")
        assert tally.usage == (USAGE if Event(orjson.dumps(USAGE_ONLY)) in expected else None)
        forwarded = [e for e in expected if keep or e.data != orjson.dumps(USAGE_ONLY)]
        assert decode(out) == forwarded
        if keep:
            assert out == stream  # forwarded byte for byte
