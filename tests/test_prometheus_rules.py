"""Prometheus config, rules and Grafana dashboards: promtool checks, dashboard structure, and every
dashboard expression and recording rule evaluated on a real Prometheus scraping synthetic metrics.

The synthetic exporter below serves the metric names of design.md section 4 (plus vLLM's and
dcgm-exporter's); a second variant scraping the real gateway under simulator traffic lives with the
gateway's integration tests and reuses scripts/promql.py the same way.
"""

from __future__ import annotations

import json
import math
import random
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from tests.procs import free_port

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import promql  # noqa: E402

PROM_DIR = ROOT / "deploy" / "prometheus"
DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
DATASOURCE_UID = "prometheus"

# design.md section 4: metric name -> label names (histograms also as _bucket/_sum/_count).
TOKEN_LABELS = ("alias", "model", "deployment", "team", "key", "estimated", "shadow")
CONTRACT: dict[str, tuple[str, ...]] = {
    "oss_prompt_tokens_total": TOKEN_LABELS,
    "oss_completion_tokens_total": TOKEN_LABELS,
    "oss_token_cost_usd_total": TOKEN_LABELS,
    "oss_requests_total": ("alias", "status_class", "cache", "team", "key"),
    "oss_cache_saved_usd_total": ("alias", "model", "team", "key"),
    "oss_deployment_gpu_cost_usd_per_hour": ("alias", "model", "deployment"),
    "oss_in_flight_requests": ("alias", "deployment"),
    "oss_retries_total": ("alias", "deployment", "reason"),
    "oss_fallbacks_total": ("from_alias", "to_alias", "reason"),
    "oss_deployment_healthy": ("alias", "deployment"),
    "oss_deployment_cooldowns_total": ("alias", "deployment"),
    "oss_config_reloads_total": ("result",),
    "oss_redis_up": ("store",),
    "oss_cache_errors_total": ("op",),
}
CONTRACT_HISTOGRAMS: dict[str, tuple[str, ...]] = {
    "oss_request_duration_seconds": ("alias", "deployment", "stream"),
    "oss_time_to_first_token_seconds": ("alias", "deployment"),
    "oss_inter_token_latency_seconds": ("alias", "deployment"),
    "oss_gateway_overhead_seconds": ("alias",),
}
# issue #14 (shadow traffic, canaries): `alias` is the primary alias, `side` primary | shadow.
PAIR_SIDE = ("alias", "shadow_alias", "side")
ROLLOUT: dict[str, tuple[str, ...]] = {
    "oss_shadow_requests_total": ("alias", "shadow_alias", "result"),
    "oss_compare_prompt_tokens_total": PAIR_SIDE,
    "oss_compare_completion_tokens_total": PAIR_SIDE,
    "oss_compare_cost_usd_total": PAIR_SIDE,
    "oss_compare_errors_total": PAIR_SIDE,
    "oss_canary_percent": ("alias", "to"),
    "oss_canary_steps_total": ("alias", "to", "action"),
}
ROLLOUT_HISTOGRAMS: dict[str, tuple[str, ...]] = {
    "oss_compare_duration_seconds": PAIR_SIDE,
    "oss_compare_ttft_seconds": PAIR_SIDE,
    "oss_compare_agreement": ("alias", "shadow_alias", "method"),
}
VENDOR_METRIC = re.compile(r"^(vllm:[a-z0-9_:]+|DCGM_FI_[A-Z0-9_]+)$")


