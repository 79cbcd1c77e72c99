"""What every upstream (native OpenAI-compatible, litellm) looks like to the request path: `send` takes
a deployment and an `UpstreamRequest` and returns an `UpstreamReply` (plain) or an open `EventStream`
(streaming), or raises `UpstreamError`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.config import Deployment


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    endpoint: str  # the endpoint's name in the registry ("chat", "completions", "embeddings", …)
    path: str  # the path below the deployment's api_base ("/chat/completions")
    body: Mapping[str, Any]  # the client's body, parsed; each upstream builds its own request from it
    payload: bytes  # the body as a native upstream receives it (model substituted, usage asked for)
    stream: bool
    request_id: str
    first_byte_timeout: float | None  # stream_timeout: bound on the wait for a stream's first byte
    headers: Mapping[str, str] | None = None  # client headers the endpoint passes on (anthropic-version, …)


@dataclass(slots=True)
class UpstreamReply:
    status: int
    body: bytes
    elapsed: float  # seconds waiting on the upstream


class EventStream(Protocol):
    """An open upstream stream: `first` is the first piece of body, `read()` the next pieces as they
    arrive (b"" at the end; UpstreamError when it breaks)."""

    first: bytes
    first_byte_elapsed: float

    async def read(self) -> bytes: ...

    def close(self) -> None:
        """Abort: the upstream stops generating."""

    def release(self) -> None:
        """The stream ended normally; its connection may be reused."""


class Upstream(Protocol):
    async def send(self, dep: Deployment, req: UpstreamRequest) -> UpstreamReply | EventStream: ...
