"""What the request path needs of the semantic side, wherever it runs (`semantic.SemanticIndex` in this
process, `client.RemoteSemantic` in the replica's cache process): the interface, its result and its
errors.  Deliberately light: a worker that talks to a cache process never imports the index, the
matcher or numpy."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any, Protocol


class SemanticUnavailable(Exception):  # noqa: N818 - reads as a state
    """The semantic side cannot answer now (cache process down or too slow): the request bypasses."""


class SemanticBusy(SemanticUnavailable):
    """The embedder could not answer before the caller's deadline: refused at once (or dropped from the
    queue once expired) instead of computing answers nobody waits for."""


@dataclass(frozen=True)
class Match:
    key: str
    probability: float
    cosine: float


class SemanticBackend(Protocol):
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def wait_ready(self, timeout: float) -> None: ...
    async def embed(self, text: str) -> bytes: ...
    async def match(self, namespace: str, partition: str, text: str, vec: bytes | None,
                    k: int) -> tuple[bytes, list[Match]]: ...
    async def add(self, namespace: str, partition: str, key: str, text: str, created: float,
                  expires_at: float | None, vec: bytes) -> None: ...
    def remove(self, namespace: str, partition: str, key: str) -> None: ...
    def touch(self, namespace: str, partition: str, key: str) -> None: ...
    async def drop_namespace(self, namespace: str | None) -> None: ...
    def entries(self) -> int | None: ...


async def cancel_all(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel background tasks and wait for them to end (whatever they raise), then forget them."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    tasks.clear()
