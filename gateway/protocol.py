"""Validation of OpenAI request bodies on the hot path: plain dict checks that name the field.

Only what the gateway itself relies on, or what would otherwise reach an upstream as an obvious
client mistake, is checked; every other field passes through untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson

from gateway import safejson
from gateway.errors import GatewayError, invalid_request

ENDPOINTS = ("chat", "completions", "embeddings")


def too_deep(limit: int) -> GatewayError:
    return invalid_request(f"Request body is nested deeper than {limit} levels of objects and arrays",
                           None, "json_too_deep")


def parse_json_body(raw: bytes, max_depth: int = safejson.DEFAULT_MAX_DEPTH) -> dict[str, Any]:
    """The body as a dict: nesting checked before the parse (safejson), 400 in OpenAI shape otherwise."""
    if not raw:
        raise invalid_request("Request body is empty: expected a JSON object")
    try:
        body = safejson.loads(raw, max_depth)
    except safejson.TooDeep:
        raise too_deep(max_depth) from None
    except orjson.JSONDecodeError as exc:
        raise invalid_request(f"Request body is not valid JSON: {exc.args[0] if exc.args else 'parse error'}") \
            from None
    if not isinstance(body, dict):
        raise invalid_request(f"Request body must be a JSON object, got {type(body).__name__}")
    return body


def _type_name(v: Any) -> str:
    if v is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "object"}.get(type(v), type(v).__name__)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "stream": (lambda v: isinstance(v, bool), "a boolean"),
    "stream_options": (lambda v: isinstance(v, dict), "an object"),
    "n": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "max_tokens": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "max_completion_tokens": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "temperature": (lambda v: _is_number(v) and 0 <= v <= 2, "a number between 0 and 2"),
    "top_p": (lambda v: _is_number(v) and 0 <= v <= 1, "a number between 0 and 1"),
    "presence_penalty": (lambda v: _is_number(v) and -2 <= v <= 2, "a number between -2 and 2"),
    "frequency_penalty": (lambda v: _is_number(v) and -2 <= v <= 2, "a number between -2 and 2"),
    "seed": (_is_int, "an integer"),
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


def _check_messages(messages: Any) -> None:
    if messages is None:
        raise invalid_request("Missing required parameter: 'messages'", "messages")
    if not isinstance(messages, list):
        raise invalid_request(f"'messages' must be an array of message objects, got {_type_name(messages)}",
                              "messages")
    if not messages:
        raise invalid_request("'messages' must contain at least one message", "messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise invalid_request(f"'messages[{i}]' must be an object, got {_type_name(m)}", f"messages[{i}]")
        role = m.get("role")
        if not isinstance(role, str) or not role:
            raise invalid_request(f"Missing required parameter: 'messages[{i}].role'", f"messages[{i}].role")
        content = m.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise invalid_request(f"'messages[{i}].content' must be a string or an array, got {_type_name(content)}",
                                  f"messages[{i}].content")


def validate(endpoint: str, body: Mapping[str, Any]) -> str:
    """Check a parsed body for `endpoint`; returns the alias (`model`). Raises GatewayError (400)."""
    model = body.get("model")
    if model is None:
        raise invalid_request("Missing required parameter: 'model'", "model")
    if not isinstance(model, str) or not model:
        raise invalid_request(f"'model' must be a non-empty string, got {_type_name(model)}", "model")
    if endpoint == "chat":
        _check_messages(body.get("messages"))
    elif endpoint == "completions":
        prompt = body.get("prompt")
        if prompt is None:
            raise invalid_request("Missing required parameter: 'prompt'", "prompt")
        if not isinstance(prompt, (str, list)):
            raise invalid_request(f"'prompt' must be a string or an array, got {_type_name(prompt)}", "prompt")
    elif endpoint == "embeddings":
        inp = body.get("input")
        if inp is None:
            raise invalid_request("Missing required parameter: 'input'", "input")
        if not isinstance(inp, (str, list)) or (isinstance(inp, list) and not inp):
            raise invalid_request("'input' must be a string or a non-empty array", "input")
        if "stream" in body and body["stream"]:
            raise invalid_request("'stream' is not supported for embeddings", "stream")
    for name, value in body.items():  # a request has a few fields; _CHECKS has many
        check = _CHECKS.get(name)
        if check is not None:
            ok, expected = check
            if value is None and name not in ("stream", "cache"):
                continue
            if not ok(value):
                raise invalid_request(f"'{name}' must be {expected}, got {_type_name(value)} {_short(value)}", name)
    so = body.get("stream_options")
    if isinstance(so, dict) and "include_usage" in so and not isinstance(so["include_usage"], bool):
        raise invalid_request("'stream_options.include_usage' must be a boolean", "stream_options.include_usage")
    return model


def _short(value: Any) -> str:
    """At most 40 characters of a client's value for an error message; never raises."""
    try:
        text = repr(value[:41]) if isinstance(value, str) else orjson.dumps(value).decode()
    except Exception:  # noqa: BLE001 - an error message must not fail in turn (e.g. orjson's depth limit)
        return f"({_type_name(value)})"
    return text if len(text) <= 40 else text[:37] + "..."


def error_for_status(status: int, message: str) -> GatewayError:
    """A client error an upstream returned (e.g. 400 bad parameter), passed on in OpenAI shape."""
    if status == 413:
        return GatewayError(413, message, "invalid_request_error", None, "request_too_large")
    if status == 422:
        status = 400
    return GatewayError(status, message, "invalid_request_error", None, None)
