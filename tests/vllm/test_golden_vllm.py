"""`gateway eval` on real vLLM: the 20-question golden set (tests/data/golden20.jsonl, lenient `contains`
checks SmolLM2-135M answers at temperature 0) through two aliases of the gateway (`small`, `large`: two vLLM
servers of the same model), streamed, priced from the gateway's own router.yaml, with an HTML report."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tests.procs import Proc
from tests.vllm.conftest import NOTES, TIMEOUT

GOLDEN = Path(__file__).resolve().parent.parent / "data" / "golden20.jsonl"
ALIASES = ("small", "large")


def table_rows(page: str) -> dict[str, list[str]]:
    """The report's table: row label -> cells (the header row under the label "")."""
    rows: dict[str, list[str]] = {}
    for tr in re.findall(r"<tr>(.*?)</tr>", page, re.S):
        cells = [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<t[hd]>(.*?)</t[hd]>", tr, re.S)]
        rows[cells[0]] = cells[1:]
    return rows


def test_golden_set_on_two_vllm_aliases(gateway: Proc, tmp_path: Path) -> None:
    html, out = tmp_path / "golden20.html", tmp_path / "golden20.json"
    r = subprocess.run(
        [sys.executable, "-m", "gateway", "eval", str(GOLDEN), "--aliases", ",".join(ALIASES), "--url", gateway.url,
         "--config", str(gateway.extra["config_path"]), "--stream", "--concurrency", "4",
         "--timeout", str(TIMEOUT), "--html", str(html), "--json", str(out)],
        capture_output=True, text=True, timeout=2 * TIMEOUT)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = table_rows(html.read_text())
    assert rows[""] == list(ALIASES)
    assert rows["requests"] == ["20", "20"]
    assert rows["errors"] == ["0 (0.0%)", "0 (0.0%)"]
    summary = json.loads(out.read_text())["summary"]
    for alias in ALIASES:
        s = summary[alias]
        assert s["n"] == 20 and s["streamed"] == 20 and s["ttft_p50"] is not None
        assert 0 < s["ttft_p50"] < s["latency_p50"]
        # the fixture's prices: 1e-6 USD per prompt token, 2e-6 per completion token
        assert 1.0 < s["usd_per_1m"] < 2.0
        # greedy answers of a 135M model to questions it was seen to answer; batching on the CPU may change a few
        assert s["pass_rate"] >= 0.6, (alias, s["passed"])
    NOTES.append("golden20 through small / large: pass " + " / ".join(f"{summary[a]['passed']}/20" for a in ALIASES)
                 + ", p50 latency " + " / ".join(f"{summary[a]['latency_p50']:.2f}s" for a in ALIASES))
