"""Make the README's picture of `gateway compare`: a gateway mirrors every request of `smart` (a fast
simulated model) to `smart-next` (a slower, bigger one on a pricier GPU that fails 5% of its calls), 80
streamed chat requests go through, and `gateway compare --png` draws the report.

    python scripts/rollout_report_demo.py [--out docs/img/model-comparison.png]

The numbers come from the upstream simulator (gateway/simulator), not from real models: primary 50 ms to the
first token and 120 tokens/s; shadow 250 ms and 35 tokens/s. The simulator echoes the prompt's words, so the
two agree exactly, except while the shadow is set to answer a fixed, different text (every third request).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.procs import start_gateway, start_simulator  # noqa: E402

MASTER = "sk-demo-master"
QUESTIONS = ["Summarise the incident report in two sentences.", "What does the KV cache hold?",
             "Write a haiku about GPUs.", "Explain prefix caching to a new engineer.",
             "List three risks of swapping a base model.", "Translate 'good morning' into French."]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "model-comparison.png")
    p.add_argument("-n", type=int, default=80)
    a = p.parse_args()
    fast = start_simulator("--ttft", "0.05", "--tps", "120", "--model", "gpt-oss-20b")
    big = start_simulator("--ttft", "0.25", "--tps", "35", "--model", "qwen3-32b", "--seed", "7",
                          "--fault", "500", "--fault-rate", "0.05")

    def dep(alias: str, sim: object, model: str, dep_id: str, **info: object) -> dict[str, object]:
        return {"model_name": alias, "litellm_params": {"model": f"openai/{model}", "api_base": f"{sim.url}/v1"},  # type: ignore[attr-defined]
                "model_info": {"id": dep_id, **info}}

    gw = start_gateway({
        "model_list": [dep("smart", fast, "gpt-oss-20b", "smart-gpu1", input_cost_per_token=0.00000005,
                           output_cost_per_token=0.0000002, gpu_hourly_cost_usd=1.2),
                       dep("smart-next", big, "qwen3-32b", "next-gpu2", input_cost_per_token=0.0000001,
                           output_cost_per_token=0.0000004, gpu_hourly_cost_usd=2.5)],
        "router_settings": {"num_retries": 0, "shadow": {"smart": {"to": "smart-next", "share": 100}}},
    }, env={"GATEWAY_MASTER_KEY": MASTER})
    try:
        with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {MASTER}"}, timeout=30) as c:
            for i in range(a.n):
                reply = ("The answer depends on the deployment and its GPU memory budget .".split()
                         if i % 3 == 0 else None)
                httpx.post(f"{big.url}/sim/config", json={"reply": reply}, timeout=5).raise_for_status()
                body = {"model": "smart", "stream": True, "max_tokens": 24 + 8 * (i % 5),
                        "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]}
                with c.stream("POST", "/v1/chat/completions", json=body) as r:
                    for _ in r.iter_bytes():
                        pass
            deadline = time.monotonic() + 30
            while len(c.get("/admin/comparisons").json()["records"]) < a.n and time.monotonic() < deadline:
                time.sleep(0.1)
        a.out.parent.mkdir(parents=True, exist_ok=True)
        return subprocess.call([sys.executable, "-m", "gateway", "compare", "--since", "1h", "--url", gw.url,
                                "--key", MASTER, "--png", str(a.out)])
    finally:
        for proc in (gw, fast, big):
            proc.stop()


if __name__ == "__main__":
    raise SystemExit(main())
