"""The simulator's Responses and Messages endpoints (and chat tool calls) against the official SDKs."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.procs import Proc, start_simulator

DEFAULT_TOKENS = 16
WEATHER_INPUT_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
ANTHROPIC_TOOL = {"name": "get_weather", "description": "Weather in a city", "input_schema": WEATHER_INPUT_SCHEMA}
RESPONSES_TOOL = {"type": "function", "name": "get_weather", "description": "Weather in a city",
                  "parameters": WEATHER_INPUT_SCHEMA, "strict": False}


def words(text: str) -> int:
    return len(text.split())


def prompt_tokens(*texts: str) -> int:
    """The simulator's chat prompt tokens: words + 3 per message."""
    return sum(words(t) + 3 for t in texts)


def http(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def sse(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in raw.decode().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "data" in lines:
            out.append((lines.get("event", ""), json.loads(lines["data"])))
    return out


def post_raw(url: str, body: Any) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.status, resp.read()


@pytest.fixture(scope="module")
def sim() -> Iterator[Proc]:
    proc = start_simulator("--model", "sim-model", "--model", "other")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def claude(sim: Proc) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=sim.url, api_key="test-key", max_retries=0)


@pytest.fixture(scope="module")
def oai(sim: Proc) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{sim.url}/v1", api_key="test-key", max_retries=0)


# ---- Anthropic Messages -----------------------------------------------------------------------------
SYSTEM = "You are terse."
QUESTION = "What is the weather in Paris?"


def test_messages_plain(claude: anthropic.Anthropic) -> None:
    msg = claude.messages.create(model="sim-model", max_tokens=100, system=SYSTEM,
                                 messages=[{"role": "user", "content": QUESTION}])
    assert msg.type == "message" and msg.role == "assistant" and msg.model == "sim-model"
    assert [b.type for b in msg.content] == ["text"]
    text = msg.content[0].text  # type: ignore[union-attr]
    assert text.split()[:6] == QUESTION.split()  # the simulator echoes the last user message
    assert msg.stop_reason == "end_turn" and msg.stop_sequence is None
    assert msg.usage.input_tokens == prompt_tokens(SYSTEM, QUESTION)
    assert msg.usage.output_tokens == words(text) == DEFAULT_TOKENS

    short = claude.messages.create(model="sim-model", max_tokens=5, messages=[{"role": "user", "content": QUESTION}])
    assert short.stop_reason == "max_tokens" and short.usage.output_tokens == 5


def test_messages_stream(claude: anthropic.Anthropic) -> None:
    kwargs: dict[str, Any] = {"model": "sim-model", "max_tokens": 100, "system": SYSTEM,
                              "messages": [{"role": "user", "content": QUESTION}]}
    plain = claude.messages.create(**kwargs)
    with claude.messages.stream(**kwargs) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) == DEFAULT_TOKENS  # one text_delta per token
    assert "".join(pieces) == final.content[0].text == plain.content[0].text  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (plain.usage.input_tokens, DEFAULT_TOKENS)

    events = [e.type for e in claude.messages.create(**kwargs, stream=True)]
    assert events == ["message_start", "content_block_start", *["content_block_delta"] * DEFAULT_TOKENS,
                      "content_block_stop", "message_delta", "message_stop"]


def test_messages_stream_wire_format(sim: Proc) -> None:
    """Event names, ping, usage in message_start and message_delta, and no [DONE]."""
    status, raw = post_raw(f"{sim.url}/v1/messages", {"model": "sim-model", "max_tokens": 3, "stream": True,
                                                      "messages": [{"role": "user", "content": "one two three"}]})
    assert status == 200
    events = sse(raw)
    assert all(name == data["type"] for name, data in events)
    assert [name for name, _ in events] == ["message_start", "ping", "content_block_start", "content_block_delta",
                                            "content_block_delta", "content_block_delta", "content_block_stop",
                                            "message_delta", "message_stop"]
    assert events[0][1]["message"]["usage"] == {"input_tokens": 6, "output_tokens": 0}
    assert events[-2][1] == {"type": "message_delta", "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
                             "usage": {"input_tokens": 6, "output_tokens": 3}}
    assert b"[DONE]" not in raw


