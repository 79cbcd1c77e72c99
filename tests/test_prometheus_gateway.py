"""The dashboards and recording rules against a real Prometheus scraping a real gateway under traffic.

A gateway (2 workers, exact cache on) in front of simulators that also serve vLLM's and dcgm-exporter's
metric names; traffic of every kind runs while Prometheus (the Debian package) scrapes every second;
every PromQL expression of every dashboard panel and every recording rule must return data.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts import promql
from tests.helpers import metric_value, metrics
from tests.live_stack import PRICES, live_stack
from tests.procs import Proc


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, redis_server: Proc) -> Iterator[tuple[str, Proc]]:
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus is not installed: run ./scripts/setup.sh")
    with live_stack(Path(tmp_path_factory.mktemp("live")), str(redis_server.extra["url"])) as stack:
        yield stack.prometheus_url, stack.gateway


def test_gateway_feeds_every_dashboard_panel_and_rule(live: tuple[str, Proc]) -> None:
    url, gw = live
    queries = promql.all_dashboard_queries() + promql.rule_queries()
    assert len(queries) > 50
    results = promql.wait_for_data(url, queries, timeout=90, nan_is_data=False)
    missing = promql.without_data(results, nan_is_data=False)
    assert not missing, "no data for:\n" + promql.report(missing)
    text = metrics(gw)
    assert metric_value(text, "oss_cache_saved_usd_total") > 0
    assert metric_value(text, "oss_fallbacks_total", from_alias="flaky", to_alias="fast") > 0
    assert metric_value(text, "oss_deployment_cooldowns_total", deployment="smart-gpu9") > 0


def test_seed_query_as_written(live: tuple[str, Proc]) -> None:
    """design.md's query: USD per token for each series, matching the three counters one to one."""
    url, _ = live
    seed = ("rate(oss_token_cost_usd_total[1h]) / "
            "(rate(oss_completion_tokens_total[1h]) + rate(oss_prompt_tokens_total[1h]))")
    deadline = time.monotonic() + 60
    series: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        series = [s for s in promql.instant_query(url, seed) if s["value"][1] not in ("NaN", "+Inf")]
        if {s["metric"]["deployment"] for s in series} >= {"smart-gpu0", "fast-gpu1", "long-gpu2"}:
            break
        time.sleep(1)
    assert series
    for s in series:
        usd_per_token = float(s["value"][1])
        # a blend of the input and output price, never outside them
        assert PRICES["input_cost_per_token"] * 0.999 <= usd_per_token <= PRICES["output_cost_per_token"] * 1.001
