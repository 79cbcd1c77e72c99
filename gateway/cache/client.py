"""A worker's side of the replica's cache process: one multiplexed Unix-socket connection.

Every failure (no process, a dead connection, a reply slower than ``timeout``) raises
`SemanticUnavailable`, which the cache turns into a bypass: a request never fails because of the
cache process.  A lost connection is re-established on a later call (at most every
``RECONNECT_INTERVAL``); the supervisor restarts the process itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import time
from typing import Any

from .backend import Match, SemanticUnavailable
from .protocol import Op, ProtocolError, pack, read_frame, read_frame_sync
from .store import Entry

log = logging.getLogger("gateway.cache")

RECONNECT_INTERVAL = 0.2


class CacheClient:
    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[int, asyncio.Future[tuple[int, dict[str, Any], list[bytes]]]] = {}
        self._ids = itertools.count(1)
        self._read_task: asyncio.Task[None] | None = None
        self._connecting: asyncio.Task[bool] | None = None
        self._next_attempt = 0.0
        self._was_up: bool | None = None
        self._closed = False

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def connect(self, wait: float = 0.0) -> bool:
        """Connect now; with ``wait``, keep trying that long (a worker starting with its cache process)."""
        deadline = time.monotonic() + wait
        while True:
            last = time.monotonic() >= deadline or self._closed
            if await self._try_connect(quiet=not last):
                return True
            if last:
                return False
            await asyncio.sleep(0.05)

    async def _try_connect(self, quiet: bool = False) -> bool:
        if self.connected:
            return True
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(self.path), self.timeout)
        except (TimeoutError, OSError) as exc:
            if not quiet:
                self._set_state(False, exc)
            return False
        self._reader, self._writer = reader, writer
        self._read_task = asyncio.create_task(self._read_loop(reader, writer), name="cache-client-read")
        self._set_state(True)
        return True

    def _set_state(self, up: bool, exc: BaseException | None = None) -> None:
        if up == self._was_up:
            return
        if up:
            if self._was_up is not None:
                log.warning("cache process is reachable again: semantic cache resumed")
        else:
            log.warning("cache process unreachable (%r): requests bypass the semantic cache", exc)
        self._was_up = up

    async def _read_loop(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        error: BaseException = ConnectionError("cache process closed the connection")
        try:
            while True:
                rid, op, meta, blobs = await read_frame(reader)
                fut = self._pending.pop(rid, None)
                if fut is not None and not fut.done():
                    fut.set_result((op, meta, blobs))
        except asyncio.CancelledError:
            raise
        except (OSError, asyncio.IncompleteReadError, ProtocolError) as exc:
            error = exc
        finally:
            if self._writer is writer:
                self._reader = self._writer = None
                self._next_attempt = time.monotonic() + RECONNECT_INTERVAL
            with contextlib.suppress(Exception):
                writer.close()
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(SemanticUnavailable(f"cache process connection lost: {error!r}"))
            self._pending.clear()
            if not self._closed:
                self._set_state(False, error)

    async def _ensure(self) -> asyncio.StreamWriter:
        if self.connected:
            assert self._writer is not None
            return self._writer
        if self._closed or time.monotonic() < self._next_attempt:
            raise SemanticUnavailable("cache process unreachable")
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.create_task(self._try_connect())
        ok = await asyncio.shield(self._connecting)
        if not ok or self._writer is None:
            self._next_attempt = time.monotonic() + RECONNECT_INTERVAL
            raise SemanticUnavailable("cache process unreachable")
        return self._writer

    async def call(self, op: Op, meta: dict[str, Any] | None = None,
                   blobs: tuple[bytes, ...] = ()) -> tuple[dict[str, Any], list[bytes]]:
        writer = await self._ensure()
        rid = next(self._ids) & 0xFFFFFFFF or 1
        fut: asyncio.Future[tuple[int, dict[str, Any], list[bytes]]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        try:
            writer.write(pack(rid, op, meta, blobs))
            op_back, reply, reply_blobs = await asyncio.wait_for(fut, self.timeout)
        except TimeoutError as exc:
            raise SemanticUnavailable(f"cache process slower than {self.timeout:g}s") from exc
        except (OSError, ProtocolError) as exc:
            raise SemanticUnavailable(repr(exc)) from exc
        finally:
            self._pending.pop(rid, None)
        if op_back == Op.ERR:
            raise SemanticUnavailable(f"cache process error: {reply.get('e')}")
        return reply, reply_blobs

    def deadline(self) -> float:
        """Wall-clock time after which an answer is no use (same host: the cache process drops the work)."""
        return time.time() + 0.9 * self.timeout

    def send(self, op: Op, meta: dict[str, Any]) -> None:
        """Fire and forget (no reply): dropped when not connected."""
        if self.connected:
            assert self._writer is not None
            with contextlib.suppress(Exception):
                self._writer.write(pack(0, op, meta))

    def stats_sync(self, timeout: float = 0.25) -> dict[str, Any] | None:
        """STATS over a short blocking connection (the scrape-time gauge); None when unreachable."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(self.path)
                sock.sendall(pack(1, Op.STATS))
                _rid, op, meta, _ = read_frame_sync(sock)
        except (OSError, ProtocolError, ValueError):
            return None
        return meta if op == Op.OK else None

    async def close(self) -> None:
        self._closed = True
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
        if self._read_task is not None:
            self._read_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._read_task