def test_messages_tool_use_and_result(claude: anthropic.Anthropic) -> None:
    first = claude.messages.create(
        model="sim-model", max_tokens=200, tools=[ANTHROPIC_TOOL],
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=[{"role": "user", "content": QUESTION}],
    )
    assert first.stop_reason == "tool_use"
    [use] = first.content
    assert isinstance(use, anthropic.types.ToolUseBlock)
    assert use.name == "get_weather" and use.input == {"city": "Paris"}
    assert first.usage.output_tokens == 2  # '{"city":' and ' "Paris"}'

    second = claude.messages.create(
        model="sim-model", max_tokens=200, tools=[ANTHROPIC_TOOL],
        messages=[
            {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": first.content},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18 C and sunny"}]},
        ],
    )
    assert second.stop_reason == "end_turn" and second.content[0].type == "text"
    # user 6 words, assistant tool call 0 words, tool result 4 words: +3 each
    assert second.usage.input_tokens == prompt_tokens(QUESTION, "", "18 C and sunny")

    with claude.messages.stream(model="sim-model", max_tokens=200, tools=[ANTHROPIC_TOOL],
                                tool_choice={"type": "any"},
                                messages=[{"role": "user", "content": QUESTION}]) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert [(b.type, b.name, b.input) for b in final.content] == [("tool_use", "get_weather", {"city": "Paris"})]  # type: ignore[union-attr]


def test_messages_stop_sequence(claude: anthropic.Anthropic) -> None:
    msg = claude.messages.create(model="sim-model", max_tokens=50, stop_sequences=["gamma"],
                                 messages=[{"role": "user", "content": "alpha beta gamma delta"}])
    assert msg.content[0].text == " alpha beta "  # type: ignore[union-attr]
    assert (msg.stop_reason, msg.stop_sequence) == ("stop_sequence", "gamma")
    assert msg.usage.output_tokens == 3  # the token that completed the stop string counts


def test_count_tokens(claude: anthropic.Anthropic) -> None:
    messages: list[Any] = [
        {"role": "user", "content": [{"type": "text", "text": QUESTION},
                                     {"type": "image", "source": {"type": "url", "url": "https://e.x/a.png"}}]},
    ]
    count = claude.messages.count_tokens(model="sim-model", system=SYSTEM, messages=messages, tools=[ANTHROPIC_TOOL])
    assert count.input_tokens == prompt_tokens(SYSTEM, QUESTION)
    msg = claude.messages.create(model="sim-model", max_tokens=4, system=SYSTEM, messages=messages)
    assert msg.usage.input_tokens == count.input_tokens


def test_messages_errors(claude: anthropic.Anthropic, sim: Proc) -> None:
    status, body = http("POST", f"{sim.url}/v1/messages", {"model": "sim-model", "messages": [{"role": "user", "content": "x"}]})
    assert status == 400
    assert body == {"type": "error", "error": {"type": "BadRequestError",
                                               "message": "max_tokens: a positive integer is required, got None"}}
    status, body = http("POST", f"{sim.url}/v1/messages", b"{not json")
    assert status == 400 and body["type"] == "error" and body["error"]["type"] == "BadRequestError"
    status, body = http("POST", f"{sim.url}/v1/messages/count_tokens", {"model": "m", "messages": "nope"})
    assert status == 400 and body["type"] == "error"

    with pytest.raises(anthropic.BadRequestError) as bad:
        claude.messages.create(model="sim-model", max_tokens=5,
                               messages=[{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}])  # type: ignore[list-item]
    assert "messages.0.content.0.source" in str(bad.value)
    with pytest.raises(anthropic.BadRequestError, match="maximum context length"):
        claude.messages.create(model="sim-model", max_tokens=5, messages=[{"role": "user", "content": "x " * 9000}])
    with pytest.raises(anthropic.RateLimitError) as limited:
        claude.messages.create(model="sim-model", max_tokens=5, messages=[{"role": "user", "content": "x"}],
                               extra_body={"sim": {"fault": "429"}})
    assert limited.value.response.headers["retry-after"] == "1"
    assert limited.value.body == {"type": "error", "error": {"type": "RateLimitError",
                                                             "message": "Simulated fault: too many requests, please retry later."}}
    with pytest.raises(anthropic.InternalServerError):
        claude.messages.create(model="sim-model", max_tokens=5, messages=[{"role": "user", "content": "x"}],
                               extra_body={"sim": {"fault": "503"}})
    # a fault after the first byte: the stream ends with `event: error`, which the SDK raises
    with pytest.raises(anthropic.APIStatusError, match="EngineCore"):
        with claude.messages.stream(model="sim-model", max_tokens=10, messages=[{"role": "user", "content": "a b c"}],
                                    extra_body={"sim": {"fault": "500", "fault_after_tokens": 2}}) as stream:
            for _ in stream.text_stream:
                pass


