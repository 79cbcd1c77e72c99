"""Extract the PromQL of the Grafana dashboards and Prometheus rules, and evaluate it on a live Prometheus.

Importable (tests put ``scripts/`` on ``sys.path`` and ``import promql``) and runnable::

    python scripts/promql.py --prometheus http://127.0.0.1:9090      # exit 1 if an expression has no data

Template variables become their match-all value (``.*``); Grafana's ``$__rate_interval``,
``$__interval``, ``$__range`` (and ``_s`` / ``_ms`` forms) become concrete durations.
Only the standard library and PyYAML are used.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_DIR = ROOT / "grafana" / "dashboards"
RULES_DIR = ROOT / "deploy" / "prometheus" / "rules"
RECORDING_RULES = RULES_DIR / "recording.yml"
ALERT_RULES = RULES_DIR / "alerts.yml"

_VARIABLE = re.compile(r"\$\{([A-Za-z_]\w*)(?::[^}]*)?\}|\[\[([A-Za-z_]\w*)(?::[^\]]*)?\]\]|\$([A-Za-z_]\w*)")
_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_OFFSET = re.compile(r"\b(?:offset\s+-?[0-9a-z]+|@\s*[0-9.]+)")
_TOKEN = re.compile(r"(?P<num>(?:0[xX][0-9a-fA-F]+|\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)|(?P<id>[A-Za-z_:][\w:]*)(?P<call>\s*\()?")
_KEYWORDS = frozenset({
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "offset", "inf", "nan", "atan2",
})


class PromQLError(RuntimeError):
    """Prometheus answered an error (bad expression, timeout) or could not be reached."""


@dataclass(frozen=True)
class Query:
    """One PromQL expression and where it comes from."""

    source: str              # "cost.json: Spend per day by model [A]" or "recording.yml: model:...:rate1h"
    expr: str                # as written in the dashboard or rule file
    kind: str = "panel"      # "panel", "record" or "alert"
    instant: bool = False    # a Grafana instant query (stat, bar gauge)
    interval: str = ""       # the panel's or target's minimum interval ("1d"), if any
    legend: str = ""         # Grafana legendFormat
    variables: Mapping[str, str] = field(default_factory=dict)  # dashboard variable -> its match-all value


@dataclass(frozen=True)
class Result:
    """The outcome of one instant query."""

    query: Query
    expr: str                                    # the expression sent, variables substituted
    series: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    @property
    def has_data(self) -> bool:
        return self.error is None and bool(self.series)

    @property
    def all_nan(self) -> bool:
        """True when every returned value is NaN (e.g. a quantile of a histogram with no observation)."""
        values = [_sample_value(s) for s in self.series]
        return bool(values) and all(math.isnan(v) for v in values)


# ----------------------------------------------------------------------------------------- durations

def seconds(duration: str) -> float:
    """Prometheus duration ("1h30m", "15s", "1d") to seconds."""
    parts = _DURATION.findall(duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise ValueError(f"not a Prometheus duration: {duration!r}")
    return sum(int(n) * _UNIT_SECONDS[u] for n, u in parts)


def duration(secs: float) -> str:
    """Seconds to the shortest exact Prometheus duration ("90s" -> "1m30s", 0.5 -> "500ms")."""
    if secs <= 0:
        raise ValueError("duration must be positive")
    ms = round(secs * 1000)
    out = []
    for unit in ("w", "d", "h", "m", "s", "ms"):
        size = round(_UNIT_SECONDS[unit] * 1000)
        n, ms = divmod(ms, size)
        if n:
            out.append(f"{n}{unit}")
    return "".join(out)


# -------------------------------------------------------------------------------------- extraction

def iter_panels(panels: Iterable[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    """Every panel, including those nested in (collapsed) rows."""
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def dashboard_variables(dashboard: Mapping[str, Any]) -> dict[str, str]:
    """Each template variable's match-all value (its allValue, else ".*")."""
    out: dict[str, str] = {}
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "constant":
            out[var["name"]] = str(var.get("query", ""))
        else:
            out[var["name"]] = var.get("allValue") or ".*"
    return out


def dashboard_queries(path: Path) -> list[Query]:
    """Every PromQL target of every panel of one dashboard JSON file."""
    dashboard = json.loads(Path(path).read_text())
    variables = dashboard_variables(dashboard)
    queries = []
    for panel in iter_panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            expr = target.get("expr")
            if not expr or target.get("hide"):
                continue
            queries.append(Query(
                source=f"{Path(path).name}: {panel.get('title', '?')} [{target.get('refId', '?')}]",
                expr=expr,
                kind="panel",
                instant=bool(target.get("instant")) and not target.get("range", False),
                interval=target.get("interval") or panel.get("interval") or "",
                legend=target.get("legendFormat", ""),
                variables=variables,
            ))
    return queries


def all_dashboard_queries(directory: Path = DASHBOARD_DIR) -> list[Query]:
    return [q for path in sorted(Path(directory).glob("*.json")) for q in dashboard_queries(path)]


