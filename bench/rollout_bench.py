"""What shadow traffic and canaries cost the client: one gateway, one primary simulator (20 ms to the first
token, 200 tokens/s), and aliases that differ only in their rollout settings:

  plain        no shadow, no canary (the baseline)
  shadow-ok    mirrors 100% to a second simulator as fast as the primary
  shadow-slow  mirrors 100% to a simulator 10x slower (200 ms first token, 20 tokens/s)
  shadow-hang  mirrors 100% to a simulator that never answers (shadow timeout 2 s; most calls dropped)
  canary-50    half the requests go to a canary alias on a second simulator as fast as the primary

Sequential streamed requests (c=1) and 8 concurrent clients, the aliases taking turns at each step so noise
spreads over all of them; prints p50 / p95 of time to first token and of the whole request, and the p50 added
over `plain`. Then each alias alone at c=8: the gateway's CPU seconds per 1000 client requests, its background
shadow calls included (the idle poll and the `idle()` waits add a few ms to every row alike).

    python bench/rollout_bench.py            # 200 requests per alias and point
    python bench/rollout_bench.py -n 100     # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.procs import Proc, start_gateway, start_simulator, tree_cpu_seconds  # noqa: E402

ALIASES = ("plain", "shadow-ok", "shadow-slow", "shadow-hang", "canary-50")
BODY = {"messages": [{"role": "user", "content": "hello there"}], "max_tokens": 16, "stream": True}


async def one(session: aiohttp.ClientSession, url: str, alias: str) -> tuple[float, float]:
    t0 = time.perf_counter()
    ttft = 0.0
    async with session.post(url, json={**BODY, "model": alias}) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{alias}: HTTP {resp.status}: {await resp.text()}")
        async for _chunk in resp.content.iter_any():
            if not ttft:
                ttft = time.perf_counter() - t0
    return ttft, time.perf_counter() - t0


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


async def idle(session: aiohttp.ClientSession, gw: Proc) -> None:
    """Until no request (shadow calls included) is in flight in the gateway."""
    while True:
        async with session.get(f"{gw.url}/metrics") as resp:
            text = await resp.text()
        busy = sum(float(line.rpartition(" ")[2]) for line in text.splitlines()
                   if line.startswith("oss_in_flight_requests{"))
        if busy == 0:
            return
        await asyncio.sleep(0.05)


async def run(gw: Proc, n: int, concurrency: int) -> dict[str, list[tuple[float, float]]]:
    url = f"{gw.url}/v1/chat/completions"
    samples: dict[str, list[tuple[float, float]]] = {a: [] for a in ALIASES}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
        for a in ALIASES:  # warm up
            await asyncio.gather(*(one(session, url, a) for _ in range(concurrency * 2)))
        for _ in range(max(1, n // concurrency)):
            for a in ALIASES:
                samples[a] += await asyncio.gather(*(one(session, url, a) for _ in range(concurrency)))
    return samples


async def cpu_cost(gw: Proc, n: int, concurrency: int = 8) -> dict[str, float]:
    """Gateway CPU seconds per 1000 requests, each alias alone, its background shadow calls included."""
    url = f"{gw.url}/v1/chat/completions"
    out: dict[str, float] = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
        for a in ALIASES:
            await idle(session, gw)
            c0 = tree_cpu_seconds(gw.pid)
            for _ in range(max(1, n // concurrency)):
                await asyncio.gather(*(one(session, url, a) for _ in range(concurrency)))
            await idle(session, gw)
            out[a] = (tree_cpu_seconds(gw.pid) - c0) / (max(1, n // concurrency) * concurrency) * 1000
    return out


def table(title: str, samples: dict[str, list[tuple[float, float]]], cpu: dict[str, float] | None) -> str:
    base = pct([s[1] for s in samples["plain"]], 50)
    head = "| alias | TTFT p50 ms | TTFT p95 ms | total p50 ms | total p95 ms | p50 added ms |" + \
        (" gateway CPU s / 1000 req |" if cpu else "")
    lines = [f"### {title}", "", head, "|" + " --- |" * (head.count("|") - 1)]
    for a, values in samples.items():
        ttft, total = [s[0] for s in values], [s[1] for s in values]
        row = (f"| {a} | {pct(ttft, 50):.1f} | {pct(ttft, 95):.1f} | {pct(total, 50):.1f} | {pct(total, 95):.1f} | "
               f"{pct(total, 50) - base:+.1f} |")
        if cpu:
            row += f" {cpu[a]:.2f} |"
        lines.append(row)
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=200, help="requests per alias and point (default 200)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "rollout.md")
    a = p.parse_args()
    primary = start_simulator("--ttft", "0.02", "--tps", "200")
    twin = start_simulator("--ttft", "0.02", "--tps", "200")
    slow = start_simulator("--ttft", "0.2", "--tps", "20")
    hang = start_simulator("--fault", "hang")

    def dep(alias: str, sim: Proc) -> dict[str, Any]:
        return {"model_name": alias, "litellm_params": {"model": "openai/sim-model", "api_base": f"{sim.url}/v1"}}

    shadow = {"share": 100, "max_concurrency": 16}
    gw = start_gateway({
        "model_list": [dep(x, primary) for x in ALIASES] + [dep("twin", twin), dep("slow", slow), dep("hang", hang)],
        "router_settings": {
            "shadow": {"shadow-ok": {"to": "twin", **shadow}, "shadow-slow": {"to": "slow", **shadow},
                       "shadow-hang": {"to": "hang", **shadow, "timeout": "2s"}},
            "canary": {"canary-50": {"to": "twin", "steps": [50, 100], "every": "1d"}}},
    })
    try:
        seq = asyncio.run(run(gw, a.n, 1))
        conc = asyncio.run(run(gw, a.n, 8))
        cpu = asyncio.run(cpu_cost(gw, a.n * 2))
    finally:
        for proc in (gw, primary, twin, slow, hang):
            proc.stop()
    out = "\n\n".join([
        "## Rollout: what shadows and canaries cost the client (streamed chat, 16 tokens, primary 20 ms TTFT)",
        table("sequential (c=1)", seq, None), table("8 concurrent clients", conc, cpu)])
    print(out)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(out + "\n")


if __name__ == "__main__":
    main()
