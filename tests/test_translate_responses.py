"""gateway.translate.responses: Responses <-> chat/completions, plain and streamed, checked with the openai SDK's types."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from gateway.translate import responses as tr
from gateway.translate.common import TranslationError

EVENT = TypeAdapter(ResponseStreamEvent)
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": True,
}


def chat_response(message: dict[str, Any], finish: str = "stop", usage: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-abc",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "served-model",
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}],
        "usage": usage or {"prompt_tokens": 20, "completion_tokens": 7, "total_tokens": 27},
    }


# ---- request ------------------------------------------------------------------------------------------
def test_string_input_and_request_fields() -> None:
    body = {
        "model": "smart",
        "instructions": "You are terse.",
        "input": "Hello",
        "max_output_tokens": 64,
        "temperature": 0.3,
        "top_p": 0.8,
        "user": "u1",
        "reasoning": {"effort": "low"},
        "store": True,
        "metadata": {"k": "v"},
        "truncation": "disabled",
        "stream": True,
        "text": {"format": {"type": "json_schema", "name": "answer", "strict": True,
                            "schema": {"type": "object", "properties": {"a": {"type": "string"}}}}},
        "sim": {"ttft": 0.1},
    }
    assert tr.responses_to_chat(body) == {
        "model": "smart",
        "messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello"}],
        "max_tokens": 64,
        "temperature": 0.3,
        "top_p": 0.8,
        "user": "u1",
        "reasoning_effort": "low",
        "response_format": {"type": "json_schema", "json_schema": {
            "name": "answer", "schema": {"type": "object", "properties": {"a": {"type": "string"}}}, "strict": True}},
        "stream": True,
        "stream_options": {"include_usage": True},
        "sim": {"ttft": 0.1},
    }


def test_items_images_function_calls_and_outputs() -> None:
    body = {
        "model": "m",
        "tools": [WEATHER],
        "tool_choice": {"type": "function", "name": "get_weather"},
        "parallel_tool_calls": False,
        "input": [
            {"role": "developer", "content": "Use tools."},
            {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is this, and the weather in Paris and Lyon?"},
                    {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"},
                ],
            },
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
            {"type": "function_call", "call_id": "call_2", "name": "get_weather", "arguments": '{"city":"Lyon"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": "18 C"},
            {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "12 C"}]},
        ],
    }
    chat = tr.responses_to_chat(body)
    assert chat["messages"] == [
        {"role": "system", "content": "Use tools."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this, and the weather in Paris and Lyon?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
            ],
        },
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
                {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Lyon"}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
        {"role": "tool", "tool_call_id": "call_2", "content": "12 C"},
    ]
    assert chat["tools"] == [
        {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                          "parameters": WEATHER["parameters"], "strict": True}}
    ]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert chat["parallel_tool_calls"] is False


def test_previous_items_come_after_instructions_and_before_input() -> None:
    previous = [
        {"type": "message", "role": "user", "content": "My name is Ada."},
        {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
         "content": [{"type": "output_text", "text": "Hello Ada.", "annotations": []}]},
    ]
    chat = tr.responses_to_chat({"instructions": "Be kind.", "input": "What is my name?"}, previous=previous)
    assert chat["messages"] == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hello Ada."},
        {"role": "user", "content": "What is my name?"},
    ]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "input"),
        ({"input": 3}, "input"),
        ({"input": [3]}, "input.0"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input.0.role"),
        ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "input.0.content.0.type"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
         "input.0.content.0.image_url"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input.0"),
        ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input.0.call_id"),
        ({"input": "x", "tools": [{"type": "web_search"}]}, "tools.0.type"),
        ({"input": "x", "tool_choice": {"type": "file_search"}}, "tool_choice"),
        ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "x", "text": {"format": {"type": "json_schema", "name": "a"}}}, "text.format.schema"),
        ({"input": "x", "metadata": 5}, "metadata"),  # echoed in the Response: must have the right type
        ({"input": "x", "metadata": {"k": 1}}, "metadata"),
        ({"input": "x", "store": "no"}, "store"),
        ({"input": "x", "max_tool_calls": True}, "max_tool_calls"),
        ({"input": "x", "truncation": "middle"}, "truncation"),
    ],
)
def test_bad_requests_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(TranslationError) as info:
        tr.responses_to_chat(body)
    assert info.value.param == param


# ---- response -----------------------------------------------------------------------------------------
def test_text_answer() -> None:
    usage = {"prompt_tokens": 50, "completion_tokens": 5, "total_tokens": 55,
             "prompt_tokens_details": {"cached_tokens": 32}, "completion_tokens_details": {"reasoning_tokens": 2}}
    request = {"model": "smart", "input": "Hi", "instructions": "Be brief", "metadata": {"a": "b"}}
    out = tr.chat_to_response(chat_response({"content": "Hello!"}, usage=usage), request=request, response_id="resp_1")
    parsed = Response.model_validate(out)
    assert parsed.id == "resp_1" and parsed.status == "completed" and parsed.incomplete_details is None
    assert parsed.model == "smart" and parsed.instructions == "Be brief" and parsed.metadata == {"a": "b"}
    assert parsed.output_text == "Hello!"
    assert parsed.output[0].type == "message"
    assert parsed.usage is not None
    assert (parsed.usage.input_tokens, parsed.usage.output_tokens, parsed.usage.total_tokens) == (50, 5, 55)
    assert parsed.usage.input_tokens_details.cached_tokens == 32
    assert parsed.usage.output_tokens_details.reasoning_tokens == 2


def test_tool_calls_become_function_call_items() -> None:
    message = {
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}},
        ],
    }
    out = tr.chat_to_response(chat_response(message, "tool_calls"), request={"model": "m", "input": "x", "tools": [WEATHER]})
    parsed = Response.model_validate(out)
    assert parsed.status == "completed"
    calls = [(o.type, o.call_id, o.name, o.arguments) for o in parsed.output]  # type: ignore[union-attr]
    assert calls == [
        ("function_call", "call_1", "get_weather", '{"city":"Paris"}'),
        ("function_call", "call_2", "get_weather", '{"city":"Rome"}'),
    ]
    assert all(o.id.startswith("fc_") for o in parsed.output)  # type: ignore[union-attr]
    assert parsed.tools[0].name == "get_weather"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("finish", "status", "reason"),
    [("stop", "completed", None), ("length", "incomplete", "max_output_tokens"),
     ("content_filter", "incomplete", "content_filter"), ("tool_calls", "completed", None)],
)
def test_status(finish: str, status: str, reason: str | None) -> None:
    out = Response.model_validate(tr.chat_to_response(chat_response({"content": "x"}, finish), request={"input": "x"}))
    assert out.status == status
    assert (out.incomplete_details.reason if out.incomplete_details else None) == reason


def test_reasoning_becomes_a_reasoning_item() -> None:
    out = tr.chat_to_response(chat_response({"content": "42", "reasoning": "6*7"}), request={"input": "x"})
    parsed = Response.model_validate(out)
    assert [o.type for o in parsed.output] == ["reasoning", "message"]
    assert parsed.output[0].content[0].text == "6*7"  # type: ignore[union-attr]


def test_round_trip_function_calls_through_stored_items() -> None:
    """Output items stored for previous_response_id come back as the original chat assistant message."""
    original = {"content": "Looking.", "tool_calls": [
        {"id": "call_7", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]}
    request = {"input": "Weather in Oslo?", "tools": [WEATHER]}
    response = tr.chat_to_response(chat_response(original, "tool_calls"), request=request)
    items = tr.conversation_items(request, response)
    follow = {"input": [{"type": "function_call_output", "call_id": "call_7", "output": "-3 C"}], "tools": [WEATHER]}
    chat = tr.responses_to_chat(follow, previous=items)
    assert chat["messages"] == [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", **original},
        {"role": "tool", "tool_call_id": "call_7", "content": "-3 C"},
    ]
    # and the next turn again builds on everything so far
    second = tr.chat_to_response(chat_response({"content": "It is cold."}), request=follow)
    items2 = tr.conversation_items(follow, second, items)
    assert [i.get("type") for i in items2] == ["message", "message", "function_call", "function_call_output", "message"]


# ---- streaming ----------------------------------------------------------------------------------------
def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, usage: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"id": "chatcmpl-s1", "object": "chat.completion.chunk", "created": 1, "model": "served"}
    out["choices"] = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    if usage is not None:
        out["usage"] = usage
    return out


USAGE = {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}


def run(stream: tr.ResponsesStream, chunks: list[dict[str, Any]], **finish: Any) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for c in chunks:
        events += stream.feed(c)
    return events + stream.finish(**finish)


def sdk_final(events: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> Response:
    """Validate every event with the SDK's union and accumulate them as `client.responses.stream()` does."""
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=tools or [], text_format=openai.omit)  # type: ignore[arg-type]
    final: Response | None = None
    snapshots: dict[int, str] = {}  # what the SDK accumulated from the deltas, per output index
    for event in events:
        parsed = EVENT.validate_python(event)
        for high in state.handle_event(parsed):
            if high.type in ("response.output_text.delta", "response.function_call_arguments.delta"):
                snapshots[high.output_index] = high.snapshot
        if parsed.type == "response.completed":
            final = parsed.response
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert final is not None
    for i, item in enumerate(final.output):
        if item.type == "message":
            assert snapshots.get(i) == item.content[0].text  # type: ignore[union-attr]
        elif item.type == "function_call":
            assert snapshots.get(i, "") == item.arguments
    return final


