"""`gateway compare` end to end: a gateway mirroring `smart` (a fast simulator) to `smart-next` (a slow
one), the command run as a subprocess against GET /admin/comparisons; its numbers against what the
simulators were set to, its files, and its error messages."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import deployment
from tests.procs import Proc, free_port

MASTER = "sk-compare-master-0123456789"
ADMIN = {"Authorization": f"Bearer {MASTER}"}
N = 12
MAX_TOKENS = 20
FAST = {"ttft": 0.05, "tps": 200.0}
SLOW = {"ttft": 0.3, "tps": 50.0}
PRICE_IN, PRICE_OUT, SLOW_GPU_HOURLY = 1e-6, 1e-5, 2.0


def compare_cmd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "compare", *args], capture_output=True, text=True,
                          timeout=120)


def records(gw: Proc) -> list[dict[str, Any]]:
    r = httpx.get(f"{gw.url}/admin/comparisons", params={"since": 3600}, headers=ADMIN, timeout=10)
    r.raise_for_status()
    return list(r.json()["records"])


@pytest.fixture
def mirrored(make_sim: Callable[..., Proc], make_gateway: Callable[..., Proc]) -> Iterator[Proc]:
    """A gateway after N streamed requests to `smart`, every one mirrored to `smart-next` and recorded."""
    fast = make_sim("--ttft", str(FAST["ttft"]), "--tps", str(FAST["tps"]))
    slow = make_sim("--ttft", str(SLOW["ttft"]), "--tps", str(SLOW["tps"]))
    gw = make_gateway({
        "model_list": [
            deployment("smart", fast, "m-fast", id="fast-1", input_cost_per_token=PRICE_IN,
                       output_cost_per_token=PRICE_OUT),
            deployment("smart-next", slow, "m-slow", id="slow-1", gpu_hourly_cost_usd=SLOW_GPU_HOURLY),
        ],
        "router_settings": {"shadow": {"smart": {"to": "smart-next", "share": 100}}},
    }, env={"GATEWAY_MASTER_KEY": MASTER})
    for i in range(N):
        body = {"model": "smart", "messages": [{"role": "user", "content": f"question {i}"}],
                "max_tokens": MAX_TOKENS, "stream": True}
        with httpx.stream("POST", f"{gw.url}/v1/chat/completions", json=body, headers=ADMIN, timeout=20) as r:
            assert r.status_code == 200
            for _ in r.iter_bytes():
                pass
    deadline = time.monotonic() + 30
    while len(records(gw)) < N:  # the shadow calls finish after the client got its answers
        assert time.monotonic() < deadline, f"{len(records(gw))} of {N} comparison records"
        time.sleep(0.05)
    yield gw


def test_compare_reports_the_pair_as_the_simulators_were_set(mirrored: Proc, tmp_path: Path) -> None:
    r = compare_cmd("--since", "10m", "--url", mirrored.url, "--key", MASTER, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["records"] == N and doc["truncated"] is False
    (pair,) = doc["pairs"]
    assert (pair["alias"], pair["shadow_alias"], pair["n"]) == ("smart", "smart-next", N)
    for side, sim, model in (("primary", FAST, "m-fast"), ("shadow", SLOW, "m-slow")):
        st = pair[side]
        assert st["models"] == [model]
        assert (st["n"], st["errors"], st["streamed"]) == (N, 0, N)
        assert st["completion_tokens"] == N * MAX_TOKENS
        assert st["ttft_p50"] == pytest.approx(sim["ttft"], abs=0.04), side
        # 19 tokens after the first at `tps`
        assert st["latency_p50"] == pytest.approx(sim["ttft"] + (MAX_TOKENS - 1) / sim["tps"], abs=0.08), side
        assert st["tokens_per_s"] == pytest.approx(sim["tps"], rel=0.25), side
    primary, shadow = pair["primary"], pair["shadow"]
    # list price on the primary; the shadow has only a GPU-hour cost: its busy time over its tokens
    assert PRICE_IN * 1e6 < primary["usd_per_1m"] < PRICE_OUT * 1e6 and primary["usd_per_1m_gpu"] is None
    assert shadow["usd_per_1m"] == 0.0
    recs = records(mirrored)
    busy = sum(SLOW_GPU_HOURLY * x["shadow"]["latency_s"] / 3600 for x in recs)
    tokens = sum(x["shadow"]["prompt_tokens"] + x["shadow"]["completion_tokens"] for x in recs)
    assert shadow["usd_per_1m_gpu"] == pytest.approx(busy / tokens * 1e6, rel=1e-3)
    assert pair["agreement"]["n"] == sum(x["agreement"] is not None for x in recs) > 0


def test_compare_table_and_report_files(mirrored: Proc, tmp_path: Path) -> None:
    html, png = tmp_path / "pair.html", tmp_path / "pair.png"
    r = compare_cmd("--since", "600", "--url", mirrored.url, "--key", MASTER, "--html", str(html))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"{N} comparison records from ")
    assert f"smart -> smart-next: {N} comparisons" in lines
    assert next(ln for ln in lines if ln.startswith("requests")).split() == ["requests", str(N), str(N)]
    assert "busy-time cost" in r.stdout
    page = html.read_text()
    assert "<th>smart (primary)</th><th>smart-next (shadow)</th>" in page and "data:image/png;base64," in page
    r = compare_cmd("--since", "1h", "--url", mirrored.url, "--key", MASTER, "--png", str(png))
    assert r.returncode == 0, r.stderr
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_compare_errors(mirrored: Proc, make_sim: Callable[..., Proc], make_gateway: Callable[..., Proc]) -> None:
    r = compare_cmd("--url", mirrored.url, "--key", "sk-wrong")
    assert r.returncode == 1 and "401 unauthorized" in r.stderr and "--key" in r.stderr, r.stderr
    r = compare_cmd("--url", f"http://127.0.0.1:{free_port()}", "--key", MASTER)
    assert r.returncode == 1 and "cannot reach the gateway" in r.stderr, r.stderr
    r = compare_cmd("--url", mirrored.url, "--key", MASTER, "--since", "an hour")
    assert r.returncode == 2 and "--since must be a duration" in r.stderr
    quiet = make_gateway({"model_list": [deployment("smart", make_sim())]}, env={"GATEWAY_MASTER_KEY": MASTER})
    r = compare_cmd("--url", quiet.url, "--key", MASTER)
    assert r.returncode == 1 and "no comparison records in the last 1h" in r.stderr, r.stderr
