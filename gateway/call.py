"""One client request as it goes through the gateway: the leaf context every request-path module shares."""

from __future__ import annotations

import asyncio
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from gateway.asgi import Headers
from gateway.auth import Caller
from gateway.config import Deployment
from gateway.endpoints import Endpoint
from gateway.metrics import UNKNOWN_ALIAS

_UUID = re.compile(r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}")
_CACHE_HEADERS = {status: (b"x-gateway-cache", status.upper().replace("_", "-").encode())
                  for status in ("hit", "semantic_hit", "miss", "bypass")}


@dataclass(slots=True)
class Call:
    api: Endpoint
    request_id: str
    started: float
    headers: dict[bytes, bytes]
    body: dict[str, Any] = field(default_factory=dict)
    alias: str = UNKNOWN_ALIAS  # a configured alias or UNKNOWN_ALIAS: the only alias used as a label value
    requested: str = ""  # the client's `model`, for error messages only
    stream: bool = False
    wants_usage: bool = False
    caller: Caller | None = None
    cache_status: str = "bypass"
    deployment: Deployment | None = None
    upstream_wait: float = 0.0
    first_byte_at: float | None = None
    status: int = 200
    response_started: bool = False
    client_gone: bool = False
    prompt_estimate: int | None = None
    cache_req: Any = None  # the cache's view of the request, from lookup to store
    completing: bool = False  # the last write of the response has begun
    watcher: asyncio.Task[None] | None = None  # watches for a client disconnect
    ticket: Any = None  # keys.Ticket: the key/team admission to settle when the request ends
    pinned: str | None = None  # a follow-up: the deployment that holds the answer it continues
    context: Any = None  # a follow-up on a translated deployment: the conversation so far
    mirror: Any = None  # rollout.shadow.Mirror: this request is mirrored; what the primary did goes there
    canary: Any = None  # rollout.canary.CanaryState: this request went to the alias's canary at that step
    canary_failed: bool = False  # the canary alias failed it (the alias itself may still have answered)

    @property
    def endpoint(self) -> str:
        return self.api.name

    def estimate_prompt(self) -> int:
        """The heuristic prompt size, computed once per request."""
        if self.prompt_estimate is None:
            self.prompt_estimate = self.api.estimate_prompt_tokens(self.body)
        return self.prompt_estimate

    @property
    def upstream_request_id(self) -> str:
        """The id sent upstream: the request id when it is a UUID (llama.cpp's server refuses anything
        else with a bare 400), else a UUID derived from it, so the two can still be matched."""
        if _UUID.fullmatch(self.request_id):
            return self.request_id
        return uuid.uuid5(uuid.NAMESPACE_URL, self.request_id).hex

    @property
    def team(self) -> str:
        return self.caller.team if self.caller else ""

    @property
    def key(self) -> str:
        return self.caller.key_alias if self.caller else ""

    def response_headers(self, dep: Deployment | None) -> Headers:
        """design.md §5: x-request-id, x-gateway-cache and (when one served it) x-gateway-deployment."""
        hs = [(b"x-request-id", self.request_id.encode("latin-1")), _CACHE_HEADERS[self.cache_status]]
        if dep is not None:
            hs.append((b"x-gateway-deployment", dep.id.encode("latin-1", "replace")))
        return hs
