"""Start real processes (redis-server, the upstream simulator, the gateway) on free ports for tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll url until it answers 2xx (or the process dies)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if 200 <= resp.status < 300:
                    return
        except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"{url} not ready after {timeout}s: {last}")


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} not open after {timeout}s")


@dataclass
class Proc:
    """A child process with the port it listens on; stop() is idempotent."""

    popen: subprocess.Popen[bytes]
    port: int
    log_path: Path
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode


def spawn(args: Sequence[str], port: int, env: dict[str, str] | None = None, cwd: str | None = None) -> Proc:
    log = Path(tempfile.mkstemp(prefix="proc-", suffix=".log")[1])
    full_env = {**os.environ, **(env or {})}
    fh = open(log, "wb")  # noqa: SIM115 - handed to the child
    popen = subprocess.Popen(list(args), stdout=fh, stderr=subprocess.STDOUT, env=full_env, cwd=cwd)
    fh.close()
    return Proc(popen=popen, port=port, log_path=log)


def start_redis(port: int | None = None, extra_args: Sequence[str] = ()) -> Proc:
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed: run the README's setup command")
    port = port or free_port()
    workdir = tempfile.mkdtemp(prefix="redis-")
    proc = spawn(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", workdir, *extra_args],
        port,
    )
    wait_port(port)
    proc.extra["dir"] = workdir
    return proc


def start_simulator(*args: str, port: int | None = None) -> Proc:
    """Start the upstream simulator (`gateway-sim`) with extra CLI args."""
    port = port or free_port()
    proc = spawn([sys.executable, "-m", "gateway.simulator", "--host", "127.0.0.1", "--port", str(port), *args], port)
    wait_http(f"http://127.0.0.1:{port}/health", proc=proc.popen)
    return proc


def write_config(config: dict[str, object] | str, directory: Path | None = None) -> Path:
    directory = directory or Path(tempfile.mkdtemp(prefix="gwcfg-"))
    path = directory / "router.yaml"
    text = config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False)
    path.write_text(text)
    return path


def start_gateway(
    config: dict[str, object] | str | Path,
    *extra_args: str,
    env: dict[str, str] | None = None,
    workers: int = 1,
    port: int | None = None,
    wait: bool = True,
) -> Proc:
    """Start `gateway serve` on a free port; config may be a dict, YAML text or a path."""
    port = port or free_port()
    path = config if isinstance(config, Path) else write_config(config)
    proc = spawn(
        [sys.executable, "-m", "gateway", "serve", "--config", str(path), "--host", "127.0.0.1",
         "--port", str(port), "--workers", str(workers), *extra_args],
        port,
        env={"GATEWAY_HEALTH_CHECK_INTERVAL": "0.5", **(env or {})},
    )
    proc.extra["config_path"] = path
    if wait:
        wait_http(f"http://127.0.0.1:{port}/health/ready", timeout=30, proc=proc.popen)
    return proc
