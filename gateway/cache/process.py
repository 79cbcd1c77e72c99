"""The replica's cache process: one embedder and one semantic index for every worker.

With ``gateway serve --workers N`` (N > 1) and a semantic cache (or an in-process store, no Redis),
the supervisor starts this process before the workers (`CacheProcess`), restarts it when it dies, and
stops it after the workers have drained.  It loads the MiniLM model once, keeps the bounded vector
index (fed from Redis like any replica's) and, when no Redis is configured, the entry store; the
workers ask it over a Unix socket (`protocol.py`, `client.py`).  A worker that cannot reach it serves
without the semantic cache (BYPASS) until it is back.

With one worker none of this runs: the index lives in the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import tempfile
import time
from multiprocessing.context import SpawnContext
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from .types import CacheSettings

log = logging.getLogger("gateway.cache")

SOCKET_ENV = "GATEWAY_CACHE_SOCKET"  # set by the supervisor for its workers
PARENT_CHECK_INTERVAL = 1.0


def needs_process(settings: CacheSettings | None, workers: int) -> bool:
    """A cache process serves the workers when there are several and they would otherwise each hold an
    index (semantic cache) or their own store (no Redis)."""
    return settings is not None and workers > 1 and settings.enabled and (
        settings.semantic or settings.redis_url is None)


class CacheServer:
    """The asyncio server inside the cache process."""

    def __init__(self, settings: CacheSettings, path: str, embedder: Any | None) -> None:
        from .semantic import SemanticIndex
        from .store import MemoryStore

        self.settings = settings
        self.path = path
        self.sem = SemanticIndex(settings, embedder) if settings.semantic else None
        self.memory = (MemoryStore(settings.local_max_entries or settings.max_entries)
                       if settings.redis_url is None else None)
        self._server: asyncio.AbstractServer | None = None
        self._stop = asyncio.Event()
        self._writers: set[asyncio.StreamWriter] = set()
        self.listening = asyncio.Event()

    async def serve(self) -> None:
        if self.sem is not None:
            self.sem.on_error = lambda kind, exc: None  # logged by the index on state changes
            await self.sem.start()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self._server = await asyncio.start_unix_server(self._handle, path=self.path)
        self.listening.set()
        log.info("cache process %d: serving %s (semantic index: %s, max_entries %s, store: %s)", os.getpid(),
                 self.path, "on" if self.sem else "off", self.settings.max_entries,
                 "redis" if self.memory is None else "in-process")
        await self._stop.wait()
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        if self.sem is not None:
            await self.sem.close()

    def stop(self) -> None:
        self._stop.set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from .backend import SemanticUnavailable
        from .protocol import Op, pack, read_frame

        tasks: set[asyncio.Task[None]] = set()
        self._writers.add(writer)

        async def answer(rid: int, op: int, meta: dict[str, Any], blobs: list[bytes]) -> None:
            try:
                reply, out = await self._op(op, meta, blobs)
                frame = pack(rid, Op.OK, reply, out)
            except SemanticUnavailable as exc:  # busy: shed on purpose (counted in STATS)
                frame = pack(rid, Op.ERR, {"e": str(exc)})
            except Exception as exc:  # noqa: BLE001 - the worker bypasses; the process keeps serving
                log.warning("cache process: %s failed: %r", Op(op).name if op in Op.__members__.values() else op,
                            exc)
                frame = pack(rid, Op.ERR, {"e": repr(exc)[:500]})
            if rid and not writer.is_closing():
                writer.write(frame)

        try:
            while True:
                rid, op, meta, blobs = await read_frame(reader)
                task = asyncio.create_task(answer(rid, op, meta, blobs))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except Exception as exc:  # noqa: BLE001 - a bad frame: drop this connection only
            log.warning("cache process: closing a connection: %r", exc)
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    async def _op(self, op: int, m: dict[str, Any], blobs: list[bytes]) -> tuple[dict[str, Any], tuple[bytes, ...]]:
        from .client import entry_from, entry_meta
        from .protocol import Op

        sem = self.sem
        if op == Op.MATCH:
            assert sem is not None
            vec, matches = await sem.match(m["ns"], m["p"], m["t"], blobs[0] if blobs else None, int(m["k"]),
                                           m.get("d"))
            return {"m": [[x.key, x.probability, x.cosine] for x in matches]}, (vec,)
        if op == Op.EMBED:
            assert sem is not None
            return {}, (await sem.embed(m["t"], m.get("d")),)
        if op == Op.ADD:
            assert sem is not None
            await sem.add(m["ns"], m["p"], m["key"], m["t"], float(m["c"]), m.get("x"), blobs[0])
            return {}, ()
        if op == Op.REMOVE:
            if sem is not None:
                sem.remove(m["ns"], m["p"], m["key"])
            return {}, ()
        if op == Op.TOUCH:
            if sem is not None:
                sem.touch(m["ns"], m["p"], m["key"])
            return {}, ()
        if op == Op.DROP:
            if sem is not None:
                await sem.drop_namespace(m.get("ns"))
            return {}, ()
        if op == Op.STATS:
            stats: dict[str, Any] = sem.stats() if sem is not None else {"entries": 0, "ready": True}
            stats["pid"] = os.getpid()
            if self.memory is not None:
                stats["store_entries"] = len(self.memory)
            return stats, ()
        if self.memory is None:
            raise ValueError(f"op {op} needs the in-process store (this replica uses Redis)")
        if op == Op.GET:
            entry = await self.memory.get(m["ns"], m["key"])
            if entry is None:
                return {"found": False}, ()
            return {"found": True, **entry_meta(entry)}, ((entry.body, entry.vector) if entry.vector else (entry.body,))
        if op == Op.PUT:
            entry = entry_from(m, blobs)
            for old in await self.memory.put(entry):
                if old.partition and sem is not None:
                    sem.remove(old.namespace, old.partition, old.key)
            return {}, ()
        if op == Op.CLEAR:
            removed = await self.memory.clear(m.get("ns"))
            if sem is not None:
                await sem.drop_namespace(m.get("ns"))
            return {"removed": removed}, ()
        raise ValueError(f"unknown op {op}")


def _embedder_for(config: Any, settings: CacheSettings) -> Any | None:
    """MiniLM in the cache process; None when the workers embed with an embeddings alias."""
    if config.cache.params.get("redis_semantic_cache_embedding_model"):
        return None
    from .embedder import MiniLMEmbedder

    return MiniLMEmbedder(workers=settings.embed_workers or min(4, os.cpu_count() or 1))


def cache_process_main(settings_data: dict[str, Any], path: str) -> None:
    """Entry point of the spawned cache process."""
    from gateway.config import ConfigError, load_file
    from gateway.server import setup_logging
    from gateway.settings import Settings

    from .factory import cache_settings

    settings = Settings(**settings_data)
    setup_logging(settings.log_level)
    # Ctrl-C reaches the whole process group: keep serving while the workers drain; the supervisor
    # sends SIGTERM when they are done
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        config = load_file(settings.config)
    except ConfigError as exc:  # edited into an invalid state since the start: the supervisor retries
        log.error("cache process: cannot load %s: %s", settings.config, "; ".join(exc.problems))
        raise SystemExit(2) from None
    cs = cache_settings(config.cache, settings.redis_url)
    assert cs is not None
    server = CacheServer(cs, path, _embedder_for(config, cs) if cs.semantic else None)
    parent = os.getppid()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, server.stop)

        async def orphan_watch() -> None:
            while True:  # no event tells a child that its parent died (short of prctl): poll
                await asyncio.sleep(PARENT_CHECK_INTERVAL)
                if os.getppid() != parent:
                    log.warning("cache process: the supervisor is gone, exiting")
                    server.stop()
                    return

        watch = asyncio.create_task(orphan_watch())
        try:
            await server.serve()
        finally:
            watch.cancel()

    asyncio.run(main())


class CacheProcess:
    """The supervisor's handle: start before the workers, `check()` in its loop, `stop()` after them."""

    def __init__(self, ctx: SpawnContext, settings_data: dict[str, Any], cache: CacheSettings) -> None:
        self.ctx = ctx
        self.settings_data = settings_data
        self.cache = cache
        self.dir = tempfile.mkdtemp(prefix="gateway-cache-")  # mode 0700: only this user can connect
        self.path = str(Path(self.dir) / "cache.sock")
        self.proc: BaseProcess | None = None
        self.restarts = 0
        self._backoff = 0.5
        self._next_start = 0.0
        self._started_at = 0.0
        os.environ[SOCKET_ENV] = self.path  # the workers, spawned after this, inherit it

    @classmethod
    def for_settings(cls, settings: Any, ctx: Any) -> CacheProcess | None:
        """Start one when this replica needs it (several workers, a semantic cache or no Redis)."""
        from gateway.config import load_file

        from .factory import cache_settings

        os.environ.pop(SOCKET_ENV, None)
        cs = cache_settings(load_file(settings.config).cache, settings.redis_url)
        if cs is None or not needs_process(cs, settings.workers):
            return None
        proc = cls(ctx, settings.model_dump(mode="json"), cs)
        proc.start()
        return proc

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        self.proc = self.ctx.Process(target=cache_process_main, args=(self.settings_data, self.path),
                                     name="gateway-cache", daemon=False)
        self.proc.start()
        self._started_at = time.monotonic()
        log.info("cache process %s started (%s)", self.proc.pid, self.path)

    def check(self) -> None:
        """Restart the process if it died (backing off while it keeps dying at start)."""
        if self.proc is None or self.proc.is_alive():
            return
        now = time.monotonic()
        if now - self._started_at > 30:  # it ran fine for a while: restart at once
            self._backoff, self._next_start = 0.5, 0.0
        if now < self._next_start:
            return
        log.warning("cache process %s exited with %s: restarting (workers bypass the semantic cache meanwhile)",
                    self.proc.pid, self.proc.exitcode)
        self.restarts += 1
        self._next_start = now + self._backoff
        self._backoff = min(self._backoff * 2, 30.0)
        self.start()

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc is not None and self.proc.is_alive() and self.proc.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.join(timeout)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join(5)
        shutil.rmtree(self.dir, ignore_errors=True)
        os.environ.pop(SOCKET_ENV, None)
