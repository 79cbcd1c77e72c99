"""Render each Grafana dashboard of grafana/dashboards/ to one PNG from a live Prometheus.

    python scripts/render_dashboards.py --prometheus http://127.0.0.1:9090 --range 15m --out docs/img/

Every panel's queries are run with query_range (time series) or as instant queries (stat, bar gauge),
with template variables set to match all, and drawn with matplotlib where Grafana's gridPos puts
the panel: docs/img/cost-dashboard.png, docs/img/operations-dashboard.png. Grafana itself is not needed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import math
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402
from PIL import Image  # noqa: E402  (a dependency of matplotlib)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import promql  # noqa: E402

GRID_COLUMNS = 24
INCH_PER_COLUMN = 0.95
INCH_PER_ROW = 0.44          # Grafana: 30 px rows + margins for ~80 px columns
HEADER_INCHES = 0.75
MAX_LEGEND = 8
PALETTE = ("#7eb26d", "#eab839", "#6ed0e0", "#ef843c", "#e24d42", "#1f78c1", "#ba43a9", "#705da0",
           "#508642", "#cca300", "#447ebc", "#c15c17")
STAT_COLORS = {"blue": "#1f60c4", "orange": "#e0752d", "purple": "#8f3bb8", "green": "#37872d",
               "red": "#c4162a", "text": "#333333"}
PANEL_BG = "#f7f8fa"
PANEL_EDGE = "#d8d9da"


@dataclass(frozen=True)
class Window:
    """The time range of a render and the durations Grafana would substitute."""

    start: float
    end: float
    step: float
    scrape: float

    @property
    def range_s(self) -> float:
        return self.end - self.start

    def rate_interval(self, step: float | None = None) -> str:
        """Grafana's $__rate_interval: max($__interval + scrape interval, 4 x scrape interval)."""
        return promql.duration(max((step or self.step) + self.scrape, 4 * self.scrape))


@dataclass(frozen=True)
class Series:
    name: str
    times: list[float]
    values: list[float]
    filler: bool = False     # a label-less all-zero series, e.g. from `or vector(0)`


# ------------------------------------------------------------------------------------------ formatting

def _si(value: float, digits: int) -> str:
    for size, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.{digits}f}{suffix}"
    return f"{value:.{digits}f}"


def _auto_digits(value: float) -> int:
    if value == 0 or abs(value) >= 100:
        return 0
    if abs(value) >= 10:
        return 1
    if abs(value) >= 1:
        return 2
    return min(9, 2 - int(math.floor(math.log10(abs(value)))))


def formatter(unit: str, decimals: int | None = None) -> Callable[[float], str]:
    """A value -> text function for a Grafana unit (the ones the dashboards use)."""

    def digits(v: float) -> int:
        if decimals is not None and (v == 0 or abs(v) >= 10 ** -decimals):
            return decimals
        return _auto_digits(v)  # fixed decimals would show a non-zero value as 0

    def fmt(v: float) -> str:
        if v is None or math.isnan(v):
            return "–"
        if math.isinf(v):
            return "∞" if v > 0 else "-∞"
        if unit == "currencyUSD":
            if v == 0 and digits(v) > 3:
                return "$0"
            if 0 < abs(v) < 0.001 and digits(v) > 3:
                return f"${v:.2g}"
            return ("$" + _si(v, digits(v))) if abs(v) >= 1000 else f"${v:,.{digits(v)}f}"
        if unit == "percentunit":
            return f"{v * 100:.{decimals if decimals is not None else 1}f}%"
        if unit == "percent":
            return f"{v:.{decimals if decimals is not None else 0}f}%"
        if unit == "s":
            if v == 0:
                return "0 s"
            if abs(v) < 1:
                return f"{v * 1000:.{min(digits(v * 1000), 1)}f} ms"
            return f"{v:.{min(digits(v), 2)}f} s"
        if unit == "mbytes":
            return f"{v / 1024:.1f} GiB" if abs(v) >= 1024 else f"{v:.0f} MiB"
        if unit == "reqps":
            return f"{_si(v, min(digits(v), 2))} req/s"
        return _si(v, decimals if decimals is not None else min(digits(v), 2))

    return fmt