def rule_queries(path: Path = RECORDING_RULES, kinds: Sequence[str] = ("record",)) -> list[Query]:
    """The expressions of a Prometheus rule file: recording rules by default, alerts with kinds=("alert",)."""
    doc = yaml.safe_load(Path(path).read_text()) or {}
    queries = []
    for group in doc.get("groups", []):
        for rule in group.get("rules", []):
            kind = "record" if "record" in rule else "alert"
            if kind in kinds:
                queries.append(Query(source=f"{Path(path).name}: {rule[kind]}", expr=rule["expr"].strip(), kind=kind))
    return queries


def substitute(
    expr: str,
    variables: Mapping[str, str] | None = None,
    *,
    rate_interval: str = "1m",
    interval: str = "15s",
    range_: str = "1h",
) -> str:
    """Replace Grafana variables: dashboard ones by their value (default ".*"), built-ins by durations."""
    values = dict(variables or {})
    range_s = seconds(range_)
    interval_s = seconds(interval)
    builtins = {
        "__rate_interval": rate_interval,
        "__interval": interval,
        "__interval_ms": str(round(interval_s * 1000)),
        "__range": range_,
        "__range_s": str(round(range_s)),
        "__range_ms": str(round(range_s * 1000)),
    }

    def repl(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        if name in builtins:
            return builtins[name]
        return values.get(name, ".*")

    return _VARIABLE.sub(repl, expr)


def query_substituted(query: Query, *, rate_interval: str = "1m", interval: str = "15s", range_: str = "1h") -> str:
    """The query's expression ready to send; a panel's own minimum interval raises $__interval."""
    if query.interval and seconds(query.interval) > seconds(interval):
        interval = query.interval
    return substitute(query.expr, query.variables, rate_interval=rate_interval, interval=interval, range_=range_)


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, keywords, labels and numbers left out)."""
    text = substitute(expr)
    text = _STRING.sub('""', text)
    text = _MATCHERS.sub("{}", text)
    text = _RANGE.sub("", text)
    text = _GROUPING.sub("", text)
    text = _OFFSET.sub("", text)
    names = set()
    for token in _TOKEN.finditer(text):
        name = token.group("id")
        if name and not token.group("call") and name.lower() not in _KEYWORDS:
            names.add(name)
    return names


# -------------------------------------------------------------------------------------- evaluation

def _api(base_url: str, endpoint: str, params: Mapping[str, str], timeout: float) -> Any:
    """POST (form) when there are parameters, else GET; returns the "data" of a success answer."""
    url = base_url.rstrip("/") + endpoint
    if params:
        body = urllib.parse.urlencode(params).encode()
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
    else:
        request = urllib.request.Request(url)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            payload = json.loads(resp.read())
    except urllib.error.HTTPError as exc:  # Prometheus answers 400/422 with a JSON error body
        try:
            payload = json.loads(exc.read())
        except ValueError:
            raise PromQLError(f"{url}: HTTP {exc.code}") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise PromQLError(f"{url}: {exc}") from exc
    if payload.get("status") != "success":
        raise PromQLError(f"{payload.get('errorType', 'error')}: {payload.get('error', payload)}")
    return payload["data"]


def instant_query(base_url: str, expr: str, at: float | None = None, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Evaluate expr at one time; returns Prometheus' result list ({"metric", "value"} per series)."""
    params = {"query": expr}
    if at is not None:
        params["time"] = f"{at:.3f}"
    data = _api(base_url, "/api/v1/query", params, timeout)
    if data["resultType"] == "scalar":
        return [{"metric": {}, "value": data["result"]}]
    return list(data["result"])


def range_query(
    base_url: str, expr: str, start: float, end: float, step: float, timeout: float = 30.0
) -> list[dict[str, Any]]:
    """Evaluate expr from start to end every step seconds; returns {"metric", "values"} per series."""
    params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
    data = _api(base_url, "/api/v1/query_range", params, timeout)
    return list(data["result"])


def evaluate(
    base_url: str,
    queries: Iterable[Query],
    *,
    rate_interval: str = "1m",
    interval: str = "15s",
    range_: str = "1h",
    timeout: float = 10.0,
) -> list[Result]:
    """Instant-query every expression (variables substituted); errors are kept in Result.error."""
    results = []
    for query in queries:
        expr = query_substituted(query, rate_interval=rate_interval, interval=interval, range_=range_)
        try:
            results.append(Result(query, expr, instant_query(base_url, expr, timeout=timeout)))
        except PromQLError as exc:
            results.append(Result(query, expr, error=str(exc)))
    return results


def without_data(results: Iterable[Result], *, nan_is_data: bool = True) -> list[Result]:
    """The results with an error or no series (or, with nan_is_data=False, only NaN values)."""
    return [r for r in results if not r.has_data or (not nan_is_data and r.all_nan)]


