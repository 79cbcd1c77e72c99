"""POST /v1/responses (OpenAI Responses API: the Agents SDK, Codex-style tools).

Passed through to deployments that serve it natively (vLLM: `model_info.supports` has `responses`),
translated to chat/completions and back for the others (gateway/translate/responses.py). A follow-up
(`previous_response_id`) goes to the deployment that holds the earlier response (gateway/followups.py);
for a translated deployment the gateway keeps the conversation and sends it whole."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from pydantic import BaseModel

from gateway.endpoints.base import (
    Check,
    Endpoint,
    estimate_text_tokens,
    is_int,
    is_number,
    tools_tokens,
    type_name,
)
from gateway.endpoints.messages import _translated
from gateway.errors import invalid_request
from gateway.streaming import EventTally
from gateway.translate import responses as tr
from gateway.usage import Usage


@functools.cache
def responses_request_model() -> type[BaseModel]:
    """The OpenAPI request model (built on first use: the hot path never needs it)."""
    from pydantic import ConfigDict, Field

    class ResponsesRequest(BaseModel):
        model_config = ConfigDict(extra="allow")
        model: str = Field(description="an alias from router.yaml, e.g. smart")
        input: str | list[dict[str, Any]]
        instructions: str | None = None
        previous_response_id: str | None = None
        max_output_tokens: int | None = Field(None, ge=1)
        stream: bool | None = None
        temperature: float | None = Field(None, ge=0, le=2)
        top_p: float | None = Field(None, ge=0, le=1)
        tools: list[dict[str, Any]] | None = None
        store: bool | None = None

    return ResponsesRequest


CHECKS: dict[str, Check] = {
    "stream": (lambda v: isinstance(v, bool), "a boolean"),
    "max_output_tokens": (lambda v: is_int(v) and v >= 1, "an integer >= 1"),
    "temperature": (lambda v: is_number(v) and 0 <= v <= 2, "a number between 0 and 2"),
    "top_p": (lambda v: is_number(v) and 0 <= v <= 1, "a number between 0 and 1"),
    "instructions": (lambda v: isinstance(v, str), "a string"),
    "previous_response_id": (lambda v: isinstance(v, str) and 0 < len(v) <= 256, "a string id"),
    "tools": (lambda v: isinstance(v, list) and all(isinstance(t, dict) for t in v), "an array of objects"),
    "tool_choice": (lambda v: isinstance(v, (str, dict)), "a string or an object"),
    "store": (lambda v: isinstance(v, bool), "a boolean"),
    "metadata": (lambda v: isinstance(v, dict), "an object"),
    "user": (lambda v: isinstance(v, str), "a string"),
}
END = frozenset({"response.completed", "response.incomplete", "response.failed"})


def _text(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, Mapping):
                for key in ("text", "arguments", "output"):
                    if isinstance(item.get(key), str):
                        yield item[key]
                yield from _text(item.get("content"))


def _stream_usage(event: dict[str, Any]) -> dict[str, Any] | None:
    if event.get("type") not in END:
        return None
    response = event.get("response")
    usage = response.get("usage") if isinstance(response, dict) else None
    return usage if isinstance(usage, dict) else None


class Responses(Endpoint):
    name: ClassVar[str] = "responses"
    paths: ClassVar[tuple[str, ...]] = ("/v1/responses",)
    upstream_path: ClassVar[str] = "/responses"
    prompt_param: ClassVar[str] = "input"
    checks: ClassVar[Mapping[str, Check]] = CHECKS
    stream_usage_option: ClassVar[bool] = False
    openapi_model = staticmethod(responses_request_model)
    summary: ClassVar[str] = "OpenAI Responses (streaming with stream=true)"
    support: ClassVar[str] = "responses"
    cacheable: ClassVar[bool] = False  # answers carry ids that follow-ups name
    remembers: ClassVar[bool] = True

    def check(self, body: Mapping[str, Any]) -> None:
        inp = body.get("input")
        if inp is None:
            raise invalid_request("Missing required parameter: 'input'", "input")
        if not isinstance(inp, (str, list)):
            raise invalid_request(f"'input' must be a string or an array of items, got {type_name(inp)}", "input")

    def prompt_text(self, body: Mapping[str, Any]) -> str:
        return "\n".join([*_text(body.get("instructions")), *_text(body.get("input"))])

    def estimate_prompt_tokens(self, body: Mapping[str, Any]) -> int:
        return estimate_text_tokens(self.prompt_text(body)) + tools_tokens(body)

    def worst_case_output(self, body: Mapping[str, Any], default: int) -> int:
        mt = body.get("max_output_tokens")
        return mt if is_int(mt) and mt >= 0 else default


    def usage(self, data: Mapping[str, Any] | None) -> Usage | None:
        if not isinstance(data, Mapping):
            return None
        inp, out = data.get("input_tokens"), data.get("output_tokens", 0)
        if not is_int(inp):
            return None
        return Usage(inp, out if is_int(out) else 0, False)

    def output_text(self, data: Mapping[str, Any]) -> str:
        return "".join(_text(data.get("output")))

    def stream_output(self, chunks: Iterable[Mapping[str, Any]]) -> tuple[str, int]:
        parts = [ev["delta"] for ev in chunks if isinstance(ev.get("delta"), str)
                 and ev.get("type") in ("response.output_text.delta", "response.function_call_arguments.delta")]
        return "".join(parts), len(parts)

    def new_tally(self, wants_usage: bool) -> EventTally:
        return EventTally(_stream_usage, END.__contains__)

    def stream_tail(self, tally: Any) -> bytes:
        return b""

    def stream_error(self, status: int, message: str, type_: str, code: str | None) -> bytes:
        return tr.ResponsesStream.encode({"type": "error", "code": code or type_, "message": message, "param": None,
                                          "sequence_number": 0})

    def to_chat(self, body: Mapping[str, Any], context: Any) -> dict[str, Any] | None:
        chat = _translated(tr.responses_to_chat, body, previous=context)
        chat.pop("previous_response_id", None)
        return chat

    def from_chat(self, reply: Mapping[str, Any], body: Mapping[str, Any], alias: str, context: Any) -> dict[str, Any]:
        return tr.chat_to_response(reply, request=body, model=alias)

    def chat_stream(self, body: Mapping[str, Any], alias: str, context: Any) -> tr.ResponsesStream:
        return tr.ResponsesStream(body, model=alias)

    def follow_up_of(self, body: Mapping[str, Any]) -> str | None:
        prev = body.get("previous_response_id")
        return prev if isinstance(prev, str) and prev else None

    def created_id(self, answer: Mapping[str, Any] | None) -> str | None:
        if not isinstance(answer, Mapping):
            return None
        if answer.get("type") in END:  # a stream's final event carries the Response
            answer = answer.get("response") if isinstance(answer.get("response"), Mapping) else {}
        rid = answer.get("id")
        return rid if isinstance(rid, str) and rid else None

    def conversation(self, body: Mapping[str, Any], answer: Mapping[str, Any], previous: Any) -> list[dict[str, Any]]:
        """The conversation after `answer` (kept for translated follow-ups)."""
        if answer.get("type") in END and isinstance(answer.get("response"), Mapping):
            answer = answer["response"]
        return tr.conversation_items(body, answer, previous)
