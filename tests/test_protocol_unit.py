"""An upstream's client error passed on: its message, and its `param` and `code` when OpenAI-shaped."""

from __future__ import annotations

import orjson
import pytest

from gateway.protocol import upstream_client_error

VLLM_NEW = b'{"error": {"message": "max_tokens must be at least 1, got 0.", "type": "BadRequestError", ' \
           b'"param": "max_tokens", "code": 400}}'
VLLM_OLD = b'{"object": "error", "message": "max_tokens must be at least 1, got 0.", "type": "BadRequestError", ' \
           b'"param": "max_tokens", "code": 400}'


def error(status: int, body: bytes) -> tuple[int, dict[str, object]]:
    err = upstream_client_error(status, body)
    return err.status, orjson.loads(err.body())["error"]


@pytest.mark.parametrize("body", [VLLM_NEW, VLLM_OLD])
def test_vllm_param_kept_and_numeric_code_dropped(body: bytes) -> None:
    status, err = error(400, body)
    assert status == 400
    assert err == {"message": "max_tokens must be at least 1, got 0.", "type": "invalid_request_error",
                   "param": "max_tokens", "code": None}


def test_openai_string_code_kept() -> None:
    _, err = error(400, b'{"error": {"message": "bad n", "type": "invalid_request_error", "param": "n", '
                        b'"code": "invalid_value"}}')
    assert (err["param"], err["code"]) == ("n", "invalid_value")


@pytest.mark.parametrize("body", [b"Bad Request", b'{"detail": "bad"}', b'{"error": "bad"}', b"[1, 2]",
                                  b'{"param": "x", "code": "y"}'])
def test_other_shapes_have_no_param_or_code(body: bytes) -> None:
    _, err = error(400, body)
    assert (err["param"], err["code"]) == (None, None)
    assert err["type"] == "invalid_request_error"


def test_413_and_422() -> None:
    assert error(413, b"too big") == (413, {"message": "too big", "type": "invalid_request_error", "param": None,
                                            "code": "request_too_large"})
    status, err = error(422, b'{"detail": "unprocessable"}')
    assert status == 400 and err["message"] == "unprocessable"
