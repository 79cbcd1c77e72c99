"""Routing strategies on an agentic multi-turn workload: simple-shuffle vs least-busy vs engine-aware.

Four simulator replicas of one alias, each with the engine model (gateway/simulator/engine.py: prefix
cache, continuous batching, prefill and decode time), behind a real `gateway serve`. The workload:

- sessions (agent runs) arrive as a Poisson process; each belongs to one of `--groups` agents whose
  system prompt (300-2,000 tokens) every session of that agent shares;
- a session makes 4-12 calls in turn; each call sends the whole conversation so far (system prompt,
  every earlier user/tool message and answer) plus a new message of 50-800 tokens (a tool result or
  the user), streams an answer of 16-128 tokens, and the next call follows after a pause (exponential,
  mean `--think` seconds: the tool running);
- the whole plan (arrivals, messages, answer lengths, pauses) is drawn once from `--seed`, so every
  strategy serves exactly the same requests, and the simulator's answers are deterministic.

Capacity is the fleet's under simple-shuffle, computed from the simulator's model: with step time
`(1 + F*(b-1))/decode_tps + prefill_tokens/prefill_tps`, a replica saturated at a batch of
`max_num_seqs` (S) spends per call `out * (1 - F + F*S)/(S*decode_tps) + uncached/prefill_tps` seconds,
so capacity = replicas / E[that] calls/s, where E[uncached] comes from walking the plan with every call
sent to a random replica (system prompts cached everywhere; a call finds what earlier calls of its
conversation left on that replica; see `capacity()`). Each replica's KV cache (256k tokens) holds
that working set, so the walk matches what the simulators measure under simple-shuffle. Offered load
is a fraction of it (`--loads 0.7,0.9`). Every (load, strategy) point starts fresh processes (empty
caches), warms up for `--warmup` seconds and measures for `--duration` seconds:

- TTFT: client side, request sent to first content token, for calls sent inside the window;
- throughput: answer tokens received inside the window per second (and calls completed per second);
- prefix-cache hit ratio: Δ vllm:prefix_cache_hits_total / Δ vllm:prefix_cache_queries_total summed
  over the four replicas' /metrics across the window (tokens, as vLLM counts them);
- client stalls: seconds of the window in which the load generator's own event loop woke up more than
  0.1 s late (and the longest such delay): on a shared machine, a point with stalls is disturbed.

Run: `python bench/routing_bench.py` (about 11 minutes), `--plan` prints the workload and capacity only.
The table is printed and written to bench/results/routing.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _procs import Proc, Procs, free_port  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
STRATEGIES = ("simple-shuffle", "least-busy", "engine-aware")
ALIAS = "agent"
MODEL = "agent-model"
PER_MESSAGE = 3  # the simulator's tokens per chat message besides its words
HEADER = 3  # the assistant header the engine appends to a chat prompt
STALL = 0.1  # a wake-up of the load generator this late (s) means the machine did not run it
DRAIN_SECONDS = 30.0  # after the window: how long calls sent inside it may take to finish
MAX_MODEL_LEN = 16384  # the longest session here stays under 8k tokens


# -- the workload -------------------------------------------------------------------------------------------


@dataclass
class Turn:
    text: str
    words: int
    max_tokens: int
    pause: float  # seconds before this call (after the previous answer); 0 for the first


@dataclass
class Session:
    start: float
    group: int
    turns: list[Turn]


@dataclass
class Workload:
    systems: list[str]
    sessions: list[Session]

    def requests(self) -> int:
        return sum(len(s.turns) for s in self.sessions)


class Words:
    """Random text from a private vocabulary (distinct words: prompts share tokens only where they should)."""

    def __init__(self, rng: random.Random, size: int = 20000) -> None:
        self.rng = rng
        self.vocab = [f"w{i:x}" for i in range(size)]

    def text(self, n: int) -> str:
        return " ".join(self.rng.choices(self.vocab, k=n))


@dataclass(frozen=True)
class WorkloadShape:
    groups: int = 8
    system: tuple[int, int] = (300, 2000)
    turns: tuple[int, int] = (4, 12)
    new_words: tuple[int, int] = (50, 800)
    answer: tuple[int, int] = (16, 128)
    think: float = 1.0

    def mean_turns(self) -> float:
        return (self.turns[0] + self.turns[1]) / 2


def make_workload(shape: WorkloadShape, session_rate: float, horizon: float, seed: int) -> Workload:
    rng = random.Random(seed)
    words = Words(rng)
    systems = [words.text(rng.randint(*shape.system)) for _ in range(shape.groups)]
    sessions: list[Session] = []
    t = 0.0
    while True:
        t += rng.expovariate(session_rate)
        if t > horizon:
            break
        turns = []
        for i in range(rng.randint(*shape.turns)):
            n = rng.randint(*shape.new_words)
            turns.append(Turn(words.text(n), n, rng.randint(*shape.answer),
                              0.0 if i == 0 else rng.expovariate(1 / shape.think)))
        sessions.append(Session(t, rng.randrange(shape.groups), turns))
    return Workload(systems, sessions)


# -- the model's capacity -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fleet:
    replicas: int = 4
    prefill_tps: float = 8000.0
    decode_tps: float = 40.0
    batch_slowdown: float = 0.03
    max_num_seqs: int = 24
    kv_cache_tokens: int = 262144  # an 8B model on an 80 GB GPU holds ~400k; enough that LRU does not bite here
    block_size: int = 16

    def sim_args(self) -> list[str]:
        return ["--prefill-tps", f"{self.prefill_tps:g}", "--decode-tps", f"{self.decode_tps:g}",
                "--batch-slowdown", f"{self.batch_slowdown:g}", "--max-num-seqs", str(self.max_num_seqs),
                "--kv-cache-tokens", str(self.kv_cache_tokens), "--block-size", str(self.block_size)]

    def seconds_per_request(self, uncached: float, out: float) -> float:
        """Busy time of one request on a replica that runs full batches."""
        f, s = self.batch_slowdown, self.max_num_seqs
        return out * (1 - f + f * s) / (s * self.decode_tps) + uncached / self.prefill_tps


@dataclass
class Capacity:
    requests_per_s: float  # what the fleet carries under simple-shuffle
    mean_prompt: float
    mean_uncached: float  # prompt tokens a call computes under simple-shuffle
    mean_out: float
    hit_ratio: float  # the prefix-cache hit ratio that assumes
    affinity_requests_per_s: float  # for reference: every call finds its own history cached
    affinity_hit_ratio: float


def capacity(workload: Workload, shape: WorkloadShape, fleet: Fleet, draws: int = 20, seed: int = 1) -> Capacity:
    """Calls/s at which the fleet saturates when every call goes to a random replica (simple-shuffle).

    Every replica holds every agent's system prompt; a call also finds in the cache the longest prefix
    of its conversation that an earlier call left on the replica it lands on (the prompt and answer of
    that call, in full blocks). Averaged over `draws` random assignments; LRU evictions are ignored,
    so the cache is credited with more than it holds and the capacity errs high (against engine-aware).
    The same walk with each call on its conversation's own replica gives the affinity figures."""
    bs = fleet.block_size
    rng = random.Random(seed)
    prompts, outs, warm = [], [], []
    uncached_total = 0.0
    for s in workload.sessions:
        system = len(workload.systems[s.group].split()) + PER_MESSAGE
        calls: list[tuple[int, int, int]] = []  # (prompt, limit, tokens left in full blocks afterwards)
        context = system  # tokens of the conversation before this call's new message
        for turn in s.turns:
            prompt = context + turn.words + PER_MESSAGE + HEADER
            calls.append((prompt, (prompt - 1) // bs * bs, (prompt + turn.max_tokens - 1) // bs * bs))
            prompts.append(prompt)
            outs.append(turn.max_tokens)
            context = prompt + turn.max_tokens  # the answer joins the history (its header was the HEADER)
        cached_system = system // bs * bs
        previous = 0
        for prompt, limit, left in calls:  # one replica for the whole conversation
            warm.append(prompt - min(max(cached_system, previous), limit))
            previous = left
        for _ in range(draws):
            held = [0] * fleet.replicas  # longest prefix of this conversation each replica holds
            for prompt, limit, left in calls:
                r = rng.randrange(fleet.replicas)
                uncached_total += prompt - min(max(cached_system, held[r]), limit)
                held[r] = max(held[r], left)
    n = len(prompts)
    mean_p, mean_o, mean_w = sum(prompts) / n, sum(outs) / n, sum(warm) / n
    mean_u = uncached_total / (n * draws)
    return Capacity(fleet.replicas / fleet.seconds_per_request(mean_u, mean_o), mean_p, mean_u, mean_o,
                    1 - mean_u / mean_p, fleet.replicas / fleet.seconds_per_request(mean_w, mean_o),
                    1 - mean_w / mean_p)


# -- one run -----------------------------------------------------------------------------------------------------


@dataclass
class Call:
    sent: float
    session: int = 0
    turn: int = 0
    first: float | None = None
    done: float | None = None
    tokens: int = 0
    prompt: int = 0
    cached: int = 0
    replica: str = ""
    error: str | None = None


@dataclass
class RunResult:
    strategy: str
    load: float
    rate: float
    calls: list[Call] = field(default_factory=list)
    window_tokens: int = 0
    window_done: int = 0
    hits: float = 0.0
    queries: float = 0.0
    decisions: dict[str, float] = field(default_factory=dict)
    preemptions: float = 0.0
    per_replica: list[int] = field(default_factory=list)
    max_lag: float = 0.0  # the load generator's event loop: longest wake-up delay inside the window
    stalled: float = 0.0  # seconds of the window in wake-ups more than STALL late


def metric_sums(text: str, names: Sequence[str]) -> dict[str, float]:
    out = dict.fromkeys(names, 0.0)
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in out:
            out[name] += float(line.rsplit(" ", 1)[1])
    return out


def decisions(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("oss_routing_decisions_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            out[reason] = out.get(reason, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


class Runner:
    def __init__(self, args: argparse.Namespace, fleet: Fleet, workload: Workload, work_dir: Path) -> None:
        self.args = args
        self.fleet = fleet
        self.workload = workload
        self.work_dir = work_dir
        self.procs = Procs(work_dir)

    def start(self, strategy: str) -> tuple[list[Proc], Proc]:
        env = {"PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        sims = []
        for i in range(self.fleet.replicas):
            port = free_port()
            sims.append(self.procs.start(f"sim{i}", [
                sys.executable, "-m", "gateway.simulator", "--host", "127.0.0.1", "--port", str(port),
                "--model", MODEL, "--max-model-len", str(MAX_MODEL_LEN), "--no-dcgm", "--enable-prompt-tokens-details",
                *self.fleet.sim_args()],
                port, env=env))
        config: dict[str, object] = {
            "model_list": [{
                "model_name": ALIAS,
                "litellm_params": {"model": f"hosted_vllm/{MODEL}", "api_base": f"{s.url}/v1", "timeout": 600},
                "model_info": {"id": f"replica-{i}", "max_num_seqs": self.fleet.max_num_seqs},
            } for i, s in enumerate(sims)],
            "router_settings": {"routing_strategy": strategy, "num_retries": 0},
        }
        if strategy == "engine-aware" and self.args.engine_aware:
            config["router_settings"]["engine_aware"] = yaml.safe_load(self.args.engine_aware)  # type: ignore[index]
        path = self.work_dir / f"router-{strategy}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        port = free_port()
        gw = self.procs.start("gateway", [sys.executable, "-m", "gateway", "serve", "--config", str(path),
                                          "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              port, env={**env, "GATEWAY_LOG_LEVEL": "warning"})
        for s in sims:
            s.wait_ready("/health")
        gw.wait_ready("/health/ready")
        return sims, gw

    async def run(self, strategy: str, load: float, session_rate: float) -> RunResult:
        """One point: the plan's sessions (drawn at 1 session/s) arrive at session_rate per second."""
        sims, gw = self.start(strategy)
        try:
            return await self._drive(strategy, load, session_rate, sims, gw)
        finally:
            for p in [gw, *sims]:
                self.procs.stop(p)

    async def _scrape(self, session: aiohttp.ClientSession, sims: Sequence[Proc]) -> dict[str, float]:
        names = ("vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total", "vllm:num_preemptions_total",
                 "vllm:request_success_total")
        total = dict.fromkeys(names, 0.0)
        for s in sims:
            async with session.get(f"{s.url}/metrics") as r:
                sums = metric_sums(await r.text(), names)
            for k, v in sums.items():
                total[k] += v
            total[f"done:{s.port}"] = sums["vllm:request_success_total"]
        return total

    async def _drive(self, strategy: str, load: float, session_rate: float, sims: Sequence[Proc], gw: Proc
                     ) -> RunResult:
        args = self.args
        res = RunResult(strategy, load, session_rate)
        url = f"{gw.url}/v1/chat/completions"
        loop = asyncio.get_running_loop()
        t0 = loop.time() + 0.2
        w0, w1 = t0 + args.warmup, t0 + args.warmup + args.duration
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        timeout = aiohttp.ClientTimeout(total=None, sock_read=300)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

            async def call(messages: list[dict[str, str]], max_tokens: int, sid: int, turn: int) -> str | None:
                body = orjson.dumps({"model": ALIAS, "messages": messages, "max_tokens": max_tokens, "stream": True,
                                     "stream_options": {"include_usage": True}})
                c = Call(loop.time(), sid, turn)
                in_window = w0 <= c.sent < w1
                parts: list[str] = []
                try:
                    async with http.post(url, data=body, headers={"content-type": "application/json"}) as resp:
                        c.replica = resp.headers.get("x-gateway-deployment", "")
                        if resp.status != 200:
                            c.error = f"HTTP {resp.status}"
                        else:
                            async for line in resp.content:
                                if not line.startswith(b"data: {"):
                                    continue
                                chunk = orjson.loads(line[6:])
                                usage = chunk.get("usage")
                                if usage:
                                    c.prompt = usage.get("prompt_tokens", 0)
                                    c.cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
                                choices = chunk.get("choices") or []
                                text = choices[0].get("delta", {}).get("content") if choices else None
                                if text:
                                    now = loop.time()
                                    if c.first is None:
                                        c.first = now
                                    parts.append(text)
                                    c.tokens += 1
                                    if w0 <= now < w1:
                                        res.window_tokens += 1
                            c.done = loop.time()
                            if w0 <= c.done < w1:
                                res.window_done += 1
                except (TimeoutError, aiohttp.ClientError) as exc:
                    c.error = type(exc).__name__
                if in_window:
                    res.calls.append(c)
                return None if c.error else "".join(parts)

            async def session(s: Session, sid: int) -> None:
                await asyncio.sleep(max(0.0, t0 + s.start - loop.time()))
                messages = [{"role": "system", "content": self.workload.systems[s.group]}]
                for i, turn in enumerate(s.turns):
                    if turn.pause:
                        await asyncio.sleep(min(turn.pause, max(0.0, w1 - loop.time())))
                    if loop.time() >= w1:
                        return
                    messages.append({"role": "user", "content": turn.text})
                    answer = await call(messages, turn.max_tokens, sid, i)
                    if answer is None:
                        return
                    messages.append({"role": "assistant", "content": answer})

            async def watch_lag() -> None:
                """How late this process's event loop wakes up: a busy machine shows here first."""
                tick = 0.02
                while True:
                    before = loop.time()
                    await asyncio.sleep(tick)
                    late = loop.time() - before - tick
                    if w0 <= before < w1:
                        res.max_lag = max(res.max_lag, late)
                        if late > STALL:
                            res.stalled += late

            watcher = loop.create_task(watch_lag())
            scale = 1.0 / session_rate
            tasks = [loop.create_task(session(Session(s.start * scale, s.group, s.turns), i))
                     for i, s in enumerate(self.workload.sessions) if s.start * scale < args.warmup + args.duration]
            await asyncio.sleep(max(0.0, w0 - loop.time()))
            before = await self._scrape(http, sims)
            await asyncio.sleep(max(0.0, w1 - loop.time()))
            after = await self._scrape(http, sims)
            async with http.get(f"{gw.url}/metrics") as r:
                res.decisions = decisions(await r.text())
            # no call starts after the window; the ones sent inside it finish (their TTFT counts)
            await asyncio.wait(tasks, timeout=DRAIN_SECONDS)
            for t in [*tasks, watcher]:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        res.hits = after["vllm:prefix_cache_hits_total"] - before["vllm:prefix_cache_hits_total"]
        res.queries = after["vllm:prefix_cache_queries_total"] - before["vllm:prefix_cache_queries_total"]
        res.preemptions = after["vllm:num_preemptions_total"] - before["vllm:num_preemptions_total"]
        res.per_replica = [int(after[f"done:{s.port}"] - before[f"done:{s.port}"]) for s in sims]
        if args.calls_log:
            lines = b"".join(orjson.dumps({
                "strategy": strategy, "load": load, "sent": c.sent - w0, "session": c.session, "turn": c.turn,
                "ttft": None if c.first is None else c.first - c.sent, "prompt": c.prompt, "cached": c.cached,
                "replica": c.replica, "tokens": c.tokens, "error": c.error}) + b"\n" for c in res.calls)
            await asyncio.to_thread(_append, Path(args.calls_log), lines)
        return res


def _append(path: Path, data: bytes) -> None:
    with path.open("ab") as fh:
        fh.write(data)


# -- report ------------------------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[k]


@dataclass
class Row:
    strategy: str
    load: float
    rate: float
    calls: int
    errors: int
    p50: float
    p99: float
    mean: float
    tokens_per_s: float
    calls_per_s: float
    hit_ratio: float
    preemptions: float
    spread: str
    decisions: str
    max_lag: float
    stalled: float


def summarize(r: RunResult, duration: float) -> Row:
    ttfts = [c.first - c.sent for c in r.calls if c.first is not None and c.error is None]
    errors = sum(1 for c in r.calls if c.error)
    total = sum(r.decisions.values()) or 1.0
    dec = ", ".join(f"{k} {v / total:.0%}" for k, v in sorted(r.decisions.items(), key=lambda kv: -kv[1]))
    return Row(r.strategy, r.load, r.rate, len(r.calls), errors, pct(ttfts, 50), pct(ttfts, 99),
               statistics.fmean(ttfts) if ttfts else float("nan"), r.window_tokens / duration,
               r.window_done / duration, r.hits / r.queries if r.queries else float("nan"), r.preemptions,
               "/".join(str(n) for n in r.per_replica), dec, r.max_lag, r.stalled)


def table(rows: list[Row]) -> str:
    head = ("| load | strategy | calls | errors | TTFT p50 (ms) | TTFT p99 (ms) | TTFT mean (ms) | tokens/s | calls/s "
            "| prefix hit ratio | preemptions | calls per replica | routing reasons | client stalls |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in rows:
        lines.append(f"| {r.load:.0%} ({r.rate:.2f} req/s) | {r.strategy} | {r.calls} | {r.errors} | {r.p50 * 1000:.0f} "
                     f"| {r.p99 * 1000:.0f} | {r.mean * 1000:.0f} | {r.tokens_per_s:.0f} | {r.calls_per_s:.2f} "
                     f"| {r.hit_ratio:.3f} | {r.preemptions:.0f} | {r.spread} | {r.decisions} "
                     f"| {r.stalled:.1f} s, max {r.max_lag * 1000:.0f} ms |")
    return "\n".join(lines)


def verdict(rows: list[Row], load: float) -> list[str]:
    at = {r.strategy: r for r in rows if r.load == load}
    if "engine-aware" not in at or "simple-shuffle" not in at:
        return []
    ea, sh = at["engine-aware"], at["simple-shuffle"]
    p50x, p99x = sh.p50 / ea.p50, sh.p99 / ea.p99
    tput = ea.tokens_per_s / sh.tokens_per_s if sh.tokens_per_s else float("nan")
    ok = p50x >= 2 and p99x >= 1.5 and tput >= 0.98
    return [f"At {load:.0%}: engine-aware vs simple-shuffle: p50 TTFT {p50x:.2f}x better (goal 2x), "
            f"p99 {p99x:.2f}x better (goal 1.5x), throughput {tput:.3f}x (goal: not lower, within 2% noise) "
            f"-> {'PASS' if ok else 'FAIL'}"]


# -- main --------------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--loads", default="0.7,0.9", help="offered load as fractions of the computed capacity")
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--duration", type=float, default=60.0, help="measured seconds per point")
    p.add_argument("--warmup", type=float, default=40.0,
                   help="seconds before the window: sessions (~25 s each) and caches reach a steady state")
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--replicas", type=int, default=4)
    p.add_argument("--prefill-tps", type=float, default=Fleet.prefill_tps)
    p.add_argument("--decode-tps", type=float, default=Fleet.decode_tps)
    p.add_argument("--batch-slowdown", type=float, default=Fleet.batch_slowdown)
    p.add_argument("--max-num-seqs", type=int, default=Fleet.max_num_seqs)
    p.add_argument("--kv-cache-tokens", type=int, default=Fleet.kv_cache_tokens)
    p.add_argument("--block-size", type=int, default=Fleet.block_size)
    p.add_argument("--groups", type=int, default=WorkloadShape.groups)
    p.add_argument("--think", type=float, default=WorkloadShape.think, help="mean pause between calls (s)")
    p.add_argument("--plan", action="store_true", help="print the workload and capacity, run nothing")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "routing.md"))
    p.add_argument("--keep", action="store_true", help="keep the work dir (configs, logs)")
    p.add_argument("--engine-aware", default=None,
                   help="router_settings.engine_aware options as YAML, e.g. '{affinity_slack: 0.5}' (default: none)")
    p.add_argument("--calls-log", default=None, help="append every measured call as a JSON line to this file")
    return p.parse_args(argv)


async def amain(args: argparse.Namespace) -> str:
    """Run every point; returns the markdown report ("" with --plan)."""
    fleet = Fleet(args.replicas, args.prefill_tps, args.decode_tps, args.batch_slowdown, args.max_num_seqs,
                  args.kv_cache_tokens, args.block_size)
    shape = WorkloadShape(groups=args.groups, think=args.think)
    horizon = args.warmup + args.duration
    # one plan, drawn at a nominal rate of 1 session/s, stretched in time for each load
    plan = make_workload(shape, 1.0, horizon * 10, args.seed)
    cap = capacity(plan, shape, fleet)
    loads = [float(x) for x in args.loads.split(",")]
    strategies = [s for s in args.strategies.split(",") if s]
    turns = plan.requests() / len(plan.sessions)
    lines = [
        f"Fleet: {fleet.replicas} simulator replicas, prefill {fleet.prefill_tps:g} tokens/s, decode "
        f"{fleet.decode_tps:g} tokens/s per sequence at batch 1 (batch slowdown {fleet.batch_slowdown:g}), "
        f"max_num_seqs {fleet.max_num_seqs}, KV cache {fleet.kv_cache_tokens} tokens in blocks of {fleet.block_size}.",
        f"Workload: {shape.groups} agents (system prompts {shape.system[0]}-{shape.system[1]} tokens), sessions of "
        f"{shape.turns[0]}-{shape.turns[1]} calls (mean {turns:.1f}), new message {shape.new_words[0]}-"
        f"{shape.new_words[1]} tokens, answers {shape.answer[0]}-{shape.answer[1]} tokens, pause between calls "
        f"exp(mean {shape.think:g} s); mean prompt {cap.mean_prompt:.0f} tokens, mean answer {cap.mean_out:.0f}.",
        f"Capacity, from the simulator's model, under simple-shuffle (system prompts cached everywhere, a call "
        f"finds what earlier calls of its conversation left on the replica it lands on: mean "
        f"{cap.mean_uncached:.0f} prompt tokens to compute per call, hit ratio {cap.hit_ratio:.2f}): "
        f"{cap.requests_per_s:.2f} calls/s. With every "
        f"call's history cached (hit ratio {cap.affinity_hit_ratio:.2f}) it would be "
        f"{cap.affinity_requests_per_s:.2f} calls/s.",
        f"Each point: fresh processes, {args.warmup:g} s warm-up, {args.duration:g} s measured.",
    ]
    print("\n".join(lines), flush=True)
    if args.plan:
        return ""
    work_dir = Path(tempfile.mkdtemp(prefix="routing-bench-"))
    runner = Runner(args, fleet, plan, work_dir)
    rows: list[Row] = []
    ok = False
    try:
        for load in loads:
            rate = load * cap.requests_per_s
            for strategy in strategies:
                t = time.monotonic()
                res = await runner.run(strategy, load, rate / turns)
                res.rate = rate
                row = summarize(res, args.duration)
                rows.append(row)
                print(f"{load:.0%} {strategy}: p50 {row.p50 * 1000:.0f} ms, p99 {row.p99 * 1000:.0f} ms, "
                      f"{row.tokens_per_s:.0f} tokens/s, hit ratio {row.hit_ratio:.3f}, {row.calls} calls, "
                      f"{row.errors} errors, spread {row.spread} [{row.decisions}], client stalls {row.stalled:.1f} s "
                      f"(max {row.max_lag * 1000:.0f} ms) ({time.monotonic() - t:.0f} s)",
                      flush=True)
        ok = True
    finally:
        runner.procs.stop_all()
        if args.keep or not ok:
            print(f"work dir kept: {work_dir}")
    verdicts = [v for load in loads for v in verdict(rows, load)]
    cpu = time.process_time()
    lines.append(f"Load generator (this process): {cpu:.0f} CPU seconds in all ({len(rows)} points).")
    print("\n" + table(rows) + "\n\n" + "\n".join(verdicts))
    return "\n\n".join(["# Routing strategies: agentic multi-turn workload on the simulator",
                        "\n".join(f"- {x}" for x in lines), table(rows), "\n".join(verdicts)]) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = asyncio.run(amain(args))
    if report:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report)
        print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