def test_stream_text_event_by_event() -> None:
    request = {"model": "smart", "input": "hi"}
    stream = tr.ResponsesStream(request, response_id="resp_s", created_at=5)
    events = run(stream, [chunk({"role": "assistant", "content": ""}), chunk({"content": "Hel"}),
                          chunk({"content": "lo"}, "stop"), chunk(usage=USAGE)])
    types = [e["type"] for e in events]
    assert types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []
    item_id = events[2]["item"]["id"]
    assert events[2]["item"] == {"id": item_id, "type": "message", "role": "assistant", "status": "in_progress", "content": []}
    assert [e["delta"] for e in events[4:6]] == ["Hel", "lo"]
    assert all(e["item_id"] == item_id for e in events[3:8])
    assert events[6]["text"] == "Hello"
    final = sdk_final(events)
    assert final.id == "resp_s" and final.status == "completed" and final.output_text == "Hello"
    assert final.usage is not None and (final.usage.input_tokens, final.usage.output_tokens) == (11, 3)
    assert stream.response["status"] == "completed"


def test_stream_begin_sends_created_once() -> None:
    stream = tr.ResponsesStream({"input": "x"})
    first = stream.begin()
    assert [e["type"] for e in first] == ["response.created", "response.in_progress"]
    assert stream.begin() == []
    rest = run(stream, [chunk({"content": "a"}, "stop"), chunk(usage=USAGE)])
    assert rest[0]["type"] == "response.output_item.added" and rest[0]["sequence_number"] == 2
    sdk_final(first + rest)


