"""Gateway core benchmark: direct vs gateway vs raw-ASGI pass-through vs LiteLLM proxy, on loopback.

    python bench/core_bench.py                 # full run (~5 min, plus the LiteLLM install the first time)
    python bench/core_bench.py --quick         # shorter runs, fewer TTFT samples
    python bench/core_bench.py --skip-litellm  # no LiteLLM (its 25x target is then n/a)

One nginx worker answers POST {api_base}/chat/completions with a fixed chat.completion (api_base
http://127.0.0.1:N/plain/v1) or a fixed SSE stream (http://127.0.0.1:N/stream/v1). wrk (Lua script
for the POST body) loads each target at concurrency 1, 16 and 64, plain and streaming, the targets
taking turns at each step so that noise from the shared machine spreads over all of them:
  direct       wrk -> nginx
  gateway      wrk -> `gateway serve --workers 1` -> nginx (aliases `plain`, `stream`)
  passthrough  wrk -> bench/passthrough.py (raw ASGI + one aiohttp session, uvicorn, 1 worker) -> nginx
  litellm      wrk -> `litellm --num_workers 1` (its own venv, bench/.venv-litellm) -> nginx
Then: RSS of each server (VmRSS, children included), the gateway's time to ready (best of 3 starts),
and time to first token through the gateway vs direct against the upstream simulator (`--tps 50`).
Prints the tables and the issue's targets with PASS/FAIL; writes the tables to bench/results/core.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from _procs import Proc, Procs, free_port, http_status, tree_cpu_seconds, tree_rss_bytes  # noqa: E402 - after the path tweak

SETUP_HINT = "run ./scripts/setup.sh (it installs nginx-light and wrk), or apt-get install nginx-light wrk"
MODEL = "bench-model"
PROMPT = "Say hello in one short sentence."
# LiteLLM refuses to start without a (strong) master key; every target gets the same Authorization header
BENCH_KEY = "sk-bench-" + secrets.token_hex(24)
ADMIN_KEY = "sk-admin-" + secrets.token_hex(24)  # the gateway's master key with --virtual-key

# -- the fixed upstream answers ------------------------------------------------------------------------

PLAIN_ANSWER: dict[str, Any] = {
    "id": "chatcmpl-bench0001", "object": "chat.completion", "created": 1700000000, "model": MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello! This is a fixed answer."},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 14, "completion_tokens": 8, "total_tokens": 22},
}


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-bench0002", "object": "chat.completion.chunk", "created": 1700000000, "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}


STREAM_EVENTS: list[dict[str, Any]] = [
    _chunk({"role": "assistant", "content": ""}),
    _chunk({"content": "Hello!"}),
    _chunk({"content": " This is"}),
    _chunk({"content": " a fixed"}),
    _chunk({"content": " answer."}, "stop"),
    {"id": "chatcmpl-bench0002", "object": "chat.completion.chunk", "created": 1700000000, "model": MODEL,
     "choices": [], "usage": {"prompt_tokens": 14, "completion_tokens": 4, "total_tokens": 18}},
]
MODELS_ANSWER = {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 1700000000,
                                             "owned_by": "bench"}]}


def _compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True)


def sse_body() -> str:
    return "".join(f"data: {_compact(e)}\n\n" for e in STREAM_EVENTS) + "data: [DONE]\n\n"


def _nginx_str(text: str) -> str:
    """A single-quoted nginx string (nginx turns \\n back into a newline)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def nginx_conf(port: int) -> str:
    return f"""# written by bench/core_bench.py
worker_processes 1;
pid nginx.pid;
error_log error.log warn;
events {{ worker_connections 4096; multi_accept on; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        location = /plain/v1/chat/completions {{
            default_type application/json;
            return 200 {_nginx_str(_compact(PLAIN_ANSWER))};
        }}
        location = /stream/v1/chat/completions {{
            default_type "text/event-stream; charset=utf-8";
            add_header Cache-Control no-cache;
            add_header X-Accel-Buffering no;
            return 200 {_nginx_str(sse_body())};
        }}
        location ~ ^/(plain|stream)/v1/models$ {{
            default_type application/json;
            return 200 {_nginx_str(_compact(MODELS_ANSWER))};
        }}
        location / {{ return 404; }}
    }}
}}
"""


# -- wrk -----------------------------------------------------------------------------------------------

