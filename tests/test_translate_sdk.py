"""The translators end to end: the official SDKs talk Messages / Responses to a small translating proxy
(what the gateway will do for upstreams without those APIs) in front of the chat-only simulator.

Everything runs in-process on aiohttp test servers: the simulator's chat/completions endpoint answers,
gateway.translate converts both ways, and the SDKs parse the result (plain, streamed, tool calls, errors)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import anthropic
import openai
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.simulator import SimOptions, build_app
from gateway.translate import anthropic as ta
from gateway.translate import responses as tr
from gateway.translate.common import TranslationError

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n fake").decode()
WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
QUESTION = "What is the weather in Paris?"


async def chat_events(resp: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any] | None]:
    """The `data:` objects of an upstream chat stream; None for `[DONE]`."""
    async for raw in resp.content:
        line = raw.strip()
        if line.startswith(b"data: "):
            payload = line[len(b"data: "):]
            yield None if payload == b"[DONE]" else orjson.loads(payload)


def estimate(text: str, prompt_tokens: int) -> dict[str, int]:
    """What the gateway would count itself when an upstream streams no usage (the simulator's rule: words)."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": len(text.split())}


class Proxy:
    """POST /v1/messages and /v1/responses translated to the upstream's /v1/chat/completions."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.items: dict[str, list[dict[str, Any]]] = {}  # response id -> conversation items (the store)
        self.session: aiohttp.ClientSession | None = None
        self.chat_requests: list[dict[str, Any]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/messages", self.messages)
        app.router.add_post("/v1/responses", self.responses)
        return app

    async def _post(self, chat: Mapping[str, Any]) -> aiohttp.ClientResponse:
        if self.session is None:
            self.session = aiohttp.ClientSession()
        self.chat_requests.append(dict(chat))
        return await self.session.post(f"{self.upstream}/v1/chat/completions", json=chat)

    async def messages(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        try:
            chat = ta.messages_to_chat(body)
        except TranslationError as exc:
            return web.json_response(ta.error_body(exc.status, exc.message), status=exc.status)
        resp = await self._post(chat)
        if resp.status != 200:
            err = (await resp.json()).get("message", "upstream error")
            return web.json_response(ta.error_body(resp.status, err), status=resp.status)
        stops = chat.get("stop", [])
        if not chat.get("stream"):
            return web.json_response(ta.chat_to_message(await resp.json(), model=body["model"], stop_sequences=stops))
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        stream = ta.MessagesStream(model=body["model"], stop_sequences=stops)
        text = ""
        async for chunk in chat_events(resp):
            if chunk is None:
                events = stream.finish(usage=estimate(text, 0))
            else:
                for c in chunk.get("choices") or ():
                    text += c["delta"].get("content") or ""
                events = stream.feed(chunk)
            await out.write(b"".join(stream.encode(e) for e in events))
        return out

    async def responses(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        previous = None
        if body.get("previous_response_id") is not None:
            previous = self.items.get(body["previous_response_id"])
            if previous is None:
                return web.json_response(tr.error_body(404, "no such response", param="previous_response_id"), status=404)
        try:
            chat = tr.responses_to_chat(body, previous=previous)
        except TranslationError as exc:
            return web.json_response(tr.error_body(exc.status, exc.message, param=exc.param), status=exc.status)
        resp = await self._post(chat)
        if resp.status != 200:
            return web.json_response(tr.error_body(resp.status, "upstream error"), status=resp.status)
        if not chat.get("stream"):
            response = tr.chat_to_response(await resp.json(), request=body)
            self.items[response["id"]] = tr.conversation_items(body, response, previous)
            return web.json_response(response)
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        stream = tr.ResponsesStream(body)
        async for chunk in chat_events(resp):
            events = stream.finish() if chunk is None else stream.feed(chunk)
            await out.write(b"".join(stream.encode(e) for e in events))
        if stream.response["status"] != "failed":
            self.items[stream.response["id"]] = tr.conversation_items(body, stream.response, previous)
        return out


@pytest.fixture
async def proxy() -> AsyncIterator[tuple[Proxy, TestServer, TestServer]]:
    sim = TestServer(build_app(SimOptions(models=("chat-only",))))
    await sim.start_server()
    translator = Proxy(str(sim.make_url("")).rstrip("/"))
    server = TestServer(translator.app())
    await server.start_server()
    yield translator, server, sim
    if translator.session is not None:
        await translator.session.close()
    await server.close()
    await sim.close()


def url(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


async def direct_chat(sim: TestServer, chat: dict[str, Any]) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.post(f"{url(sim)}/v1/chat/completions", json=chat) as r:
        return await r.json()


# ---- Anthropic --------------------------------------------------------------------------------------
async def test_messages_plain_and_stream_match_the_chat_answer(proxy: tuple[Proxy, TestServer, TestServer]) -> None:
    translator, server, sim = proxy
    client = anthropic.AsyncAnthropic(base_url=url(server), api_key="k", max_retries=0)
    kwargs: dict[str, Any] = {"model": "chat-only", "max_tokens": 30, "system": "Be brief.",
                              "messages": [{"role": "user", "content": QUESTION}]}
    msg = await client.messages.create(**kwargs)
    chat = await direct_chat(sim, {"model": "chat-only", "max_tokens": 30, "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}]})
    assert msg.content[0].text == chat["choices"][0]["message"]["content"]  # type: ignore[union-attr]
    assert msg.stop_reason == "max_tokens"  # the chat simulator's finish_reason "length"
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (
        chat["usage"]["prompt_tokens"], chat["usage"]["completion_tokens"])
    assert msg.model == "chat-only"

    async with client.messages.stream(**kwargs) as stream:
        pieces = [t async for t in stream.text_stream]
        final = await stream.get_final_message()
    assert "".join(pieces) == msg.content[0].text == final.content[0].text  # type: ignore[union-attr]
    assert final.usage.output_tokens == msg.usage.output_tokens and final.usage.input_tokens == msg.usage.input_tokens
    assert translator.chat_requests[-1]["stream_options"] == {"include_usage": True}


async def test_messages_tool_use_and_result_through_chat(proxy: tuple[Proxy, TestServer, TestServer]) -> None:
    translator, server, _ = proxy
    client = anthropic.AsyncAnthropic(base_url=url(server), api_key="k", max_retries=0)
    tools: list[Any] = [{"name": "get_weather", "input_schema": WEATHER_SCHEMA}]
    async with client.messages.stream(model="chat-only", max_tokens=100, tools=tools,
                                      tool_choice={"type": "tool", "name": "get_weather"},
                                      messages=[{"role": "user", "content": QUESTION}]) as stream:
        first = await stream.get_final_message()
    assert first.stop_reason == "tool_use"
    [use] = first.content
    assert isinstance(use, anthropic.types.ToolUseBlock) and use.input == {"city": "Paris"}
    assert translator.chat_requests[-1]["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}

    second = await client.messages.create(
        model="chat-only", max_tokens=5, tools=tools,
        messages=[{"role": "user", "content": QUESTION}, {"role": "assistant", "content": first.content},
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]}],
    )
    assert second.content[0].type == "text"
    sent = translator.chat_requests[-1]["messages"]
    assert sent[1]["tool_calls"][0]["id"] == use.id and sent[1]["tool_calls"][0]["function"]["arguments"] == '{"city":"Paris"}'
    assert sent[2] == {"role": "tool", "tool_call_id": use.id, "content": "sunny"}


async def test_messages_image_and_no_stream_usage(proxy: tuple[Proxy, TestServer, TestServer]) -> None:
    """An image reaches the chat upstream as a data: URL; a llama.cpp-like stream (no usage) gets the estimate."""
    translator, server, _ = proxy
    client = anthropic.AsyncAnthropic(base_url=url(server), api_key="k", max_retries=0)
    content: list[Any] = [{"type": "text", "text": "Describe this"},
                          {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}]
    async with client.messages.stream(model="chat-only", max_tokens=4, messages=[{"role": "user", "content": content}],
                                      extra_body={"sim": {"no_stream_usage": True}}) as stream:
        final = await stream.get_final_message()
    part = translator.chat_requests[-1]["messages"][0]["content"][1]
    assert part == {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}
    assert final.usage.output_tokens == 4 == len(final.content[0].text.split())  # type: ignore[union-attr]


async def test_messages_errors_through_the_proxy(proxy: tuple[Proxy, TestServer, TestServer]) -> None:
    _, server, _ = proxy
    client = anthropic.AsyncAnthropic(base_url=url(server), api_key="k", max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as bad:
        await client.messages.create(model="chat-only", max_tokens=5, messages=[{"role": "robot", "content": "x"}])  # type: ignore[misc]
    assert bad.value.body == {"type": "error", "error": {"type": "invalid_request_error",
                                                         "message": "messages.0.role must be 'user' or 'assistant', got 'robot'"}}
    with pytest.raises(anthropic.RateLimitError):
        await client.messages.create(model="chat-only", max_tokens=5, messages=[{"role": "user", "content": "x"}],
                                     extra_body={"sim": {"fault": "429"}})
    with pytest.raises(anthropic.APIStatusError, match="EngineCore"):
        async with client.messages.stream(model="chat-only", max_tokens=10, messages=[{"role": "user", "content": "a b"}],
                                          extra_body={"sim": {"fault": "500", "fault_after_tokens": 2}}) as stream:
            async for _ in stream.text_stream:
                pass


# ---- Responses --------------------------------------------------------------------------------------
async def test_responses_plain_stream_and_previous_response_id(proxy: tuple[Proxy, TestServer, TestServer]) -> None:
    translator, server, _ = proxy
    client = openai.AsyncOpenAI(base_url=f"{url(server)}/v1", api_key="k", max_retries=0)
    first = await client.responses.create(model="chat-only", instructions="Be brief.", input="My name is Ada")
    assert first.status == "completed" and first.output_text and first.usage is not None
    assert first.usage.output_tokens == len(first.output_text.split())

    async with client.responses.stream(model="chat-only", previous_response_id=first.id, input="Who am I?") as stream:
        deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        second = await stream.get_final_response()
    assert "".join(deltas) == second.output_text and second.previous_response_id == first.id
    assert translator.chat_requests[-1]["messages"] == [
        {"role": "user", "content": "My name is Ada"},  # instructions do not carry over
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "Who am I?"},
    ]
    third = await client.responses.create(model="chat-only", previous_response_id=second.id, input="ok",
                                          max_output_tokens=2)
    assert third.status == "incomplete" and third.incomplete_details is not None
    assert [m["role"] for m in translator.chat_requests[-1]["messages"]] == ["user", "assistant", "user", "assistant", "user"]
    with pytest.raises(openai.NotFoundError):
        await client.responses.create(model="chat-only", previous_response_id="resp_unknown", input="x")


async def test_responses_function_call_round_trip_through_chat(proxy: tuple[Proxy, TestServer, TestServer]) -> None:
    translator, server, _ = proxy
    client = openai.AsyncOpenAI(base_url=f"{url(server)}/v1", api_key="k", max_retries=0)
    tools: list[Any] = [{"type": "function", "name": "get_weather", "parameters": WEATHER_SCHEMA, "strict": False}]
    async with client.responses.stream(model="chat-only", input=QUESTION, tools=tools, tool_choice="required") as stream:
        first = await stream.get_final_response()
    [call] = first.output
    assert call.type == "function_call" and call.arguments == '{"city": "Paris"}'
    second = await client.responses.create(
        model="chat-only", previous_response_id=first.id, tools=tools,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
    )
    assert second.output_text
    sent = translator.chat_requests[-1]
    assert sent["tools"][0]["function"]["name"] == "get_weather"
    assert sent["messages"][1] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": call.call_id, "type": "function", "function": {"name": "get_weather", "arguments": call.arguments}}]}
    assert sent["messages"][2] == {"role": "tool", "tool_call_id": call.call_id, "content": "sunny"}


async def test_responses_mid_stream_error(proxy: tuple[Proxy, TestServer, TestServer]) -> None:
    _, server, _ = proxy
    client = openai.AsyncOpenAI(base_url=f"{url(server)}/v1", api_key="k", max_retries=0)
    stream = await client.responses.create(model="chat-only", input="a b c", stream=True,
                                           extra_body={"sim": {"fault": "503", "fault_after_tokens": 1}})
    events = [e async for e in stream]
    assert [e.type for e in events][-2:] == ["error", "response.failed"]
    assert events[-2].message == "Simulated fault: the engine is not ready, service unavailable."  # type: ignore[union-attr]
