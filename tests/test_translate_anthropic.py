"""gateway.translate.anthropic: Messages <-> chat/completions, plain and streamed, checked with the anthropic SDK's types."""

from __future__ import annotations

from typing import Any

import anthropic.types as at
import orjson
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from pydantic import TypeAdapter

from gateway.translate import anthropic as ta
from gateway.translate.common import TranslationError

EVENT = TypeAdapter(at.RawMessageStreamEvent)
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def chat_response(message: dict[str, Any], finish: str = "stop", usage: dict[str, Any] | None = None,
                  **choice: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-abc",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "served-model",
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish, **choice}],
        "usage": usage or {"prompt_tokens": 20, "completion_tokens": 7, "total_tokens": 27},
    }


# ---- request ------------------------------------------------------------------------------------------
def test_request_fields_map_to_chat() -> None:
    body = {
        "model": "smart",
        "max_tokens": 256,
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=1; cch=abc"},
            {"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Answer in English."},
        ],
        "messages": [{"role": "user", "content": "Hello"}],
        "stop_sequences": ["END", "STOP"],
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 40,
        "metadata": {"user_id": "user-42"},
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "service_tier": "auto",
        "stream": True,
        "sim": {"ttft": 0.1},  # not an Anthropic field: passes through like any unknown field
    }
    chat = ta.messages_to_chat(body)
    assert chat == {
        "model": "smart",
        "messages": [
            {"role": "system", "content": "You are terse.\nAnswer in English."},
            {"role": "user", "content": "Hello"},
        ],
        "max_tokens": 256,
        "stop": ["END", "STOP"],
        "temperature": 0.2,
        "top_p": 0.9,
        "user": "user-42",
        "stream": True,
        "stream_options": {"include_usage": True},
        "sim": {"ttft": 0.1},
    }


def test_images_text_documents_and_tool_turns() -> None:
    body = {
        "model": "m",
        "max_tokens": 100,
        "system": "Be helpful.",
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in these pictures, and the weather in Paris?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
                    {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "notes"}},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "Need the weather.", "signature": "sig"},
                    {"type": "text", "text": "Let me check."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Lyon"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18 C, sunny"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_2",
                        "is_error": True,
                        "content": [
                            {"type": "text", "text": "station offline"},
                            {"type": "image", "source": {"type": "url", "url": "https://example.com/map.png"}},
                        ],
                    },
                    {"type": "text", "text": "Thanks!"},
                ],
            },
        ],
    }
    chat = ta.messages_to_chat(body)
    assert chat["messages"] == [
        {"role": "system", "content": "Be helpful."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in these pictures, and the weather in Paris?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                {"type": "text", "text": "notes"},
            ],
        },
        {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [
                {"id": "toolu_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
                {"id": "toolu_2", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city":"Lyon"}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18 C, sunny"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: station offline"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/map.png"}}]},
        {"role": "user", "content": "Thanks!"},
    ]
    assert chat["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": WEATHER_TOOL["input_schema"],
                "description": "Weather in a city",
            },
        }
    ]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert chat["parallel_tool_calls"] is False


@pytest.mark.parametrize(
    ("choice", "expected"),
    [({"type": "auto"}, "auto"), ({"type": "any"}, "required"), ({"type": "none"}, "none")],
)
def test_tool_choice(choice: dict[str, Any], expected: str) -> None:
    body = {"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER_TOOL],
            "tool_choice": choice}
    assert ta.messages_to_chat(body)["tool_choice"] == expected


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "max_tokens"),
        ({"max_tokens": 0, "messages": [{"role": "user", "content": "hi"}]}, "max_tokens"),
        ({"max_tokens": 5}, "messages"),
        ({"max_tokens": 5, "messages": []}, "messages"),
        ({"max_tokens": 5, "messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
        ({"max_tokens": 5, "messages": [{"role": "user", "content": 3}]}, "messages.0.content"),
        (
            {"max_tokens": 5, "messages": [{"role": "user", "content": [
                {"type": "image", "source": {"type": "file", "file_id": "f"}}]}]},
            "messages.0.content.0.source",
        ),
        (
            {"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "video"}]}]},
            "messages.0.content.0",
        ),
        (
            {"max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
             "tools": [{"type": "web_search_20250305", "name": "web_search"}]},
            "tools.0.type",
        ),
        (
            {"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "tool_choice": {"type": "tool"}},
            "tool_choice.name",
        ),
        ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "stop_sequences": "END"}, "stop_sequences"),
        ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "metadata": "u1"}, "metadata"),
        ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "temperature"),
        ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "stream"),
        ({"max_tokens": 5, "messages": [{"role": "assistant", "content": [
            {"type": "tool_use", "name": "f", "input": 5}]}]}, "messages.0.content.0.input"),
        ({"max_tokens": 5, "messages": [{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "a", "content": 5}]}]}, "messages.0.content.0.content"),
        ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "system": [{"type": "image"}]},
         "system.0.type"),
    ],
)
def test_bad_requests_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(TranslationError) as info:
        ta.messages_to_chat(body)
    assert info.value.param == param
    assert info.value.status == 400


