"""gateway/rollout/report.py on synthetic comparison records with exactly known numbers; the text table;
the HTML and PNG files; `--since` parsing of `gateway compare`."""

from __future__ import annotations

import base64
import json
import re
import sys
from pathlib import Path

import pytest

from gateway.rollout.compare import parse_since
from gateway.rollout.records import Comparison, Side
from gateway.rollout.report import (
    ReportError,
    Sample,
    format_table,
    pair_reports,
    pair_section,
    percentile,
    side_stats,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def side(alias: str, latency: float, ttft: float | None, prompt: int, completion: int, cost: float, *,
         status: int = 200, error: str | None = None, gpu: float | None = None, model: str = "") -> Side:
    return Side(alias=alias, deployment=f"{alias}-dep", model=model or f"{alias}-model", status=status,
                latency_s=latency, ttft_s=ttft, prompt_tokens=prompt, completion_tokens=completion, cost_usd=cost,
                gpu_usd_per_hour=gpu, error=error)


def records() -> list[Comparison]:
    """smart -> smart-next (4 records) and fast -> fast-next (1 record)."""
    p = "smart"
    s = "smart-next"
    return [
        Comparison(ts=100.0, endpoint="chat", primary=side(p, 1.0, 0.5, 100, 41, 0.0001, gpu=3.6),
                   shadow=side(s, 0.5, 0.1, 100, 41, 0.00005), agreement=1.0, method="exact"),
        Comparison(ts=101.0, endpoint="chat", primary=side(p, 2.0, 1.0, 100, 51, 0.0002, gpu=3.6),
                   shadow=side(s, 0.05, None, 0, 0, 0.0, status=503, error="http_503")),
        Comparison(ts=102.0, endpoint="chat", primary=side(p, 3.0, None, 100, 60, 0.000172, gpu=3.6),
                   shadow=side(s, 0.0, None, 0, 0, 0.0, status=0, error="dropped")),
        Comparison(ts=103.0, endpoint="chat", primary=side(p, 4.0, None, 100, 20, 0.0001, gpu=3.6),
                   shadow=side(s, 1.5, None, 100, 60, 0.00015), agreement=0.5, method="lexical"),
        Comparison(ts=99.0, endpoint="chat", primary=side("fast", 0.2, None, 10, 10, 0.0),
                   shadow=side("fast-next", 0.4, None, 10, 10, 0.0), agreement=0.8, method="judge"),
    ]


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], 0.5) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.95) == pytest.approx(3.85)
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.0) == 1.0 and percentile([1.0, 2.0, 3.0, 4.0], 1.0) == 4.0
    assert percentile([7.0], 0.95) == 7.0
    assert percentile([], 0.5) is None


def test_pairs_are_grouped_by_primary_and_shadow_alias() -> None:
    # records of the endpoint's JSON, as `gateway compare` reads them
    recs = [Comparison.from_dict(json.loads(json.dumps(r.to_dict()))) for r in records()]
    pairs = pair_reports(recs)
    assert [(p.alias, p.shadow_alias, p.n) for p in pairs] == [("fast", "fast-next", 1), ("smart", "smart-next", 4)]
    smart = pairs[1]
    assert (smart.first_ts, smart.last_ts) == (100.0, 103.0)
    assert smart.primary.models == ("smart-model",) and smart.shadow.models == ("smart-next-model",)


def test_primary_side_numbers() -> None:
    st = pair_reports(records())[1].primary.stats
    assert (st.n, st.errors, st.error_rate, st.streamed) == (4, 0, 0.0, 2)
    assert st.latency_p50 == pytest.approx(2.5) and st.latency_p95 == pytest.approx(3.85)
    assert st.ttft_p50 == pytest.approx(0.75) and st.ttft_p95 == pytest.approx(0.975)
    # streamed: the 40 + 50 tokens after the first over (1.0 - 0.5) + (2.0 - 1.0) s; not streamed: 60 + 20
    # tokens over 3.0 + 4.0 s: 170 tokens over 8.5 s
    assert st.tokens_per_s == pytest.approx(20.0)
    assert (st.prompt_tokens, st.completion_tokens) == (400, 172)
    assert st.cost_usd == pytest.approx(0.000572)
    assert st.usd_per_1m == pytest.approx(1.0)  # 0.000572 USD / 572 tokens
    # 3.6 USD/h x 10 busy seconds = 0.01 USD over 572 tokens
    assert st.gpu_usd == pytest.approx(0.01)
    assert st.usd_per_1m_gpu == pytest.approx(0.01 / 572 * 1e6)


def test_shadow_side_numbers_count_errors_and_leave_out_calls_never_sent() -> None:
    st = pair_reports(records())[1].shadow.stats
    assert (st.n, st.errors) == (3, 1)  # the dropped call (status 0) was never sent
    assert st.error_rate == pytest.approx(1 / 3)
    assert st.latency_p50 == pytest.approx(1.0) and st.latency_p95 == pytest.approx(1.45)  # successful calls
    assert st.ttft_p50 == pytest.approx(0.1) and st.ttft_p95 == pytest.approx(0.1) and st.streamed == 1
    assert st.tokens_per_s == pytest.approx(100 / 1.9)  # (41 - 1 + 60) over 0.4 + 1.5 s
    assert st.usd_per_1m == pytest.approx(0.0002 / 301 * 1e6)
    assert st.gpu_usd is None and st.usd_per_1m_gpu is None  # not self-hosted