def axis_decimals(ticks: Sequence[float], unit: str) -> int | None:
    """Decimals that tell the axis' ticks apart (same for every tick); None = per value."""
    if unit in ("s", "mbytes") or len(ticks) < 2:
        return None
    step = min(abs(b - a) for a, b in zip(ticks, ticks[1:], strict=False) if b != a) if len(set(ticks)) > 1 else 1.0
    if unit == "percentunit":
        step *= 100
    if max(abs(t) for t in ticks) >= 1000 and unit != "percentunit":
        return 1 if step < 1000 else 0   # SI suffix (k, M): one decimal is enough
    return max(0, math.ceil(-math.log10(step) - 1e-9)) if step < 1 else 0


def legend_name(fmt: str, metric: Mapping[str, str], expr: str) -> str:
    """Grafana's legendFormat: {{label}} replaced; __auto or empty = the series' labels."""
    if fmt and fmt != "__auto":
        name = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m.group(1), ""), fmt)
        return re.sub(r"\s+", " ", name).strip() or "value"
    labels = {k: v for k, v in metric.items() if k != "__name__"}
    if not labels:
        return metric.get("__name__", "value") if metric else "value"
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items()))


# ------------------------------------------------------------------------------------------- queries

def time_from_start(time_from: str, end: float) -> float | None:
    """Start of a panel's relative time override ("now/M", "now/d", "24h"), or None."""
    if not time_from:
        return None
    now = dt.datetime.fromtimestamp(end, tz=dt.UTC)
    if time_from in ("now/M", "now/d"):
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        if time_from == "now/M":
            start = start.replace(day=1)
        return start.timestamp()
    return end - promql.seconds(time_from.removeprefix("now-"))


def panel_step(panel: Mapping[str, Any], target: Mapping[str, Any], window: Window) -> float:
    """A panel's min interval ("1d") when the range holds a few of them, else the window's step."""
    interval = target.get("interval") or panel.get("interval")
    if interval and promql.seconds(interval) * 3 <= window.range_s:
        return promql.seconds(interval)
    return window.step


def query_panel(base_url: str, panel: Mapping[str, Any], variables: Mapping[str, str], window: Window) -> list[Series]:
    """Every target of a panel; a range query unless the target is instant (then one point at the end)."""
    start = time_from_start(panel.get("timeFrom", ""), window.end) or window.start
    range_ = promql.duration(max(window.end - start, 1))
    out: list[Series] = []
    for target in panel.get("targets", []):
        if not target.get("expr") or target.get("hide"):
            continue
        step = panel_step(panel, target, window)
        expr = promql.substitute(target["expr"], variables, rate_interval=window.rate_interval(step),
                                 interval=promql.duration(step), range_=range_)
        instant = target.get("instant") and not target.get("range")
        if instant or panel.get("type") in ("stat", "bargauge"):
            result = promql.instant_query(base_url, expr, at=window.end)
            rows = [(r["metric"], [r["value"]]) for r in result]
        else:
            result = promql.range_query(base_url, expr, window.start, window.end, step)
            rows = [(r["metric"], r["values"]) for r in result]
        for metric, values in rows:
            numbers = [float(v) for _, v in values]
            out.append(Series(
                name=legend_name(target.get("legendFormat", ""), metric, expr),
                times=[float(t) for t, _ in values],
                values=numbers,
                filler=not (set(metric) - {"__name__"}) and not any(numbers),
            ))
    return [s for s in out if not s.filler] or out


# ------------------------------------------------------------------------------------------- drawing

