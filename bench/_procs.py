"""Child processes for the benchmarks: free ports, start, wait until ready, memory, stop everything.

Every child runs in its own session (its own process group), so Ctrl-C in the terminal reaches only
the benchmark script, which then stops the children itself, group by group (a server's own workers
included) — never by name.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


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


@dataclass
class Proc:
    """A started child; `stop()` is idempotent and stops the child's whole process group."""

    name: str
    popen: subprocess.Popen[bytes]
    port: int
    log_path: Path
    started_at: float  # time.perf_counter() just before the fork
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.popen.pid, sig)  # the child is its own session leader: pgid == pid
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.popen.wait(5)
        else:
            self._signal_group(signal.SIGKILL)  # leftovers of a leader that already exited

    def wait_ready(self, path: str = "/", timeout: float = 30.0, interval: float = 0.05,
                   method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None) -> float:
        """Poll until `path` answers 2xx; returns seconds since the process was started."""
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


class Procs:
    """Starts children and stops all of them (latest first) at the end."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[Proc] = []
        self.started = 0

    def start(self, name: str, args: Sequence[str], port: int, env: dict[str, str | None] | None = None,
              cwd: str | Path | None = None) -> Proc:
        """Start a child with os.environ updated by env (a None value removes the variable)."""
        log_path = self.log_dir / f"{name}-{self.started}.log"
        self.started += 1
        full_env = dict(os.environ)
        for k, v in (env or {}).items():
            if v is None:
                full_env.pop(k, None)
            else:
                full_env[k] = v
        with open(log_path, "wb") as fh:
            t0 = time.perf_counter()
            popen = subprocess.Popen(list(args), stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=full_env, cwd=cwd, start_new_session=True)
        proc = Proc(name=name, popen=popen, port=port, log_path=log_path, started_at=t0)
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


# -- memory ------------------------------------------------------------------------------------------


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


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


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
