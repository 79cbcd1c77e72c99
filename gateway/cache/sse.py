"""Streaming <-> non-streaming conversions for cached answers (SSE written with `gateway.sse`)."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.sse import DONE
from gateway.sse import encode_json as _event


def sse_replay(body: bytes, include_usage: bool = False) -> list[bytes]:
    """A cached ``chat.completion`` / ``text_completion`` JSON as SSE events, ending with ``[DONE]``.

    Chat: a role chunk, one content chunk (plus tool calls / reasoning), a finish chunk per choice, then a
    usage chunk when ``include_usage`` (the client's ``stream_options.include_usage``).
    """
    resp = orjson.loads(body)
    base = {"id": resp.get("id", "cache"), "created": resp.get("created", 0), "model": resp.get("model", "")}
    if resp.get("system_fingerprint") is not None:
        base["system_fingerprint"] = resp["system_fingerprint"]
    events: list[bytes] = []
    choices = resp.get("choices") or []
    if resp.get("object") == "text_completion":
        kind = {**base, "object": "text_completion"}
        for ch in choices:
            idx = ch.get("index", 0)
            if ch.get("text"):
                events.append(_event({**kind, "choices": [{"index": idx, "text": ch["text"], "logprobs": None,
                                                           "finish_reason": None}]}))
            events.append(_event({**kind, "choices": [{"index": idx, "text": "", "logprobs": None,
                                                       "finish_reason": ch.get("finish_reason")}]}))
    else:
        kind = {**base, "object": "chat.completion.chunk"}
        for ch in choices:
            idx = ch.get("index", 0)
            msg = ch.get("message") or {}
            events.append(_event({**kind, "choices": [{"index": idx, "delta": {"role": msg.get("role", "assistant"),
                                                                               "content": ""},
                                                       "logprobs": None, "finish_reason": None}]}))
            delta: dict[str, Any] = {}
            for field in ("reasoning_content", "reasoning", "refusal"):
                if msg.get(field):
                    delta[field] = msg[field]
            if msg.get("content"):
                delta["content"] = msg["content"]
            if msg.get("tool_calls"):
                delta["tool_calls"] = [{"index": i, **tc} for i, tc in enumerate(msg["tool_calls"])]
            if delta:
                events.append(_event({**kind, "choices": [{"index": idx, "delta": delta, "logprobs": None,
                                                           "finish_reason": None}]}))
            events.append(_event({**kind, "choices": [{"index": idx, "delta": {}, "logprobs": None,
                                                       "finish_reason": ch.get("finish_reason", "stop")}]}))
    if include_usage and resp.get("usage") is not None:
        obj = "text_completion" if resp.get("object") == "text_completion" else "chat.completion.chunk"
        events.append(_event({**base, "object": obj, "choices": [], "usage": resp["usage"]}))
    events.append(DONE)
    return events


def _merge_tool_calls(acc: list[dict[str, Any]], deltas: list[dict[str, Any]]) -> None:
    for d in deltas:
        i = d.get("index", len(acc))
        while len(acc) <= i:
            acc.append({"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
        tc = acc[i]
        if d.get("id"):
            tc["id"] = d["id"]
        if d.get("type"):
            tc["type"] = d["type"]
        fn = d.get("function") or {}
        if fn.get("name"):
            tc["function"]["name"] += fn["name"]
        if fn.get("arguments"):
            tc["function"]["arguments"] += fn["arguments"]


def assemble_stream(chunks: list[dict[str, Any]]) -> bytes:
    """The parsed chunks of a complete upstream stream (`StreamTally.chunks()`, decoded with
    `gateway.sse`) as one non-stream response JSON."""
    if not chunks:
        raise ValueError("no chunks")
    first = chunks[0]
    is_text = first.get("object") == "text_completion"
    usage: Any = None
    state: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        if chunk.get("usage"):
            usage = chunk["usage"]
        for ch in chunk.get("choices") or []:
            idx = ch.get("index", 0)
            st = state.setdefault(idx, {"role": "assistant", "content": [], "tool_calls": [], "extra": {},
                                        "finish_reason": None, "text": []})
            if ch.get("finish_reason"):
                st["finish_reason"] = ch["finish_reason"]
            if is_text:
                st["text"].append(ch.get("text") or "")
                continue
            delta = ch.get("delta") or {}
            if delta.get("role"):
                st["role"] = delta["role"]
            if delta.get("content"):
                st["content"].append(delta["content"])
            if delta.get("tool_calls"):
                _merge_tool_calls(st["tool_calls"], delta["tool_calls"])
            for field in ("reasoning_content", "reasoning", "refusal"):
                if delta.get(field):
                    st["extra"][field] = st["extra"].get(field, "") + delta[field]
    choices: list[dict[str, Any]] = []
    for idx in sorted(state):
        st = state[idx]
        if is_text:
            choices.append({"index": idx, "text": "".join(st["text"]), "logprobs": None,
                            "finish_reason": st["finish_reason"]})
            continue
        msg: dict[str, Any] = {"role": st["role"], "content": "".join(st["content"]) if st["content"] else None}
        msg.update(st["extra"])
        if st["tool_calls"]:
            msg["tool_calls"] = st["tool_calls"]
        choices.append({"index": idx, "message": msg, "logprobs": None, "finish_reason": st["finish_reason"]})
    out: dict[str, Any] = {"id": first.get("id"), "object": "text_completion" if is_text else "chat.completion",
                           "created": first.get("created"), "model": first.get("model"), "choices": choices}
    if first.get("system_fingerprint") is not None:
        out["system_fingerprint"] = first["system_fingerprint"]
    if usage is not None:
        out["usage"] = usage
    return orjson.dumps(out)