def panel_frame(fig: Figure, pos: Mapping[str, int], height_units: int) -> tuple[float, float, float, float]:
    """A gridPos as a figure-fraction rectangle (left, bottom, width, height), below the header."""
    fig_h = fig.get_figheight()
    body = 1 - HEADER_INCHES / fig_h
    unit_h = body / height_units
    left = pos["x"] / GRID_COLUMNS
    width = pos["w"] / GRID_COLUMNS
    bottom = body - (pos["y"] + pos["h"]) * unit_h
    return left, bottom, width, pos["h"] * unit_h


def draw_box(fig: Figure, rect: tuple[float, float, float, float], title: str) -> None:
    left, bottom, width, height = rect
    pad_x, pad_y = 0.003, 0.002
    box = fig.add_axes((left + pad_x, bottom + pad_y, width - 2 * pad_x, height - 2 * pad_y))
    box.set_facecolor(PANEL_BG)
    for spine in box.spines.values():
        spine.set_color(PANEL_EDGE)
    box.set_xticks([])
    box.set_yticks([])
    box.set_zorder(-1)
    box.text(0.012, 0.985, title, transform=box.transAxes, ha="left", va="top", fontsize=9.5,
             fontweight="bold", color="#202226", clip_on=True)


def inner(fig: Figure, rect: tuple[float, float, float, float], top_in: float, bottom_in: float,
          left_in: float = 0.75, right_in: float = 0.2) -> Axes:
    """An axes inside a panel rectangle, leaving inches for the title (top) and legend (bottom)."""
    left, bottom, width, height = rect
    fw, fh = fig.get_figwidth(), fig.get_figheight()
    return fig.add_axes((left + left_in / fw, bottom + bottom_in / fh,
                         width - (left_in + right_in) / fw, height - (top_in + bottom_in) / fh))


def draw_message(fig: Figure, rect: tuple[float, float, float, float], text: str) -> None:
    ax = inner(fig, rect, 0.35, 0.1, 0.1, 0.1)
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=9, color="#8e8e8e", wrap=True)


def finite(values: Sequence[float]) -> list[float]:
    return [v if math.isfinite(v) else math.nan for v in values]


def draw_timeseries(fig: Figure, rect: tuple[float, float, float, float], panel: Mapping[str, Any],
                    series: list[Series], window: Window) -> None:
    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    custom = defaults.get("custom", {})
    shown = sorted(series, key=lambda s: -max((v for v in finite(s.values) if not math.isnan(v)), default=0))
    shown = shown[:MAX_LEGEND]
    ncol = max(1, min(len(shown), int(rect[2] * fig.get_figwidth() // 2.6)))
    legend_rows = math.ceil(len(shown) / ncol)
    ax = inner(fig, rect, 0.36, 0.32 + 0.17 * legend_rows)
    stacked = custom.get("stacking", {}).get("mode") == "normal"
    bars = custom.get("drawStyle") == "bars" and max(len(s.times) for s in shown) <= 60
    base: dict[float, float] = {}
    for i, s in enumerate(shown):
        color = PALETTE[i % len(PALETTE)]
        times = [dt.datetime.fromtimestamp(t, tz=dt.UTC) for t in s.times]
        values = finite(s.values)
        if bars:
            step = (s.times[1] - s.times[0]) if len(s.times) > 1 else 3600.0
            width = step / 86400 * 0.8 / (1 if stacked else len(shown))
            offset = 0 if stacked else (i - (len(shown) - 1) / 2) * width
            bottoms = [base.get(t, 0.0) if stacked else 0.0 for t in s.times]
            ax.bar([mdates.date2num(t) + offset for t in times], values, width=width, bottom=bottoms,
                   color=color, label=s.name, alpha=0.85)
            if stacked:
                for t, v, b in zip(s.times, values, bottoms, strict=True):
                    base[t] = b + (0 if math.isnan(v) else v)
        elif stacked:
            bottoms = [base.get(t, 0.0) for t in s.times]
            tops = [b + (0 if math.isnan(v) else v) for v, b in zip(values, bottoms, strict=True)]
            ax.fill_between(times, bottoms, tops, color=color, alpha=0.35, linewidth=0)
            ax.plot(times, tops, color=color, linewidth=1.4, label=s.name)
            base.update(zip(s.times, tops, strict=True))
        else:
            drawstyle = "steps-post" if custom.get("lineInterpolation") == "stepAfter" else "default"
            ax.plot(times, values, color=color, linewidth=1.5, label=s.name, drawstyle=drawstyle)
            if len(shown) <= 3:
                ax.fill_between(times, values, color=color, alpha=0.08, step="post" if drawstyle != "default" else None)
    ax.set_facecolor("white")
    ax.grid(True, color="#e4e4e4", linewidth=0.6)
    for spine in ("top", "right"):
        ax.spines[spine].set_visible(False)
    ax.tick_params(labelsize=7.5, colors="#555555")
    if defaults.get("min") == 0:
        ax.set_ylim(bottom=0)
    fmt = formatter(defaults.get("unit", "short"), axis_decimals(ax.get_yticks(), defaults.get("unit", "short")))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: fmt(v)))
    locator = mdates.AutoDateLocator(minticks=3, maxticks=7, tz=dt.UTC)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=dt.UTC, show_offset=False))
    ax.set_xlim(dt.datetime.fromtimestamp(window.start, tz=dt.UTC), dt.datetime.fromtimestamp(window.end, tz=dt.UTC))
    if shown:
        ax.legend(loc="upper left", bbox_to_anchor=(0, -0.1 - 0.05 * (3 - min(legend_rows, 3)) / 3),
                  ncol=ncol, fontsize=7.5, frameon=False, handlelength=1.2, columnspacing=1.0,
                  borderaxespad=0.0)
        if len(series) > len(shown):
            ax.text(1, 1.01, f"top {len(shown)} of {len(series)} series", transform=ax.transAxes,
                    ha="right", va="bottom", fontsize=7, color="#8e8e8e")