def test_count_tokens_request_needs_no_max_tokens() -> None:
    body = {"model": "m", "system": "S", "messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER_TOOL]}
    chat = ta.count_tokens_to_chat(body)
    assert chat["messages"] == [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}]
    assert chat["tools"][0]["function"]["name"] == "get_weather"
    assert "max_tokens" not in chat


# ---- response -----------------------------------------------------------------------------------------
def test_text_answer_and_usage_with_cached_tokens() -> None:
    usage = {"prompt_tokens": 120, "completion_tokens": 9, "total_tokens": 129, "prompt_tokens_details": {"cached_tokens": 100}}
    message = ta.chat_to_message(chat_response({"content": "Hello there"}, usage=usage), model="smart")
    parsed = at.Message.model_validate(message)
    assert parsed.id == "msg_abc"
    assert parsed.model == "smart"
    assert [b.type for b in parsed.content] == ["text"]
    assert parsed.content[0].text == "Hello there"  # type: ignore[union-attr]
    assert parsed.stop_reason == "end_turn"
    assert parsed.usage.input_tokens == 20 and parsed.usage.cache_read_input_tokens == 100
    assert parsed.usage.output_tokens == 9


def test_tool_calls_become_tool_use_blocks_with_parsed_input() -> None:
    message = {
        "content": "Checking.",
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": ""}},
            {"id": "call_3", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Par'}},
        ],
    }
    out = at.Message.model_validate(ta.chat_to_message(chat_response(message, "tool_calls")))
    assert out.stop_reason == "tool_use"
    assert [b.type for b in out.content] == ["text", "tool_use", "tool_use", "tool_use"]
    uses = [b for b in out.content if isinstance(b, at.ToolUseBlock)]
    assert [(u.id, u.name, u.input) for u in uses] == [
        ("call_1", "get_weather", {"city": "Paris"}),
        ("call_2", "get_weather", {}),
        ("call_3", "get_weather", {"_raw_arguments": '{"city": "Par'}),
    ]


@pytest.mark.parametrize(
    ("finish", "extra", "reason", "sequence"),
    [
        ("stop", {}, "end_turn", None),
        ("length", {}, "max_tokens", None),
        ("tool_calls", {}, "tool_use", None),
        ("content_filter", {}, "refusal", None),
        ("stop", {"stop_reason": "END"}, "stop_sequence", "END"),  # vLLM reports the matched stop string
        ("stop", {"stop_reason": "OTHER"}, "end_turn", None),  # not one of the request's sequences
        ("stop", {"stop_reason": 128001}, "end_turn", None),  # a stop token id
        (None, {}, "end_turn", None),
    ],
)
def test_stop_reasons(finish: str | None, extra: dict[str, Any], reason: str, sequence: str | None) -> None:
    out = ta.chat_to_message(chat_response({"content": "x"}, finish, **extra), stop_sequences=["END"])
    assert (out["stop_reason"], out["stop_sequence"]) == (reason, sequence)
    at.Message.model_validate(out)


