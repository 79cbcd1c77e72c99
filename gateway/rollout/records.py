"""One comparison record: the same request as the primary alias served it and as its shadow did.

Written by the gateway when both sides of a mirrored request are done (gateway/rollout/shadow.py), kept in
the shared store (gateway/rollout/comparisons.py), read back by `gateway compare` through
`GET /admin/comparisons`. The dict form (`to_dict` / `from_dict`) is that endpoint's JSON contract.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Side:
    """How one side (primary or shadow) served the request."""

    alias: str
    deployment: str  # model_info.id ("" when no deployment took it)
    model: str  # the served model name
    status: int  # HTTP status this side ended with (499/5xx... ; 0 = never sent)
    latency_s: float  # whole call, request sent to last byte
    ttft_s: float | None  # streamed calls: time to the first token; None when not streamed
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float  # at the deployment's list price (input/output_cost_per_token)
    gpu_usd_per_hour: float | None  # gpu_hourly_cost_usd x gpu_count of the deployment, if self-hosted
    error: str | None = None  # why it failed ("timeout", "http_503", "connect", ...), None when it did not

    @property
    def ok(self) -> bool:
        return self.error is None and 200 <= self.status < 300


@dataclass(frozen=True, slots=True)
class Comparison:
    ts: float  # unix time the primary request started
    endpoint: str  # chat, completions, embeddings, responses, messages
    primary: Side
    shadow: Side
    agreement: float | None = None  # 0..1; None when it could not be judged (a side failed, no text)
    method: str | None = None  # "exact" (short answers), "json", "cosine" (embeddings), "lexical", "judge"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Comparison:
        return Comparison(ts=float(data["ts"]), endpoint=str(data["endpoint"]), primary=Side(**data["primary"]),
                          shadow=Side(**data["shadow"]), agreement=data.get("agreement"),
                          method=data.get("method"))