def draw_stat(fig: Figure, rect: tuple[float, float, float, float], panel: Mapping[str, Any],
              series: list[Series]) -> None:
    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    fmt = formatter(defaults.get("unit", "short"), defaults.get("decimals"))
    color = STAT_COLORS.get(defaults.get("color", {}).get("fixedColor", "blue"), "#1f60c4")
    ax = inner(fig, rect, 0.3, 0.05, 0.1, 0.1)
    ax.axis("off")
    value = series[0].values[-1] if series else math.nan
    ax.text(0.5, 0.48, fmt(value), ha="center", va="center", fontsize=21, fontweight="bold", color=color)
    if panel.get("timeFrom"):
        label = {"now/M": "this month (UTC)", "now/d": "today (UTC)"}.get(panel["timeFrom"], panel["timeFrom"])
        ax.text(0.5, 0.02, label, ha="center", va="bottom", fontsize=7, color="#8e8e8e")


def draw_bargauge(fig: Figure, rect: tuple[float, float, float, float], panel: Mapping[str, Any],
                  series: list[Series]) -> None:
    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    fmt = formatter(defaults.get("unit", "short"), defaults.get("decimals"))
    rows = sorted(((s.name, s.values[-1]) for s in series), key=lambda r: -r[1] if math.isfinite(r[1]) else math.inf)
    rows = rows[:10]
    longest = max((len(n) for n, _ in rows), default=4)
    ax = inner(fig, rect, 0.4, 0.15, min(0.08 * longest + 0.2, rect[2] * fig.get_figwidth() * 0.45), 0.9)
    values = [v if math.isfinite(v) else 0.0 for _, v in rows]
    top = max(values, default=1.0) or 1.0
    ys = list(range(len(rows)))[::-1]
    cmap = matplotlib.colormaps["RdYlGn_r"]
    ax.barh(ys, values, color=[cmap(0.15 + 0.7 * v / top) for v in values], height=0.62)
    ax.barh(ys, [top] * len(rows), color="#e9eaec", height=0.62, zorder=0)
    ax.set_yticks(ys, [n for n, _ in rows], fontsize=7.5)
    ax.set_xticks([])
    ax.set_xlim(0, top)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.tick_params(length=0)
    ax.set_facecolor(PANEL_BG)
    for y, (_, v) in zip(ys, rows, strict=True):
        ax.text(top * 1.01, y, fmt(v), va="center", ha="left", fontsize=7.5, color="#202226", clip_on=False)