WRK_DONE = r"""
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"p50_us":%.1f,"p90_us":%.1f,"p99_us":%.1f,' ..
    '"mean_us":%.1f,"max_us":%.1f,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean, latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def request_body(model: str, stream: bool, max_tokens: int = 16) -> bytes:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": PROMPT}],
                            "max_tokens": max_tokens}
    if stream:
        body["stream"] = True
    return _compact(body).encode()


def wrk_script(path: Path, body: bytes) -> Path:
    lua = (f"wrk.method = \"POST\"\nwrk.body = {_lua_str(body.decode())}\n"
           "wrk.headers[\"Content-Type\"] = \"application/json\"\n"
           f"wrk.headers[\"Authorization\"] = \"Bearer {BENCH_KEY}\"\n" + WRK_DONE)
    path.write_text(lua)
    return path


def _lua_str(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass
class WrkResult:
    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    errors: int  # socket errors + timeouts
    non2xx: int
    cpu_s: float | None = None  # CPU seconds the server (its process tree) used during the run

    @property
    def cpu_us_per_req(self) -> float | None:
        return None if self.cpu_s is None or not self.requests else self.cpu_s / self.requests * 1e6

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


def run_wrk(url: str, script: Path, conns: int, seconds: float, timeout_s: float = 10.0) -> WrkResult:
    threads = 1 if conns == 1 else 2
    args = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{max(1, round(seconds))}s", f"--timeout={timeout_s:g}s",
            "-s", str(script), url]
    out = subprocess.run(args, capture_output=True, text=True, timeout=seconds + timeout_s + 30)
    for line in out.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            d = json.loads(line[len("BENCH_JSON "):])
            return WrkResult(requests=d["requests"], seconds=d["duration_us"] / 1e6, p50_ms=d["p50_us"] / 1e3,
                             p90_ms=d["p90_us"] / 1e3, p99_ms=d["p99_us"] / 1e3, mean_ms=d["mean_us"] / 1e3,
                             max_ms=d["max_us"] / 1e3,
                             errors=d["connect"] + d["read"] + d["write"] + d["timeout"], non2xx=d["status"])
    raise RuntimeError(f"wrk gave no result (exit {out.returncode}): {out.stdout[-800:]} {out.stderr[-800:]}")


# -- targets -------------------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    port: int
    proc: Proc | None  # None: not started by us
    paths: dict[str, str]  # mode -> URL path
    models: dict[str, str]  # mode -> model in the body
    scripts: dict[str, Path] = field(default_factory=dict)
    results: dict[tuple[str, int], WrkResult] = field(default_factory=dict)
    rss_mb: float | None = None
    idle_rss_mb: float | None = None
    nprocs: int = 0
    ready_s: float | None = None
    note: str = ""

    def url(self, mode: str) -> str:
        return f"http://127.0.0.1:{self.port}{self.paths[mode]}"


MODES = ("plain", "stream")


def sanity_check(t: Target) -> None:
    """One plain and one streaming request; fail loudly if a target does not answer like the upstream."""
    for mode in MODES:
        body = request_body(t.models[mode], mode == "stream")
        status, data = http_status(t.port, t.paths[mode], timeout=30, method="POST", body=body,
                                   headers={"Content-Type": "application/json", "Authorization": f"Bearer {BENCH_KEY}"})
        if status != 200:
            raise RuntimeError(f"{t.name} {mode}: HTTP {status}: {data[:500]!r}")
        if mode == "plain":
            if b"fixed answer" not in data:
                raise RuntimeError(f"{t.name} plain: unexpected body {data[:500]!r}")
        else:
            text = data.decode(errors="replace")
            content = ""
            for line in text.splitlines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    ev = json.loads(line[6:])
                    if "error" in ev:
                        raise RuntimeError(f"{t.name} stream: error event {line[:300]}")
                    for ch in ev.get("choices") or ():
                        content += (ch.get("delta") or {}).get("content") or ""
            if "data: [DONE]" not in text or "fixed answer" not in content:
                raise RuntimeError(f"{t.name} stream: unexpected body {data[:500]!r}")


# -- LiteLLM -------------------------------------------------------------------------------------------


def ensure_litellm(venv: Path) -> tuple[Path, str]:
    """The litellm CLI in its own venv (created and installed the first time); returns (exe, version)."""
    exe = venv / "bin" / "litellm"
    py = venv / "bin" / "python"
    marker = venv / ".bench-installed"
    if exe.exists() and not marker.exists():  # made by hand, or an install that was interrupted?
        probe = subprocess.run([str(py), "-c", "import litellm.proxy.proxy_server"], capture_output=True,
                               env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"})
        if probe.returncode == 0:
            marker.write_text("litellm[proxy]\n")
    if not marker.exists():
        print(f"installing LiteLLM proxy into {venv} (first run only; a few minutes) ...", flush=True)
        venv.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        (venv / ".gitignore").write_text("*\n")
        log = venv / "install.log"
        with open(log, "wb") as fh:
            rc = subprocess.run([str(py), "-m", "pip", "install", "--disable-pip-version-check",
                                 "litellm[proxy]"], stdout=fh, stderr=subprocess.STDOUT).returncode
        if rc != 0 or not exe.exists():
            raise RuntimeError(f"pip install 'litellm[proxy]' failed (exit {rc}); see {log}")
        marker.write_text("litellm[proxy]\n")
    version = subprocess.run([str(py), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
                             capture_output=True, text=True).stdout.strip()
    return exe, version or "?"


# -- time to first token -------------------------------------------------------------------------------


async def _ttft_once(session: Any, url: str, body: bytes) -> float:
    t0 = time.perf_counter()
    first: float | None = None
    async with session.post(url, data=body, headers={"Content-Type": "application/json",
                                                     "Authorization": f"Bearer {BENCH_KEY}"}) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{url}: HTTP {resp.status}: {(await resp.read())[:300]!r}")
        buf = b""
        async for piece in resp.content.iter_any():
            if first is not None:
                continue  # drain the rest
            buf += piece
            while first is None and b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                for line in event.splitlines():
                    if not line.startswith(b"data: ") or line == b"data: [DONE]":
                        continue
                    ev = json.loads(line[6:])
                    if any((c.get("delta") or {}).get("content") for c in ev.get("choices") or ()):
                        first = time.perf_counter() - t0
                        break
    if first is None:
        raise RuntimeError(f"{url}: stream had no content chunk")
    return first


async def measure_ttft(urls: dict[str, str], n: int, warmup: int = 10) -> dict[str, list[float]]:
    """n sequential streaming requests per target, interleaved (the order alternates each round)."""
    import aiohttp

    body = request_body(MODEL, True, max_tokens=3)
    names = list(urls)
    out: dict[str, list[float]] = {name: [] for name in names}
    bodies = {name: request_body("sim", True, max_tokens=3) if name == "gateway" else body for name in names}
    async with aiohttp.ClientSession() as session:
        for i in range(warmup + n):
            order = names if i % 2 == 0 else names[::-1]
            for name in order:
                v = await _ttft_once(session, urls[name], bodies[name])
                if i >= warmup:
                    out[name].append(v)
    return out


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


# -- config files --------------------------------------------------------------------------------------


def model_list(nginx_port: int, sim_port: int | None) -> list[dict[str, Any]]:
    entries = [
        {"model_name": mode, "litellm_params": {"model": f"openai/{MODEL}",
                                                "api_base": f"http://127.0.0.1:{nginx_port}/{mode}/v1",
                                                "api_key": "sk-bench"}}
        for mode in MODES
    ]
    if sim_port is not None:
        entries.append({"model_name": "sim", "litellm_params": {"model": f"openai/{MODEL}",
                                                                "api_base": f"http://127.0.0.1:{sim_port}/v1",
                                                                "api_key": "sk-bench"}})
    return entries


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        elif isinstance(v, list) and isinstance(out.get(k), list):
            out[k] = out[k] + v
        else:
            out[k] = v
    return out


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# -- the run -------------------------------------------------------------------------------------------


@dataclass
class Options:
    duration: float
    warmup: float
    concurrency: list[int]
    ttft_n: int
    skip_litellm: bool
    gateway_env: dict[str, str]
    gateway_cli: list[str]
    gateway_yaml: Path | None
    gateway_src: Path
    litellm_venv: Path
    sim_args: list[str]
    out: Path
    keep: bool
    profile: float
    ttft_only: bool
    virtual_key: bool = False  # the gateway's requests carry a virtual key with limits (auth + limits on)


def check_tools() -> None:
    missing = [t for t in ("nginx", "wrk") if shutil.which(t) is None]
    if missing:
        sys.exit(f"core_bench: {' and '.join(missing)} not found on PATH: {SETUP_HINT}")
    for mod in ("uvicorn", "uvloop", "httptools", "aiohttp", "yaml"):
        try:
            __import__(mod)
        except ImportError:
            sys.exit(f"core_bench: Python module {mod!r} missing: run ./scripts/setup.sh (pip install -e '.[dev]')")


class Bench:
    def __init__(self, opts: Options, work: Path) -> None:
        self.o = opts
        self.work = work
        self.procs = Procs(work)
        self.targets: list[Target] = []
        self.nginx_port = free_port()
        self.sim: Proc | None = None
        self.litellm_version = ""
        self.ttft: dict[str, list[float]] = {}
        self.gateway: Target | None = None
        self.profile_text = ""

    def log(self, msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    # -- processes -------------------------------------------------------------------------------------

    def start_nginx(self) -> Target:
        d = self.work / "nginx"
        (d / "tmp").mkdir(parents=True)
        conf = d / "nginx.conf"
        conf.write_text(nginx_conf(self.nginx_port))
        test = subprocess.run(["nginx", "-t", "-p", str(d), "-c", str(conf), "-e", str(d / "error.log")],
                              capture_output=True, text=True)
        if test.returncode != 0:
            raise RuntimeError(f"nginx rejected {conf}: {test.stderr}")
        proc = self.procs.start("nginx", ["nginx", "-p", str(d), "-c", str(conf), "-e", str(d / "error.log"),
                                          "-g", "daemon off;"], self.nginx_port)
        proc.wait_ready("/plain/v1/models")
        return Target("direct", self.nginx_port, proc, {m: f"/{m}/v1/chat/completions" for m in MODES},
                      {m: MODEL for m in MODES}, note="nginx, 1 worker")

    def start_sim(self) -> None:
        port = free_port()
        self.sim = self.procs.start("simulator", [sys.executable, "-m", "gateway.simulator", "--host", "127.0.0.1",
                                                  "--port", str(port), "--model", MODEL, *self.o.sim_args],
                                    port, cwd=ROOT)
        self.sim.wait_ready("/health")

    def gateway_config(self) -> Path:
        sim_port = self.sim.port if self.sim else None
        cfg: dict[str, Any] = {"model_list": model_list(self.nginx_port, sim_port)}
        if self.o.gateway_yaml is not None:
            import yaml

            cfg = _merge(cfg, yaml.safe_load(self.o.gateway_yaml.read_text()) or {})
        return write_yaml(self.work / "router.yaml", cfg)

    def start_state_redis(self) -> str:
        """A redis-server for keys and limits (--virtual-key): one for all gateway starts."""
        url = getattr(self, "_state_redis_url", None)
        if url is None:
            exe = shutil.which("redis-server")
            if exe is None:
                sys.exit(f"core_bench: redis-server not found: {SETUP_HINT}")
            port = free_port()
            self.procs.start("redis", [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                       "--appendonly", "no"], port)
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            url = self._state_redis_url = f"redis://127.0.0.1:{port}/0"
        return url

    def create_virtual_key(self, proc: Proc) -> None:
        """BENCH_KEY becomes a virtual key with (generous) rpm/tpm/budget limits, checked on every request."""
        body = json.dumps({"key": BENCH_KEY, "key_alias": "bench", "rpm_limit": 10**8, "tpm_limit": 10**9,
                           "max_parallel_requests": 10**5, "max_budget": 10**5, "budget_duration": "30d"}).encode()
        status, out = http_status(proc.port, "/key/generate", timeout=10, method="POST", body=body,
                                  headers={"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"})
        if status != 200 and b"exists" not in out and b"already" not in out:
            raise RuntimeError(f"key/generate answered {status}: {out[:300]!r}")

    def start_gateway(self, config: Path) -> Proc:
        port = free_port()
        env: dict[str, str | None] = {"GATEWAY_LOG_LEVEL": "info", **self.o.gateway_env}
        if self.o.virtual_key:
            env.update({"GATEWAY_MASTER_KEY": ADMIN_KEY, "GATEWAY_STATE_REDIS_URL": self.start_state_redis()})
        # `python -m gateway` from the source dir: that checkout's gateway/ comes first on sys.path
        return self.procs.start("gateway", [sys.executable, "-m", "gateway", "serve", "--config", str(config),
                                            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                                            *self.o.gateway_cli], port, env=env, cwd=self.o.gateway_src)

    def gateway_target(self) -> Target:
        config = self.gateway_config()
        ready: list[float] = []
        proc: Proc | None = None
        for i in range(3):
            proc = self.start_gateway(config)
            ready.append(proc.wait_ready("/health/ready", timeout=60, interval=0.002))
            if self.o.virtual_key and i == 0:
                self.create_virtual_key(proc)
            if i < 2:
                self.procs.stop(proc)
        assert proc is not None
        self.log(f"gateway ready in {', '.join(f'{r:.3f}' for r in ready)} s (best {min(ready):.3f} s)")
        t = Target("gateway", proc.port, proc, {m: "/v1/chat/completions" for m in MODES}, {m: m for m in MODES},
                   ready_s=min(ready), note="gateway serve --workers 1")
        self.gateway = t
        return t

    def start_passthrough(self, upstream: str) -> Proc:
        port = free_port()
        proc = self.procs.start("passthrough", [
            sys.executable, "-m", "uvicorn", "passthrough:app", "--app-dir", str(HERE), "--host", "127.0.0.1",
            "--port", str(port), "--loop", "uvloop", "--http", "httptools", "--workers", "1", "--no-access-log",
            "--log-level", "warning", "--backlog", "4096"], port, env={"BENCH_UPSTREAM": upstream})
        return proc

    def passthrough_target(self) -> Target:
        proc = self.start_passthrough(f"http://127.0.0.1:{self.nginx_port}")
        proc.wait_ready("/plain/v1/models", timeout=30, interval=0.01)
        return Target("passthrough", proc.port, proc, {m: f"/{m}/v1/chat/completions" for m in MODES},
                      {m: MODEL for m in MODES}, ready_s=time.perf_counter() - proc.started_at,
                      note="raw ASGI + aiohttp, uvicorn 1 worker")

    def litellm_target(self) -> Target:
        exe, self.litellm_version = ensure_litellm(self.o.litellm_venv)
        cfg = write_yaml(self.work / "litellm.yaml", {"model_list": model_list(self.nginx_port,
                                                                               self.sim.port if self.sim else None)})
        port = free_port()
        env: dict[str, str | None] = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False",
                                      "LITELLM_MASTER_KEY": BENCH_KEY}
        for var in ("DATABASE_URL", "REDIS_URL", "REDIS_HOST", "OPENAI_API_KEY",
                    "OPENAI_BASE_URL", "OPENAI_API_BASE"):
            env[var] = None  # no DB, no cache: the plain proxy
        proc = self.procs.start("litellm", [str(exe), "--config", str(cfg), "--host", "127.0.0.1", "--port",
                                            str(port), "--num_workers", "1"], port, env=env, cwd=self.work)
        self.log(f"waiting for LiteLLM {self.litellm_version} to start ...")
        ready = proc.wait_ready("/health/liveliness", timeout=180, interval=0.1)
        return Target("litellm", port, proc, {m: "/v1/chat/completions" for m in MODES}, {m: m for m in MODES},
                      ready_s=ready, note=f"LiteLLM {self.litellm_version} proxy, 1 worker")

    # -- phases ----------------------------------------------------------------------------------------

    def setup(self) -> None:
        self.log(f"work dir {self.work}")
        self.targets.append(self.start_nginx())
        self.start_sim()
        self.targets.append(self.gateway_target())
        self.targets.append(self.passthrough_target())
        if not (self.o.skip_litellm or self.o.ttft_only):
            self.targets.append(self.litellm_target())
        for t in self.targets:
            sanity_check(t)
            for mode in MODES:
                t.scripts[mode] = wrk_script(self.work / f"{t.name}-{mode}.lua",
                                             request_body(t.models[mode], mode == "stream"))
        self.memory(idle=True)
        self.log("all targets answer; load runs start")

    def load(self) -> None:
        step = 0
        for mode in MODES:
            for conns in self.o.concurrency:
                n = len(self.targets)
                order = [self.targets[(step + i) % n] for i in range(n)]  # rotate who goes first
                step += 1
                for t in order:
                    if self.o.warmup > 0:
                        run_wrk(t.url(mode), t.scripts[mode], conns, self.o.warmup)
                    cpu0 = tree_cpu_seconds(t.proc.pid) if t.proc else None
                    r = run_wrk(t.url(mode), t.scripts[mode], conns, self.o.duration)
                    if t.proc is not None and cpu0 is not None:
                        r.cpu_s = tree_cpu_seconds(t.proc.pid) - cpu0
                    t.results[(mode, conns)] = r
                    bad = f"  ERRORS {r.errors} non-2xx {r.non2xx}" if r.errors or r.non2xx else ""
                    cpu = r.cpu_us_per_req
                    self.log(f"{mode:6} c={conns:<3} {t.name:12} {r.rps:9.0f} rps  p50 {r.p50_ms:7.2f} ms  "
                             f"p99 {r.p99_ms:7.2f} ms  CPU {cpu if cpu is not None else float('nan'):6.0f} us/req"
                             f"{bad}")

    def memory(self, idle: bool = False) -> None:
        for t in self.targets:
            if t.proc is not None and t.proc.alive():
                rss, n = tree_rss_bytes(t.proc.pid)
                if idle:
                    t.idle_rss_mb = rss / 2**20
                else:
                    t.rss_mb, t.nprocs = rss / 2**20, n

    def measure_ttft(self) -> None:
        assert self.sim is not None and self.gateway is not None
        n = self.o.ttft_n
        self.log(f"time to first token: {n} sequential streams each, direct simulator vs gateway ...")
        floor = self.start_passthrough(self.sim.url)  # the same pass-through, in front of the simulator
        floor.wait_ready("/v1/models", timeout=30, interval=0.01)
        urls = {"direct": f"{self.sim.url}/v1/chat/completions",
                "gateway": f"http://127.0.0.1:{self.gateway.port}/v1/chat/completions",
                "passthrough": f"{floor.url}/v1/chat/completions"}
        try:
            self.ttft = asyncio.run(measure_ttft(urls, n))
        finally:
            self.procs.stop(floor)

    def profile(self) -> None:
        """py-spy on the gateway under c=16 plain load (optional)."""
        assert self.gateway is not None and self.gateway.proc is not None
        spy = shutil.which("py-spy")
        if spy is None:
            self.log("--profile: py-spy not found (pip install py-spy); skipped")
            return
        seconds = self.o.profile
        raw = self.work / "gateway.collapsed"
        rec = subprocess.Popen([spy, "record", "-p", str(self.gateway.proc.pid), "-d", str(round(seconds) + 1),
                                "-r", "500", "-f", "raw", "-o", str(raw), "--nonblocking"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(0.5)
            run_wrk(self.gateway.url("plain"), self.gateway.scripts["plain"], 16, seconds)
            _, err = rec.communicate(timeout=seconds + 30)
        finally:
            if rec.poll() is None:
                rec.kill()
                rec.wait()
        if not raw.exists():
            self.log(f"py-spy gave no profile: {err.strip()[-300:]}")
            return
        self.profile_text = summarize_profile(raw)
        keep = self.o.out.parent / "gateway-c16.collapsed"
        shutil.copy(raw, keep)
        self.log(f"profile written to {keep}")


def summarize_profile(raw: Path, top: int = 25) -> str:
    """Self and inclusive sample shares by function from py-spy's collapsed stacks."""
    self_n: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [f for f in stack.split(";") if f]
        if frames:
            self_n[frames[-1]] = self_n.get(frames[-1], 0) + n
        for f in set(frames):
            incl[f] = incl.get(f, 0) + n
    if not total:
        return "(no samples)"
    lines = [f"{total} samples", "", "self %  function"]
    for f, n in sorted(self_n.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"{100 * n / total:6.1f}  {f}")
    lines += ["", "incl %  function (gateway/, aiohttp/, uvicorn/ frames)"]
    ours = [(f, n) for f, n in incl.items() if any(k in f for k in ("gateway/", "aiohttp/", "uvicorn/"))]
    for f, n in sorted(ours, key=lambda kv: -kv[1])[:top]:
        lines.append(f"{100 * n / total:6.1f}  {f}")
    return "\n".join(lines)


