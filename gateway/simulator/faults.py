"""Error bodies as vLLM writes them, and the messages of the injected faults."""

from __future__ import annotations

import random
from collections.abc import Mapping
from types import MappingProxyType

import orjson

from gateway import sse
from gateway.simulator.config import SimConfig

ERROR_TYPES: Mapping[int, str] = MappingProxyType(
    {
        400: "BadRequestError",
        404: "NotFoundError",
        429: "RateLimitError",
        500: "InternalServerError",
        502: "BadGatewayError",
        503: "ServiceUnavailableError",
    }
)
FAULT_MESSAGES: Mapping[str, str] = MappingProxyType(
    {
        "500": "Simulated fault: EngineCore encountered an issue. See stack trace (above) for the root cause.",
        "502": "Simulated fault: bad gateway.",
        "503": "Simulated fault: the engine is not ready, service unavailable.",
        "429": "Simulated fault: too many requests, please retry later.",
    }
)


class SimError(Exception):
    """An error answer: HTTP status and message (vLLM's ErrorResponse)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_dict(status: int, message: str, style: str) -> dict[str, object]:
    """`flat` is vLLM <= 0.9 (`{"object":"error",...}`); `nested` is newer vLLM / OpenAI (`{"error":{...}}`)."""
    err_type = ERROR_TYPES.get(status, "InternalServerError")
    if style == "nested":
        return {"error": {"message": message, "type": err_type, "param": None, "code": status}}
    return {"object": "error", "message": message, "type": err_type, "param": None, "code": status}


def error_body(status: int, message: str, style: str) -> bytes:
    return orjson.dumps(error_dict(status, message, style))


def stream_error_event(status: int, message: str) -> bytes:
    """What vLLM writes when generation fails after the stream started (then `data: [DONE]`)."""
    flat = error_dict(status, message, "flat")
    return sse.encode_json({"error": flat})


def context_message(max_model_len: int, prompt_tokens: int, max_tokens: int | None) -> str:
    """vLLM's context-length error text (serving_engine._validate_input)."""
    if max_tokens is None:
        return (
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{prompt_tokens} tokens in the messages, Please reduce the length of the messages."
        )
    return (
        f"This model's maximum context length is {max_model_len} tokens. However, you requested "
        f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in the "
        "completion). Please reduce the length of the messages or completion."
    )


def embedding_context_message(max_model_len: int, tokens: int) -> str:
    return (
        f"This model's maximum context length is {max_model_len} tokens. However, you requested "
        f"{tokens} tokens in the input for embedding generation. Please reduce the length of the input."
    )


def pick_fault(config: SimConfig, rng: random.Random) -> str | None:
    fault = config.fault
    if fault is None or config.fault_rate <= 0.0:
        return None
    if config.fault_rate >= 1.0 or rng.random() < config.fault_rate:
        return fault
    return None


def fault_status(fault: str) -> int:
    """HTTP status of an error fault ("context" answers 400)."""
    return 400 if fault == "context" else int(fault)