# ---- OpenAI Responses --------------------------------------------------------------------------------
def test_responses_plain(oai: openai.OpenAI) -> None:
    r = oai.responses.create(model="sim-model", instructions=SYSTEM, input=QUESTION)
    assert r.object == "response" and r.id.startswith("resp_") and r.model == "sim-model"
    assert r.status == "completed" and r.incomplete_details is None and r.instructions == SYSTEM
    assert [o.type for o in r.output] == ["message"]
    assert r.output_text.split()[:6] == QUESTION.split()
    assert r.usage is not None
    assert r.usage.input_tokens == prompt_tokens(SYSTEM, QUESTION)
    assert r.usage.output_tokens == DEFAULT_TOKENS == words(r.output_text)
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.usage.input_tokens_details.cached_tokens == 0
    assert r.usage.output_tokens_details.reasoning_tokens == 0

    cut = oai.responses.create(model="sim-model", input=QUESTION, max_output_tokens=4)
    assert cut.status == "incomplete" and cut.incomplete_details is not None
    assert cut.incomplete_details.reason == "max_output_tokens"
    assert cut.usage is not None and cut.usage.output_tokens == 4 and cut.max_output_tokens == 4


def test_responses_stream(oai: openai.OpenAI) -> None:
    with oai.responses.stream(model="sim-model", input=QUESTION) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert len(deltas) == DEFAULT_TOKENS and "".join(deltas) == final.output_text
    assert final.status == "completed" and final.usage is not None and final.usage.output_tokens == DEFAULT_TOKENS

    events = list(oai.responses.create(model="sim-model", input=QUESTION, max_output_tokens=2, stream=True))
    assert [e.type for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    done = events[-1].response  # type: ignore[union-attr]
    assert done.status == "incomplete" and done.incomplete_details.reason == "max_output_tokens"
    # the streamed response is stored too
    assert oai.responses.retrieve(done.id).output_text == done.output_text


def test_responses_created_before_the_first_token(sim: Proc) -> None:
    """As vLLM: response.created and response.in_progress go out at once, not after the time to first token."""
    body = {"model": "sim-model", "input": "hi", "stream": True, "sim": {"ttft": 60}}
    with httpx.stream("POST", f"{sim.url}/v1/responses", json=body, timeout=10) as resp:
        names: list[str] = []
        for line in resp.iter_lines():
            if line.startswith("event: "):
                names.append(line[len("event: "):])
            if len(names) == 2:
                break
    assert names == ["response.created", "response.in_progress"]


def test_previous_response_id_retrieve_and_delete(oai: openai.OpenAI) -> None:
    first = oai.responses.create(model="sim-model", instructions=SYSTEM, input="My name is Ada Lovelace")
    second = oai.responses.create(model="sim-model", previous_response_id=first.id, input="What is my name?")
    assert second.previous_response_id == first.id
    assert second.usage is not None
    # the earlier user turn and answer come first (not the earlier instructions), then the new input
    history = prompt_tokens("My name is Ada Lovelace", first.output_text)
    assert second.usage.input_tokens == history + prompt_tokens("What is my name?")
    assert second.usage.input_tokens_details.cached_tokens == history

    third = oai.responses.create(model="sim-model", previous_response_id=second.id, input="Thanks")
    assert third.usage is not None
    assert third.usage.input_tokens == history + prompt_tokens("What is my name?", second.output_text, "Thanks")

    got = oai.responses.retrieve(first.id)
    assert got.id == first.id and got.output_text == first.output_text and got.usage == first.usage
    oai.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError) as gone:
        oai.responses.retrieve(first.id)
    assert gone.value.body == {"message": f"Response with id '{first.id}' not found.", "type": "invalid_request_error",
                               "param": "response_id", "code": 404}
    with pytest.raises(openai.NotFoundError, match="not found"):
        oai.responses.create(model="sim-model", previous_response_id=first.id, input="again")
    with pytest.raises(openai.NotFoundError):
        oai.responses.delete(first.id)
    with pytest.raises(openai.BadRequestError, match="Expected an ID that begins with 'resp'"):
        oai.responses.retrieve("abc")
    # the conversation built on the deleted response still continues: each response keeps its whole history
    assert oai.responses.create(model="sim-model", previous_response_id=second.id, input="ok").status == "completed"

    unstored = oai.responses.create(model="sim-model", input="forget me", store=False)
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(unstored.id)


