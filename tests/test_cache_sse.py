"""sse_replay / assemble_stream round trips."""

from __future__ import annotations

import json

from gateway.cache import assemble_stream, sse_replay
from gateway.sse import Decoder, decode
from gateway.streaming import StreamTally


def _parse(events: list[bytes]) -> list[dict]:
    assert events[-1] == b"data: [DONE]\n\n"
    out = []
    for ev in events[:-1]:
        assert ev.startswith(b"data: ") and ev.endswith(b"\n\n")
        out.append(json.loads(ev[6:]))
    return out


def test_chat_roundtrip_with_tool_calls_and_usage() -> None:
    body = {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 7, "model": "gpt-oss-120b",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there",
                                             "tool_calls": [{"id": "c1", "type": "function",
                                                             "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
                     "logprobs": None, "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }
    events = sse_replay(json.dumps(body).encode(), include_usage=True)
    chunks = _parse(events)
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[-1]["usage"] == body["usage"] and chunks[-1]["choices"] == []
    back = json.loads(assemble_stream(chunks))
    assert back["object"] == "chat.completion"
    assert back["choices"][0]["message"]["content"] == "Hello there"
    assert back["choices"][0]["message"]["tool_calls"] == body["choices"][0]["message"]["tool_calls"]
    assert back["choices"][0]["finish_reason"] == "tool_calls"
    assert back["usage"] == body["usage"]


def test_no_usage_chunk_unless_asked() -> None:
    body = {"id": "x", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
    chunks = _parse(sse_replay(json.dumps(body).encode()))
    assert not any("usage" in c for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "hi"


def test_upstream_stream_assembled() -> None:
    chunks = [
        {"id": "a", "object": "chat.completion.chunk", "created": 3, "model": "m",
         "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
        {"id": "a", "object": "chat.completion.chunk", "created": 3, "model": "m",
         "choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}]},
        {"id": "a", "object": "chat.completion.chunk", "created": 3, "model": "m",
         "choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]},
        {"id": "a", "object": "chat.completion.chunk", "created": 3, "model": "m", "choices": [],
         "usage": {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}},
    ]
    body = json.loads(assemble_stream(chunks))
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hello"}
    assert body["usage"]["total_tokens"] == 4
    again = _parse(sse_replay(assemble_stream(chunks)))
    assert json.loads(assemble_stream(again))["choices"] == body["choices"]


def test_text_completion_roundtrip() -> None:
    body = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "text": "four", "logprobs": None, "finish_reason": "stop"}]}
    chunks = _parse(sse_replay(json.dumps(body).encode()))
    back = json.loads(assemble_stream(chunks))
    assert back["object"] == "text_completion" and back["choices"][0]["text"] == "four"


def test_replay_of_content_that_looks_like_sse() -> None:
    text = "a [DONE] b\n\ndata: [DONE]\n\n c\r\n\r\n"
    body = {"id": "x", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 5, "total_tokens": 6}}
    events = sse_replay(json.dumps(body).encode(), include_usage=True)
    stream = b"".join(events)
    decoded = decode(stream)
    assert [e.data for e in decoded].count(b"[DONE]") == 1 and decoded[-1].data == b"[DONE]"
    assert len(decoded) == len(events)  # one event per replayed chunk
    # what the gateway's tally makes of the replay is what was cached
    tally = StreamTally(strip_usage=False)
    dec = Decoder()
    for i in range(0, len(stream), 7):
        block = dec.feed(stream[i:i + 7])
        if block:
            tally.process(block)
    assert tally.done and tally.events == len(events) - 1 and tally.usage == body["usage"]
    back = json.loads(assemble_stream(tally.chunks()))
    assert back["choices"][0]["message"]["content"] == text and back["usage"] == body["usage"]