def draw_row(fig: Figure, rect: tuple[float, float, float, float], title: str) -> None:
    ax = fig.add_axes(rect)
    ax.axis("off")
    ax.text(0.003, 0.35, title, ha="left", va="center", fontsize=11, fontweight="bold", color="#1f60c4")
    ax.axhline(0.02, color="#c7d0d9", linewidth=1)


# ---------------------------------------------------------------------------------------------- main

def render_dashboard(base_url: str, path: Path, out: Path, window: Window) -> Path:
    dashboard = json.loads(path.read_text())
    variables = promql.dashboard_variables(dashboard)
    panels = dashboard.get("panels", [])
    height_units = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    fig = plt.figure(figsize=(GRID_COLUMNS * INCH_PER_COLUMN, height_units * INCH_PER_ROW + HEADER_INCHES),
                     facecolor="white")
    start = dt.datetime.fromtimestamp(window.start, tz=dt.UTC).strftime("%Y-%m-%d %H:%M")
    end = dt.datetime.fromtimestamp(window.end, tz=dt.UTC).strftime("%H:%M UTC")
    fig.text(0.005, 1 - 0.22 / fig.get_figheight(), f"oss-gateway · {dashboard['title']}", fontsize=17,
             fontweight="bold", va="top", color="#202226")
    fig.text(0.995, 1 - 0.25 / fig.get_figheight(),
             f"{start} – {end}   ·   all variables = All   ·   data: {base_url}", fontsize=9, ha="right",
             va="top", color="#6e6e6e")
    for panel in panels:
        rect = panel_frame(fig, panel["gridPos"], height_units)
        if panel["type"] == "row":
            draw_row(fig, rect, panel["title"])
            continue
        draw_box(fig, rect, panel["title"])
        try:
            series = query_panel(base_url, panel, variables, window)
        except promql.PromQLError as exc:
            draw_message(fig, rect, f"query error: {exc}"[:200])
            continue
        if not series:
            draw_message(fig, rect, "No data")
        elif panel["type"] == "stat":
            draw_stat(fig, rect, panel, series)
        elif panel["type"] == "bargauge":
            draw_bargauge(fig, rect, panel, series)
        else:
            draw_timeseries(fig, rect, panel, series, window)
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{path.stem}-dashboard.png"
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    buffer.seek(0)
    with Image.open(buffer) as image:  # 256 colours: a third of the size, no visible change
        image.convert("RGB").quantize(colors=256).save(target, optimize=True)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090", help="Prometheus base URL")
    parser.add_argument("--range", dest="range_", default="15m", help="time range ending now (Prometheus duration)")
    parser.add_argument("--scrape-interval", default="15s", help="Prometheus' scrape interval ($__rate_interval)")
    parser.add_argument("--out", type=Path, default=promql.ROOT / "docs" / "img")
    parser.add_argument("--dashboards", type=Path, default=promql.DASHBOARD_DIR)
    parser.add_argument("--only", nargs="*", default=[], help="dashboard file stems, e.g. cost")
    args = parser.parse_args(argv)
    end = time.time()
    range_s = promql.seconds(args.range_)
    scrape = promql.seconds(args.scrape_interval)
    window = Window(start=end - range_s, end=end, step=max(scrape, math.ceil(range_s / 240)), scrape=scrape)
    for path in sorted(args.dashboards.glob("*.json")):
        if args.only and path.stem not in args.only:
            continue
        print(render_dashboard(args.prometheus, path, args.out, window))
    return 0


if __name__ == "__main__":
    sys.exit(main())