def contract_names() -> set[str]:
    names = set(CONTRACT) | set(ROLLOUT)
    for h in (*CONTRACT_HISTOGRAMS, *ROLLOUT_HISTOGRAMS):
        names.update(f"{h}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
    return names


def recording_rule_names() -> set[str]:
    return {q.source.split(": ", 1)[1] for q in promql.rule_queries()}


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


# ------------------------------------------------------------------------------------------ promtool

def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return subprocess.run([exe, *args], capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_promtool_check_config() -> None:
    out = promtool("check", "config", str(PROM_DIR / "prometheus.yml"))
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_check_rules() -> None:
    out = promtool("check", "rules", *map(str, sorted((PROM_DIR / "rules").glob("*.yml"))))
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_test_rules() -> None:
    """Alert rules fire on series made to cross them and stay silent otherwise; recording rules' values."""
    tests = sorted((PROM_DIR / "tests").glob("*.yml"))
    assert len(tests) >= 2
    out = promtool("test", "rules", *map(str, tests))
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_has_a_unit_test() -> None:
    alerts = {q.source.split(": ", 1)[1] for q in promql.rule_queries(promql.ALERT_RULES, kinds=("alert",))}
    tested = set(re.findall(r"alertname:\s*(\w+)", (PROM_DIR / "tests" / "alerts_test.yml").read_text()))
    assert alerts == tested


def test_scrape_config_targets_match_router_yaml() -> None:
    config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    jobs = {
        job["job_name"]: [t for sc in job.get("static_configs", []) for t in sc["targets"]]
        for job in config["scrape_configs"]
    }
    assert jobs["gateway"] == ["gateway:4000"]
    assert jobs["dcgm-exporter"] == ["dcgm-exporter:9400"]
    router = yaml.safe_load((ROOT / "router.yaml").read_text())
    hosts = {
        re.sub(r"^https?://([^/]+).*$", r"\1", m["litellm_params"]["api_base"]) for m in router["model_list"]
    }
    assert set(jobs["vllm"]) == hosts
    assert {Path(p).name for p in config["rule_files"]} == {"recording.yml", "alerts.yml"}


# -------------------------------------------------------------------------------- dashboard structure

def test_grafana_provisioning() -> None:
    ds = yaml.safe_load((ROOT / "grafana/provisioning/datasources/prometheus.yml").read_text())
    (source,) = ds["datasources"]
    assert source["uid"] == DATASOURCE_UID and source["url"] == "http://prometheus:9090"
    assert source["type"] == "prometheus"
    providers = yaml.safe_load((ROOT / "grafana/provisioning/dashboards/dashboards.yml").read_text())["providers"]
    assert providers and all(p["type"] == "file" and p["options"]["path"] for p in providers)


def test_dashboards_exist() -> None:
    titles = {load(p)["title"] for p in DASHBOARDS}
    assert {"Cost", "Operations", "Model comparison"} <= titles
    uids = [load(p)["uid"] for p in DASHBOARDS]
    assert len(uids) == len(set(uids))


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_structure(path: Path) -> None:
    dash = load(path)
    panels = list(promql.iter_panels(dash["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, panel["title"]
        cover = {(pos["x"] + dx, pos["y"] + dy) for dx in range(pos["w"]) for dy in range(pos["h"])}
        assert not cover & cells, f"{panel['title']} overlaps another panel"
        cells |= cover
        if panel["type"] == "row":
            continue
        assert panel.get("title"), panel
        assert panel["datasource"]["uid"] == DATASOURCE_UID, panel["title"]
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == DATASOURCE_UID, panel["title"]
            assert target["expr"].strip(), panel["title"]
        assert panel.get("fieldConfig", {}).get("defaults", {}).get("unit"), f"{panel['title']} has no unit"
    for var in dash["templating"]["list"]:
        assert var["datasource"]["uid"] == DATASOURCE_UID
        assert var["includeAll"] and var["allValue"] == ".*", var["name"]
        # label_values(metric{...}, label): the metric must be one the dashboards may use
        (name,) = promql.metric_names(re.sub(r",\s*\w+\)\s*$", ")", var["definition"]))
        assert name in contract_names() or VENDOR_METRIC.match(name), var["definition"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_metric_names_are_in_the_contract(path: Path) -> None:
    allowed = contract_names() | recording_rule_names()
    for query in promql.dashboard_queries(path):
        names = promql.metric_names(query.expr)
        assert names, f"{query.source}: no metric in {query.expr}"
        unknown = {n for n in names if n not in allowed and not VENDOR_METRIC.match(n)}
        assert not unknown, f"{query.source}: {unknown} not in design.md section 4"


def test_recording_and_alert_rules_use_contract_names() -> None:
    allowed = contract_names() | recording_rule_names() | {"up"}
    for query in promql.rule_queries(kinds=("record",)) + promql.rule_queries(promql.ALERT_RULES, kinds=("alert",)):
        assert promql.metric_names(query.expr) <= allowed, query.source


def test_cost_dashboard_shows_both_prices() -> None:
    cost = next(load(p) for p in DASHBOARDS if load(p)["title"] == "Cost")
    titles = " ".join(p["title"] for p in promql.iter_panels(cost["panels"]))
    assert "LIST PRICE" in titles and "GPU-HOUR COST" in titles
    exprs = " ".join(q.expr for q in promql.dashboard_queries(DASHBOARDS[0].parent / "cost.json"))
    for rule in ("model:oss_token_cost_usd_per_1m_tokens:rate1h", "model:oss_gpu_cost_usd_per_1m_tokens:rate1h"):
        assert rule in exprs


def test_model_comparison_dashboard() -> None:
    """Per pair (alias, shadow alias): both sides' speed, errors, both prices said apart, agreement, canary."""
    path = DASHBOARDS[0].parent / "model-comparison.json"
    dash = load(path)
    assert [v["name"] for v in dash["templating"]["list"]] == ["alias", "shadow_alias"]
    panels = {p["title"]: p for p in promql.iter_panels(dash["panels"]) if p["type"] != "row"}
    list_price = next(p for t, p in panels.items() if "LIST PRICE" in t)
    gpu_cost = next(p for t, p in panels.items() if "GPU-HOUR COST" in t)
    assert "marginal" in gpu_cost["description"] and "idle" in gpu_cost["description"].lower()
    assert "list price" in list_price["description"].lower()
    assert "oss_deployment_gpu_cost_usd_per_hour" in gpu_cost["targets"][0]["expr"]
    by_side = [p for t, p in panels.items() if "by side" in t]
    assert len(by_side) >= 5 and all('shadow_alias=~"$shadow_alias"' in p["targets"][0]["expr"] for p in by_side)
    names = set()
    for q in promql.dashboard_queries(path):
        names |= promql.metric_names(q.expr)
    assert {f"{h}_bucket" for h in ROLLOUT_HISTOGRAMS} | set(ROLLOUT) <= names


def test_operations_dashboard_has_vllm_and_dcgm_panels() -> None:
    names = set()
    for q in promql.dashboard_queries(DASHBOARDS[0].parent / "operations.json"):
        names |= promql.metric_names(q.expr)
    assert {
        "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
        "vllm:time_to_first_token_seconds_bucket", "DCGM_FI_DEV_FB_USED",
    } <= names


# ------------------------------------------------------------------------------------ promql helpers

def test_substitute_variables_and_builtins() -> None:
    expr = 'sum(rate(x{a=~"$alias", b=~"${team:regex}", c=~"[[key]]"}[$__rate_interval])) * $__range_s'
    out = promql.substitute(expr, {"alias": ".*"}, rate_interval="2m", range_="1h")
    assert out == 'sum(rate(x{a=~".*", b=~".*", c=~".*"}[2m])) * 3600'
    assert promql.substitute('label_replace(x, "d", "$1", "s", "(.*)")') == 'label_replace(x, "d", "$1", "s", "(.*)")'
    assert promql.substitute("increase(x[$__interval]) / $__interval_ms", interval="1d") == "increase(x[1d]) / 86400000"


def test_metric_names() -> None:
    expr = ('histogram_quantile(0.95, sum by (le, alias) (rate(oss_request_duration_seconds_bucket{alias=~"$alias"}'
            '[5m] offset 1h))) * 1e6 / on (model) group_left (team) vllm:num_requests_running > bool 3 or vector(0)')
    assert promql.metric_names(expr) == {"oss_request_duration_seconds_bucket", "vllm:num_requests_running"}


def test_durations() -> None:
    assert promql.seconds("1h30m") == 5400 and promql.duration(5400) == "1h30m"
    assert promql.duration(0.5) == "500ms" and promql.duration(86400) == "1d"


# ------------------------------------------------------------------------- synthetic metrics exporter

class SyntheticExporter:
    """Contract, vLLM and DCGM metric names with a few label sets; values grow at every scrape.

    Serves /metrics (gateway), /vllm/metrics and /dcgm/metrics on 127.0.0.1, one registry each.
    """

    GATEWAY_SERIES = (  # alias, model, deployment, team, key, estimated, traffic share, (in, out) USD per token
        ("smart", "gpt-oss-120b", "smart-gpu0", "research", "alice", "false", 1.0, (0.15e-6, 0.6e-6)),
        ("smart", "gpt-oss-120b", "smart-gpu0", "product", "bob", "false", 0.6, (0.15e-6, 0.6e-6)),
        ("fast", "Qwen3-8B", "fast-gpu1", "product", "bob", "false", 1.4, (0.05e-6, 0.2e-6)),
        ("fast", "Qwen3-8B", "fast-gpu1", "research", "carol", "true", 0.15, (0.05e-6, 0.2e-6)),
    )
    GPUS = (("smart", "gpt-oss-120b", "smart-gpu0", 2.5), ("fast", "Qwen3-8B", "fast-gpu1", 1.2))
    PAIR = ("smart", "smart-next")  # primary alias, shadow alias
    SIDES = {"primary": (1.0, 0.25), "shadow": (0.8, 0.15)}  # typical latency, TTFT (seconds)
    CANARY_STEPS = (1, 5, 25, 50, 100)
    # typical seconds per alias, and histogram buckets, of each latency histogram
    LATENCY = {
        "oss_request_duration_seconds": ({"smart": 1.2, "fast": 0.35}, (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16)),
        "oss_time_to_first_token_seconds": ({"smart": 0.25, "fast": 0.06}, (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)),
        "oss_inter_token_latency_seconds": ({"smart": 0.03, "fast": 0.012}, (0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15)),
        "oss_gateway_overhead_seconds": ({"smart": 0.0008, "fast": 0.0007}, (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005)),
    }

    def __init__(self, seed: int = 7) -> None:
        self.lock = threading.Lock()
        self.scrapes = 0
        self.rng = random.Random(seed)
        self.gateway = CollectorRegistry()
        self.vllm = CollectorRegistry()
        self.dcgm = CollectorRegistry()
        g = self.gateway
        self.prompt = Counter("oss_prompt_tokens", "", TOKEN_LABELS, registry=g)
        self.completion = Counter("oss_completion_tokens", "", TOKEN_LABELS, registry=g)
        self.cost = Counter("oss_token_cost_usd", "", TOKEN_LABELS, registry=g)
        self.requests = Counter("oss_requests", "", CONTRACT["oss_requests_total"], registry=g)
        self.saved = Counter("oss_cache_saved_usd", "", CONTRACT["oss_cache_saved_usd_total"], registry=g)
        self.gpu_cost = Gauge("oss_deployment_gpu_cost_usd_per_hour", "", CONTRACT["oss_deployment_gpu_cost_usd_per_hour"], registry=g)
        self.in_flight = Gauge("oss_in_flight_requests", "", ("alias", "deployment"), registry=g)
        self.retries = Counter("oss_retries", "", CONTRACT["oss_retries_total"], registry=g)
        self.fallbacks = Counter("oss_fallbacks", "", CONTRACT["oss_fallbacks_total"], registry=g)
        self.healthy = Gauge("oss_deployment_healthy", "", ("alias", "deployment"), registry=g)
        self.cooldowns = Counter("oss_deployment_cooldowns", "", ("alias", "deployment"), registry=g)
        self.reloads = Counter("oss_config_reloads", "", ("result",), registry=g)
        self.redis_up = Gauge("oss_redis_up", "", ["store"], registry=g)
        self.cache_errors = Counter("oss_cache_errors", "", ("op",), registry=g)
        self.shadow_requests = Counter("oss_shadow_requests", "", ROLLOUT["oss_shadow_requests_total"], registry=g)
        self.compare = {name: Counter(name.removesuffix("_total"), "", labels, registry=g)
                        for name, labels in ROLLOUT.items() if name.startswith("oss_compare_")}
        self.compare_hist = {
            "oss_compare_duration_seconds": Histogram("oss_compare_duration_seconds", "", PAIR_SIDE, registry=g,
                                                      buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8)),
            "oss_compare_ttft_seconds": Histogram("oss_compare_ttft_seconds", "", PAIR_SIDE, registry=g,
                                                  buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1)),
            "oss_compare_agreement": Histogram("oss_compare_agreement", "", ROLLOUT_HISTOGRAMS["oss_compare_agreement"],
                                               registry=g, buckets=tuple(i / 10 for i in range(1, 11))),
        }
        self.canary_percent = Gauge("oss_canary_percent", "", ROLLOUT["oss_canary_percent"], registry=g)
        self.canary_steps = Counter("oss_canary_steps", "", ROLLOUT["oss_canary_steps_total"], registry=g)
        self.histograms = {
            name: Histogram(name, "", labels, registry=g, buckets=self.LATENCY[name][1])
            for name, labels in CONTRACT_HISTOGRAMS.items()
        }
        v = self.vllm
        self.v_running = Gauge("vllm:num_requests_running", "", ("model_name",), registry=v)
        self.v_waiting = Gauge("vllm:num_requests_waiting", "", ("model_name",), registry=v)
        self.v_kv = Gauge("vllm:kv_cache_usage_perc", "", ("model_name",), registry=v)
        self.v_ttft = Histogram("vllm:time_to_first_token_seconds", "", ("model_name",), registry=v,
                                buckets=(0.02, 0.1, 0.5, 2.5))
        self.v_e2e = Histogram("vllm:e2e_request_latency_seconds", "", ("model_name",), registry=v,
                               buckets=(0.5, 2.5, 10, 60))
        self.v_prompt = Counter("vllm:prompt_tokens", "", ("model_name",), registry=v)
        self.v_generation = Counter("vllm:generation_tokens", "", ("model_name",), registry=v)
        d, dcgm_labels = self.dcgm, ("gpu", "UUID", "modelName", "Hostname")
        self.fb_used = Gauge("DCGM_FI_DEV_FB_USED", "", dcgm_labels, registry=d)
        self.fb_free = Gauge("DCGM_FI_DEV_FB_FREE", "", dcgm_labels, registry=d)
        self.gpu_util = Gauge("DCGM_FI_DEV_GPU_UTIL", "", dcgm_labels, registry=d)

    def wave(self, phase: float, depth: float = 0.4, period: float = 150.0) -> float:
        """A slow daily-like swing around 1 with some noise."""
        return max(0.05, 1 + depth * math.sin(2 * math.pi * self.scrapes / period + phase) + self.rng.uniform(-0.08, 0.08))

    def tick(self) -> None:
        """One step of traffic: every series moves."""
        self.scrapes += 1
        rng = self.rng
        for i, (alias, model, dep, team, key, est, share, (pin, pout)) in enumerate(self.GATEWAY_SERIES):
            load = share * self.wave(i)
            p, c = round(420 * load), round(130 * load)
            self.prompt.labels(alias, model, dep, team, key, est, "false").inc(p)
            self.completion.labels(alias, model, dep, team, key, est, "false").inc(c)
            self.cost.labels(alias, model, dep, team, key, est, "false").inc(p * pin + c * pout)
            if i == 0:  # a tenth of this alias's traffic mirrored (shadow calls: no team, no key)
                self.prompt.labels(alias, model, dep, "", "", est, "true").inc(p // 10)
                self.completion.labels(alias, model, dep, "", "", est, "true").inc(c // 10)
                self.cost.labels(alias, model, dep, "", "", est, "true").inc((p // 10) * pin + (c // 10) * pout)
            self.requests.labels(alias, "2xx", "miss", team, key).inc(round(4 * load))
            self.requests.labels(alias, "2xx", "hit", team, key).inc(1)
            self.requests.labels(alias, "4xx", "bypass", team, key).inc(int(rng.random() < 0.3))
            self.requests.labels(alias, "5xx", "miss", team, key).inc(int(rng.random() < 0.12 * (i + 1)))
            self.saved.labels(alias, model, team, key).inc(180 * pin + 60 * pout)
        for g, (alias, model, dep, usd) in enumerate(self.GPUS):
            load = self.wave(g)
            self.gpu_cost.labels(alias, model, dep).set(usd)
            self.in_flight.labels(alias, dep).set(round(6 * load))
            self.healthy.labels(alias, dep).set(1)
            self.retries.labels(alias, dep, "upstream_5xx").inc(int(rng.random() < 0.15))
            self.cooldowns.labels(alias, dep).inc(int(rng.random() < 0.03))
            labels = {"alias": alias, "deployment": dep, "stream": "true"}
            for name, h in self.histograms.items():
                child = h.labels(*(labels[label] for label in CONTRACT_HISTOGRAMS[name]))
                for _ in range(8):
                    child.observe(self.LATENCY[name][0][alias] * load * rng.lognormvariate(0, 0.35))
            self.v_running.labels(model).set(round(6 * load))
            self.v_waiting.labels(model).set(max(0, round(8 * (load - 1.15))))
            self.v_kv.labels(model).set(min(1.0, 0.45 * load))
            for _ in range(4):
                self.v_ttft.labels(model).observe(0.2 * load * rng.lognormvariate(0, 0.4))
                self.v_e2e.labels(model).observe(3 * load * rng.lognormvariate(0, 0.3))
            self.v_prompt.labels(model).inc(round(800 * load))
            self.v_generation.labels(model).inc(round(250 * load))
            for gpu in (2 * g, 2 * g + 1):
                dcgm = (str(gpu), f"GPU-5f1c-{gpu:04d}", "NVIDIA H100 80GB HBM3", "gpu-host-1")
                used = round(52000 + 20000 * min(1.0, 0.45 * load))
                self.fb_used.labels(*dcgm).set(used)
                self.fb_free.labels(*dcgm).set(81559 - used)
                self.gpu_util.labels(*dcgm).set(min(100, round(55 * load)))
        self.tick_rollout()
        self.fallbacks.labels("smart", "fast", "upstream_error").inc(int(rng.random() < 0.05))
        self.reloads.labels("ok").inc(int(rng.random() < 0.01))
        self.reloads.labels("rejected").inc(0)
        self.redis_up.labels("cache").set(1)
        self.cache_errors.labels("get").inc(0)

    def tick_rollout(self) -> None:
        """Shadow traffic of smart to smart-next and a canary of smart-next stepping through its shares."""
        rng = self.rng
        alias, shadow = self.PAIR
        n = 1 + round(3 * self.wave(0.5))
        dropped = int(rng.random() < 0.2)
        errors = {"primary": int(rng.random() < 0.05), "shadow": int(rng.random() < 0.15)}
        self.shadow_requests.labels(alias, shadow, "ok").inc(n - errors["shadow"])
        self.shadow_requests.labels(alias, shadow, "error").inc(errors["shadow"])
        self.shadow_requests.labels(alias, shadow, "dropped").inc(dropped)
        for side, (latency, ttft) in self.SIDES.items():
            labels = (alias, shadow, side)
            pin, pout = (0.15e-6, 0.6e-6) if side == "primary" else (0.1e-6, 0.4e-6)
            p, c = 420 * n, 130 * n
            self.compare["oss_compare_prompt_tokens_total"].labels(*labels).inc(p)
            self.compare["oss_compare_completion_tokens_total"].labels(*labels).inc(c)
            self.compare["oss_compare_cost_usd_total"].labels(*labels).inc(p * pin + c * pout)
            self.compare["oss_compare_errors_total"].labels(*labels).inc(errors[side])
            for _ in range(n):
                self.compare_hist["oss_compare_duration_seconds"].labels(*labels).observe(
                    latency * rng.lognormvariate(0, 0.3))
                self.compare_hist["oss_compare_ttft_seconds"].labels(*labels).observe(ttft * rng.lognormvariate(0, 0.3))
        for method, typical in (("exact", 0.9), ("lexical", 0.7)):
            for _ in range(n):
                self.compare_hist["oss_compare_agreement"].labels(alias, shadow, method).observe(
                    min(1.0, max(0.0, rng.gauss(typical, 0.15))))
        step = (self.scrapes // 20) % len(self.CANARY_STEPS)
        self.canary_percent.labels(alias, shadow).set(self.CANARY_STEPS[step])
        if self.scrapes % 20 == 0:
            action = "complete" if step == len(self.CANARY_STEPS) - 1 else "advance"
            self.canary_steps.labels(alias, shadow, action).inc()
        self.canary_steps.labels(alias, shadow, "abort").inc(0)

    def exposition(self, path: str) -> bytes | None:
        registry = {"/metrics": self.gateway, "/vllm/metrics": self.vllm, "/dcgm/metrics": self.dcgm}.get(path)
        if registry is None:
            return None
        with self.lock:
            if registry is self.gateway:
                self.tick()
            return generate_latest(registry)


def serve(exporter: SyntheticExporter) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            body = exporter.exposition(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body or b"not found\n")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def prometheus_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus is not installed (apt-get install prometheus)")
    exporter = SyntheticExporter()
    exporter.tick()  # vLLM and DCGM series exist before the first scrape
    server = serve(exporter)
    target = f"127.0.0.1:{server.server_address[1]}"
    config = promql.prometheus_config({
        "gateway": [target],
        "vllm": {"metrics_path": "/vllm/metrics", "static_configs": [{"targets": [target]}]},
        "dcgm-exporter": {"metrics_path": "/dcgm/metrics", "static_configs": [{"targets": [target]}]},
    })
    port = free_port()
    proc = promql.start_prometheus(config, port, tmp_path_factory.mktemp("prometheus"))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
        server.shutdown()


def test_every_dashboard_expression_and_recording_rule_returns_data(prometheus_url: str) -> None:
    queries = promql.all_dashboard_queries() + promql.rule_queries()
    assert len(queries) > 50
    results = promql.wait_for_data(prometheus_url, queries, timeout=40, nan_is_data=False)
    missing = promql.without_data(results, nan_is_data=False)
    assert not missing, "no data for:\n" + promql.report(missing)


def test_synthetic_metrics_follow_the_contract(prometheus_url: str) -> None:
    """The exporter itself has the contract's label names (so the test above proves the contract)."""
    histograms = {**CONTRACT_HISTOGRAMS, **ROLLOUT_HISTOGRAMS}
    for name, labels in {**CONTRACT, **ROLLOUT, **{f"{h}_bucket": (*ls, "le") for h, ls in histograms.items()}}.items():
        series = promql.instant_query(prometheus_url, f"{name}[1h]")
        assert series, name
        got = set(series[0]["metric"]) - {"__name__", "job", "instance"}
        assert got == set(labels), name


def test_cost_rules_on_live_data(prometheus_url: str) -> None:
    """The cost rules compute what they say, at the time they were evaluated."""
    promql.wait_for_data(prometheus_url, promql.rule_queries(), timeout=30)
    per_1m = {s["metric"]["model"]: float(s["value"][1])
              for s in promql.instant_query(prometheus_url, "model:oss_token_cost_usd_per_1m_tokens:rate1h")}
    # a blend of the input and output list prices (USD per 1M tokens) of SyntheticExporter
    assert 0.15 < per_1m["gpt-oss-120b"] < 0.6 and 0.05 < per_1m["Qwen3-8B"] < 0.2
    # GPU-hour cost per 1M tokens = GPU USD/s over tokens/s, from series recorded in the same evaluation
    # (the raw counters may have gained a scrape since; promtool tests check the exact values).
    for sample in promql.instant_query(prometheus_url, "model:oss_gpu_cost_usd_per_1m_tokens:rate1h"):
        model, (at, value) = sample["metric"]["model"], sample["value"]
        (check,) = promql.instant_query(
            prometheus_url,
            f'model:oss_deployment_gpu_cost_usd_per_hour:sum{{model="{model}"}} / 3600'
            f' / model:oss_tokens:rate1h{{model="{model}"}} * 1e6',
            at=float(at),
        )
        assert float(value) == pytest.approx(float(check["value"][1]), rel=1e-9), model
        assert float(value) > per_1m[model]  # the synthetic GPUs cost more than their tokens' list price
