"""What an API endpoint is to the gateway: one class per endpoint declares everything the request path,
the meters, the cache, the budgets and the OpenAPI spec need to know about it.

The hot path asks the registry (`gateway.endpoints`) for the endpoint of a path and then only calls
these methods; no other module tests an endpoint's name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import orjson
from pydantic import BaseModel

from gateway.errors import invalid_request
from gateway.streaming import DONE, StreamTally, error_event
from gateway.usage import Usage, usage_from

PER_MESSAGE_OVERHEAD = 4  # role markers and separators of a chat template


def estimate_text_tokens(text: str) -> int:
    """About 4 bytes of UTF-8 per token (the usual rule for BPE vocabularies); cheap enough for every request."""
    if not text:
        return 0
    return max(1, (len(text.encode("utf-8", "ignore")) + 3) // 4)


def tools_tokens(body: Mapping[str, Any]) -> int:
    """Heuristic size of the request's tool definitions."""
    tools = body.get("tools")
    if not isinstance(tools, list) or not tools:
        return 0
    try:
        return estimate_text_tokens(orjson.dumps(tools).decode())
    except TypeError:  # nested past orjson's own limit: the body check rejects it before this
        return 0


def type_name(v: Any) -> str:
    if v is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "object"}.get(type(v), type(v).__name__)


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def short(value: Any) -> str:
    """At most 40 characters of a client's value for an error message; never raises."""
    try:
        text = repr(value[:41]) if isinstance(value, str) else orjson.dumps(value).decode()
    except Exception:  # noqa: BLE001 - an error message must not fail in turn (e.g. orjson's depth limit)
        return f"({type_name(value)})"
    return text if len(text) <= 40 else text[:37] + "..."


Check = tuple[Callable[[Any], bool], str]

# Fields several OpenAI endpoints share, checked where present (None means "not set").
COMMON_CHECKS: dict[str, Check] = {
    "stream": (lambda v: isinstance(v, bool), "a boolean"),
    "stream_options": (lambda v: isinstance(v, dict), "an object"),
    "n": (lambda v: is_int(v) and v >= 1, "an integer >= 1"),
    "max_tokens": (lambda v: is_int(v) and v >= 0, "an integer >= 0"),
    "max_completion_tokens": (lambda v: is_int(v) and v >= 0, "an integer >= 0"),
    "temperature": (lambda v: is_number(v) and 0 <= v <= 2, "a number between 0 and 2"),
    "top_p": (lambda v: is_number(v) and 0 <= v <= 1, "a number between 0 and 1"),
    "presence_penalty": (lambda v: is_number(v) and -2 <= v <= 2, "a number between -2 and 2"),
    "frequency_penalty": (lambda v: is_number(v) and -2 <= v <= 2, "a number between -2 and 2"),
    "seed": (is_int, "an integer"),
    "stop": (lambda v: isinstance(v, str) or (isinstance(v, list) and all(isinstance(s, str) for s in v)),
             "a string or an array of strings"),
    "user": (lambda v: isinstance(v, str), "a string"),
    "tools": (lambda v: isinstance(v, list) and all(isinstance(t, dict) for t in v), "an array of objects"),
    "tool_choice": (lambda v: isinstance(v, (str, dict)), "a string or an object"),
    "response_format": (lambda v: isinstance(v, dict), "an object"),
    "logit_bias": (lambda v: isinstance(v, dict), "an object"),
    "cache": (lambda v: isinstance(v, dict), "an object"),
    "metadata": (lambda v: isinstance(v, dict), "an object"),
}


