"""Real vLLM servers (the CPU build in its own venv, made by scripts/setup_vllm.sh) for the tests/vllm tier.

`start_vllm` starts `python -m vllm.entrypoints.openai.api_server` on SmolLM2-135M-Instruct (float32,
eager, 1 GiB of KV cache) on a free port and waits until `/health` answers; `Proc.stop()` ends it by
pid (vLLM's API server stops its engine processes on SIGTERM; anything left in its process group
is killed after). Nothing is downloaded: HF_HUB_OFFLINE=1 and a private VLLM_CACHE_ROOT.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from tests.procs import Proc, free_port

HOME = Path(os.environ.get("GATEWAY_VLLM_HOME") or Path.home() / ".cache" / "oss-gateway")
PYTHON = HOME / "vllm-venv" / "bin" / "python"
MODEL_DIR = HOME / "smollm2-135m-instruct"
SERVED = "SmolLM2-135M-Instruct"
SKIP_ENV = "GATEWAY_SKIP_VLLM"
CPU_MAX_NUM_SEQS = 128  # vLLM 0.32's --max-num-seqs default for the API server on a CPU
START_TIMEOUT = float(os.environ.get("GATEWAY_VLLM_START_TIMEOUT", "300"))


def missing() -> str | None:
    """Why vLLM cannot start here (None when the venv and the converted model are in place)."""
    if not PYTHON.is_file():
        return f"no vLLM venv at {PYTHON.parent.parent}"
    if not (MODEL_DIR / ".oss-gateway-done").is_file():
        return f"no converted model at {MODEL_DIR}"
    return None


class VllmProc(Proc):
    """A vLLM API server; stop() also reaps its engine processes (same process group)."""

    def stop(self, timeout: float = 30.0) -> int | None:
        pgid = self.popen.pid  # started with start_new_session=True: its own group
        code = super().stop(timeout)
        try:
            os.killpg(pgid, signal.SIGKILL)  # an engine core left behind after the API server exited
        except ProcessLookupError:
            pass
        return code


def start_vllm(name: str, max_model_len: int, workdir: Path, port: int | None = None,
               max_num_seqs: int | None = None) -> VllmProc:
    """Spawn one server (not waiting for it: see wait_ready). `max_num_seqs`: vLLM's --max-num-seqs (its
    default on a CPU is 128)."""
    port = port or free_port()
    cache, tmp = workdir / f"{name}-cache", workdir / f"{name}-tmp"
    cache.mkdir(parents=True, exist_ok=True)
    tmp.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": "1",           # GiB of KV cache (23k tokens of this model)
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",     # 2 cores: none kept back for the API server
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_CACHE_ROOT": str(cache),
        "TMPDIR": str(tmp),                      # vLLM leaves its vllm_dist_* rendezvous files there
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "PYTHONWARNINGS": "ignore::DeprecationWarning",
    }
    env.pop("PYTHONPATH", None)  # the venv's own packages only
    args = [
        str(PYTHON), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(MODEL_DIR), "--served-model-name", SERVED,
        "--dtype", "float32",          # bfloat16 output of this model on the CPU is garbage
        "--enforce-eager",             # torch.compile warm-up would cost 100-130 s a start
        "--max-model-len", str(max_model_len),
        "--enable-prompt-tokens-details",
        "--host", "127.0.0.1", "--port", str(port),
        "--uvicorn-log-level", "warning",
        *(("--max-num-seqs", str(max_num_seqs)) if max_num_seqs else ()),
    ]
    log = Path(tempfile.mkstemp(prefix=f"vllm-{name}-", suffix=".log", dir=workdir)[1])
    with open(log, "wb") as fh:
        popen = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=workdir,
                                 start_new_session=True)
    proc = VllmProc(popen=popen, port=port, log_path=log)
    proc.extra.update(name=name, max_model_len=max_model_len, max_num_seqs=max_num_seqs or CPU_MAX_NUM_SEQS,
                      started=time.monotonic())
    return proc


def wait_ready(proc: Proc, timeout: float = START_TIMEOUT) -> float:
    """Wait until /health and /v1/models answer; returns the seconds since the server was spawned."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"vLLM {proc.extra['name']} exited with {proc.popen.returncode}:\n{tail(proc)}")
        try:
            if httpx.get(f"{proc.url}/health", timeout=2).status_code == 200:
                httpx.get(f"{proc.url}/v1/models", timeout=5).raise_for_status()
                return time.monotonic() - float(proc.extra["started"])  # type: ignore[arg-type]
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"vLLM {proc.extra['name']} not ready after {timeout:.0f}s:\n{tail(proc)}")


def tail(proc: Proc, chars: int = 4000) -> str:
    return proc.log()[-chars:]


def scrape(proc: Proc) -> str:
    return httpx.get(f"{proc.url}/metrics", timeout=10).text