def test_agreement_mean_p10_and_by_method() -> None:
    smart = pair_reports(records())[1]
    assert smart.agreement.n == 2
    assert smart.agreement.mean == pytest.approx(0.75)
    assert smart.agreement.p10 == pytest.approx(0.55)
    assert {m: (a.n, a.mean) for m, a in smart.by_method.items()} == {"exact": (1, 1.0), "lexical": (1, 0.5)}
    assert smart.values == (1.0, 0.5)
    d = smart.to_dict()
    assert d["agreement"] == {"n": 2, "mean": 0.75, "p10": pytest.approx(0.55)}
    assert d["shadow"]["error_rate"] == pytest.approx(1 / 3) and d["primary"]["models"] == ["smart-model"]


def test_no_successful_call_gives_no_rates() -> None:
    st = side_stats([Sample(ok=False, latency_s=1.0, ttft_s=None, prompt_tokens=0, completion_tokens=0,
                            cost_usd=0.0, gpu_usd_per_hour=2.0)])
    assert (st.n, st.errors, st.error_rate) == (1, 1, 1.0)
    assert st.latency_p50 is None and st.tokens_per_s is None
    assert st.usd_per_1m is None and st.usd_per_1m_gpu is None
    assert st.gpu_usd == pytest.approx(2.0 / 3600)  # a failed call still held the GPU
    assert side_stats([]).error_rate is None


def test_text_table_is_aligned_per_pair() -> None:
    sections = [pair_section(p) for p in pair_reports(records())]
    text = format_table(sections)
    block = text.split("\n\n")[1]
    lines = block.splitlines()
    assert lines[0] == "smart -> smart-next: 4 comparisons" and set(lines[1]) == {"-"}
    header, rows = lines[2], {re.split(r"\s{2,}", ln.strip())[0]: ln for ln in lines[3:]}
    assert header.split() == ["smart", "(primary)", "smart-next", "(shadow)"]
    # right-aligned columns: every cell of a column ends where its header ends
    ends = (header.index("(primary)") + len("(primary)"), len(header))
    for label, cell_primary, cell_shadow in (
        ("requests", "4", "3"),
        ("errors", "0 (0.0%)", "1 (33.3%)"),
        ("latency p50 / p95 (s)", "2.500 / 3.850", "1.000 / 1.450"),
        ("TTFT p50 / p95 (s)", "0.750 / 0.975", "0.100 / 0.100"),
        ("tokens/s", "20.0", "52.6"),
        ("USD / 1M tokens (list)", "1.0000", "0.6645"),
        ("USD / 1M tokens (GPU busy)", "17.4825", "-"),
    ):
        line = rows[label]
        assert line[:ends[0]].endswith(cell_primary) and line[ends[0]:].strip() == cell_shadow, line
    assert rows["agreement mean / p10"].split("  ")[-1].strip() == "0.750 / 0.550 (n=2)"
    assert "by exact" in block and "by lexical" in block
    assert "busy-time cost" in block and "upper bound" in block


def test_png_report(tmp_path: Path) -> None:
    sections = [pair_section(p) for p in pair_reports(records())]
    path = write_report(tmp_path / "report.png", sections, "Model comparison")
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 20_000


def test_html_report_is_self_contained(tmp_path: Path) -> None:
    sections = [pair_section(p) for p in pair_reports(records())]
    page = write_report(tmp_path / "report.html", sections, "Model comparison", "5 records").read_text()
    assert page.count("<table>") == 2 and "<th>smart-next (shadow)</th>" in page and "<td>1 (33.3%)</td>" in page
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(images) == 2
    assert all(base64.b64decode(img).startswith(PNG_MAGIC) for img in images)
    assert "http://" not in page and "https://" not in page  # nothing fetched from elsewhere


def test_report_file_type_and_missing_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sections = [pair_section(p) for p in pair_reports(records())]
    with pytest.raises(ReportError, match=r"\.html or \.png"):
        write_report(tmp_path / "report.pdf", sections, "x")
    assert write_report(tmp_path / "report.out", sections, "x", kind="png").read_bytes().startswith(PNG_MAGIC)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(ReportError, match=re.escape("pip install oss-gateway[report]")):
        write_report(tmp_path / "again.png", sections, "x")
    assert not (tmp_path / "again.png").exists()


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("10m", 600), ("1h", 3600), ("2d", 172800),
                                               ("90", 90), ("1.5h", 5400), (" 5m ", 300)])
def test_since(text: str, seconds: float) -> None:
    assert parse_since(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "-5m", "1w", "h", "1h30m", "ten"])
def test_since_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="--since"):
        parse_since(text)
