"""The error shapes of design.md §3 (OpenAI's; Anthropic's on /v1/messages) and the exception that
carries them."""

from __future__ import annotations

import orjson

# Anthropic's error types by HTTP status (https://docs.anthropic.com/en/api/errors)
ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                   404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                   500: "api_error", 502: "api_error", 503: "overloaded_error", 504: "api_error",
                   529: "overloaded_error"}


def anthropic_type(status: int) -> str:
    return ANTHROPIC_TYPES.get(status, "invalid_request_error" if 400 <= status < 500 else "api_error")


class GatewayError(Exception):
    """An error that reaches the client as `{"error": {...}}` with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self, style: str = "openai") -> bytes:
        if style == "anthropic":
            return orjson.dumps({"type": "error", "error": {"type": anthropic_type(self.status),
                                                            "message": self.message}})
        return error_body(self.message, self.type, self.param, self.code)

    def header_list(self) -> list[tuple[bytes, bytes]]:
        return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()]


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> GatewayError:
    return GatewayError(400, message, "invalid_request_error", param, code)


def authentication_error(message: str) -> GatewayError:
    return GatewayError(401, message, "authentication_error", None, "invalid_api_key")


def permission_denied(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(403, message, "permission_denied", param, "permission_denied")


def model_not_found(alias: str, available: list[str]) -> GatewayError:
    listed = ", ".join(sorted(available)) or "(none)"
    return GatewayError(
        404,
        f"The model '{alias}' does not exist or you do not have access to it. Available models: {listed}",
        "invalid_request_error",
        "model",
        "model_not_found",
    )


def body_too_large(limit: int) -> GatewayError:
    return GatewayError(413, f"Request body is larger than the limit of {limit} bytes", "invalid_request_error",
                        None, "request_too_large")


def rate_limited(message: str, retry_after: float) -> GatewayError:
    seconds = max(1, int(retry_after + 0.999))
    return GatewayError(429, message, "rate_limit_error", None, "rate_limit_exceeded",
                        {"Retry-After": str(seconds)})


def upstream_failed(message: str) -> GatewayError:
    return GatewayError(502, message, "upstream_error", None, "upstream_error", {"x-should-retry": "false"})


def unavailable(message: str, retry_after: float | None = None) -> GatewayError:
    headers = {"Retry-After": str(max(1, int(retry_after + 0.999)))} if retry_after else None
    return GatewayError(503, message, "service_unavailable", None, "no_healthy_deployment", headers)


def timed_out(message: str) -> GatewayError:
    return GatewayError(504, message, "timeout", None, "timeout")


def not_found(message: str) -> GatewayError:
    return GatewayError(404, message, "invalid_request_error", None, "not_found")