class RemoteSemantic:
    """`SemanticBackend` answered by the cache process.  With ``embedder`` (an embeddings alias) the worker
    embeds and sends vectors; without, the cache process embeds (MiniLM, once per replica)."""

    def __init__(self, client: CacheClient, embedder: Any | None = None) -> None:
        self.client = client
        self.embedder = embedder

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(SemanticUnavailable):
                reply, _ = await self.client.call(Op.STATS)
                if reply.get("ready"):
                    return
            if time.monotonic() > deadline:
                raise TimeoutError("cache process not ready")
            await asyncio.sleep(0.05)

    async def _local_vec(self, text: str) -> bytes:
        vec = (await self.embedder.embed([text]))[0]
        return bytes(vec.astype("<f2").tobytes())

    async def embed(self, text: str) -> bytes:
        if self.embedder is not None:
            return await self._local_vec(text)
        _, blobs = await self.client.call(Op.EMBED, {"t": text, "d": self.client.deadline()})
        return blobs[0]

    async def match(self, namespace: str, partition: str, text: str, vec: bytes | None,
                    k: int) -> tuple[bytes, list[Match]]:
        if vec is None and self.embedder is not None:
            vec = await self._local_vec(text)
        reply, blobs = await self.client.call(Op.MATCH, {"ns": namespace, "p": partition, "t": text, "k": k,
                                                         "d": self.client.deadline()},
                                              (vec,) if vec is not None else ())
        return blobs[0], [Match(str(m[0]), float(m[1]), float(m[2])) for m in reply.get("m", ())]

    async def add(self, namespace: str, partition: str, key: str, text: str, created: float,
                  expires_at: float | None, vec: bytes) -> None:
        await self.client.call(Op.ADD, {"ns": namespace, "p": partition, "key": key, "t": text, "c": created,
                                        "x": expires_at}, (vec,))

    def remove(self, namespace: str, partition: str, key: str) -> None:
        self.client.send(Op.REMOVE, {"ns": namespace, "p": partition, "key": key})

    def touch(self, namespace: str, partition: str, key: str) -> None:
        self.client.send(Op.TOUCH, {"ns": namespace, "p": partition, "key": key})

    async def drop_namespace(self, namespace: str | None) -> None:
        await self.client.call(Op.DROP, {"ns": namespace})

    def entries(self) -> int | None:
        stats = self.client.stats_sync()
        return None if stats is None else int(stats.get("entries", 0))


def entry_meta(e: Entry) -> dict[str, Any]:
    return {"ns": e.namespace, "key": e.key, "u": e.usage, "c": e.created, "x": e.expires_at, "p": e.partition,
            "t": e.text}


def entry_from(meta: dict[str, Any], blobs: list[bytes]) -> Entry:
    return Entry(namespace=str(meta["ns"]), key=str(meta["key"]), body=blobs[0], usage=meta.get("u"),
                 created=float(meta["c"]), expires_at=meta.get("x"), partition=meta.get("p"), text=meta.get("t"),
                 vector=blobs[1] if len(blobs) > 1 else None)


class RemoteStore:
    """The in-process entry store (no Redis) kept in the cache process, shared by the workers."""

    def __init__(self, client: CacheClient) -> None:
        self.client = client

    async def get(self, namespace: str, key: str) -> Entry | None:
        reply, blobs = await self.client.call(Op.GET, {"ns": namespace, "key": key})
        return entry_from(reply, blobs) if reply.get("found") else None

    async def put(self, entry: Entry) -> list[Entry]:
        blobs = (entry.body, entry.vector) if entry.vector is not None else (entry.body,)
        await self.client.call(Op.PUT, entry_meta(entry), blobs)
        return []  # the cache process drops evicted entries from its index itself

    async def clear(self, namespace: str | None) -> int:
        reply, _ = await self.client.call(Op.CLEAR, {"ns": namespace})
        return int(reply.get("removed", 0))