def test_responses_function_call_round_trip(oai: openai.OpenAI) -> None:
    first = oai.responses.create(model="sim-model", input=QUESTION, tools=[RESPONSES_TOOL],  # type: ignore[list-item]
                                 tool_choice={"type": "function", "name": "get_weather"})
    [call] = first.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"} and call.call_id.startswith("chatcmpl-tool-")
    second = oai.responses.create(
        model="sim-model", previous_response_id=first.id, tools=[RESPONSES_TOOL],  # type: ignore[list-item]
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "18 C and sunny"}],
    )
    assert second.status == "completed" and [o.type for o in second.output] == ["message"]
    assert second.usage is not None
    assert second.usage.input_tokens == prompt_tokens(QUESTION, "", "18 C and sunny")

    with oai.responses.stream(model="sim-model", input=QUESTION, tools=[RESPONSES_TOOL],  # type: ignore[list-item]
                              tool_choice="required") as stream:
        arg_deltas = [e.delta for e in stream if e.type == "response.function_call_arguments.delta"]
        final = stream.get_final_response()
    [streamed] = final.output
    assert streamed.type == "function_call" and "".join(arg_deltas) == streamed.arguments == call.arguments


def test_responses_errors(oai: openai.OpenAI, sim: Proc) -> None:
    status, body = http("POST", f"{sim.url}/v1/responses", {"model": "sim-model"})
    assert status == 400
    assert body == {"error": {"message": "input: a string or a list of input items is required",
                              "type": "BadRequestError", "param": "input", "code": 400}}
    with pytest.raises(openai.BadRequestError, match="only function tools"):
        oai.responses.create(model="sim-model", input="x", tools=[{"type": "web_search"}])  # type: ignore[list-item]
    with pytest.raises(openai.RateLimitError):
        oai.responses.create(model="sim-model", input="x", extra_body={"sim": {"fault": "429"}})
    events = list(oai.responses.create(model="sim-model", input="a b c", stream=True,
                                       extra_body={"sim": {"fault": "503", "fault_after_tokens": 1}}))
    assert [e.type for e in events][-3:] == ["response.output_text.delta", "error", "response.failed"]
    assert events[-1].response.status == "failed"  # type: ignore[union-attr]


# ---- chat/completions with a forced tool call -------------------------------------------------------
def test_chat_forced_tool_call(oai: openai.OpenAI) -> None:
    tools: list[Any] = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_INPUT_SCHEMA}}]
    messages: list[Any] = [{"role": "user", "content": QUESTION}]
    plain = oai.chat.completions.create(model="sim-model", messages=messages, tools=tools, tool_choice="required")
    choice = plain.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    assert plain.usage is not None and plain.usage.completion_tokens == 2

    stream = oai.chat.completions.create(model="sim-model", messages=messages, tools=tools, stream=True,
                                         tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                         stream_options={"include_usage": True})
    chunks = list(stream)
    args = "".join(tc.function.arguments or "" for c in chunks if c.choices
                   for tc in c.choices[0].delta.tool_calls or [] if tc.function)
    assert args == call.function.arguments  # type: ignore[union-attr]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 2
    # auto (or no tool_choice) keeps answering with text
    auto = oai.chat.completions.create(model="sim-model", messages=messages, tools=tools)
    assert auto.choices[0].finish_reason == "stop" and auto.choices[0].message.content