def test_stream_incomplete_and_callers_usage() -> None:
    events = run(tr.ResponsesStream({"input": "x", "max_output_tokens": 2}), [chunk({"content": " a"}),
                 chunk({"content": " b"}, "length")], usage={"prompt_tokens": 4, "completion_tokens": 2})
    final = sdk_final(events)
    assert events[-1]["type"] == "response.completed"  # as vLLM: completed event, incomplete status
    assert final.status == "incomplete" and final.incomplete_details is not None
    assert final.incomplete_details.reason == "max_output_tokens"
    assert final.usage is not None and final.usage.output_tokens == 2 and final.usage.input_tokens == 4


def test_stream_text_then_tool_calls() -> None:
    chunks = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Let me check."}),
        chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                               "function": {"name": "get_weather", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                               "function": {"name": "get_weather", "arguments": '{"city": "Nice"}'}}]}),
        chunk({}, "tool_calls"),
        chunk(usage=USAGE),
    ]
    events = run(tr.ResponsesStream({"input": "x", "tools": [WEATHER]}), chunks)
    assert [(e["type"], e.get("output_index")) for e in events[2:]] == [
        ("response.output_item.added", 0),
        ("response.content_part.added", 0),
        ("response.output_text.delta", 0),
        ("response.output_text.done", 0),
        ("response.content_part.done", 0),
        ("response.output_item.done", 0),
        ("response.output_item.added", 1),
        ("response.function_call_arguments.delta", 1),
        ("response.function_call_arguments.delta", 1),
        ("response.function_call_arguments.done", 1),
        ("response.output_item.done", 1),
        ("response.output_item.added", 2),
        ("response.function_call_arguments.delta", 2),
        ("response.function_call_arguments.done", 2),
        ("response.output_item.done", 2),
        ("response.completed", None),
    ]
    assert events[8]["item"]["call_id"] == "call_a" and events[8]["item"]["arguments"] == ""
    assert events[11]["arguments"] == '{"city": "Paris"}'
    final = sdk_final(events, [WEATHER])
    calls = [(o.call_id, o.name, o.arguments) for o in final.output if o.type == "function_call"]
    assert calls == [("call_a", "get_weather", '{"city": "Paris"}'), ("call_b", "get_weather", '{"city": "Nice"}')]