def test_reasoning_becomes_a_thinking_block_first() -> None:
    out = ta.chat_to_message(chat_response({"content": "42", "reasoning_content": "Think: 6*7"}))
    parsed = at.Message.model_validate(out)
    assert [b.type for b in parsed.content] == ["thinking", "text"]
    assert parsed.content[0].thinking == "Think: 6*7"  # type: ignore[union-attr]


def test_round_trip_tool_use_back_as_the_next_request() -> None:
    """A translated answer sent back by the client as its assistant turn becomes the original chat message."""
    original = {
        "content": "Let me look.",
        "tool_calls": [{"id": "call_9", "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}],
    }
    answer = ta.chat_to_message(chat_response(original, "tool_calls"))
    follow_up = {
        "max_tokens": 50,
        "messages": [
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": answer["content"]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_9", "content": "-3 C"}]},
        ],
    }
    chat = ta.messages_to_chat(follow_up)
    assert chat["messages"][1] == {"role": "assistant", **original}
    assert chat["messages"][2] == {"role": "tool", "tool_call_id": "call_9", "content": "-3 C"}


def test_error_shapes() -> None:
    assert ta.error_body(429, "slow down") == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "slow down"},
    }
    expected = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 413: "request_too_large", 500: "api_error", 502: "api_error",
                503: "overloaded_error", 504: "timeout_error", 418: "invalid_request_error", 599: "api_error"}
    assert {s: ta.error_type(s) for s in expected} == expected


# ---- streaming ----------------------------------------------------------------------------------------
def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, usage: dict[str, Any] | None = None,
          **choice: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"id": "chatcmpl-s1", "object": "chat.completion.chunk", "created": 1, "model": "served"}
    out["choices"] = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish, **choice}]
    if usage is not None:
        out["usage"] = usage
    return out


def run(stream: ta.MessagesStream, chunks: list[dict[str, Any]], **finish: Any) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for c in chunks:
        events += stream.feed(c)
    events += stream.finish(**finish)
    return events


def accumulate(events: list[dict[str, Any]]) -> at.Message:
    """The final Message as the anthropic SDK's stream helper builds it from these events."""
    snapshot = None
    bufs: dict[int, bytes] = {}
    for event in events:
        if event["type"] == "ping":  # not in RawMessageStreamEvent: the SDK's stream skips it
            continue
        parsed = EVENT.validate_python(event)
        snapshot = accumulate_event(event=parsed, current_snapshot=snapshot, json_bufs=bufs)
    assert snapshot is not None
    return snapshot


USAGE = {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}


def test_stream_text_event_by_event() -> None:
    stream = ta.MessagesStream(model="smart")
    events = run(stream, [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hel"}),
        chunk({"content": "lo"}),
        chunk({"content": "!"}, "stop"),
        chunk(usage=USAGE),
    ])
    start = events[0]["message"]
    assert start["id"] == "msg_s1" and start["model"] == "smart" and start["content"] == []
    assert events[1:] == [
        {"type": "ping"},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "!"}},
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"input_tokens": 11, "output_tokens": 3, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0},
        },
        {"type": "message_stop"},
    ]
    final = accumulate(events)
    assert final.content[0].text == "Hello!"  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 3 and final.usage.input_tokens == 11


