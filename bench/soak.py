"""Soak: N minutes at a fixed request rate with virtual keys and the semantic cache on; memory of the
gateway's whole process tree every 30 s.

    python bench/soak.py                                   # 10 min, 100 req/s, --workers 2, max_entries 5000
    python bench/soak.py --minutes 2 --rate 50             # a short run
    python bench/soak.py --workers 4 --minutes 2           # the 4-worker memory figure
    python bench/soak.py --no-cache                        # the same load with the cache off
    python bench/soak.py --shadow 20 --minutes 4           # with 20% of the traffic mirrored

Starts on free ports (bench/_procs.py, every child in its own process group): a `redis-server` (db 0:
the cache, db 1: keys and limits), the upstream simulator and `gateway serve --workers N` with
`litellm_settings: {cache: true, cache_params: {type: redis-semantic, max_entries: M}}` and a master
key; creates teams and virtual keys (some with rpm/tpm limits and a budget, so the limit path runs) and
then sends, open loop at `--rate` requests/s, chat requests with temperature 0 and a random key:
mostly new prompts (`--new`), exact repeats of a recent prompt of the same key (`--repeat`) and
paraphrases of one (`--paraphrase`: "How do I" -> "How can I", ...).

Every `--interval` seconds it records the RSS of the gateway's process tree (supervisor + workers +
cache process; the multiprocessing resource tracker included), split by role (the cache process is
the one that mapped onnxruntime), `oss_cache_entries`, Redis `used_memory`, and per window: requests
sent/answered, statuses, `x-gateway-cache` values, errors, latency p50/p95.  At the end: the table,
RSS growth over the last 8 minutes (or the last half of a shorter run), and per-role figures.
Results (markdown + JSON) go to `--out` (default bench/results/soak-<time>.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from _procs import Procs, cpu_seconds, free_port, http_status, proc_kb_field, process_tree, rss_bytes  # noqa: E402

MASTER = "sk-soak-" + secrets.token_hex(16)
MB = 1024 * 1024

OPENERS = [("How do I", "How can I"), ("What is", "What's"), ("Can you explain", "Could you explain"),
           ("Tell me", "Please tell me"), ("What are", "What're"), ("Why does", "Why is it that"),
           ("Give me", "Can you give me"), ("Where can I find", "Where do I find")]
WORDS = ("account password invoice printer router laptop kubernetes cluster database index backup schedule "
         "refund policy shipping order warehouse contract salary budget forecast report dashboard metric "
         "alert latency throughput queue worker cache token model prompt gateway replica region quota "
         "license upgrade migration schema column table query transaction lock deadlock replica snapshot "
         "garden recipe bread oven flour yeast travel visa passport airport luggage hotel museum river "
         "mountain bicycle engine battery charger screen keyboard camera lens photo album song guitar "
         "piano lesson exam grammar essay chapter novel poem history planet galaxy telescope ocean").split()
TOPICS = ("for my team", "on a Linux server", "in the mobile app", "before the deadline", "without losing data",
          "for a beginner", "step by step", "in under an hour", "on a small budget", "for the quarterly review")


def new_prompt(rng: random.Random, n: int) -> tuple[int, str]:
    """(opener index, text): a prompt never sent before (a serial number makes it unique)."""
    i = rng.randrange(len(OPENERS))
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14)))
    return i, f"{OPENERS[i][0]} {words} {rng.choice(TOPICS)} (case {n})?"


def paraphrase(opener: int, text: str) -> str:
    a, b = OPENERS[opener]
    return b + text[len(a):]


# -- load ----------------------------------------------------------------------------------------------


@dataclass
class Window:
    sent: int = 0
    answered: int = 0
    status: Counter[str] = field(default_factory=Counter)
    cache: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    skipped: int = 0  # not sent: too many requests in flight (the gateway fell behind)


@dataclass
class Sample:
    t: float
    window: Window
    rss: dict[str, int]
    procs: dict[str, int]
    entries: float | None
    redis_used: int | None
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds so far, by role (live processes)
    cache_errors: float | None = None                     # oss_cache_errors_total so far


class Load:
    def __init__(self, url: str, keys: list[str], rate: float, mix: tuple[float, float, float], seed: int,
                 max_in_flight: int) -> None:
        self.url = url
        self.keys = keys
        self.rate = rate
        self.mix = mix
        self.rng = random.Random(seed)
        self.max_in_flight = max_in_flight
        self.window = Window()
        self.total = Window()
        self.recent: dict[str, deque[tuple[int, str]]] = {k: deque(maxlen=500) for k in keys}
        self.serial = 0
        self.in_flight = 0

    def pick(self) -> tuple[str, str, str]:
        """(key, prompt, kind)."""
        key = self.rng.choice(self.keys)
        recent = self.recent[key]
        r = self.rng.random()
        if recent and r < self.mix[1]:
            return key, self.rng.choice(recent)[1], "repeat"
        if recent and r < self.mix[1] + self.mix[2]:
            opener, text = self.rng.choice(recent)
            return key, paraphrase(opener, text), "paraphrase"
        self.serial += 1
        opener, text = new_prompt(self.rng, self.serial)
        recent.append((opener, text))
        return key, text, "new"

    async def one(self, session: Any, key: str, text: str) -> None:
        body = {"model": "smart", "messages": [{"role": "user", "content": text}], "max_tokens": 16,
                "temperature": 0}
        t0 = time.perf_counter()
        self.in_flight += 1
        try:
            async with session.post(self.url, json=body, headers={"Authorization": f"Bearer {key}"}) as resp:
                await resp.read()
                status, cache = str(resp.status), resp.headers.get("x-gateway-cache", "-")
        except Exception as exc:  # noqa: BLE001 - every failure is a figure
            for w in (self.window, self.total):
                w.errors[type(exc).__name__] += 1
            return
        finally:
            self.in_flight -= 1
        dt = time.perf_counter() - t0
        for w in (self.window, self.total):
            w.answered += 1
            w.status[status] += 1
            w.cache[cache] += 1
            w.latencies.append(dt)

    async def run(self, seconds: float, on_tick: Any, interval: float) -> None:
        import aiohttp

        conn = aiohttp.TCPConnector(limit=self.max_in_flight, force_close=False)
        tasks: set[asyncio.Task[None]] = set()
        async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=60)) as session:
            start = time.perf_counter()
            next_tick = start + interval
            n = 0
            while True:
                now = time.perf_counter()
                if now - start >= seconds:
                    break
                if now >= next_tick:
                    await on_tick(now - start)
                    next_tick += interval
                due = start + n / self.rate
                if due > now:
                    await asyncio.sleep(min(due - now, max(0.0, next_tick - now)))
                    continue
                n += 1
                if self.in_flight >= self.max_in_flight:
                    self.window.skipped += 1
                    self.total.skipped += 1
                    continue
                key, text, _kind = self.pick()
                self.window.sent += 1
                self.total.sent += 1
                task = asyncio.create_task(self.one(session, key, text))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.wait(tasks, timeout=60)
            await on_tick(time.perf_counter() - start)


# -- processes and figures -----------------------------------------------------------------------------


def roles(root: int) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {"supervisor": [], "workers": [], "cache process": [], "other": []}
    for pid in process_tree(root):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            continue
        if pid == root:
            out["supervisor"].append(pid)
        elif b"resource_tracker" in cmd:
            out["other"].append(pid)
        elif "onnxruntime" in maps:
            out["cache process"].append(pid)
        else:
            out["workers"].append(pid)
    return out


def pss_bytes(pid: int) -> int:
    """Proportional set size: shared pages (libpython, libraries) split among the processes sharing them."""
    return proc_kb_field(pid, "smaps_rollup", "Pss:")


def metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000


def cpu_share(a: Sample, b: Sample) -> str:
    """CPU use by role between two samples, in % of one core."""
    dt = max(b.t - a.t, 1e-9)
    return " ".join(f"{role.split()[0]}:{100 * (b.cpu.get(role, 0) - a.cpu.get(role, 0)) / dt:.0f}"
                    for role in ("workers", "cache process", "supervisor", "simulator"))


def fmt_counter(c: Counter[str]) -> str:
    return " ".join(f"{k}:{v}" for k, v in sorted(c.items())) or "-"


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.a = args
        self.work = Path(tempfile.mkdtemp(prefix="soak-"))
        self.procs = Procs(self.work)
        self.samples: list[Sample] = []
        self.gw_pid = 0
        self.sim_pid = 0
        self.gw_port = 0
        self.cpu: dict[str, float] = {}
        self.cache_errors: float | None = None
        self.redis_port = 0

    def log(self, msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    def start(self) -> None:
        import yaml

        exe = shutil.which("redis-server")
        if exe is None:
            sys.exit("soak: redis-server not found: run ./scripts/setup.sh")
        self.redis_port = free_port()
        self.procs.start("redis", [exe, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no"], self.redis_port)
        sim_port = free_port()
        sim = self.procs.start("simulator", [sys.executable, "-m", "gateway.simulator", "--host", "127.0.0.1",
                                             "--port", str(sim_port), *self.a.sim_arg], sim_port, cwd=ROOT)
        sim.wait_ready("/health")
        self.sim_pid = sim.pid
        cache_params: dict[str, Any] = {"type": "redis-semantic", "ttl": self.a.ttl}
        if self.a.max_entries:
            cache_params["max_entries"] = self.a.max_entries
        cfg: dict[str, Any] = {"model_list": [{"model_name": name, "litellm_params": {
                   "model": "openai/sim-model", "api_base": f"http://127.0.0.1:{sim_port}/v1"},
                   "model_info": {"input_cost_per_token": 0.000001, "output_cost_per_token": 0.000002}}
                   for name in ("smart", "smart-next")],
               "litellm_settings": {"cache": not self.a.no_cache, "cache_params": cache_params},
               "general_settings": {"master_key": MASTER}}
        if self.a.shadow:  # a share of smart mirrored to smart-next: shadow tasks, records, agreement
            cfg["router_settings"] = {"shadow": {"smart": {"to": "smart-next", "share": self.a.shadow}}}
        path = self.work / "router.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        self.gw_port = free_port()
        redis = f"redis://127.0.0.1:{self.redis_port}"
        gw = self.procs.start("gateway", [sys.executable, "-m", "gateway", "serve", "--config", str(path),
                                          "--host", "127.0.0.1", "--port", str(self.gw_port),
                                          "--workers", str(self.a.workers)], self.gw_port,
                              env={"GATEWAY_REDIS_URL": f"{redis}/0", "GATEWAY_STATE_REDIS_URL": f"{redis}/1",
                                   "GATEWAY_LOG_LEVEL": "info"}, cwd=ROOT)
        took = gw.wait_ready("/health/ready", timeout=120)
        self.gw_pid = gw.pid
        self.gw_log = gw.log_path
        self.log(f"gateway ready in {took:.1f}s (pid {gw.pid}, {self.a.workers} workers, port {self.gw_port})")

    def admin(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        status, raw = http_status(self.gw_port, path, timeout=10, method="POST", body=json.dumps(body).encode(),
                                  headers={"Authorization": f"Bearer {MASTER}", "content-type": "application/json"})
        if status != 200:
            raise RuntimeError(f"{path} -> {status}: {raw[:200]!r}")
        return dict(json.loads(raw))

    def make_keys(self) -> list[str]:
        keys: list[str] = []
        for t in range(self.a.teams):
            self.admin("/team/new", {"team_id": f"soak-team-{t}", "team_alias": f"team {t}"})
        for i in range(self.a.keys):
            body: dict[str, Any] = {"key_alias": f"soak-key-{i}"}
            if self.a.teams and i % 3 != 2:  # every third key has no team (its own tenant)
                body["team_id"] = f"soak-team-{i % self.a.teams}"
            if i % 2 == 0:  # limits that never bite, so the limit path runs on half the requests
                body.update({"rpm_limit": 1_000_000, "tpm_limit": 1_000_000_000, "max_budget": 1_000_000.0})
            keys.append(self.admin("/key/generate", body)["key"])
        return keys

    def snapshot(self) -> tuple[dict[str, int], dict[str, int], float | None, int | None]:
        by_role = roles(self.gw_pid)
        self.cpu = {role: sum(cpu_seconds(p) for p in pids) for role, pids in by_role.items()}
        self.cpu["simulator"] = sum(cpu_seconds(p) for p in process_tree(self.sim_pid))
        rss = {role: sum(rss_bytes(p) for p in pids) for role, pids in by_role.items()}
        rss["total"] = sum(rss.values())
        rss["pss total"] = sum(pss_bytes(p) for pids in by_role.values() for p in pids)
        counts = {role: len(pids) for role, pids in by_role.items()}
        for pid in by_role["workers"]:
            rss[f"worker {pid}"] = rss_bytes(pid)
        entries = None
        try:
            status, raw = http_status(self.gw_port, "/metrics", timeout=5)
            if status == 200:
                entries = metric(raw.decode(), "oss_cache_entries")
                self.cache_errors = sum(float(line.rsplit(" ", 1)[1]) for line in raw.decode().splitlines()
                                        if line.startswith("oss_cache_errors_total{"))
        except OSError:
            pass
        used = None
        try:
            import redis

            used = int(redis.Redis(port=self.redis_port, socket_timeout=2).info("memory")["used_memory"])
        except Exception:  # noqa: BLE001 - a figure, not a condition
            pass
        return rss, counts, entries, used

    async def run(self) -> None:
        keys = self.make_keys()
        mix = (1 - self.a.repeat - self.a.paraphrase, self.a.repeat, self.a.paraphrase)
        load = Load(f"http://127.0.0.1:{self.gw_port}/v1/chat/completions", keys, self.a.rate, mix, self.a.seed,
                    self.a.max_in_flight)
        rss, counts, entries, used = self.snapshot()
        self.samples.append(Sample(0.0, Window(), rss, counts, entries, used, dict(self.cpu), self.cache_errors))
        self.log(f"start: RSS {rss['total'] / MB:.0f} MB ({counts}); {len(keys)} keys; "
                 f"{self.a.rate:g} req/s for {self.a.minutes:g} min")

        async def tick(t: float) -> None:
            rss, counts, entries, used = await asyncio.get_running_loop().run_in_executor(None, self.snapshot)
            w, load.window = load.window, Window()
            prev = self.samples[-1]
            self.samples.append(Sample(t, w, rss, counts, entries, used, dict(self.cpu), self.cache_errors))
            self.log(f"t={t:5.0f}s sent {w.sent} ok {w.status.get('200', 0)} {fmt_counter(w.cache)} "
                     f"cache errors {(self.cache_errors or 0) - (prev.cache_errors or 0):.0f} CPU% "
                     f"{cpu_share(prev, self.samples[-1])} "
                     f"err {sum(w.errors.values())} skipped {w.skipped} p50 {pct(w.latencies, .5):.0f} ms | RSS "
                     f"{rss['total'] / MB:.0f} MB (cache proc {rss['cache process'] / MB:.0f}, workers "
                     f"{rss['workers'] / MB:.0f}) entries {entries}")

        await load.run(self.a.minutes * 60, tick, self.a.interval)
        self.total = load.total

    def report(self) -> str:
        s = self.samples
        cache = "off" if self.a.no_cache else f"on (max_entries {self.a.max_entries or 'default'})"
        lines = [f"# Soak: {self.a.minutes:g} min at {self.a.rate:g} req/s, --workers {self.a.workers}, cache {cache}",
                 "",
                 f"Mix: new {1 - self.a.repeat - self.a.paraphrase:.0%}, repeats {self.a.repeat:.0%}, paraphrases "
                 f"{self.a.paraphrase:.0%}; {self.a.keys} virtual keys in {self.a.teams} teams; RSS = VmRSS summed "
                 "over the gateway's process tree (supervisor, workers, cache process, resource tracker).", "",
                 "| t (s) | sent | answered | statuses | x-gateway-cache | errors | skipped | p50 ms | p95 ms | "
                 "RSS total MB | PSS total MB | cache proc MB | workers MB | supervisor+other MB | oss_cache_entries | "
                 "Redis used MB | cache errors | CPU % of a core |",
                 "| ---: | ---: | ---: | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
                 "| ---: | --- |"]
        for i, x in enumerate(s):
            w = x.window
            prev = s[i - 1] if i else x
            lines.append(
                f"| {x.t:.0f} | {w.sent} | {w.answered} | {fmt_counter(w.status)} | {fmt_counter(w.cache)} | "
                f"{fmt_counter(w.errors)} | {w.skipped} | {pct(w.latencies, .5):.1f} | {pct(w.latencies, .95):.1f} | "
                f"{x.rss['total'] / MB:.1f} | {x.rss['pss total'] / MB:.1f} | {x.rss['cache process'] / MB:.1f} | "
                f"{x.rss['workers'] / MB:.1f} | "
                f"{(x.rss['supervisor'] + x.rss['other']) / MB:.1f} | "
                f"{'-' if x.entries is None else f'{x.entries:.0f}'} | "
                f"{'-' if x.redis_used is None else f'{x.redis_used / MB:.1f}'} | "
                f"{(x.cache_errors or 0) - (prev.cache_errors or 0):.0f} | {cpu_share(prev, x) if i else '-'} |")
        tot = self.total
        end = s[-1]
        span = min(8 * 60, end.t / 2 if end.t < 10 * 60 else 8 * 60)
        base = min(s, key=lambda x: abs(x.t - (end.t - span)))
        growth = end.rss["total"] / base.rss["total"] - 1
        peak = max(x.rss["total"] for x in s if x.t >= base.t)
        workers = [v for k, v in end.rss.items() if k.startswith("worker ")]
        log = self.gw_log.read_text(errors="replace") if self.gw_log.exists() else ""
        lines += ["",
                  f"Totals: sent {tot.sent}, answered {tot.answered} ({tot.answered / max(end.t, 1):.1f}/s), "
                  f"statuses {fmt_counter(tot.status)}, cache {fmt_counter(tot.cache)}, errors "
                  f"{fmt_counter(tot.errors)}, skipped {tot.skipped}; latency p50 {pct(tot.latencies, .5):.1f} ms, "
                  f"p95 {pct(tot.latencies, .95):.1f} ms, p99 {pct(tot.latencies, .99):.1f} ms.",
                  f"RSS growth over the last {span / 60:.1f} min (t={base.t:.0f}s -> {end.t:.0f}s): "
                  f"{base.rss['total'] / MB:.1f} -> {end.rss['total'] / MB:.1f} MB = {growth:+.1%} "
                  f"(peak in the window {peak / MB:.1f} MB).",
                  f"At the end: cache process {end.rss['cache process'] / MB:.1f} MB, {len(workers)} workers "
                  f"{' + '.join(f'{v / MB:.1f}' for v in workers)} MB (max {max(workers, default=0) / MB:.1f}), "
                  f"supervisor {end.rss['supervisor'] / MB:.1f} MB, resource tracker {end.rss['other'] / MB:.1f} MB; "
                  f"total {end.rss['total'] / MB:.1f} MB vs cache process + {len(workers)} x 80 MB = "
                  f"{(end.rss['cache process'] + len(workers) * 80 * MB) / MB:.1f} MB (PSS of the tree: "
                  f"{end.rss['pss total'] / MB:.1f} MB; RSS counts shared library pages once per process).",
                  f"Gateway log: {log.count('Redis unreachable')} 'Redis unreachable', "
                  f"{log.count('cache process unreachable')} 'cache process unreachable', "
                  f"{log.count(' exited with ')} process exits, {log.count('Traceback')} tracebacks."]
        return "\n".join(lines)

    def stop(self) -> None:
        self.procs.stop_all()
        shutil.rmtree(self.work, ignore_errors=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=100.0, help="requests per second (open loop)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-entries", type=int, default=5000, help="cache_params.max_entries (0: the default)")
    ap.add_argument("--ttl", type=float, default=3600.0)
    ap.add_argument("--no-cache", action="store_true", help="the same load with cache: false")
    ap.add_argument("--repeat", type=float, default=0.15, help="share of exact repeats of a recent prompt")
    ap.add_argument("--paraphrase", type=float, default=0.10, help="share of paraphrases of a recent prompt")
    ap.add_argument("--shadow", type=float, default=0.0, help="percent of smart mirrored to smart-next")
    ap.add_argument("--keys", type=int, default=8)
    ap.add_argument("--teams", type=int, default=2)
    ap.add_argument("--interval", type=float, default=30.0, help="seconds between samples")
    ap.add_argument("--max-in-flight", type=int, default=256)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--sim-arg", action="append", default=[], help="extra gateway-sim argument (repeatable)")
    ap.add_argument("--out", type=Path, default=None)
    return ap.parse_args(argv)


def _on_sigterm(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    soak = Soak(args)
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        soak.start()
        asyncio.run(soak.run())
        text = soak.report()
    except KeyboardInterrupt:
        print("interrupted: stopping the children")
        return 130
    finally:
        soak.stop()
    print()
    print(text)
    out = args.out or ROOT / "bench" / "results" / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    out.with_suffix(".json").write_text(json.dumps({
        "args": {k: str(v) for k, v in vars(args).items()},
        "samples": [{"t": x.t, "rss": x.rss, "procs": x.procs, "cpu": x.cpu, "cache_errors": x.cache_errors, "entries": x.entries, "redis_used": x.redis_used,
                     "sent": x.window.sent, "answered": x.window.answered, "status": dict(x.window.status),
                     "cache": dict(x.window.cache), "errors": dict(x.window.errors), "skipped": x.window.skipped,
                     "p50_ms": pct(x.window.latencies, .5), "p95_ms": pct(x.window.latencies, .95)}
                    for x in soak.samples]}, indent=1))
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