# -- report --------------------------------------------------------------------------------------------


def _f(v: float | None, digits: int = 2) -> str:
    return "–" if v is None or v != v else f"{v:.{digits}f}"


def tables(b: Bench) -> tuple[list[str], list[tuple[str, str, str, bool | None]]]:
    """Markdown lines, and the target checks (name, measured, limit, pass)."""
    o = b.o
    md: list[str] = []
    direct = b.targets[0]
    by_name = {t.name: t for t in b.targets}
    loaded = any(t.results for t in b.targets)
    for mode in MODES if loaded else ():
        md += [f"### {'Non-streaming' if mode == 'plain' else 'Streaming (SSE)'} chat completions", ""]
        head = ["target"]
        for c in o.concurrency:
            head += [f"c={c} RPS", f"c={c} p50 ms", f"c={c} p99 ms"]
            if c == 1:
                head.append("added p50 @c=1 ms")
        head.append("failed")
        md += ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
        for t in b.targets:
            row = [t.name]
            failed = 0
            for c in o.concurrency:
                r = t.results.get((mode, c))
                row += ["–"] * 3 if r is None else [f"{r.rps:,.0f}", _f(r.p50_ms), _f(r.p99_ms)]
                if r is not None:
                    failed += r.errors + r.non2xx
                if c == 1:
                    d1 = direct.results.get((mode, 1))
                    row.append("–" if t is direct or r is None or d1 is None else f"{r.p50_ms - d1.p50_ms:+.2f}")
            row.append(str(failed))
            md.append("| " + " | ".join(row) + " |")
        md.append("")
    if loaded:
        md += ["### Server CPU per request (µs: utime+stime of the server's processes ÷ requests; steadier than "
               "RPS on a shared machine)", ""]
        cols = [(mode, c) for mode in MODES for c in o.concurrency]
        md += ["| target | " + " | ".join(f"{m} c={c}" for m, c in cols) + " |", "|---|" + "---:|" * len(cols)]
        for t in b.targets:
            cells = []
            for key in cols:
                r = t.results.get(key)
                cpu = r.cpu_us_per_req if r is not None else None
                cells.append("–" if cpu is None else f"{cpu:,.0f}")
            md.append(f"| {t.name} | " + " | ".join(cells) + " |")
        md.append("")
    md += ["### Processes", "", "| target | what | RSS MB idle | RSS MB after the runs | processes | start to ready s |",
           "|---|---|---:|---:|---:|---:|"]
    for t in b.targets:
        ready = "–" if t.ready_s is None else _f(t.ready_s, 3) + (" (best of 3)" if t.name == "gateway" else "")
        md.append(f"| {t.name} | {t.note} | {_f(t.idle_rss_mb, 1)} | {_f(t.rss_mb, 1)} | {t.nprocs} | {ready} |")
    md.append("")
    if b.ttft:
        d = b.ttft["direct"]
        md += [f"### Time to first content token (simulator {' '.join(o.sim_args)}, {len(d)} sequential streams "
               "each, interleaved)", "", "| target | p50 ms | p90 ms | p99 ms | added p50 ms | added p99 ms |",
               "|---|---:|---:|---:|---:|---:|"]
        for name, v in b.ttft.items():
            added = ("–", "–") if name == "direct" else (f"{(pct(v, 50) - pct(d, 50)) * 1e3:+.2f}",
                                                         f"{(pct(v, 99) - pct(d, 99)) * 1e3:+.2f}")
            md.append(f"| {name} | {pct(v, 50) * 1e3:.2f} | {pct(v, 90) * 1e3:.2f} | {pct(v, 99) * 1e3:.2f} | "
                      f"{added[0]} | {added[1]} |")
        md.append("")

    checks: list[tuple[str, str, str, bool | None]] = []
    gw, pt, ll = by_name.get("gateway"), by_name.get("passthrough"), by_name.get("litellm")
    assert gw is not None
    for mode in MODES:
        g16 = gw.results.get((mode, 16))
        l16 = ll.results.get((mode, 16)) if ll else None
        if g16 is None:
            continue
        if l16 is None or l16.rps == 0:
            checks.append((f"RPS @c=16 {mode}: gateway ≥ 25× LiteLLM", "LiteLLM skipped", "≥ 25×", None))
        else:
            ratio = g16.rps / l16.rps
            checks.append((f"RPS @c=16 {mode}: gateway ≥ 25× LiteLLM",
                           f"{g16.rps:,.0f} / {l16.rps:,.0f} = {ratio:.1f}×", "≥ 25×", ratio >= 25))
    for mode in MODES:
        g1 = gw.results.get((mode, 1))
        p1 = pt.results.get((mode, 1)) if pt else None
        if g1 is not None and p1 is not None:
            diff = g1.p50_ms - p1.p50_ms
            checks.append((f"p50 @c=1 {mode}: gateway − raw-ASGI pass-through",
                           f"{g1.p50_ms:.3f} − {p1.p50_ms:.3f} = {diff:+.3f} ms", "≤ 0.3 ms", diff <= 0.3))
    if gw.rss_mb is not None:
        checks.append(("gateway RSS after the runs", f"{gw.rss_mb:.1f} MB", "≤ 80 MB", gw.rss_mb <= 80))
    if gw.ready_s is not None:
        checks.append(("gateway start to /health/ready (best of 3)", f"{gw.ready_s:.3f} s", "≤ 1 s",
                       gw.ready_s <= 1.0))
    if b.ttft:
        d, g = b.ttft["direct"], b.ttft["gateway"]
        added = (pct(g, 50) - pct(d, 50)) * 1e3
        floor = b.ttft.get("passthrough")
        extra = f" (raw-ASGI pass-through: {(pct(floor, 50) - pct(d, 50)) * 1e3:+.2f} ms)" if floor else ""
        checks.append(("streaming TTFT added by the gateway (p50)", f"{added:+.2f} ms{extra}", "≤ 1 ms",
                       added <= 1.0))
    if gw.results:
        failed = sum(r.errors + r.non2xx for r in gw.results.values())
        checks.append(("gateway requests failed under load", str(failed), "0", failed == 0))
    md += ["### Targets (issue 2)", "", "| target | measured | limit | result |", "|---|---|---|---|"]
    for name, measured, limit, ok in checks:
        md.append(f"| {name} | {measured} | {limit} | {'n/a' if ok is None else 'PASS' if ok else 'FAIL'} |")
    md.append("")
    return md, checks


