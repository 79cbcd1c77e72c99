"""The simulator's OpenAI Responses API, as vLLM serves it (vllm/entrypoints/openai/responses/):
`POST /v1/responses` (plain and SSE), `GET /v1/responses/{id}`, `DELETE /v1/responses/{id}`.

- The request becomes chat messages (gateway.translate.responses, what vLLM's construct_input_messages
  does), answered like a chat request; output is a `message` item with one `output_text` part, or a
  `function_call` item when `tools` are given and `tool_choice` is `required` (the first function) or
  `{"type": "function", "name": ...}`.
- `status: "incomplete"`, `incomplete_details.reason: "max_output_tokens"` when max_output_tokens (or the
  context window) cut the answer; usage has input/output/total tokens, `input_tokens_details.cached_tokens`
  (the tokens of the conversation a `previous_response_id` continues: its prefix is in the KV cache) and
  `output_tokens_details.reasoning_tokens` (0).
- Streams: response.created, response.in_progress, output_item.added, content_part.added,
  output_text.delta ..., output_text.done, content_part.done, output_item.done, response.completed
  (also when incomplete, as vLLM sends it), each with `sequence_number`; no `[DONE]`. A fault mid-way
  ends the stream with `error` then `response.failed`.
- Responses are stored unless `store: false` (the request field defaults to true, as in vLLM with
  VLLM_ENABLE_RESPONSES_API_STORE=1), up to MAX_STORED (oldest out first); `previous_response_id`
  continues a stored conversation (its input and output items, not its instructions); an unknown id is
  404 `{"error": {"message": "Response with id '...' not found.", "type": "invalid_request_error",
  "param": "response_id", "code": 404}}`. DELETE (OpenAI's, not in vLLM) answers
  `{"id", "object": "response.deleted", "deleted": true}`.
- Errors use the nested OpenAI shape (every vLLM with a Responses API has it) with vLLM's type names.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from gateway.simulator import faults, generation, tokens
from gateway.simulator.faults import SimError
from gateway.translate import responses as tr
from gateway.translate.common import TranslationError

if TYPE_CHECKING:
    from gateway.simulator.server import Job, Simulator

MAX_STORED = 10_000


def error_body(status: int, message: str, type_: str | None = None, param: str | None = None) -> bytes:
    err_type = type_ or faults.ERROR_TYPES.get(status, "InternalServerError")
    return orjson.dumps({"error": {"message": message, "type": err_type, "param": param, "code": status}})


def not_found(response_id: str) -> tuple[int, bytes]:
    message = f"Response with id '{response_id}' not found."
    return 404, error_body(404, message, "invalid_request_error", "response_id")


def forced_tool(body: Mapping[str, Any]) -> generation.Tool | None:
    choice = body.get("tool_choice")
    if choice != "required" and not (isinstance(choice, dict) and choice.get("type") == "function"):
        return None
    tools = [t for t in body.get("tools") or () if isinstance(t, dict) and t.get("type") == "function"]
    tools = [t for t in tools if isinstance(t.get("name"), str)]
    if not tools:
        raise SimError(400, "tool_choice: a function call is required but no function tools were given")
    if choice == "required":
        chosen: dict[str, Any] | None = tools[0]
    else:
        chosen = next((t for t in tools if t["name"] == choice.get("name")), None)
        if chosen is None:
            raise SimError(400, f"tool_choice.name: no function named {choice.get('name')!r} in tools")
    schema = chosen.get("parameters")
    return generation.Tool(chosen["name"], schema if isinstance(schema, dict) else {})


@dataclass
class Stored:
    response: dict[str, Any]
    items: list[dict[str, Any]]  # the conversation up to and including this response's output


class ResponseRenderer:
    """The Responses bytes of a chat answer; stores the finished response."""

    def __init__(
        self,
        api: ResponsesAPI,
        answer: generation.ChatAnswer,
        body: Mapping[str, Any],
        previous: list[dict[str, Any]] | None,
        limit: int,
    ) -> None:
        self.api = api
        self.answer = answer
        self.body = body
        self.previous = previous
        self.request = {**body, "max_output_tokens": limit}  # vLLM echoes the effective limit
        self.response_id = "resp_" + os.urandom(16).hex()
        self.created = int(time.time())
        self.stream = tr.ResponsesStream(
            self.request, response_id=self.response_id, created_at=self.created, model=answer.job.model
        )

    def _store(self, response: dict[str, Any]) -> None:
        if self.body.get("store") is not False:
            self.api.put(self.response_id, Stored(response, tr.conversation_items(self.body, response, self.previous)))

    def plain(self) -> bytes:
        response = tr.chat_to_response(
            self.answer.completion(), request=self.request, response_id=self.response_id,
            created_at=self.created, model=self.answer.job.model,
        )
        self._store(response)
        return orjson.dumps(response)

    @staticmethod
    def _encode(events: list[dict[str, Any]]) -> list[bytes]:
        return [tr.ResponsesStream.encode(e) for e in events]

    def preamble(self) -> list[bytes]:
        return self._encode(self.stream.begin())  # vLLM: response.created/in_progress before any token

    def head(self) -> list[bytes]:
        return self._encode(self.stream.feed(self.answer.first()))

    def piece(self, i: int) -> list[bytes]:
        return self._encode(self.stream.feed(self.answer.piece(i)))

    def tail(self) -> list[bytes]:
        events = self.stream.feed(self.answer.usage_chunk()) + self.stream.finish()
        self._store(self.stream.response)
        return self._encode(events)

    def error_body(self, status: int, message: str) -> bytes:
        return error_body(status, message)

    def stream_error(self, status: int, message: str) -> list[bytes]:
        return self._encode(self.stream.error(status, message))


class ResponsesAPI:
    def __init__(self, sim: Simulator, max_stored: int = MAX_STORED) -> None:
        self.sim = sim
        self.max_stored = max_stored
        self.stored: OrderedDict[str, Stored] = OrderedDict()

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1/responses", self.create)
        router.add_get("/v1/responses/{response_id}", self.retrieve)
        router.add_delete("/v1/responses/{response_id}", self.delete)

    def put(self, response_id: str, stored: Stored) -> None:
        self.stored[response_id] = stored
        while len(self.stored) > self.max_stored:
            self.stored.popitem(last=False)

    def _error(self, status: int, body: bytes) -> web.Response:
        return generation.error_response(self.sim, body, status)

    async def create(self, request: web.Request) -> web.StreamResponse:
        from gateway.simulator.server import Job

        sim = self.sim
        arrived = time.monotonic()
        sim._hit(request.path)
        try:
            body = await sim._body(request)
            model = sim._model(body)
            previous: list[dict[str, Any]] | None = None
            prev_id = body.get("previous_response_id")
            if prev_id is not None:
                if not isinstance(prev_id, str):
                    raise TranslationError("previous_response_id must be a string", "previous_response_id")
                stored = self.stored.get(prev_id)
                if stored is None:
                    return self._error(*not_found(prev_id))
                previous = stored.items
            chat = tr.responses_to_chat(body, previous=previous)
            prompt = tokens.chat_prompt(chat["messages"])
            cached = tokens.chat_prompt(tr.items_to_messages(previous)).tokens if previous else 0
            cfg = sim._config(body)
            out = generation.plan(prompt, chat.get("max_tokens"), cfg, forced_tool(body))
        except SimError as exc:
            return self._error(exc.status, error_body(exc.status, exc.message))
        except TranslationError as exc:
            return self._error(exc.status, error_body(exc.status, exc.message, param=exc.param))
        except ValueError as exc:
            return self._error(400, error_body(400, str(exc)))
        limit = min(chat.get("max_tokens") or cfg.max_model_len, cfg.max_model_len - prompt.tokens)
        job: Job = Job(
            "chat", model, prompt, out.n, out.engine_finish, chat.get("max_tokens"), cfg, sim.metrics.model(model),
            arrived, id="chatcmpl-" + os.urandom(16).hex(), created=int(time.time()),
        )
        renderer = ResponseRenderer(self, generation.ChatAnswer(job, out, cached), body, previous, limit)
        return await generation.serve(sim, request, job, body.get("stream") is True, renderer)

    def _lookup(self, request: web.Request) -> tuple[str, Stored | None, web.Response | None]:
        self.sim._hit("/v1/responses/{response_id}")
        response_id = request.match_info["response_id"]
        if not response_id.startswith("resp"):
            message = f"Invalid 'response_id': '{response_id}'. Expected an ID that begins with 'resp'."
            return response_id, None, self._error(400, error_body(400, message, "invalid_request_error", "response_id"))
        stored = self.stored.get(response_id)
        if stored is None:
            return response_id, None, self._error(*not_found(response_id))
        return response_id, stored, None

    async def retrieve(self, request: web.Request) -> web.Response:
        _, stored, error = self._lookup(request)
        if error is not None or stored is None:
            return error or self._error(*not_found(""))
        return web.Response(body=orjson.dumps(stored.response), content_type="application/json")

    async def delete(self, request: web.Request) -> web.Response:
        response_id, stored, error = self._lookup(request)
        if error is not None or stored is None:
            return error or self._error(*not_found(response_id))
        del self.stored[response_id]
        data = {"id": response_id, "object": "response.deleted", "deleted": True}
        return web.Response(body=orjson.dumps(data), content_type="application/json")
