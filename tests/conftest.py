"""Fixtures that start real processes on free ports and stop them: redis-server, the upstream
simulator and the gateway."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.procs import Proc, start_gateway, start_redis, start_simulator


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Proc]:
    """A real redis-server on a free port for the whole session (url in .extra['url'])."""
    proc = start_redis()
    proc.extra["url"] = f"redis://127.0.0.1:{proc.port}/0"
    yield proc
    proc.stop()


@pytest.fixture
def make_sim() -> Iterator[Callable[..., Proc]]:
    """Start upstream simulators (`gateway-sim` args); all stopped at the end of the test."""
    started: list[Proc] = []

    def make(*args: str) -> Proc:
        proc = start_simulator(*args)
        started.append(proc)
        return proc

    yield make
    for p in started:
        p.stop()


@pytest.fixture
def make_gateway() -> Iterator[Callable[..., Proc]]:
    """Start gateways (`gateway serve`) on a config dict/YAML/path; all stopped at the end of the test."""
    started: list[Proc] = []

    def make(config: dict[str, Any] | str | Path, *args: str, **kwargs: Any) -> Proc:
        proc = start_gateway(config, *args, **kwargs)
        started.append(proc)
        return proc

    yield make
    for p in started:
        p.stop()