@pytest.mark.parametrize(
    ("path", "body"),
    [("/v1/messages", {"max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}),
     ("/v1/responses", {"input": "hi"})],
)
def test_client_disconnect_cancels_the_stream(sim: Proc, path: str, body: dict[str, Any]) -> None:
    http("POST", f"{sim.url}/sim/reset")
    slow = {**body, "model": "sim-model", "stream": True, "sim": {"tps": 2, "default_tokens": 50}}
    with httpx.stream("POST", f"{sim.url}{path}", json=slow, timeout=10) as resp:
        for line in resp.iter_lines():
            if line.startswith("event:") and line.endswith("delta"):  # the first token arrived: go away
                break
    deadline = time.monotonic() + 5
    while (stats := http("GET", f"{sim.url}/sim/stats")[1])["cancelled"] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert stats["cancelled"] == 1 and stats["completed"] == 0 and stats["in_flight"] == 0


def test_stats_count_agent_requests(sim: Proc) -> None:
    http("POST", f"{sim.url}/sim/reset")
    http("POST", f"{sim.url}/v1/messages", {"model": "other", "max_tokens": 4, "messages": [{"role": "user", "content": "a b"}]})
    http("POST", f"{sim.url}/v1/responses", {"model": "other", "input": "a b c", "max_output_tokens": 3})
    _, stats = http("GET", f"{sim.url}/sim/stats")
    assert stats["requests"] == {"/v1/messages": 1, "/v1/responses": 1}
    assert stats["completed"] == 2 and stats["models"] == {"other": 2}
    assert stats["prompt_tokens"] == prompt_tokens("a b") + prompt_tokens("a b c")
    assert stats["completion_tokens"] == 4 + 3


# ---- hostile input: a clean 4xx in each API's shape, never a 5xx -------------------------------------
USER = [{"role": "user", "content": "hi"}]
BAD_MESSAGES: list[Any] = [
    [], 5, "x", None, {"max_tokens": 5}, {"max_tokens": 5, "messages": [5]},
    {"max_tokens": 5, "messages": [{"role": "user"}]},
    {"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "text"}]}]},
    {"max_tokens": 5, "messages": [{"role": "user", "content": []}]},
    {"max_tokens": 5, "messages": USER, "tools": 5},
    {"max_tokens": 5, "messages": USER, "tools": [{"name": "a"}]},
    {"max_tokens": 5, "messages": USER, "tools": [{"name": "a", "input_schema": {}}],
     "tool_choice": {"type": "tool", "name": "b"}},
    {"max_tokens": 5, "messages": USER, "tool_choice": {"type": "any"}},
    {"max_tokens": 5, "messages": USER, "tool_choice": "auto"},
    {"max_tokens": 5, "messages": USER, "model": 5},
    {"max_tokens": 5, "messages": USER, "sim": {"bad": 1}},
    {"max_tokens": True, "messages": USER}, {"max_tokens": 5.0, "messages": USER},
    {"max_tokens": 5, "messages": USER, "stop_sequences": [1]},
    {"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "base64"}}]}]},
]
BAD_RESPONSES: list[Any] = [
    [], 5, {}, {"input": 5}, {"input": [5]}, {"input": []}, {"input": [{"role": "user"}]},
    {"input": [{"role": "user", "content": [{"type": "input_text"}]}]},
    {"input": "x", "previous_response_id": 5}, {"input": "x", "tools": 5},
    {"input": "x", "tools": [{"type": "function"}]}, {"input": "x", "tool_choice": "required"},
    {"input": "x", "tool_choice": {"type": "function"}}, {"input": "x", "tool_choice": 5},
    {"input": "x", "tools": [{"type": "function", "name": "a"}], "tool_choice": {"type": "function", "name": "b"}},
    {"input": "x", "text": {"format": {"type": "zzz"}}}, {"input": "x", "max_output_tokens": "5"},
    {"input": "x", "instructions": 5}, {"input": "x", "stream": 1}, {"input": "x", "metadata": 5},
    {"input": [{"type": "function_call_output", "call_id": "a"}]},
    {"input": [{"type": "function_call", "call_id": "a", "name": "f", "arguments": 5}]},
]


BAD_COUNT_TOKENS: list[Any] = [
    [], None, {}, {"messages": [5]}, {"messages": [{"role": "robot", "content": "x"}]},
    {"messages": [{"role": "user", "content": [{"type": "text"}]}]}, {"messages": USER, "tools": [{"name": "a"}]},
    {"messages": USER, "tool_choice": {"type": "maybe"}}, {"messages": USER, "model": 5},
]


@pytest.mark.parametrize(
    ("path", "bodies"),
    [("/v1/messages", BAD_MESSAGES), ("/v1/messages/count_tokens", BAD_COUNT_TOKENS)],
)
def test_bad_messages_requests(sim: Proc, path: str, bodies: list[Any]) -> None:
    for body in [*bodies, b"\xff\xfe", b"[" * 5000]:
        status, answer = http("POST", f"{sim.url}{path}", body)
        assert status == 400, (body, answer)
        assert answer["type"] == "error" and set(answer["error"]) == {"type", "message"}, (body, answer)


def test_bad_responses_requests(sim: Proc) -> None:
    for body in [*BAD_RESPONSES, b"\xff", b"[" * 5000]:
        status, answer = http("POST", f"{sim.url}/v1/responses", body)
        assert status == 400, (body, answer)
        assert set(answer["error"]) == {"message", "type", "param", "code"}, (body, answer)
