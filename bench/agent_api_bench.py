"""Added latency of the agent APIs through the gateway, beside chat: /v1/chat/completions, /v1/messages and
/v1/responses, each sent straight to the upstream simulator (direct), through the gateway to a deployment
that serves the API natively (pass-through, `hosted_vllm/`), and through the gateway to one that speaks only
chat/completions (translated, `openai/`). Sequential requests (c=1), the targets taking turns, plain and
streamed (time to the last byte); prints p50/p99 and the p50 added over direct.

    python bench/agent_api_bench.py            # 300 requests per point
    python bench/agent_api_bench.py -n 100     # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.procs import Proc, start_gateway, start_simulator  # noqa: E402

BODIES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"messages": [{"role": "user", "content": "hello there"}], "max_tokens": 16},
    "/v1/messages": {"messages": [{"role": "user", "content": "hello there"}], "max_tokens": 16},
    "/v1/responses": {"input": "hello there", "max_output_tokens": 16, "store": False},
}


async def one(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> float:
    t0 = time.perf_counter()
    async with session.post(url, json=body, headers={"Authorization": "Bearer x", "x-api-key": "x"}) as resp:
        await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{url}: HTTP {resp.status}")
    return time.perf_counter() - t0


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


async def run(sim: Proc, gw: Proc, n: int) -> list[tuple[str, str, str, float, float]]:
    targets = {"direct": (sim.url, "sim-model"), "pass-through": (gw.url, "native"),
               "translated": (gw.url, "translated")}
    rows: list[tuple[str, str, str, float, float]] = []
    async with aiohttp.ClientSession() as session:
        for path, base in BODIES.items():
            for stream in (False, True):
                samples: dict[str, list[float]] = {t: [] for t in targets}
                for i in range(n + 20):  # the first 20 of each target warm up
                    for name, (url, model) in targets.items():
                        if path == "/v1/chat/completions" and name == "translated":
                            continue
                        took = await one(session, url + path, {**base, "model": model, "stream": stream})
                        if i >= 20:
                            samples[name].append(took)
                for name, values in samples.items():
                    if values:
                        rows.append((path, "stream" if stream else "plain", name, pct(values, 50), pct(values, 99)))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=300, help="requests per target and point (default 300)")
    a = p.parse_args()
    sim = start_simulator()
    gw = start_gateway({"model_list": [
        {"model_name": "native", "litellm_params": {"model": "hosted_vllm/sim-model", "api_base": f"{sim.url}/v1"}},
        {"model_name": "translated", "litellm_params": {"model": "openai/sim-model", "api_base": f"{sim.url}/v1"}},
    ]})
    try:
        rows = asyncio.run(run(sim, gw, a.n))
    finally:
        gw.stop()
        sim.stop()
    direct = {(r[0], r[1]): r[3] for r in rows if r[2] == "direct"}
    print(f"\n{a.n} sequential requests per point, loopback, simulator upstream (no generation delay)\n")
    print("| endpoint | mode | target | p50 ms | p99 ms | added p50 ms |")
    print("|---|---|---|---:|---:|---:|")
    for path, mode, name, p50, p99 in rows:
        added = "–" if name == "direct" else f"+{p50 - direct[(path, mode)]:.2f}"
        print(f"| `{path}` | {mode} | {name} | {p50:.2f} | {p99:.2f} | {added} |")
    print(f"\nload average at the end: {statistics.fmean([float(x) for x in open('/proc/loadavg').read().split()[:1]]):.2f}")


if __name__ == "__main__":
    main()