def render(b: Bench, argv: list[str]) -> str:
    o = b.o
    md, _ = tables(b)
    load = os.getloadavg()
    header = [
        f"## Gateway core benchmark — {dt.datetime.now().strftime('%Y-%m-%d %H:%M')}",
        "",
        f"`{' '.join(['python', 'bench/core_bench.py', *(shlex.quote(a) for a in argv)])}` on {platform.node()}: "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, {_tool_version(['nginx', '-v'])}, "
        f"{_tool_version(['wrk', '-v'])}" + (f", LiteLLM {b.litellm_version}" if b.litellm_version else "") +
        f"; gateway from {_gateway_source(o.gateway_src)}; load average at the end {load[0]:.2f}. "
        + ("" if o.ttft_only else
           "Loopback, one nginx worker as the upstream (fixed answers); "
           f"wrk {o.duration:g} s per point after a {o.warmup:g} s warm-up (-t1 at c=1, -t2 above), targets "
           "taking turns; latencies as wrk measures them (client side, ms). ")
        + "The machine is shared: numbers are noisy.",
        "",
    ]
    text = "\n".join(header + md)
    if b.profile_text:
        text += "\n### py-spy: gateway under c=16 non-streaming load\n\n```\n" + b.profile_text + "\n```\n"
    return text


