"""The simulator's Anthropic Messages API: `POST /v1/messages` (plain and SSE) and
`POST /v1/messages/count_tokens`, as vLLM serves them (vllm/entrypoints/anthropic/).

Like vLLM, the request is converted to a chat request, answered, and the chat answer (or each chat chunk)
converted back. Shapes: a plain answer has `usage: {input_tokens, output_tokens}` (vLLM reports no cache
counters); a stream is message_start (with input_tokens), ping, content_block_start/_delta/_stop per
block (text_delta, input_json_delta), message_delta (stop_reason, stop_sequence, usage with input and
output tokens), message_stop, and no `[DONE]`. Errors are `{"type": "error", "error": {"type", "message"}}`
with vLLM's type names (`BadRequestError`, `NotFoundError`, ...: vLLM copies its OpenAI error type into the
Anthropic envelope); a stream failing mid-way ends with `event: error` of that shape.
A tool call is made when `tools` are given and `tool_choice` is `{"type": "tool", "name": ...}` or
`{"type": "any"}` (the first tool); `stop_sequences` end the answer where a generated word completes one.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from gateway.simulator import faults, generation, tokens
from gateway.simulator.faults import SimError
from gateway.translate import anthropic
from gateway.translate.common import TranslationError

if TYPE_CHECKING:
    from gateway.simulator.server import Job, Simulator


def _vllm_usage(usage: dict[str, Any]) -> dict[str, Any]:
    """vLLM sends only input_tokens and output_tokens (no cache counters)."""
    return {"input_tokens": usage["input_tokens"] + usage["cache_read_input_tokens"],
            "output_tokens": usage["output_tokens"]}


def error_body(status: int, message: str) -> bytes:
    return orjson.dumps(anthropic.error_body(status, message, faults.ERROR_TYPES.get(status, "InternalServerError")))


def forced_tool(body: Mapping[str, Any]) -> generation.Tool | None:
    choice = body.get("tool_choice")
    if not isinstance(choice, dict) or choice.get("type") not in ("tool", "any"):
        return None
    tools = [t for t in body.get("tools") or () if isinstance(t, dict) and isinstance(t.get("name"), str)]
    if not tools:
        raise SimError(400, "tool_choice: a tool is required but no tools were given")
    chosen = tools[0] if choice["type"] == "any" else next((t for t in tools if t["name"] == choice.get("name")), None)
    if chosen is None:
        raise SimError(400, f"tool_choice.name: no tool named {choice.get('name')!r} in tools")
    schema = chosen.get("input_schema")
    return generation.Tool(chosen["name"], schema if isinstance(schema, dict) else {})


class MessageRenderer:
    """The Anthropic bytes of a chat answer."""

    def __init__(self, answer: generation.ChatAnswer, stop_sequences: list[str]) -> None:
        self.answer = answer
        self.stop_sequences = stop_sequences
        self.stream = anthropic.MessagesStream(model=answer.job.model, stop_sequences=stop_sequences)

    def plain(self) -> bytes:
        message = anthropic.chat_to_message(
            self.answer.completion(), model=self.answer.job.model, stop_sequences=self.stop_sequences
        )
        message["usage"] = _vllm_usage(message["usage"])
        return orjson.dumps(message)

    def _encode(self, events: list[dict[str, Any]]) -> list[bytes]:
        for event in events:
            if event["type"] == "message_start":
                event["message"]["usage"] = _vllm_usage(event["message"]["usage"])
            elif event["type"] == "message_delta":
                event["usage"] = _vllm_usage(event["usage"])
        return [anthropic.MessagesStream.encode(e) for e in events]

    def preamble(self) -> list[bytes]:
        return []  # vLLM's message_start comes with the first chat chunk, after the prefill

    def head(self) -> list[bytes]:
        # vLLM asks its chat layer for continuous usage, so message_start already has input_tokens
        first = self.answer.first()
        first["usage"] = {"prompt_tokens": self.answer.job.prompt.tokens, "completion_tokens": 0}
        return self._encode(self.stream.feed(first))

    def piece(self, i: int) -> list[bytes]:
        return self._encode(self.stream.feed(self.answer.piece(i)))

    def tail(self) -> list[bytes]:
        return self._encode(self.stream.feed(self.answer.usage_chunk()) + self.stream.finish())

    def error_body(self, status: int, message: str) -> bytes:
        return error_body(status, message)

    def stream_error(self, status: int, message: str) -> list[bytes]:
        return self._encode(self.stream.error(status, message))


class MessagesAPI:
    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1/messages", self.create)
        router.add_post("/v1/messages/count_tokens", self.count_tokens)

    def _error(self, status: int, message: str) -> web.Response:
        return generation.error_response(self.sim, error_body(status, message), status)

    async def create(self, request: web.Request) -> web.StreamResponse:
        from gateway.simulator.server import Job

        sim = self.sim
        arrived = time.monotonic()
        sim._hit(request.path)
        try:
            body = await sim._body(request)
            model = sim._model(body)
            chat = anthropic.messages_to_chat(body)
            prompt = tokens.chat_prompt(chat["messages"])
            cfg = sim._config(body)
            out = generation.plan(prompt, chat["max_tokens"], cfg, forced_tool(body), chat.get("stop", ()))
        except SimError as exc:
            return self._error(exc.status, exc.message)
        except TranslationError as exc:
            return self._error(exc.status, exc.message)
        except ValueError as exc:
            return self._error(400, str(exc))
        job: Job = Job(
            "chat", model, prompt, out.n, out.engine_finish, chat["max_tokens"], cfg, sim.metrics.model(model),
            arrived, id="chatcmpl-" + os.urandom(16).hex(), created=int(time.time()),
        )
        renderer = MessageRenderer(generation.ChatAnswer(job, out), chat.get("stop", []))
        return await generation.serve(sim, request, job, chat.get("stream") is True, renderer)

    async def count_tokens(self, request: web.Request) -> web.Response:
        sim = self.sim
        sim._hit(request.path)
        try:
            body = await sim._body(request)
            sim._model(body)
            chat = anthropic.count_tokens_to_chat(body)
            count = tokens.chat_prompt(chat["messages"]).tokens
        except SimError as exc:
            return self._error(exc.status, exc.message)
        except TranslationError as exc:
            return self._error(exc.status, exc.message)
        except ValueError as exc:
            return self._error(400, str(exc))
        data = {"input_tokens": count, "context_management": {"original_input_tokens": count}}
        return web.Response(body=orjson.dumps(data), content_type="application/json")
