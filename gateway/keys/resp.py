"""A small pipelined Redis client for the hot path: one connection per worker, RESP2, Lua scripts.

Why not redis-py: its asyncio client costs ~50 µs of CPU per command here (pool, locks, generic
parsing); this one writes a pre-encoded command to the socket and resolves a future from the reply
stream, ~12 µs. Commands from concurrent requests share the connection and are answered in order,
so a burst is naturally batched (several replies per read).

Failure handling: a connection error or a reply slower than `timeout` marks the link down; every
pending and later command fails at once with `StoreUnavailable` (no request waits for a dead
Redis) while a background task reconnects every `retry_interval` seconds. Scripts are loaded on
every (re)connect; a NOSCRIPT reply (SCRIPT FLUSH) falls back to EVAL.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import ssl
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

log = logging.getLogger("gateway.keys")

Arg = bytes | str | int | float


class StoreUnavailable(Exception):
    """The state Redis cannot be reached (or answered too slowly)."""


class ReplyError(Exception):
    """Redis answered with an error (-ERR ...)."""


_INCOMPLETE = object()


def _parse(buf: bytearray, pos: int) -> tuple[Any, int] | object:
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return _INCOMPLETE
    kind = buf[pos]
    if kind == 58:  # ':'
        return int(buf[pos + 1:end]), end + 2
    if kind == 36:  # '$'
        n = int(buf[pos + 1:end])
        if n < 0:
            return None, end + 2
        stop = end + 2 + n
        if len(buf) < stop + 2:
            return _INCOMPLETE
        return bytes(buf[end + 2:stop]), stop + 2
    if kind == 42:  # '*'
        n = int(buf[pos + 1:end])
        if n < 0:
            return None, end + 2
        items = []
        p = end + 2
        for _ in range(n):
            r = _parse(buf, p)
            if r is _INCOMPLETE:
                return _INCOMPLETE
            item, p = r  # type: ignore[misc]
            items.append(item)
        return items, p
    if kind == 43:  # '+'
        return bytes(buf[pos + 1:end]), end + 2
    if kind == 45:  # '-'
        return ReplyError(buf[pos + 1:end].decode("utf-8", "replace")), end + 2
    raise ValueError(f"unexpected RESP type byte {kind!r}")


def encode(args: Sequence[Arg]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    add = out.append
    for a in args:
        t = type(a)
        if t is bytes:
            b = a
        elif t is str:
            b = a.encode("utf-8", "surrogatepass")  # type: ignore[union-attr]
        elif t is int:
            b = b"%d" % a
        elif isinstance(a, bytes | bytearray | memoryview):
            b = bytes(a)
        elif isinstance(a, str):
            b = a.encode("utf-8", "surrogatepass")
        elif isinstance(a, int):
            b = b"%d" % a
        else:
            b = repr(float(a)).encode()  # type: ignore[arg-type]
        add(b"$%d\r\n%b\r\n" % (len(b), b))
    return b"".join(out)


class Script:
    __slots__ = ("source", "sha")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest().encode()


class _Protocol(asyncio.Protocol):
    def __init__(self, link: RedisLink) -> None:
        self.link = link
        self.buf = bytearray()
        self.pending: deque[tuple[asyncio.Future[Any], float]] = deque()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.last_read = time.monotonic()
        self.out: list[bytes] = []  # commands of this loop iteration, written together (auto-pipelining)
        self.flush_pending = False

    def write(self, data: bytes) -> None:
        self.out.append(data)
        if not self.flush_pending:
            self.flush_pending = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self.flush_pending = False
        out, self.out = self.out, []
        if out and self.transport is not None and not self.closed:
            self.transport.write(b"".join(out) if len(out) > 1 else out[0])

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.last_read = time.monotonic()
        buf = self.buf
        buf += data
        pos = 0
        pending = self.pending
        try:
            while pending:
                r = _parse(buf, pos)
                if r is _INCOMPLETE:
                    break
                value, pos = r  # type: ignore[misc]
                fut = pending.popleft()[0]
                if not fut.done():
                    fut.set_result(value)
        except ValueError as exc:  # protocol desync: drop the connection
            self.link._drop(self, f"bad reply: {exc}")
            return
        if pos:
            del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self.link._drop(self, f"connection lost: {exc}" if exc else "connection closed")

    def fail_all(self) -> None:
        self.closed = True
        err = StoreUnavailable("state Redis connection lost")
        while self.pending:
            fut = self.pending.popleft()[0]
            if not fut.done():
                fut.set_result(err)  # results, not exceptions: no "never retrieved" noise for abandoned futures


class RedisLink:
    """One pipelined connection with reconnects. `up` says whether commands can be sent now."""

    def __init__(self, url: str, timeout: float = 0.5, retry_interval: float = 1.0,
                 on_state: Callable[[bool], None] | None = None, scripts: Sequence[Script] = ()) -> None:
        self.url = url
        self.timeout = timeout
        self.retry_interval = retry_interval
        self.on_state = on_state
        self.scripts = list(scripts)
        self.up = False
        self.last_error = "not connected yet"
        self._proto: _Protocol | None = None
        self._reconnect: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._closing = False
        u = urlsplit(url)
        q = parse_qs(u.query)
        self._unix = u.path if u.scheme == "unix" else None
        self._host = u.hostname or "127.0.0.1"
        self._port = u.port or 6379
        self._ssl = u.scheme == "rediss"
        self._user = unquote(u.username) if u.username else None
        self._password = unquote(u.password) if u.password else None
        db = q.get("db", [None])[0] if self._unix else (u.path.strip("/") or None)
        self.db = int(db) if db else 0

    @property
    def where(self) -> str:
        """host:port/db, never the password."""
        return f"{self._unix or f'{self._host}:{self._port}'}/{self.db}"

    # -- connection ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect (or start reconnecting in the background) and watch reply times."""
        self._watchdog = asyncio.create_task(self._watch(), name="state-redis-watchdog")
        try:
            await self._connect()
        except (TimeoutError, OSError, StoreUnavailable, ReplyError) as exc:
            self.last_error = str(exc) or type(exc).__name__
            log.warning("state Redis %s unreachable at start (%s): retrying every %gs", self.where,
                        self.last_error, self.retry_interval)
            self._start_reconnect()

    async def close(self) -> None:
        self._closing = True
        for task in (self._reconnect, self._watchdog):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()
        self.up = False

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        ctx = ssl.create_default_context() if self._ssl else None
        if self._unix:
            coro = loop.create_unix_connection(lambda: _Protocol(self), self._unix)
        else:
            coro = loop.create_connection(lambda: _Protocol(self), self._host, self._port, ssl=ctx)
        _, proto = await asyncio.wait_for(coro, max(self.timeout, 1.0) * 2)
        self._proto = proto
        try:
            if self._password:
                auth: list[Arg] = ["AUTH", self._user, self._password] if self._user else ["AUTH", self._password]
                await self._raw(auth)
            if self.db:
                await self._raw(["SELECT", self.db])
            for s in self.scripts:
                await self._raw(["SCRIPT", "LOAD", s.source])
        except BaseException:
            if proto.transport is not None:
                proto.transport.close()
            self._proto = None
            raise
        if proto.closed:
            raise StoreUnavailable("connection closed during setup")
        was = self.up
        self.up = True
        if not was:
            log.info("state Redis %s connected", self.where)
            if self.on_state is not None:
                self.on_state(True)

    async def _raw(self, args: Sequence[Arg]) -> Any:
        proto = self._proto
        assert proto is not None and proto.transport is not None
        fut = asyncio.get_running_loop().create_future()
        proto.pending.append((fut, time.monotonic()))
        proto.write(encode(args))
        value = await asyncio.wait_for(fut, max(self.timeout, 1.0) * 2)
        if isinstance(value, Exception):
            raise value
        return value

    def _drop(self, proto: _Protocol, why: str) -> None:
        if proto.closed:
            return
        proto.fail_all()
        if proto.transport is not None:
            proto.transport.close()
        if proto is not self._proto:
            return
        self._proto = None
        self.last_error = why
        if self.up:
            self.up = False
            log.warning("state Redis %s down (%s): retrying every %gs", self.where, why, self.retry_interval)
            if self.on_state is not None:
                self.on_state(False)
        self._start_reconnect()

    def _start_reconnect(self) -> None:
        if self._closing or (self._reconnect is not None and not self._reconnect.done()):
            return
        self._reconnect = asyncio.get_running_loop().create_task(self._reconnect_loop(), name="state-redis-reconnect")

    async def _reconnect_loop(self) -> None:
        while not self._closing and not self.up:
            await asyncio.sleep(self.retry_interval)
            try:
                await self._connect()
            except (TimeoutError, OSError, StoreUnavailable, ReplyError) as exc:
                self.last_error = str(exc) or type(exc).__name__

    async def _watch(self) -> None:
        """A reply older than `timeout` (and nothing read for that long) means Redis is stuck: drop the
        connection and fail fast. A tick that comes late means our own event loop was blocked — replies
        may be sitting unread in the socket — so that round is skipped."""
        period = max(0.02, self.timeout / 4)
        last = time.monotonic()
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            late = now - last > period * 2 + 0.05
            last = now
            proto = self._proto
            if late or proto is None or not proto.pending:
                continue
            if now - proto.pending[0][1] > self.timeout and now - proto.last_read > self.timeout:
                self._drop(proto, f"no reply within {self.timeout:g}s")

    # -- commands -----------------------------------------------------------------------------------

    def send(self, args: Sequence[Arg]) -> asyncio.Future[Any]:
        """Queue one command; the future's result is the reply, a ReplyError or a StoreUnavailable."""
        proto = self._proto
        if not self.up or proto is None or proto.transport is None or proto.closed:
            raise StoreUnavailable(f"state Redis {self.where} is down ({self.last_error})")
        fut = asyncio.get_running_loop().create_future()
        proto.pending.append((fut, time.monotonic()))
        proto.write(encode(args))
        return fut

    def send_many(self, commands: Sequence[Sequence[Arg]]) -> list[asyncio.Future[Any]]:
        """Queue several commands in one write (a pipeline)."""
        proto = self._proto
        if not self.up or proto is None or proto.transport is None or proto.closed:
            raise StoreUnavailable(f"state Redis {self.where} is down ({self.last_error})")
        loop = asyncio.get_running_loop()
        t = time.monotonic()
        futs = []
        for _ in commands:
            fut = loop.create_future()
            proto.pending.append((fut, t))
            futs.append(fut)
        proto.write(b"".join(encode(c) for c in commands))
        return futs

    async def call(self, *args: Arg) -> Any:
        value = await self.send(args)
        if isinstance(value, Exception):
            raise value
        return value

    async def pipeline(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """Results in order; errors are returned as exception objects (StoreUnavailable is raised)."""
        if not commands:
            return []
        results = [await f for f in self.send_many(commands)]
        for r in results:
            if isinstance(r, StoreUnavailable):
                raise r
        return results

    async def evalsha(self, script: Script, args: Sequence[Arg]) -> Any:
        value = await self.send([b"EVALSHA", script.sha, b"0", *args])
        if isinstance(value, ReplyError) and str(value).startswith("NOSCRIPT"):
            value = await self.send([b"EVAL", script.source, b"0", *args])
        if isinstance(value, Exception):
            raise value
        return value

    def evalsha_many(self, script: Script, arglists: Sequence[Sequence[Arg]]) -> list[asyncio.Future[Any]]:
        return self.send_many([[b"EVALSHA", script.sha, b"0", *a] for a in arglists])


class Subscriber:
    """A second connection to the same Redis in SUBSCRIBE mode (such a connection can do nothing else).

    `on_message(data)` runs for each message on `channel`; `on_up()` after every (re)subscription —
    messages published while the connection was down are lost, so the owner must treat everything it
    learned before as unconfirmed; `on_down()` when the connection is lost. A connection silent for
    `ping_interval` gets a PING; no answer within `timeout` counts as dead (a stuck Redis never sends FIN).
    Reconnects every `retry_interval` seconds.
    """

    def __init__(self, link: RedisLink, channel: str, on_message: Callable[[bytes], None],
                 on_up: Callable[[], None], on_down: Callable[[], None], ping_interval: float = 2.0) -> None:
        self.link = link
        self.channel = channel
        self.on_message = on_message
        self.on_up = on_up
        self.on_down = on_down
        self.ping_interval = ping_interval
        self.up = False
        self._warned = False
        self._task: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="state-redis-subscriber")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self._task = None

    def reset(self) -> None:
        """Drop the connection (it reconnects): for when the owner has reason to distrust it."""
        if self._writer is not None:
            self._writer.close()

    async def _run(self) -> None:
        link = self.link
        while True:
            try:
                await self._session()
            except Exception as exc:  # noqa: BLE001 - any failure: reconnect (and say so once)
                why = str(exc) or type(exc).__name__
                if self.up or (link.up and not self._warned):  # lost, or refused while Redis answers otherwise
                    self._warned = True
                    log.warning("state Redis %s: invalidation channel %s (%s); keys are checked in Redis on every "
                                "request until it is back", link.where, "lost" if self.up else "unavailable", why)
            finally:
                self._writer = None
                if self.up:
                    self.up = False
                    self.on_down()
            await asyncio.sleep(link.retry_interval)

    async def _session(self) -> None:
        link = self.link
        timeout = max(link.timeout, 1.0)
        ctx = ssl.create_default_context() if link._ssl else None
        if link._unix:
            opening = asyncio.open_unix_connection(link._unix)
        else:
            opening = asyncio.open_connection(link._host, link._port, ssl=ctx)
        reader, writer = await asyncio.wait_for(opening, timeout * 2)
        self._writer = writer
        buf = bytearray()

        async def reply(wait: float, ping: bool = False) -> Any:
            while True:
                if buf:
                    r = _parse(buf, 0)
                    if r is not _INCOMPLETE:
                        value, pos = r  # type: ignore[misc]
                        del buf[:pos]
                        return value
                try:
                    data = await asyncio.wait_for(reader.read(65536), wait)
                except TimeoutError:
                    if not ping:
                        raise
                    writer.write(encode(["PING"]))  # quiet for a while: is anyone there?
                    data = await asyncio.wait_for(reader.read(65536), timeout)
                if not data:
                    raise EOFError("connection closed")
                buf.extend(data)

        try:
            if link._password:
                writer.write(encode(["AUTH", link._user, link._password] if link._user else ["AUTH", link._password]))
                r = await reply(timeout)
                if isinstance(r, ReplyError):
                    raise r
            writer.write(encode(["SUBSCRIBE", self.channel]))
            r = await reply(timeout)
            if not (isinstance(r, list) and r and r[0] == b"subscribe"):
                raise ValueError(f"unexpected SUBSCRIBE reply {r!r}")
            self.up = True
            self._warned = False
            self.on_up()
            while True:
                msg = await reply(self.ping_interval, ping=True)
                if isinstance(msg, list) and len(msg) == 3 and msg[0] == b"message":
                    self.on_message(msg[2])
        finally:
            writer.close()