class Endpoint:
    """An API endpoint (subclasses: one module each). Instances are stateless."""

    name: ClassVar[str]  # "chat": the Call's endpoint, part of cache keys
    paths: ClassVar[tuple[str, ...]]  # the client-facing POST paths
    upstream_path: ClassVar[str]  # below a deployment's api_base
    prompt_param: ClassVar[str]  # the field a context-length error names
    streams: ClassVar[bool] = True
    checks: ClassVar[Mapping[str, Check]] = COMMON_CHECKS
    openapi_model: ClassVar[Callable[[], type[BaseModel]]]  # built on first use (OpenAPI only)
    summary: ClassVar[str] = ""  # the OpenAPI summary
    tag: ClassVar[str] = "openai"
    error_style: ClassVar[str] = "openai"  # the shape of its errors ("anthropic" on /v1/messages)
    metered: ClassVar[bool] = True  # its answers are tokens served (count_tokens is not)
    support: ClassVar[str] = ""  # the name in model_info.supports that makes a deployment serve it natively
    cacheable: ClassVar[bool] = True  # the response cache may answer it
    replayable: ClassVar[bool] = True  # a cached answer can be replayed as this endpoint's stream
    remembers: ClassVar[bool] = False  # its answers are kept for follow-ups (gateway/followups.py)
    passed_headers: ClassVar[tuple[bytes, ...]] = ()  # client headers a native upstream receives too
    stream_usage_option: ClassVar[bool] = True  # its streams take OpenAI's stream_options.include_usage

    # -- the request -------------------------------------------------------------------------------

    def validate(self, body: Mapping[str, Any]) -> str:
        """Check a parsed body; returns the alias (`model`). Raises GatewayError (400) naming the field."""
        model = body.get("model")
        if model is None:
            raise invalid_request("Missing required parameter: 'model'", "model")
        if not isinstance(model, str) or not model:
            raise invalid_request(f"'model' must be a non-empty string, got {type_name(model)}", "model")
        self.check(body)
        checks = self.checks
        for name, value in body.items():  # a request has a few fields; the table has many
            check = checks.get(name)
            if check is not None:
                ok, expected = check
                if value is None and name not in ("stream", "cache"):
                    continue
                if not ok(value):
                    raise invalid_request(f"'{name}' must be {expected}, got {type_name(value)} {short(value)}",
                                          name)
        so = body.get("stream_options")
        if isinstance(so, dict) and "include_usage" in so and not isinstance(so["include_usage"], bool):
            raise invalid_request("'stream_options.include_usage' must be a boolean", "stream_options.include_usage")
        return model

    def check(self, body: Mapping[str, Any]) -> None:
        """The endpoint's own required fields."""

    def prompt_text(self, body: Mapping[str, Any]) -> str:
        return ""

    def estimate_prompt_tokens(self, body: Mapping[str, Any]) -> int:
        """Heuristic prompt size: cheap enough for every request (context windows, tpm, budgets)."""
        return estimate_text_tokens(self.prompt_text(body))

    def worst_case_output(self, body: Mapping[str, Any], default: int) -> int:
        """The most output tokens the request may produce (with `default` for a request that sets no limit),
        for budget reservations."""
        return 0

    def upstream_body(self, body: Mapping[str, Any], served_model: str, stream: bool, wants_usage: bool
                      ) -> dict[str, Any]:
        """The body a native upstream receives: the deployment's model, the gateway's own fields removed,
        usage asked for on streams (stripped again unless the client asked)."""
        out = dict(body)
        out["model"] = served_model
        out.pop("cache", None)
        if stream and not wants_usage and self.stream_usage_option:
            so = out.get("stream_options")
            out["stream_options"] = {**so, "include_usage": True} if isinstance(so, dict) else {"include_usage": True}
        return out

    # -- the response ------------------------------------------------------------------------------

    def usage(self, data: Mapping[str, Any] | None) -> Usage | None:
        """Usage from a response object's (or a stream chunk's) `usage`."""
        return usage_from(data)

    def output_text(self, data: Mapping[str, Any]) -> str:
        """All generated text of a plain response (for token estimates)."""
        return ""

    def stream_output(self, chunks: Iterable[Mapping[str, Any]]) -> tuple[str, int]:
        """(generated text, content chunks) of a stream: servers that stream token by token send about one
        content chunk per token."""
        return "", 0

    def estimate_stream_tokens(self, chunks: Iterable[Mapping[str, Any]]) -> tuple[int, str]:
        text, n = self.stream_output(chunks)
        return (max(n, estimate_text_tokens(text)) if text else 0), text

    def upstream_headers(self, headers: Mapping[bytes, bytes]) -> dict[str, str] | None:
        """The client's headers this API passes on to a native upstream (never credentials)."""
        out = {k.decode("latin-1"): v.decode("latin-1") for k in self.passed_headers if (v := headers.get(k))}
        return out or None

    # -- streams -----------------------------------------------------------------------------------

    def new_tally(self, wants_usage: bool) -> Any:
        """What follows a stream of this endpoint while it is forwarded (OpenAI chunks: usage chunk hidden
        unless asked for, `[DONE]` ends it)."""
        return StreamTally(strip_usage=not wants_usage)

    def stream_tail(self, tally: Any) -> bytes:
        """What closes a stream the upstream ended without its own closing event."""
        return b"" if tally.done else DONE

    def stream_error(self, status: int, message: str, type_: str, code: str | None) -> bytes:
        """The events that end a stream that failed after its first byte."""
        return error_event(message, type_, code)

    # -- upstreams that do not speak this API (translated to and from chat/completions) -------------

    def to_chat(self, body: Mapping[str, Any], context: Any) -> dict[str, Any] | None:
        """The chat/completions body for this request; None when the endpoint cannot be translated."""
        return None

    def from_chat(self, reply: Mapping[str, Any], body: Mapping[str, Any], alias: str, context: Any) -> dict[str, Any]:
        raise NotImplementedError

    def chat_stream(self, body: Mapping[str, Any], alias: str, context: Any) -> Any:
        """A translator fed chat.completion.chunk dicts (feed/finish/error → event dicts, encode)."""
        raise NotImplementedError

    def answer_locally(self, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """An answer the gateway gives itself when no deployment serves the endpoint natively (count_tokens)."""
        return None

    # -- follow-ups (Responses: previous_response_id) ------------------------------------------------

    def follow_up_of(self, body: Mapping[str, Any]) -> str | None:
        """The id of an earlier answer this request continues; it must reach the deployment that holds it."""
        return None

    def created_id(self, answer: Mapping[str, Any] | None) -> str | None:
        """The id under which a follow-up can name this answer (a Response's id)."""
        return None

    def conversation(self, body: Mapping[str, Any], answer: Mapping[str, Any], previous: Any) -> Any:
        """The conversation after `answer`, kept for a follow-up on a translated deployment."""
        return None

    # -- the cache ---------------------------------------------------------------------------------

    def semantic_split(self, body: Mapping[str, Any], max_chars: int) -> tuple[dict[str, Any], str] | None:
        """(the body with its semantic text replaced by a marker, that text) when the semantic cache may
        compare this request by meaning; None when only exact matches apply."""
        return None
