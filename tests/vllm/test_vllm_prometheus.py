"""The Operations dashboard's vLLM panels on a real Prometheus scraping two real vLLM servers.

Prometheus (the Debian package) scrapes both servers as job `vllm` (the name the alert rules use) and the
gateway every second while requests run through the gateway; every panel expression that reads vLLM's
series must return data (not NaN), with the dashboard's `model_name` variable both at "All" and at the
value Grafana would offer from `label_values(vllm:num_requests_running, model_name)`.
"""

from __future__ import annotations

import dataclasses
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from scripts import promql
from tests.procs import Proc, free_port
from tests.vllm import servers
from tests.vllm.conftest import Vllm, wait_until


def vllm_panel_queries() -> list[promql.Query]:
    """Every dashboard target that reads only vLLM's series."""
    out = []
    for q in promql.all_dashboard_queries():
        names = promql.metric_names(q.expr)
        if names and all(n.startswith("vllm:") for n in names):
            out.append(q)
    return out


def _traffic(gw: Proc, stop: threading.Event) -> None:
    """Short plain and streamed requests to both servers until stopped (histograms need fresh samples)."""
    sdk = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="sk-test", max_retries=0, timeout=120)
    i = 0
    while not stop.is_set():
        alias = ("small", "large")[i % 2]
        messages = [{"role": "user", "content": f"Say a word about the number {i}."}]
        try:
            if i % 3 == 0:
                for _ in sdk.chat.completions.create(model=alias, messages=messages, max_tokens=3, stream=True):
                    pass
            else:
                sdk.chat.completions.create(model=alias, messages=messages, max_tokens=3)
        except openai.APIError:
            pass  # a failed request shows in the assertions below as missing data
        i += 1
        stop.wait(0.2)


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory, vllm: Vllm, gateway: Proc) -> Iterator[str]:
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus is not installed: run ./scripts/setup.sh", pytrace=False)
    config = promql.prometheus_config({
        "vllm": [f"127.0.0.1:{p.port}" for p in vllm.all],
        "gateway": [f"127.0.0.1:{gateway.port}"],
    })
    port = free_port()
    proc = promql.start_prometheus(config, port, Path(tmp_path_factory.mktemp("prometheus")))
    url = f"http://127.0.0.1:{port}"
    stop = threading.Event()
    driver = threading.Thread(target=_traffic, args=(gateway, stop), daemon=True)
    try:
        # traffic only once Prometheus has a first sample of every target, so rate() sees it grow
        assert wait_until(lambda: len(promql.instant_query(url, "up == 1")) == 3, timeout=60), "targets not up"
        driver.start()
        yield url
    finally:
        stop.set()
        driver.join(150)
        proc.terminate()
        proc.wait(10)


def test_vllm_panels_have_data(prometheus: str) -> None:
    queries = vllm_panel_queries()
    assert len(queries) >= 8, [q.source for q in queries]  # running/waiting, KV, TTFT, e2e, tokens/s
    results = promql.wait_for_data(prometheus, queries, timeout=120, nan_is_data=False)
    missing = promql.without_data(results, nan_is_data=False)
    assert not missing, "no data from real vLLM for:\n" + promql.report(missing)
    for r in results:  # one series per model_name, as the legends expect
        assert {s["metric"].get("model_name") for s in r.series} == {servers.SERVED}, r.query.source


def test_vllm_panels_with_the_model_name_grafana_offers(prometheus: str) -> None:
    resp = httpx.get(f"{prometheus}/api/v1/label/model_name/values",
                     params={"match[]": "vllm:num_requests_running"}, timeout=10)
    values = resp.json()["data"]
    assert values == [servers.SERVED]
    queries = [dataclasses.replace(q, variables={**q.variables, "model_name": values[0]})
               for q in vllm_panel_queries()]
    results = promql.wait_for_data(prometheus, queries, timeout=90, nan_is_data=False)
    missing = promql.without_data(results, nan_is_data=False)
    assert not missing, "no data for:\n" + promql.report(missing)


def test_alert_rule_job_name_matches(prometheus: str) -> None:
    """alerts.yml watches `up{job="vllm"}`: both real servers are up under that job."""
    series = promql.instant_query(prometheus, 'up{job="vllm"}')
    assert sorted(float(s["value"][1]) for s in series) == [1.0, 1.0]