def _gateway_source(src: Path) -> str:
    """`<commit>` of the checkout the gateway ran from, noting uncommitted changes under gateway/."""
    try:
        head = subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--", "gateway"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return str(src)
    if head.returncode != 0:
        return str(src)
    changes = len(dirty.stdout.splitlines())
    where = "" if src == ROOT else f"{src} @ "
    return f"{where}{head.stdout.strip()}" + (f" + uncommitted changes in {changes} gateway/ paths" if changes else "")


def _tool_version(args: list[str]) -> str:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return args[0]
    text = (out.stdout + out.stderr).strip().splitlines()
    first = text[0] if text else args[0]
    if first.startswith("nginx version: "):
        return first[len("nginx version: "):]
    return " ".join(first.split()[:2]) if first.startswith("wrk") else first


# -- main ----------------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> Options:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, help="seconds per load point (default 5; 2 with --quick)")
    p.add_argument("--warmup", type=float, help="warm-up seconds before each point (default 1)")
    p.add_argument("--quick", action="store_true", help="2 s per point, 50 TTFT samples")
    p.add_argument("--concurrency", default="1,16,64", help="comma-separated connection counts (default 1,16,64)")
    p.add_argument("--ttft-n", type=int, help="streams per target for TTFT (default 200; 50 with --quick)")
    p.add_argument("--skip-litellm", action="store_true", help="do not install or run LiteLLM")
    p.add_argument("--litellm-venv", type=Path, default=HERE / ".venv-litellm")
    p.add_argument("--gateway-args", default="",
                   help="extra for the gateway: NAME=VALUE words become its environment (e.g. "
                        "'GATEWAY_REDIS_URL=redis://127.0.0.1:6379'), other words extra `gateway serve` flags")
    p.add_argument("--gateway-yaml", type=Path, help="YAML merged into the generated router.yaml (features on)")
    p.add_argument("--gateway-src", type=Path, default=ROOT,
                   help="run the gateway from this checkout (A/B, e.g. `git archive HEAD | tar -x -C DIR`); "
                        "default: this one")
    p.add_argument("--sim-args", default="--tps 50", help="simulator flags for the TTFT run (default '--tps 50')")
    p.add_argument("--out", type=Path, default=HERE / "results" / "core.md", help="markdown output")
    p.add_argument("--profile", type=float, default=0.0, metavar="SECONDS",
                   help="also py-spy the gateway under c=16 plain load for SECONDS (needs py-spy)")
    p.add_argument("--keep", action="store_true", help="keep the work dir (configs, logs)")
    p.add_argument("--virtual-key", action="store_true",
                   help="auth and limits on: the gateway gets a master key and a state redis-server, and the "
                        "benchmark's key is a virtual key with rpm/tpm/parallel/budget limits")
    p.add_argument("--ttft-only", action="store_true",
                   help="only the gateway's ready time, RSS and the TTFT comparison (no wrk, no LiteLLM)")
    a = p.parse_args(argv)
    env: dict[str, str] = {}
    cli: list[str] = []
    for word in shlex.split(a.gateway_args):
        name, eq, value = word.partition("=")
        if eq and not word.startswith("-") and name.isidentifier():
            env[name] = value
        else:
            cli.append(word)
    conc = sorted({int(x) for x in a.concurrency.split(",") if x.strip()})
    if not conc or min(conc) < 1:
        p.error("--concurrency needs positive integers")
    return Options(duration=a.duration if a.duration is not None else (2.0 if a.quick else 5.0),
                   warmup=a.warmup if a.warmup is not None else 1.0, concurrency=conc,
                   ttft_n=a.ttft_n if a.ttft_n is not None else (50 if a.quick else 200),
                   skip_litellm=a.skip_litellm, gateway_env=env, gateway_cli=cli, gateway_yaml=a.gateway_yaml,
                   gateway_src=a.gateway_src.resolve(),
                   litellm_venv=a.litellm_venv, sim_args=shlex.split(a.sim_args), out=a.out, keep=a.keep,
                   profile=a.profile, ttft_only=a.ttft_only, virtual_key=a.virtual_key)


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    opts = parse_args(argv)
    check_tools()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    work = Path(tempfile.mkdtemp(prefix="core-bench-"))
    bench = Bench(opts, work)
    ok = False
    try:
        bench.setup()
        if not opts.ttft_only:
            bench.load()
        bench.memory()
        bench.measure_ttft()
        if opts.profile > 0:
            opts.out.parent.mkdir(parents=True, exist_ok=True)
            bench.profile()
        text = render(bench, argv)
        ok = True
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every process started ...", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - say what failed, keep the logs
        print(f"core_bench: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave children behind
        bench.procs.stop_all()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if ok and not opts.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work dir (configs, logs): {work}", file=sys.stderr)
    print()
    print(text)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(text)
    print(f"written to {opts.out}")
    _, checks = tables(bench)
    return 0 if all(ok is not False for _, _, _, ok in checks) else 3


if __name__ == "__main__":
    sys.exit(main())
