"""Running the gateway: uvicorn in-process for one worker, a small supervisor for several.

The supervisor binds the socket once and starts N spawned worker processes on it. It forwards
SIGHUP (reload routes in every worker) and SIGTERM/SIGINT (drain: stop accepting, finish in-flight
requests and streams within the grace period, exit); it restarts a worker that dies.
Metrics of all workers are aggregated through prometheus-client's multiprocess directory, which
the supervisor creates empty at start.

Signals, in both modes:
- SIGHUP is blocked from the start of `serve` until the process has its reload handler (workers inherit
  the blocked mask from the supervisor, across exec): a reload signal that arrives while a process
  starts is delivered once it can reload, and never kills it (SIGHUP's default action).
- SIGTERM closes the listening socket at once (uvicorn closes the worker's copy; the supervisor closes its
  own), so new connections are refused immediately and a load balancer moves on, while the requests and
  streams in flight finish within the grace period.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from gateway.settings import Settings

log = logging.getLogger("gateway.server")


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s", force=True)
    logging.getLogger("uvicorn.access").disabled = True


def _make_server(config: Any) -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, exiting 0 after a clean SIGTERM drain instead of re-raising the signal."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    return Server(config)


def _uvicorn_config(app: Any, settings: Settings) -> Any:
    import uvicorn

    return uvicorn.Config(
        app, host=settings.host, port=settings.port, loop="uvloop", http="httptools", lifespan="on",
        access_log=False, log_config=None, log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.grace_period) or None, timeout_keep_alive=30,
        backlog=4096,
    )


def run_single(settings: Settings) -> int:
    from gateway.app import create_app

    app = create_app(settings)
    server = _make_server(_uvicorn_config(app, settings))
    server.run()
    return 0


@contextlib.contextmanager
def _sighup_blocked() -> Iterator[None]:
    """SIGHUP held pending (not lost) meanwhile; processes started meanwhile inherit the blocked mask."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _worker_main(settings_data: dict[str, Any], sock: socket.socket) -> None:
    from gateway.app import create_app

    settings = Settings(**settings_data)
    setup_logging(settings.log_level)
    server = _make_server(_uvicorn_config(create_app(settings), settings))
    server.run(sockets=[sock])


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.set_inheritable(True)
    return sock


def _prepare_metrics_dir(settings: Settings) -> Path:
    path = settings.metrics_dir or Path(tempfile.mkdtemp(prefix="gateway-metrics-"))
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    return path


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ctx = multiprocessing.get_context("spawn")
        self.workers: list[BaseProcess] = []
        self.stopping = False
        self.starting = False
        self.sock: socket.socket | None = None

    def _start_worker(self) -> BaseProcess:
        proc = self.ctx.Process(target=_worker_main, args=(self.settings.model_dump(mode="json"), self.sock),
                                daemon=False)
        self.starting = True
        try:
            with _sighup_blocked():  # the worker starts with SIGHUP blocked; Gateway.startup unblocks it
                proc.start()
        finally:
            self.starting = False
        if self.stopping:  # SIGTERM came while it started: it stops too
            self._close_socket()
            if proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)
        return proc

    def _close_socket(self) -> None:
        """Stop listening: our copy of the socket would keep it open (connections queued, then reset) until the
        last worker exits; the workers close theirs as they start draining."""
        if self.sock is not None and not self.starting:  # (a worker being started needs it until it has a copy)
            self.sock.close()

    def _forward(self, sig: int) -> None:
        for w in self.workers:
            if w.pid is not None and w.is_alive():
                os.kill(w.pid, sig)

    def run(self) -> int:
        metrics_dir = _prepare_metrics_dir(self.settings)
        os.environ["GATEWAY_SUPERVISOR_PID"] = str(os.getpid())
        self.sock = _bind(self.settings.host, self.settings.port)

        def on_stop(signum: int, _frame: Any) -> None:
            if not self.stopping:
                log.info("received %s: draining workers (grace %gs)", signal.Signals(signum).name,
                         self.settings.grace_period)
            self.stopping = True
            self._forward(signal.SIGTERM)
            self._close_socket()

        def on_hup(_signum: int, _frame: Any) -> None:
            log.info("SIGHUP: reloading routes in every worker")
            self._forward(signal.SIGHUP)

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hup)
        from gateway.cache.process import CacheProcess

        cache = CacheProcess.for_settings(self.settings, self.ctx)  # one embedder + index for all workers
        for _ in range(self.settings.workers):
            self.workers.append(self._start_worker())
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})  # blocked since serve() began
        log.info("supervisor %d: %d workers on %s:%d", os.getpid(), len(self.workers), self.settings.host,
                 self.settings.port)
        from prometheus_client import multiprocess

        while not self.stopping:
            time.sleep(0.2)
            if cache is not None:
                cache.check()
            for i, w in enumerate(self.workers):
                if not w.is_alive() and not self.stopping:
                    log.warning("worker %s exited with %s: restarting", w.pid, w.exitcode)
                    if w.pid is not None:
                        multiprocess.mark_process_dead(w.pid, str(metrics_dir))
                    self.workers[i] = self._start_worker()
        deadline = time.monotonic() + self.settings.grace_period + 5
        for w in self.workers:
            w.join(max(0.1, deadline - time.monotonic()))
            if w.is_alive():
                log.warning("worker %s did not finish within the grace period: killing it", w.pid)
                w.kill()
                w.join(5)
        if cache is not None:
            cache.stop()
        self._close_socket()
        return 0


def serve(settings: Settings) -> int:
    # until this process can reload (Gateway.startup, or the supervisor's handler): see the module docstring
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    setup_logging(settings.log_level)
    os.environ.setdefault("PROMETHEUS_DISABLE_CREATED_SERIES", "True")  # read when prometheus_client loads
    from gateway.config import ConfigError, load_file

    try:
        load_file(settings.config)  # fail fast, with every problem's YAML path, before starting anything
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("config: %s", problem)
        return 2
    if settings.workers <= 1:
        return run_single(settings)
    return Supervisor(settings).run()
