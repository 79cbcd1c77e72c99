"""Request bodies in, client errors out: the body parsed once with its nesting bounded (safejson), and an
upstream's client error passed on in the OpenAI shape. Each endpoint validates its own fields
(gateway/endpoints)."""

from __future__ import annotations

from typing import Any

import orjson

from gateway import safejson
from gateway.errors import GatewayError, invalid_request
from gateway.upstreams.failures import upstream_message, upstream_param_code


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


def error_for_status(status: int, message: str, param: str | None = None, code: str | None = None) -> GatewayError:
    """A client error an upstream returned (e.g. 400 bad parameter), passed on in OpenAI shape."""
    if status == 413:
        return GatewayError(413, message, "invalid_request_error", param, code or "request_too_large")
    if status == 422:
        status = 400
    return GatewayError(status, message, "invalid_request_error", param, code)


def upstream_client_error(status: int, body: bytes) -> GatewayError:
    """An upstream's client error from its raw body: its message, and its `param` and `code` when the body
    is OpenAI-shaped (vLLM: `param: "max_tokens"`)."""
    return error_for_status(status, upstream_message(body), *upstream_param_code(body))
