"""Comparison records -> per model pair statistics, an aligned text table, and an HTML or PNG report.

Pure functions over `Comparison` records (gateway/rollout/records.py), used by `gateway compare`; the
same `Sample` / `Series` / `Section` machinery renders `gateway eval` (gateway/rollout/golden.py).

Definitions (docs/rollout-reports.md says the same for the reader):
- a side's `n` counts the calls that were sent (status != 0); `errors` those that did not end 2xx;
- latency and TTFT percentiles are over successful calls (TTFT over the streamed ones), linear
  interpolation between closest ranks;
- tokens/s = sum of generated tokens / sum of generation seconds over successful calls: a streamed call
  counts its tokens after the first over latency - TTFT (the first token's time is the TTFT), a call not
  streamed all its completion tokens over its latency;
- USD per 1M tokens at list price = sum of cost / sum of (prompt + completion) tokens x 1e6 over all
  sent calls; at GPU-hour cost = sum of (GPU USD per hour x latency hours) / tokens x 1e6 over the calls
  of self-hosted deployments: the busy-time cost, an upper bound when the engine batches (concurrent
  calls share the GPU hour that each of them is charged here in full).
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.rollout.records import Comparison, Side

MATPLOTLIB_MISSING = "the report needs matplotlib: pip install oss-gateway[report]"
BUSY_TIME_NOTE = ("USD / 1M tokens (GPU busy) is the busy-time cost: GPU USD per hour x the hours each call took, over "
                  "its tokens; an upper bound when the engine batches concurrent calls.")


class ReportError(Exception):
    """The report cannot be written (unknown file type, matplotlib missing); the message says why."""


# -- statistics ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    """One call as one side (or one alias of an eval) served it."""

    ok: bool
    latency_s: float
    ttft_s: float | None  # streamed calls only
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None  # at list price; None when the price is unknown
    gpu_usd_per_hour: float | None
    sent: bool = True  # False: this side never sent the call (dropped shadow): not counted at all
    model: str = ""

    @staticmethod
    def from_side(side: Side) -> Sample:
        return Sample(ok=side.ok, latency_s=side.latency_s, ttft_s=side.ttft_s, prompt_tokens=side.prompt_tokens,
                      completion_tokens=side.completion_tokens, cost_usd=side.cost_usd,
                      gpu_usd_per_hour=side.gpu_usd_per_hour, sent=side.status != 0, model=side.model)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-quantile (0..1) by linear interpolation between closest ranks; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = q * (len(ordered) - 1)
    lo = math.floor(rank)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


@dataclass(frozen=True, slots=True)
class SideStats:
    n: int  # calls sent
    errors: int
    streamed: int  # successful calls with a TTFT
    latency_p50: float | None
    latency_p95: float | None
    ttft_p50: float | None
    ttft_p95: float | None
    tokens_per_s: float | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None  # total at list price; None when no call had a price
    usd_per_1m: float | None  # list price
    gpu_usd: float | None  # busy-time GPU cost
    usd_per_1m_gpu: float | None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.n if self.n else None

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__} | {"error_rate": self.error_rate}


def side_stats(samples: Iterable[Sample]) -> SideStats:
    sent = [s for s in samples if s.sent]
    ok = [s for s in sent if s.ok]
    latencies = [s.latency_s for s in ok]
    ttfts = [s.ttft_s for s in ok if s.ttft_s is not None]
    # streamed: the tokens after the first over the time after the first (the first one is in the TTFT)
    gen_tokens = sum(s.completion_tokens if s.ttft_s is None else max(0, s.completion_tokens - 1) for s in ok)
    gen_seconds = sum(max(0.0, s.latency_s - (s.ttft_s or 0.0)) for s in ok)
    priced = [s for s in sent if s.cost_usd is not None]
    priced_tokens = sum(s.prompt_tokens + s.completion_tokens for s in priced)
    cost = sum(s.cost_usd or 0.0 for s in priced) if priced else None
    gpu = [s for s in sent if s.gpu_usd_per_hour is not None]
    gpu_tokens = sum(s.prompt_tokens + s.completion_tokens for s in gpu)
    gpu_usd = sum((s.gpu_usd_per_hour or 0.0) * s.latency_s / 3600 for s in gpu) if gpu else None
    return SideStats(
        n=len(sent),
        errors=len(sent) - len(ok),
        streamed=len(ttfts),
        latency_p50=percentile(latencies, 0.5),
        latency_p95=percentile(latencies, 0.95),
        ttft_p50=percentile(ttfts, 0.5),
        ttft_p95=percentile(ttfts, 0.95),
        tokens_per_s=gen_tokens / gen_seconds if gen_seconds > 0 else None,
        prompt_tokens=sum(s.prompt_tokens for s in sent),
        completion_tokens=sum(s.completion_tokens for s in sent),
        cost_usd=cost,
        usd_per_1m=cost / priced_tokens * 1e6 if cost is not None and priced_tokens else None,
        gpu_usd=gpu_usd,
        usd_per_1m_gpu=gpu_usd / gpu_tokens * 1e6 if gpu_usd is not None and gpu_tokens else None,
    )


@dataclass(frozen=True, slots=True)
class Series:
    """One column of a report: a side of a model pair, or an alias of an eval."""

    label: str
    alias: str
    samples: tuple[Sample, ...]
    stats: SideStats

    @staticmethod
    def of(label: str, alias: str, samples: Iterable[Sample]) -> Series:
        kept = tuple(samples)
        return Series(label, alias, kept, side_stats(kept))

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(sorted({s.model for s in self.samples if s.sent and s.model}))


@dataclass(frozen=True, slots=True)
class Agreement:
    n: int
    mean: float | None
    p10: float | None

    @staticmethod
    def of(values: Sequence[float]) -> Agreement:
        return Agreement(len(values), sum(values) / len(values) if values else None, percentile(values, 0.1))

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "mean": self.mean, "p10": self.p10}


@dataclass(frozen=True, slots=True)
class PairReport:
    """Every comparison of one primary alias with one shadow alias."""

    alias: str
    shadow_alias: str
    n: int
    first_ts: float
    last_ts: float
    primary: Series
    shadow: Series
    agreement: Agreement
    by_method: Mapping[str, Agreement]
    values: tuple[float, ...]  # every agreement score, for the histogram

    def to_dict(self) -> dict[str, Any]:
        return {
            "alias": self.alias, "shadow_alias": self.shadow_alias, "n": self.n,
            "first_ts": self.first_ts, "last_ts": self.last_ts,
            "primary": {"models": list(self.primary.models), **self.primary.stats.to_dict()},
            "shadow": {"models": list(self.shadow.models), **self.shadow.stats.to_dict()},
            "agreement": self.agreement.to_dict(),
            "agreement_by_method": {m: a.to_dict() for m, a in self.by_method.items()},
        }


def pair_reports(records: Iterable[Comparison]) -> list[PairReport]:
    """Records grouped by (primary alias, shadow alias), in alias order."""
    groups: dict[tuple[str, str], list[Comparison]] = {}
    for rec in records:
        groups.setdefault((rec.primary.alias, rec.shadow.alias), []).append(rec)
    out: list[PairReport] = []
    for (alias, shadow_alias), recs in sorted(groups.items()):
        scored = [r for r in recs if r.agreement is not None]
        methods: dict[str, list[float]] = {}
        for r in scored:
            methods.setdefault(r.method or "unknown", []).append(float(r.agreement or 0.0))
        values = [float(r.agreement or 0.0) for r in scored]
        out.append(PairReport(
            alias=alias, shadow_alias=shadow_alias, n=len(recs),
            first_ts=min(r.ts for r in recs), last_ts=max(r.ts for r in recs),
            primary=Series.of(f"{alias} (primary)", alias, (Sample.from_side(r.primary) for r in recs)),
            shadow=Series.of(f"{shadow_alias} (shadow)", shadow_alias, (Sample.from_side(r.shadow) for r in recs)),
            agreement=Agreement.of(values),
            by_method={m: Agreement.of(v) for m, v in sorted(methods.items())},
            values=tuple(values),
        ))
    return out


# -- what a report shows: sections of rows, the same for compare and eval --------------------------------


@dataclass(frozen=True, slots=True)
class Section:
    """One table (rows x columns) and its plots."""

    title: str
    series: tuple[Series, ...]
    rows: tuple[tuple[str, tuple[str, ...]], ...]  # (label, one cell per series)
    notes: tuple[str, ...] = ()
    histogram: tuple[str, tuple[float, ...]] | None = None  # (title, values in 0..1): agreement
    bars: tuple[str, tuple[float | None, ...]] | None = None  # (title, one value in 0..1 per series): pass rate
    extra: Mapping[str, Any] = field(default_factory=dict)  # the JSON form of what the section is about

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(s.label for s in self.series)


def fmt_seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def fmt_pair(a: float | None, b: float | None) -> str:
    return "-" if a is None and b is None else f"{fmt_seconds(a)} / {fmt_seconds(b)}"


def fmt_usd(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if abs(value) < 100 else f"{value:,.2f}"


def fmt_rate(errors: int, n: int) -> str:
    return f"{errors} ({errors / n:.1%})" if n else "-"


def stats_rows(series: Sequence[Series]) -> list[tuple[str, tuple[str, ...]]]:
    """The rows every report has, one cell per series."""
    st = [s.stats for s in series]

    def row(label: str, cells: Iterable[str]) -> tuple[str, tuple[str, ...]]:
        return label, tuple(cells)

    return [
        row("model", (", ".join(s.models) or "-" for s in series)),
        row("requests", (str(x.n) for x in st)),
        row("errors", (fmt_rate(x.errors, x.n) for x in st)),
        row("latency p50 / p95 (s)", (fmt_pair(x.latency_p50, x.latency_p95) for x in st)),
        row("TTFT p50 / p95 (s)", (fmt_pair(x.ttft_p50, x.ttft_p95) for x in st)),
        row("tokens/s", ("-" if x.tokens_per_s is None else f"{x.tokens_per_s:.1f}" for x in st)),
        row("tokens in / out", (f"{x.prompt_tokens} / {x.completion_tokens}" for x in st)),
        row("USD / 1M tokens (list)", (fmt_usd(x.usd_per_1m) for x in st)),
        row("USD / 1M tokens (GPU busy)", (fmt_usd(x.usd_per_1m_gpu) for x in st)),
    ]


def _agreement_cell(a: Agreement) -> str:
    if not a.n:
        return "-"
    return f"{a.mean:.3f} / {a.p10:.3f} (n={a.n})"


def pair_section(pair: PairReport) -> Section:
    series = (pair.primary, pair.shadow)
    rows = stats_rows(series)
    rows.append(("agreement mean / p10", (_agreement_cell(pair.agreement), "")))
    for method, a in pair.by_method.items():
        rows.append((f"  by {method}", (_agreement_cell(a), "")))
    notes = [BUSY_TIME_NOTE] if any(s.stats.usd_per_1m_gpu is not None for s in series) else []
    return Section(
        title=f"{pair.alias} -> {pair.shadow_alias}: {pair.n} comparison{'s' if pair.n != 1 else ''}",
        series=series, rows=tuple(rows), notes=tuple(notes),
        histogram=("agreement", pair.values), extra=pair.to_dict(),
    )


def format_table(sections: Iterable[Section]) -> str:
    """An aligned text table per section."""
    blocks: list[str] = []
    for sec in sections:
        header = ("", *sec.columns)
        lines = [header, *((label, *cells) for label, cells in sec.rows)]
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        text = [sec.title, "-" * len(sec.title)]
        for line in lines:
            text.append("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                                  for i, (cell, w) in enumerate(zip(line, widths, strict=True))).rstrip())
        text.extend(f"note: {n}" for n in sec.notes)
        blocks.append("\n".join(text))
    return "\n\n".join(blocks) + "\n"


# -- files: .html (table + plots as base64 PNG) or .png (the plots) --------------------------------------


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ReportError(MATPLOTLIB_MISSING) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_section(fig: Any, sec: Section) -> None:
    """Six plots of one section on `fig` (a Figure or a SubFigure)."""
    axes = fig.subplots(2, 3).flatten()
    labels = [s.label for s in sec.series]
    colors = [f"C{i}" for i in range(len(labels))]
    st = [s.stats for s in sec.series]

    def distribution(ax: Any, title: str, data: list[list[float]]) -> None:
        ax.set_title(title, fontsize=9)
        if not any(data):
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            return
        ax.boxplot([d or [math.nan] for d in data], showfliers=True)
        ax.set_xticks(range(1, len(labels) + 1), labels)
        ax.set_ylabel("seconds")

    def bars(ax: Any, title: str, values: Sequence[float | None], unit: str, top: float | None = None) -> None:
        ax.set_title(title, fontsize=9)
        heights = [0.0 if v is None else v for v in values]
        drawn = ax.bar(range(len(labels)), heights, color=colors)
        ax.bar_label(drawn, labels=["n/a" if v is None else f"{v:.3g}" for v in values], fontsize=7)
        ax.set_xticks(range(len(labels)), labels)
        ax.set_ylim(0, top or 1.15 * max(heights) or 1.0)
        ax.set_ylabel(unit)

    distribution(axes[0], "latency (successful calls)",
                 [[x.latency_s for x in s.samples if x.sent and x.ok] for s in sec.series])
    distribution(axes[1], "time to first token (streamed)",
                 [[x.ttft_s for x in s.samples if x.sent and x.ok and x.ttft_s is not None] for s in sec.series])
    bars(axes[2], "tokens/s (generation)", [x.tokens_per_s for x in st], "tokens/s")
    bars(axes[3], "error rate", [None if x.error_rate is None else 100 * x.error_rate for x in st], "%")
    ax = axes[4]
    ax.set_title("USD per 1M tokens", fontsize=9)
    width, top = 0.4, 0.0
    for j, (name, values) in enumerate((("list price", [x.usd_per_1m for x in st]),
                                        ("GPU busy time", [x.usd_per_1m_gpu for x in st]))):
        heights = [0.0 if v is None else v for v in values]
        top = max(top, *heights)
        drawn = ax.bar([i + (j - 0.5) * width for i in range(len(labels))], heights, width, label=name,
                       color="C0" if j == 0 else "C3")
        ax.bar_label(drawn, labels=["n/a" if v is None else f"{v:.3g}" for v in values], fontsize=7)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylim(0, 1.15 * top or 1.0)
    ax.set_ylabel("USD")
    ax.legend(fontsize=7)
    ax = axes[5]
    if sec.bars is not None:
        title, values = sec.bars
        bars(ax, title, [None if v is None else 100 * v for v in values], "%", top=105.0)
    elif sec.histogram is not None:
        title, scores = sec.histogram
        ax.set_title(f"{title} ({len(scores)} scored)", fontsize=9)
        ax.hist(scores, bins=[i / 10 for i in range(11)], color="C2")
        ax.set_xlim(0, 1)
        ax.set_xlabel("agreement")
    else:
        ax.axis("off")
    for a in axes:
        a.tick_params(labelsize=7)
    fig.suptitle(sec.title, fontsize=10)


def figure_png(sections: Sequence[Section]) -> bytes:
    """One PNG with the plots of every section (one block of six plots per section)."""
    if not sections:
        raise ReportError("nothing to plot")
    plt = _pyplot()
    fig = plt.figure(figsize=(14, 7.5 * len(sections)), layout="constrained")
    subfigs = fig.subfigures(len(sections), 1, squeeze=False)[:, 0]
    for sub, sec in zip(subfigs, sections, strict=True):
        _plot_section(sub, sec)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 10px;text-align:right}
th:first-child,td:first-child{text-align:left}thead th{background:#f0f0f0}
.note{color:#555;font-size:90%}img{max-width:100%}"""


