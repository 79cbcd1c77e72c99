"""Start real processes (redis-server, the upstream simulator, the gateway) on free ports: the one
process helper of the tests and the benchmarks (bench/_procs.py re-exports it).

Tests start children with `spawn` / `start_*`. Benchmarks use `Procs`: each child in its own session (its
own process group), so Ctrl-C in the terminal reaches only the benchmark script, which then stops the
children itself, group by group (a server's own workers included) — never by name. The /proc readers at
the end (process tree, RSS, CPU seconds) are for the benchmarks' measurements.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_status(port: int, path: str, timeout: float = 1.0, method: str = "GET", body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One request on a fresh connection: (status, body). Raises OSError when nothing listens."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


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
    """A child process with the port it listens on; stop() is idempotent. A `group` child is its own
    session leader: stop() signals its whole process group (a server's own workers included)."""

    popen: subprocess.Popen[bytes]
    port: int
    log_path: Path
    extra: dict[str, object] = field(default_factory=dict)
    name: str = "process"
    started_at: float = 0.0  # time.perf_counter() just before the fork
    group: bool = False

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def _kill(self, sig: int) -> None:
        """sig to the child, or to its whole process group."""
        if not self.group:
            self.signal(sig)
            return
        try:
            os.killpg(self.popen.pid, sig)  # the child is its own session leader: pgid == pid
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.popen.poll() is None:
            self._kill(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill(signal.SIGKILL)
                self.popen.wait(5)
        elif self.group:
            self._kill(signal.SIGKILL)  # leftovers of a leader that already exited
        return self.popen.returncode

    def wait_ready(self, path: str = "/", timeout: float = 30.0, interval: float = 0.05,
                   method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None) -> float:
        """Poll until `path` answers 2xx (or the process dies); returns seconds since it was started."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode} before it was ready; "
                                   f"log {self.log_path}:\n{self.log_tail()}")
            try:
                status, _ = http_status(self.port, path, timeout=1.0, method=method, body=body, headers=headers)
                if 200 <= status < 300:
                    return time.perf_counter() - self.started_at
                last = f"HTTP {status}"
            except (OSError, http.client.HTTPException) as exc:
                last = exc
            time.sleep(interval)
        raise TimeoutError(f"{self.name} not ready after {timeout:g}s ({last}); log {self.log_path}:\n"
                           f"{self.log_tail()}")


def spawn(args: Sequence[str], port: int, env: dict[str, str | None] | None = None, cwd: str | Path | None = None,
          *, name: str = "process", log_path: Path | None = None, group: bool = False) -> Proc:
    """Start a child with os.environ updated by env (a None value removes the variable), its output in
    log_path (a temporary file by default). group: its own session, stdin from /dev/null."""
    log = log_path or Path(tempfile.mkstemp(prefix=f"{name}-", suffix=".log")[1])
    full_env = dict(os.environ)
    for k, v in (env or {}).items():
        if v is None:
            full_env.pop(k, None)
        else:
            full_env[k] = v
    with open(log, "wb") as fh:  # the child has its own copy of the descriptor
        t0 = time.perf_counter()
        popen = subprocess.Popen(list(args), stdout=fh, stderr=subprocess.STDOUT, env=full_env, cwd=cwd,
                                 stdin=subprocess.DEVNULL if group else None, start_new_session=group)
    return Proc(popen=popen, port=port, log_path=log, name=name, started_at=t0, group=group)


class Procs:
    """Starts children, each in its own process group, and stops all of them (latest first) at the end."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[Proc] = []
        self.started = 0

    def start(self, name: str, args: Sequence[str], port: int, env: dict[str, str | None] | None = None,
              cwd: str | Path | None = None) -> Proc:
        proc = spawn(args, port, env, cwd, name=name, log_path=self.log_dir / f"{name}-{self.started}.log",
                     group=True)
        self.started += 1
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        while self.procs:
            proc = self.procs.pop()
            try:
                proc.stop()
            except Exception as exc:  # noqa: BLE001 - keep stopping the others
                print(f"warning: could not stop {proc.name} (pid {proc.pid}): {exc}")


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
        name="redis",
    )
    wait_port(port)
    proc.extra["dir"] = workdir
    return proc


def start_simulator(*args: str, port: int | None = None) -> Proc:
    """Start the upstream simulator (`gateway-sim`) with extra CLI args."""
    port = port or free_port()
    proc = spawn([sys.executable, "-m", "gateway.simulator", "--host", "127.0.0.1", "--port", str(port), *args], port,
                 name="simulator")
    proc.wait_ready("/health", timeout=20)
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
        name="gateway",
    )
    proc.extra["config_path"] = path
    if wait:
        proc.wait_ready("/health/ready", timeout=30)
    return proc


# -- /proc: process tree, memory, CPU ------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                text = Path(f"/proc/{pid}/task/{task}/children").read_text()
            except OSError:
                continue
            kids.extend(int(x) for x in text.split())
    except OSError:
        pass
    return kids


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants."""
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(_children(p))
    return out


def proc_kb_field(pid: int, file: str, key: str) -> int:
    """The `key: N kB` line of /proc/<pid>/<file>, in bytes (0 when the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def rss_bytes(pid: int) -> int:
    return proc_kb_field(pid, "status", "VmRSS:")


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (seconds)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by pid and its descendants (live ones)."""
    return sum(cpu_seconds(p) for p in process_tree(pid))


def tree_rss_bytes(pid: int) -> tuple[int, int]:
    """(VmRSS summed over pid and its descendants, number of processes)."""
    pids = process_tree(pid)
    return sum(rss_bytes(p) for p in pids), len(pids)
