"""How long does a Redis reply take, as the gateway's event loop sees it, under load?

The cache (redis-py) and the key store (gateway.keys.resp.RedisLink) time every command with the
wall clock of the event loop, so a reply is "late" when Redis is slow *or* when our own loop is busy.
This measures both on this machine: a uvloop event loop serves `--rate` simulated requests a second,
each burning `--cpu-ms` of CPU (parsing, routing) and then doing one cache HMGET (redis-py) and one
state EVALSHA (RedisLink) against a real redis-server, as the gateway does per request. Optionally the
loop is also blocked for `--stall-ms` every `--stall-every` seconds (a large response parsed on the
loop, a GC pass). Prints percentiles of the round trips and of the loop's own lag.

    python bench/redis_rtt.py --seconds 20 --rate 300
    python bench/redis_rtt.py --seconds 20 --rate 300 --stall-ms 150 --stall-every 2
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson  # noqa: E402
import uvloop  # noqa: E402

from gateway.keys.resp import RedisLink, Script  # noqa: E402
from tests.procs import start_redis  # noqa: E402

ECHO = Script("return ARGV[1]")


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000 if s else float("nan")


def row(name: str, xs: list[float]) -> str:
    return (f"{name:<26} n={len(xs):>6}  p50 {pct(xs, .5):7.2f}  p99 {pct(xs, .99):7.2f}  "
            f"p99.9 {pct(xs, .999):7.2f}  max {max(xs) * 1000 if xs else float('nan'):7.2f} ms")


async def run(args: argparse.Namespace, url: str) -> None:
    import redis.asyncio as aioredis

    cache = aioredis.Redis.from_url(url, socket_timeout=30, max_connections=64)
    link = RedisLink(url, timeout=30, scripts=[ECHO])
    await link.start()
    body = orjson.dumps({"model": "smart", "messages": [{"role": "user", "content": "x" * 4000}]})
    await cache.hset("k", mapping={"b": body})
    cache_rtt: list[float] = []
    state_rtt: list[float] = []
    lag: list[float] = []
    stop = time.monotonic() + args.seconds

    def burn(ms: float) -> None:
        end = time.perf_counter() + ms / 1000
        while time.perf_counter() < end:
            orjson.loads(body)

    async def request() -> None:
        burn(args.cpu_ms)
        t = time.perf_counter()
        await cache.hmget("k", ["b", "u"])
        cache_rtt.append(time.perf_counter() - t)
        t = time.perf_counter()
        await link.evalsha(ECHO, ("x",))
        state_rtt.append(time.perf_counter() - t)

    async def lag_probe() -> None:
        while time.monotonic() < stop:
            t = time.perf_counter()
            await asyncio.sleep(0.01)
            lag.append(time.perf_counter() - t - 0.01)

    async def stalls() -> None:
        while args.stall_ms and time.monotonic() < stop:
            await asyncio.sleep(args.stall_every)
            burn(args.stall_ms)

    tasks: set[asyncio.Task[None]] = set()
    probe = asyncio.create_task(lag_probe())
    stall = asyncio.create_task(stalls())
    interval = 1 / args.rate
    nxt = time.monotonic()
    while time.monotonic() < stop:
        nxt += interval
        t = asyncio.create_task(request())
        tasks.add(t)
        t.add_done_callback(tasks.discard)
        await asyncio.sleep(max(0.0, nxt - time.monotonic()))
    await asyncio.gather(*tasks, probe, stall)
    await cache.aclose()
    await link.close()
    print(f"rate {args.rate}/s, {args.cpu_ms} ms CPU per request, stall {args.stall_ms} ms every "
          f"{args.stall_every} s, {args.seconds} s, loadavg {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(row("cache HMGET (redis-py)", cache_rtt))
    print(row("state EVALSHA (RedisLink)", state_rtt))
    print(row("event-loop lag", lag))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--rate", type=float, default=300, help="simulated requests per second")
    p.add_argument("--cpu-ms", type=float, default=1.0, help="CPU per request on the loop")
    p.add_argument("--stall-ms", type=float, default=0, help="block the loop this long ...")
    p.add_argument("--stall-every", type=float, default=2.0, help="... every this many seconds")
    args = p.parse_args()
    rds = start_redis()
    try:
        uvloop.run(run(args, f"redis://127.0.0.1:{rds.port}/0"))
    finally:
        rds.stop()


if __name__ == "__main__":
    main()