def test_stream_text_then_two_tool_calls() -> None:
    chunks = [
        chunk({"role": "assistant", "content": ""}, usage={"prompt_tokens": 30, "completion_tokens": 0}),
        chunk({"content": "Checking."}),
        chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                               "function": {"name": "get_weather", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                               "function": {"name": "get_time", "arguments": '{"tz": "CET"}'}}]}),
        chunk({}, "tool_calls"),
        chunk(usage={"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42}),
    ]
    events = run(ta.MessagesStream(), chunks)
    assert events[0]["message"]["usage"]["input_tokens"] == 30  # continuous usage on the first chunk
    kinds = [(e["type"], e.get("index"), (e.get("delta") or e.get("content_block") or {}).get("type")) for e in events]
    assert kinds == [
        ("message_start", None, None),
        ("ping", None, None),
        ("content_block_start", 0, "text"),
        ("content_block_delta", 0, "text_delta"),
        ("content_block_stop", 0, None),
        ("content_block_start", 1, "tool_use"),
        ("content_block_delta", 1, "input_json_delta"),
        ("content_block_delta", 1, "input_json_delta"),
        ("content_block_stop", 1, None),
        ("content_block_start", 2, "tool_use"),
        ("content_block_delta", 2, "input_json_delta"),
        ("content_block_stop", 2, None),
        ("message_delta", None, None),
        ("message_stop", None, None),
    ]
    assert events[5]["content_block"] == {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {}}
    final = accumulate(events)
    assert final.stop_reason == "tool_use"
    uses = [b for b in final.content if isinstance(b, at.ToolUseBlock)]
    assert [(u.id, u.name, u.input) for u in uses] == [
        ("call_a", "get_weather", {"city": "Paris"}),
        ("call_b", "get_time", {"tz": "CET"}),
    ]
    assert final.usage.output_tokens == 12


def test_stream_matches_the_plain_translation() -> None:
    """Streamed and plain translations of the same answer give the same Message (content, stop, usage)."""
    plain = at.Message.model_validate(
        ta.chat_to_message(
            chat_response({"content": "Hi END"}, "stop", usage=USAGE, stop_reason="END"), stop_sequences=["END"]
        )
    )
    streamed = accumulate(run(ta.MessagesStream(stop_sequences=["END"]), [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hi "}),
        chunk({"content": "END"}, "stop", stop_reason="END"),
        chunk(usage=USAGE),
    ]))
    assert [b.to_dict() for b in streamed.content] == [
        {k: v for k, v in b.to_dict().items() if k != "parsed_output"} for b in plain.content
    ] == [{"type": "text", "text": "Hi END"}]
    assert (streamed.stop_reason, streamed.stop_sequence) == (plain.stop_reason, plain.stop_sequence) == (
        "stop_sequence", "END")
    assert streamed.usage.output_tokens == plain.usage.output_tokens == 3


def test_stream_without_upstream_usage_takes_the_callers_count() -> None:
    stream = ta.MessagesStream(input_tokens=8)
    events = run(stream, [chunk({"content": "a b"}, "length")], usage={"prompt_tokens": 8, "completion_tokens": 2})
    assert events[0]["message"]["usage"]["input_tokens"] == 8
    delta = events[-2]
    assert delta["delta"]["stop_reason"] == "max_tokens"
    assert delta["usage"]["output_tokens"] == 2 and delta["usage"]["input_tokens"] == 8


def test_stream_reasoning_then_text() -> None:
    events = run(ta.MessagesStream(), [
        chunk({"reasoning_content": "Let me"}),
        chunk({"reasoning_content": " think"}),
        chunk({"content": "42"}, "stop"),
        chunk(usage=USAGE),
    ])
    final = accumulate(events)
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == "Let me think"  # type: ignore[union-attr]


def test_stream_error_mid_way() -> None:
    stream = ta.MessagesStream()
    events = stream.feed(chunk({"content": "partial"}))
    events += stream.error(503, "engine overloaded")
    assert events[-1] == {"type": "error", "error": {"type": "overloaded_error", "message": "engine overloaded"}}
    assert stream.finish() == [] and stream.feed(chunk({"content": "more"})) == []
    # vLLM's own mid-stream error chunk is turned into the same event
    stream = ta.MessagesStream()
    events = stream.feed(chunk({"content": "x"})) + stream.feed({"error": {"message": "boom", "code": 500}})
    assert events[-1] == {"type": "error", "error": {"type": "api_error", "message": "boom"}}
    assert EVENT.validate_python({"type": "message_stop"}).type == "message_stop"


def test_sse_framing() -> None:
    raw = ta.MessagesStream.encode({"type": "message_stop"})
    assert raw == b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    assert orjson.loads(raw.split(b"data: ")[1]) == {"type": "message_stop"}


def test_text_blocks_join_into_one_string() -> None:
    body = {"max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "<system-reminder>be careful</system-reminder>"}, {"type": "text", "text": "Fix it"}]}]}
    assert ta.messages_to_chat(body)["messages"] == [
        {"role": "user", "content": "<system-reminder>be careful</system-reminder>\nFix it"}]