def html_report(sections: Sequence[Section], title: str, subtitle: str = "") -> str:
    """A self-contained HTML page: per section its table, notes and plots (PNG as a data: URL)."""
    e = html.escape
    parts = [f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{e(title)}</title>",
             f"<style>{_CSS}</style></head><body>", f"<h1>{e(title)}</h1>"]
    if subtitle:
        parts.append(f"<p>{e(subtitle)}</p>")
    for sec in sections:
        parts.append(f"<h2>{e(sec.title)}</h2>")
        parts.append("<table><thead><tr><th></th>" + "".join(f"<th>{e(c)}</th>" for c in sec.columns)
                     + "</tr></thead><tbody>")
        for label, cells in sec.rows:
            parts.append(f"<tr><td>{e(label)}</td>" + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>")
        parts.append("</tbody></table>")
        parts.extend(f"<p class='note'>{e(n)}</p>" for n in sec.notes)
        png = base64.b64encode(figure_png([sec])).decode("ascii")
        parts.append(f"<img alt='{e(sec.title)}' src='data:image/png;base64,{png}'>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def require_matplotlib() -> None:
    """Raise ReportError (naming the extra to install) when matplotlib is not importable."""
    _pyplot()


def write_report(path: str | Path, sections: Sequence[Section], title: str, subtitle: str = "",
                 kind: str | None = None) -> Path:
    """Write `path` as `kind` "html" (tables and plots) or "png" (the plots); without `kind`, the file's
    suffix says which. Raises ReportError naming the problem."""
    path = Path(path)
    if kind is None:
        kind = {".html": "html", ".htm": "html", ".png": "png"}.get(path.suffix.lower(), "")
    if kind not in ("html", "png"):
        raise ReportError(f"{path}: the report is written as .html or .png")
    if not sections:
        raise ReportError("nothing to report")
    data = html_report(sections, title, subtitle).encode() if kind == "html" else figure_png(sections)
    try:
        path.write_bytes(data)
    except OSError as exc:
        raise ReportError(f"{path}: cannot write ({exc.strerror})") from None
    return path
