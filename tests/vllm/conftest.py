"""The real-vLLM tier: two vLLM servers (CPU, SmolLM2-135M-Instruct) started once per session, and one
gateway in front of them.

- `small`: context 512 tokens; `large`: context 2048 tokens (same model, same served name).
- Aliases of the gateway: `small` -> small (context_window_fallbacks to `large`), `large` -> large,
  `tiny` -> small with no fallback (vLLM's own context error reaches the client), `ghost` -> small
  asking for a model name vLLM does not serve (vLLM's 404).
- `twin` (context 2048, --max-num-seqs 8) starts with them only when a selected test uses the `vllm_twin`
  fixture (test_engine_aware_vllm.py: `large` and `twin` as two deployments of one alias), and stops when
  that module is done.

Never skipped silently: when vLLM is not installed or does not start, every test of the tier fails with
the reason. GATEWAY_SKIP_VLLM=1 skips the tier (docs/vllm.md).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.procs import Proc, start_gateway
from tests.vllm import servers

SMALL_CTX = 512
LARGE_CTX = 2048
CONTEXTS = {"small": SMALL_CTX, "large": LARGE_CTX}
SERVERS: dict[str, tuple[int, int | None]] = {name: (ctx, None) for name, ctx in CONTEXTS.items()}  # vLLM's batch
TWIN_FIXTURE = "vllm_twin"
TWIN_MAX_NUM_SEQS = 8  # a batch small enough for a few clients to fill (test_engine_aware_vllm.py)
TIMEOUT = 180  # seconds a test may take: a loaded 2-core machine generates ~5-15 tokens/s
STARTS: dict[str, float] = {}  # seconds each server took to answer, for the summary
NOTES: list[str] = []  # figures the tests measured, printed in the summary


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.timeout(TIMEOUT + 2 * servers.START_TIMEOUT))
            if os.environ.get(servers.SKIP_ENV) == "1":
                item.add_marker(pytest.mark.skip(reason=f"{servers.SKIP_ENV}=1: real-vLLM tier skipped"))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if STARTS:
        times = ", ".join(f"{name} {sec:.0f}s" for name, sec in STARTS.items())
        terminalreporter.write_line(f"real vLLM tier: servers started in {times}")
    for note in NOTES:
        terminalreporter.write_line(f"real vLLM tier: {note}")


@dataclass
class Vllm:
    small: servers.VllmProc
    large: servers.VllmProc
    twin: servers.VllmProc | None = None  # only when a selected test uses the `vllm_twin` fixture

    @property
    def all(self) -> tuple[servers.VllmProc, servers.VllmProc]:
        return self.small, self.large


def _wants_twin(session: pytest.Session) -> bool:
    return any(TWIN_FIXTURE in getattr(item, "fixturenames", ()) for item in session.items)


@pytest.fixture(scope="session")
def vllm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vllm]:
    """Two vLLM servers started together (measured under load: 82 s for both, against 70 + 57 s one after
    the other: a start is mostly single-threaded Python), stopped by pid at the end of the session. A third,
    `twin` (like `large`, with --max-num-seqs TWIN_MAX_NUM_SEQS), starts with them when a selected test
    needs it (test_engine_aware_vllm.py: two servers of one alias), which costs less than starting it on
    its own later."""
    why = servers.missing()
    if why:
        pytest.fail(f"real vLLM is not installed ({why}): run ./scripts/setup_vllm.sh "
                    f"(or set {servers.SKIP_ENV}=1 to skip this tier)", pytrace=False)
    workdir = tmp_path_factory.mktemp("vllm")
    wanted = dict(SERVERS)
    if _wants_twin(request.session):
        wanted["twin"] = (LARGE_CTX, TWIN_MAX_NUM_SEQS)
    started: dict[str, servers.VllmProc] = {}
    try:
        for name, (ctx, seqs) in wanted.items():
            started[name] = servers.start_vllm(name, ctx, workdir, max_num_seqs=seqs)
        for name, (ctx, seqs) in wanted.items():
            try:
                STARTS[name] = servers.wait_ready(started[name])
            except RuntimeError:
                if "address already in use" not in started[name].log().lower():
                    raise
                # another process took the free port before vLLM bound it: once more on another one
                started[name].stop()
                started[name] = servers.start_vllm(name, ctx, workdir, max_num_seqs=seqs)
                STARTS[name] = servers.wait_ready(started[name])
    except Exception as exc:  # noqa: BLE001 - fail loudly, with the server's log
        for p in started.values():
            p.stop()
        pytest.fail(f"vLLM did not start: {exc}", pytrace=False)
    yield Vllm(started["small"], started["large"], started.get("twin"))
    for p in started.values():
        p.stop()


@pytest.fixture(scope="module")
def vllm_twin(vllm: Vllm) -> Iterator[servers.VllmProc]:
    """The third server (started with the others, see `vllm`); stopped when the module using it is done,
    so that its memory is free for the rest of the session."""
    assert vllm.twin is not None
    yield vllm.twin
    vllm.twin.stop()


def vllm_deployment(alias: str, proc: Proc, dep_id: str, model: str = servers.SERVED) -> dict[str, Any]:
    return {
        "model_name": alias,
        "litellm_params": {"model": f"hosted_vllm/{model}", "api_base": f"{proc.url}/v1", "timeout": TIMEOUT},
        "model_info": {"id": dep_id, "input_cost_per_token": 0.000001, "output_cost_per_token": 0.000002},
    }


def gateway_config(v: Vllm) -> dict[str, Any]:
    return {
        "model_list": [
            vllm_deployment("small", v.small, "vllm-small"),
            vllm_deployment("large", v.large, "vllm-large"),
            vllm_deployment("tiny", v.small, "vllm-tiny"),
            vllm_deployment("ghost", v.small, "vllm-ghost", model="no-such-model"),
        ],
        "router_settings": {"num_retries": 1, "context_window_fallbacks": [{"small": ["large"]}]},
    }


@pytest.fixture(scope="session")
def gateway(vllm: Vllm) -> Iterator[Proc]:
    """`gateway serve` (1 worker, no Redis) in front of both servers."""
    proc = start_gateway(gateway_config(vllm))
    yield proc
    proc.stop()


def wait_until(check: Any, timeout: float = 60.0, poll: float = 0.25) -> Any:
    """Poll check() until it returns something truthy; returns that value (or the last falsy one)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(poll)