def wait_for_data(
    base_url: str,
    queries: Sequence[Query],
    *,
    timeout: float = 30.0,
    poll: float = 1.0,
    nan_is_data: bool = True,
    **subst: str,
) -> list[Result]:
    """Evaluate until every query has data or timeout passes; returns the last results."""
    deadline = time.monotonic() + timeout
    while True:
        results = evaluate(base_url, queries, **subst)
        if not without_data(results, nan_is_data=nan_is_data) or time.monotonic() >= deadline:
            return results
        time.sleep(poll)


def report(results: Iterable[Result]) -> str:
    """One line per result: OK/NO DATA/ERROR, the number of series and the source."""
    lines = []
    for r in results:
        status = "ERROR" if r.error else ("OK" if r.series else "NO DATA")
        if r.has_data and r.all_nan:
            status = "NaN"
        lines.append(f"{status:8} {len(r.series):3}  {r.query.source}" + (f"\n         {r.error}" if r.error else ""))
    return "\n".join(lines)


def metric_metadata(base_url: str, timeout: float = 10.0) -> set[str]:
    """Metric family names Prometheus has seen in scrapes (with or without samples) plus stored series names."""
    names = set(_api(base_url, "/api/v1/label/__name__/values", {}, timeout))
    try:
        names.update(_api(base_url, "/api/v1/metadata", {}, timeout).keys())
    except PromQLError:
        pass
    return names


# ------------------------------------------------------------------------------ a Prometheus for tests

def _sample_value(series: Mapping[str, Any]) -> float:
    value = series.get("value") or (series.get("values") or [[0, "NaN"]])[-1]
    return float(value[1])


def prometheus_config(
    jobs: Mapping[str, Sequence[str] | Mapping[str, Any]],
    *,
    scrape_interval: str = "1s",
    rule_files: Sequence[Path] = (RECORDING_RULES, ALERT_RULES),
) -> dict[str, Any]:
    """A prometheus.yml for tests: job name -> targets ["127.0.0.1:8000"] or a full scrape_config dict."""
    scrape_configs = []
    for name, spec in jobs.items():
        conf = dict(spec) if isinstance(spec, Mapping) else {"static_configs": [{"targets": list(spec)}]}
        scrape_configs.append({"job_name": name, "scrape_interval": scrape_interval, **conf})
    return {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval,
                   "scrape_timeout": scrape_interval},
        "rule_files": [str(Path(p).resolve()) for p in rule_files],
        "scrape_configs": scrape_configs,
    }


def start_prometheus(config: Mapping[str, Any], port: int, workdir: Path, ready_timeout: float = 20.0) -> subprocess.Popen[bytes]:
    """Start the `prometheus` binary with config on 127.0.0.1:port (data and log in workdir); waits until ready.

    The caller stops it (terminate(), wait()). Its log is workdir / "prometheus.log".
    """
    exe = shutil.which("prometheus")
    if exe is None:
        raise RuntimeError("prometheus is not installed (apt-get install prometheus)")
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    with open(workdir / "prometheus.log", "wb") as log:
        proc = subprocess.Popen(
            [exe, f"--config.file={config_path}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1d", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        _wait_ready(proc, port, config_path, workdir / "prometheus.log", ready_timeout)
    except BaseException:
        proc.terminate()
        proc.wait(5)
        raise
    return proc


def _wait_ready(proc: subprocess.Popen[bytes], port: int, config_path: Path, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    base = f"http://127.0.0.1:{port}"
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"prometheus exited with {proc.returncode}: {log.read_text()}")
        try:
            with urllib.request.urlopen(base + "/-/ready", timeout=1) as resp:
                ready = resp.status == 200
        except (urllib.error.URLError, OSError):
            ready = False
        if ready:
            config_file = _api(base, "/api/v1/status/flags", {}, 5).get("config.file")
            if config_file != str(config_path):
                raise RuntimeError(f"port {port} is served by another Prometheus ({config_file})")
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"prometheus not ready on port {port} after {timeout}s")
        time.sleep(0.1)


# ------------------------------------------------------------------------------------------------ CLI

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090", help="Prometheus base URL")
    parser.add_argument("--dashboards", type=Path, default=DASHBOARD_DIR)
    parser.add_argument("--rules", type=Path, default=RECORDING_RULES)
    parser.add_argument("--rate-interval", default="1m")
    parser.add_argument("--range", dest="range_", default="1h", help="value of $__range")
    parser.add_argument("--list", action="store_true", help="print the expressions instead of evaluating them")
    args = parser.parse_args(argv)
    queries = all_dashboard_queries(args.dashboards) + rule_queries(args.rules)
    if args.list:
        for q in queries:
            print(f"# {q.source}\n{query_substituted(q, rate_interval=args.rate_interval, range_=args.range_)}\n")
        return 0
    results = evaluate(args.prometheus, queries, rate_interval=args.rate_interval, range_=args.range_)
    print(report(results))
    missing = without_data(results)
    print(f"\n{len(results) - len(missing)}/{len(results)} expressions returned data")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