def test_stream_matches_the_plain_translation() -> None:
    message = {"content": "Hi", "tool_calls": [
        {"id": "call_x", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}}]}
    request = {"input": "x", "tools": [WEATHER]}
    plain = Response.model_validate(tr.chat_to_response(chat_response(message, "tool_calls", USAGE), request=request))
    streamed = sdk_final(run(tr.ResponsesStream(request), [
        chunk({"content": "Hi"}),
        chunk({"tool_calls": [{"index": 0, **message["tool_calls"][0]}]}),  # type: ignore[index]
        chunk({}, "tool_calls"), chunk(usage=USAGE),
    ]), [WEATHER])

    def shape(r: Response) -> list[tuple[Any, ...]]:
        return [(o.type, getattr(o, "call_id", None), getattr(o, "arguments", None)) for o in r.output]

    assert shape(streamed) == shape(plain)
    assert streamed.output_text == plain.output_text == "Hi"
    assert streamed.usage == plain.usage


def test_stream_reasoning_item() -> None:
    events = run(tr.ResponsesStream({"input": "x"}), [chunk({"reasoning_content": "hmm"}), chunk({"content": "ok"}, "stop")])
    assert [e["type"] for e in events[2:6]] == [
        "response.output_item.added", "response.reasoning_text.delta", "response.reasoning_text.done",
        "response.output_item.done",
    ]
    final = sdk_final(events)
    assert [o.type for o in final.output] == ["reasoning", "message"]


def test_stream_error_mid_way() -> None:
    stream = tr.ResponsesStream({"input": "x"})
    events = stream.feed(chunk({"content": "partial"})) + stream.error(503, "engine overloaded")
    assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
    assert events[-2] == {"type": "error", "sequence_number": events[-2]["sequence_number"], "code": "server_error",
                          "message": "engine overloaded", "param": None}
    failed = EVENT.validate_python(events[-1])
    assert failed.type == "response.failed" and failed.response.status == "failed"
    assert failed.response.error is not None and failed.response.error.message == "engine overloaded"
    for event in events:
        EVENT.validate_python(event)
    assert stream.finish() == []


def test_text_parts_join_into_one_string() -> None:
    body = {"input": [{"role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]}]}
    assert tr.responses_to_chat(body)["messages"] == [{"role": "user", "content": "a\nb"}]
