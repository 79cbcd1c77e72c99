"""Settings of the simulator: static options (CLI only) and the runtime-tunable config.

The runtime config (`SimConfig`) is what `POST /sim/config` changes and what a request's
`"sim": {...}` body field overrides for that one request.
"""

from __future__ import annotations

import dataclasses
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.simulator.engine import EngineParams

# Fault names; "none" (or null) means no fault.
FAULTS: tuple[str, ...] = ("500", "502", "503", "429", "hang", "drop", "reset", "context", "truncate")
DROP_FAULTS: frozenset[str] = frozenset({"drop", "reset"})
ERROR_STYLES: tuple[str, ...] = ("flat", "nested")


@dataclass(frozen=True)
class SimConfig:
    """Behaviour that can change at run time (`POST /sim/config`) or per request (`"sim": {...}`)."""

    fault: str | None = None  # one of FAULTS, None = healthy
    fault_rate: float = 1.0  # probability that a request gets `fault`
    fault_after_tokens: int | None = None  # streaming: fire the fault after this many token chunks
    ttft: float = 0.0  # seconds before the first token
    tps: float = 0.0  # tokens per second after the first; 0 = as fast as possible
    no_stream_usage: bool = False  # llama.cpp-like: ignore stream_options.include_usage
    retry_after: float = 1.0  # Retry-After header (seconds) of the 429 fault
    default_tokens: int = 16  # completion tokens when the request has no max_tokens
    max_model_len: int = 8192  # context window: prompt + completion tokens
    reply: tuple[str, ...] | None = None  # the completion's tokens, verbatim (instead of generated words)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def merged(self, overrides: Mapping[str, Any]) -> SimConfig:
        """A copy with validated overrides applied; a fault given without a rate fires always."""
        values = parse_overrides(overrides)
        if "fault" in values and "fault_rate" not in values:
            values["fault_rate"] = 1.0
        return dataclasses.replace(self, **values) if values else self


@dataclass(frozen=True)
class GpuInfo:
    """Identity of a simulated GPU as NVIDIA's dcgm-exporter labels it."""

    index: int
    model_name: str
    hostname: str
    memory_mib: int

    @property
    def uuid(self) -> str:
        return "GPU-" + str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{self.hostname}/gpu{self.index}"))


@dataclass(frozen=True)
class SimOptions:
    """Everything fixed at start (CLI flags) plus the initial runtime config."""

    models: tuple[str, ...] = ("sim-model",)
    strict_models: bool = False
    embedding_dim: int = 384
    error_style: str = "flat"  # "flat" = vLLM <= 0.9 `{"object":"error",...}`, "nested" = `{"error":{...}}`
    max_num_seqs: int = 256  # concurrent requests generating; more wait (vllm:num_requests_waiting)
    kv_cache_tokens: int = 65536  # KV cache capacity used for vllm:kv_cache_usage_perc
    dcgm: bool = True  # serve DCGM_FI_DEV_* series on /metrics
    gpu_indices: tuple[int, ...] = (0,)
    gpu_model: str = "NVIDIA H100 80GB HBM3"
    gpu_memory_mib: int = 81559
    hostname: str = field(default_factory=socket.gethostname)
    seed: int = 0
    config: SimConfig = field(default_factory=SimConfig)
    engine: EngineParams | None = None  # the engine model (gateway/simulator/engine.py); None = ttft/tps timing
    prompt_tokens_details: bool = False  # vLLM's --enable-prompt-tokens-details: usage.prompt_tokens_details
    serve_metrics: bool = True  # False: no /metrics (404), like an OpenAI-compatible server without Prometheus

    def gpus(self) -> tuple[GpuInfo, ...]:
        return tuple(GpuInfo(i, self.gpu_model, self.hostname, self.gpu_memory_mib) for i in self.gpu_indices)


def parse_fault(value: Any) -> str | None:
    if value is None or value == "" or value == "none":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str) and value in FAULTS:
        return value
    raise ValueError(f"fault must be one of none, {', '.join(FAULTS)}; got {value!r}")


def _number(name: str, value: Any, *, minimum: float = 0.0, maximum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number; got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise ValueError(f"{name} must be {bound}; got {value!r}")
    return float(value)


def _integer(name: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return value


def parse_overrides(data: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a partial SimConfig (from JSON); raises ValueError naming the bad key."""
    if not isinstance(data, Mapping):
        raise ValueError("sim config must be a JSON object")
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key == "fault":
            out[key] = parse_fault(value)
        elif key == "fault_rate":
            out[key] = _number(key, value, maximum=1.0)
        elif key == "fault_after_tokens":
            out[key] = None if value is None else _integer(key, value, minimum=-1)
        elif key in ("ttft", "tps", "retry_after"):
            out[key] = _number(key, value)
        elif key == "no_stream_usage":
            if not isinstance(value, bool):
                raise ValueError(f"no_stream_usage must be true or false; got {value!r}")
            out[key] = value
        elif key in ("default_tokens", "max_model_len"):
            out[key] = _integer(key, value, minimum=1)
        elif key == "reply":
            if value is not None and not (
                isinstance(value, list) and value and all(isinstance(t, str) for t in value)
            ):
                raise ValueError(f"reply must be a non-empty list of token strings or null; got {value!r}")
            out[key] = None if value is None else tuple(value)
        else:
            names = ", ".join(f.name for f in dataclasses.fields(SimConfig))
            raise ValueError(f"unknown sim config key {key!r}; known: {names}")
    return out
