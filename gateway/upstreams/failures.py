"""Why an upstream attempt failed, and what follows from it: one table (`POLICIES`) from the kind of
failure to whether another deployment may be tried, whether it counts toward the deployment's
cooldown, how loudly it is logged, and what the client finally sees when every attempt failed.

`UpstreamError` is what every upstream (native or litellm) raises; `AttemptsFailed` keeps every attempt
(deployment, failure) of a request for the log, where the client's message names only the alias.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

import orjson


class Failure(StrEnum):
    CONNECT = "connect"  # no connection (refused, DNS, reset before a reply)
    TIMEOUT = "timeout"  # no answer (or no first byte) in time
    DROP = "drop"  # the reply broke off
    SERVER = "server_error"  # HTTP 5xx
    RATE_LIMITED = "rate_limited"  # HTTP 429
    MISCONFIGURED = "misconfigured"  # HTTP 401/403/404/408: the deployment's key, model or URL, not the client
    CONTEXT = "context_length"  # the prompt does not fit the model's context window
    CLIENT = "client_error"  # any other 4xx: the client's request, passed on as a 400


@dataclass(frozen=True, slots=True)
class Policy:
    retryable: bool  # another deployment (or a retry) may succeed
    cooldown: bool  # counts toward allowed_fails → cooldown of the deployment
    log_level: int
    status: int  # what the client sees when this was the last failure: 502 upstream, 504 timeout, 429, 400


POLICIES: Mapping[Failure, Policy] = {
    Failure.CONNECT: Policy(True, True, logging.WARNING, 502),
    Failure.TIMEOUT: Policy(True, True, logging.WARNING, 504),
    Failure.DROP: Policy(True, True, logging.WARNING, 502),
    Failure.SERVER: Policy(True, True, logging.WARNING, 502),
    Failure.RATE_LIMITED: Policy(True, True, logging.INFO, 429),
    Failure.MISCONFIGURED: Policy(True, True, logging.ERROR, 502),
    Failure.CONTEXT: Policy(False, False, logging.INFO, 400),
    Failure.CLIENT: Policy(False, False, logging.INFO, 400),
}

_CONTEXT_MARKERS = (
    "maximum context length", "context length", "context_length_exceeded", "context window",
    "prompt is too long", "input is too long", "too many tokens", "exceed context window",
    "exceeds the context", "input_tokens", "max_model_len",
)


def is_context_error(status: int, body: bytes) -> bool:
    if status not in (400, 413, 422):
        return False
    text = body[:4096].decode("utf-8", "replace").lower()
    return any(marker in text for marker in _CONTEXT_MARKERS)


def upstream_message(body: bytes) -> str:
    """The human message of an upstream error body, whatever its shape; never the raw bytes."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body[:300].decode("utf-8", "replace").strip()
        return text or "the upstream gave no error message"
    if isinstance(data, Mapping):
        err = data.get("error", data)
        if isinstance(err, Mapping):
            msg = err.get("message") or err.get("detail") or err.get("msg")
            if isinstance(msg, str):
                return msg[:1000]
        elif isinstance(err, str):
            return err[:1000]
        detail = data.get("detail") or data.get("message")
        if isinstance(detail, str):
            return detail[:1000]
    return "the upstream gave no error message"


def upstream_param_code(body: bytes) -> tuple[str | None, str | None]:
    """The `param` and `code` of an OpenAI-shaped upstream error (`{"error": {"message": ...}}`, or vLLM's
    flat `{"object": "error", "message": ...}`); None where absent or not a string (vLLM's `code` is the
    HTTP status, which the client already has)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None
    err = data.get("error", data) if isinstance(data, Mapping) else None
    if not isinstance(err, Mapping) or not isinstance(err.get("message"), str):
        return None, None
    param, code = err.get("param"), err.get("code")
    return (param[:200] if isinstance(param, str) else None, code[:200] if isinstance(code, str) else None)


def classify(kind: str, status: int | None, body: bytes) -> Failure:
    if kind != "status" or status is None:
        return Failure(kind)
    if status == 429:
        return Failure.RATE_LIMITED
    if status >= 500:
        return Failure.SERVER
    if is_context_error(status, body):
        return Failure.CONTEXT
    if status in (401, 403, 404, 408):
        return Failure.MISCONFIGURED
    return Failure.CLIENT


class UpstreamError(Exception):
    """An upstream attempt failed. kind: connect | timeout | drop | status (with the HTTP status)."""

    def __init__(self, kind: str, message: str, status: int | None = None, body: bytes = b"",
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.body = body
        self.retry_after = retry_after
        self.failure = classify(kind, status, body)
        self.policy = POLICIES[self.failure]

    @property
    def context_exceeded(self) -> bool:
        return self.failure is Failure.CONTEXT

    @property
    def retryable(self) -> bool:
        return self.policy.retryable

    @property
    def reason(self) -> str:
        """The `reason` label of oss_retries_total / oss_fallbacks_total."""
        if self.kind == "status":
            return "rate_limited" if self.status == 429 else f"http_{self.status}"
        return self.kind

    def describe(self) -> str:
        return f"HTTP {self.status}" if self.kind == "status" else str(self)


@dataclass(frozen=True, slots=True)
class Attempt:
    deployment: str
    error: UpstreamError


class AttemptsFailed(Exception):
    """Every attempt at an alias failed: the attempts (for the log) and the last one (for the client)."""

    def __init__(self, alias: str, attempts: list[Attempt]) -> None:
        self.alias = alias
        self.attempts = attempts
        super().__init__(self.summary())

    @property
    def last(self) -> UpstreamError:
        return self.attempts[-1].error

    def summary(self) -> str:
        return "; ".join(f"{a.deployment}: {a.error.describe()}" for a in self.attempts)
