"""Golden sets (gateway/rollout/golden.py, schema.py) and `gateway eval` (gateway/rollout/evaluate.py): the
file format and its errors, scoring, and the command end to end against two simulators of different
speeds behind a real gateway."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.rollout import schema
from gateway.rollout.evaluate import Options, Prices, run_items
from gateway.rollout.golden import Check, GoldenError, parse_golden, score
from tests.helpers import deployment, sim_set
from tests.procs import Proc, free_port

MASTER = "sk-eval-master"
USER = [{"role": "user", "content": "What is the capital of France?"}]


def line(**fields: Any) -> str:
    return json.dumps({"messages": USER, **fields})


def eval_cmd(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "eval", *args], capture_output=True, text=True,
                          timeout=timeout)


# -- the file ---------------------------------------------------------------------------------------------


def test_parse_items() -> None:
    text = "\n".join([
        line(id="a", expected="Paris", max_tokens=8),
        "",
        line(contains="paris"),
        line(id=7, contains=["Paris", "France"]),
        line(json_schema={"type": "object", "required": ["city"]}),
    ])
    items = parse_golden(text, "g.jsonl")
    assert [(i.id, i.line, i.check.kind, i.max_tokens) for i in items] == [
        ("a", 1, "expected", 8), ("line3", 3, "contains", None), ("7", 4, "contains", None),
        ("line5", 5, "json_schema", None)]
    assert items[1].check.value == ("paris",) and items[2].check.value == ("Paris", "France")
    assert items[0].messages == tuple(USER)


def test_every_problem_names_its_line_and_field() -> None:
    text = "\n".join([
        line(expected="Paris"),                                              # 1 fine
        "{not json",                                                         # 2
        "[1, 2]",                                                            # 3
        json.dumps({"contains": "x"}),                                       # 4 no messages
        json.dumps({"messages": [{"content": "hi"}], "contains": "x"}),      # 5 no role
        line(),                                                              # 6 no check
        line(expected="a", contains="b"),                                    # 7 two checks
        line(contains=[]),                                                   # 8
        line(expected="   "),                                                # 9
        line(json_schema="object"),                                          # 10
        line(json_schema={"type": "objekt"}),                                # 11
        line(contains="x", max_tokens=0),                                    # 12
        line(contains="x", expect="typo"),                                   # 13
        line(id="a", contains="x"),                                          # 14
        line(id="a", contains="y"),                                          # 15 duplicate id
        line(id=True, contains="x"),                                         # 16
    ])
    with pytest.raises(GoldenError) as info:
        parse_golden(text, "g.jsonl")
    problems = info.value.problems
    by_line: dict[int, list[str]] = {}
    for p in problems:
        by_line.setdefault(int(p.split(":")[1]), []).append(p)
    expect = {
        2: "not valid JSON", 3: "must be a JSON object", 4: "messages: must be a non-empty list",
        5: "messages[0].role", 6: "needs exactly one of expected, contains, json_schema",
        7: "(has expected, contains)", 8: "contains: must be a non-empty string", 9: "expected: must be",
        10: "json_schema: must be an object", 11: "json_schema:", 12: "max_tokens: must be a positive integer",
        13: "unknown field expect", 15: "id: 'a' is also the id of line 14", 16: "id: must be",
    }
    assert sorted(by_line) == sorted(expect), problems  # lines 1 and 14 are fine
    for n, fragment in expect.items():
        assert len(by_line[n]) == 1 and fragment in by_line[n][0], (n, by_line[n])
        assert by_line[n][0].startswith(f"g.jsonl:{n}: ")


def test_an_empty_file_is_an_error() -> None:
    with pytest.raises(GoldenError, match="no items"):
        parse_golden("\n\n", "empty.jsonl")


# -- scoring ----------------------------------------------------------------------------------------------


CITY = {"type": "object", "required": ["city"], "additionalProperties": False,
        "properties": {"city": {"type": "string", "enum": ["Paris", "Lyon"]}, "population": {"type": "integer"},
                       "tags": {"type": "array", "items": {"type": "string"}}}}


@pytest.mark.parametrize(("check", "answer", "passed"), [
    (Check("expected", "Paris"), "Paris", True),
    (Check("expected", "Paris"), "  Paris\n", True),
    (Check("expected", "Paris"), "paris", False),
    (Check("expected", "Paris"), "Paris.", False),
    (Check("contains", ("paris",)), "The capital is PARIS.", True),
    (Check("contains", ("Paris", "France")), "Paris is in France", True),
    (Check("contains", ("Paris", "France")), "Paris, Texas", False),
    (Check("json_schema", CITY), '{"city": "Paris", "population": 2100000}', True),
    (Check("json_schema", CITY), '```json\n{"city": "Lyon", "tags": ["food"]}\n```', True),
    (Check("json_schema", CITY), '{"city": "Nice"}', False),
    (Check("json_schema", CITY), '{"population": 3}', False),
    (Check("json_schema", CITY), '{"city": "Paris", "population": 2.5}', False),
    (Check("json_schema", CITY), '{"city": "Paris", "mayor": "x"}', False),
    (Check("json_schema", CITY), '{"city": "Paris", "tags": [1]}', False),
    (Check("json_schema", CITY), "Paris", False),
])
@pytest.mark.parametrize("validator", ["jsonschema", "builtin"])
def test_score(check: Check, answer: str, passed: bool, validator: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if validator == "builtin":
        monkeypatch.setitem(sys.modules, "jsonschema", None)  # import jsonschema -> ImportError
    else:
        pytest.importorskip("jsonschema")
    verdict = score(check, answer)
    assert verdict.passed is passed, verdict.reason
    assert bool(verdict.reason) is not passed


def test_failure_reasons() -> None:
    assert score(Check("expected", "Paris"), "Lyon").reason == "expected 'Paris', got 'Lyon'"
    assert score(Check("contains", ("a", "zz")), "abc").reason == "missing 'zz' in 'abc'"
    assert score(Check("json_schema", CITY), "nope").reason.startswith("not JSON")
    assert "population" in score(Check("json_schema", CITY), '{"city": "Paris", "population": "x"}').reason


def test_builtin_validator_and_its_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    assert schema.builtin_errors(True, {"type": "integer"}) == ["$: expected integer, got bool"]
    assert schema.builtin_errors(3, {"type": ["string", "null"]}) == ["$: expected string or null, got int"]
    assert schema.builtin_errors({"a": {"b": 1}}, {"properties": {"a": {"properties": {"b": {"const": 2}}}}}) \
        == ["$.a.b: 1 is not 2"]
    assert schema.builtin_errors([1, 2, 3], {"type": "array", "maxItems": 2}) == ["$: more than 2 items"]
    # a keyword it does not check is a problem of the golden file, not a silent pass
    monkeypatch.setitem(sys.modules, "jsonschema", None)
    with pytest.raises(GoldenError, match="pattern"):
        parse_golden(line(json_schema={"type": "string", "pattern": "^P"}), "g.jsonl")


# -- gateway eval, end to end -----------------------------------------------------------------------------


FAST_REPLY = ["Paris"]
SLOW_REPLY = ['{"city": ', '"Lyon"', "}"]  # 3 tokens: TTFT, then 2 more at --tps
SLOW_TTFT, SLOW_TPS, FAST_TTFT = 0.4, 10.0, 0.02
GOLDEN = [  # (fields, fast passes, slow passes)
    ({"contains": "paris"}, True, False),
    ({"expected": "Paris"}, True, False),
    ({"contains": "PARIS", "max_tokens": 5}, True, False),
    ({"json_schema": {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}}},
     False, True),
    ({"contains": ["city", "lyon"]}, False, True),
    ({"json_schema": {"type": "object", "properties": {"city": {"enum": ["Paris"]}}}}, False, False),
    ({"contains": "nowhere"}, False, False),
]
PRICE_IN, PRICE_OUT, GPU_HOURLY, GPUS = 1e-6, 2e-6, 3.6, 2


@pytest.fixture
def stack(make_sim: Callable[..., Proc], make_gateway: Callable[..., Proc]) -> Iterator[Proc]:
    fast = make_sim("--ttft", str(FAST_TTFT), "--model", "fast-model")
    slow = make_sim("--ttft", str(SLOW_TTFT), "--tps", str(SLOW_TPS), "--model", "slow-model")
    sim_set(fast, reply=FAST_REPLY)
    sim_set(slow, reply=SLOW_REPLY)
    config = {"model_list": [
        deployment("fast", fast, "fast-model", id="fast-1", input_cost_per_token=PRICE_IN,
                   output_cost_per_token=PRICE_OUT),
        deployment("slow", slow, "slow-model", id="slow-1", gpu_hourly_cost_usd=GPU_HOURLY, gpu_count=GPUS),
    ]}
    yield make_gateway(config, env={"GATEWAY_MASTER_KEY": MASTER})


@pytest.fixture
def golden(tmp_path: Path) -> Path:
    path = tmp_path / "golden.jsonl"
    path.write_text("".join(line(id=f"q{i}", **fields) + "\n" for i, (fields, _, _) in enumerate(GOLDEN)))
    return path


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_eval_two_aliases_of_different_speeds(stack: Proc, golden: Path, tmp_path: Path, stream: bool) -> None:
    out = tmp_path / "eval.json"
    html = tmp_path / "eval.html"
    args = [str(golden), "--aliases", "fast,slow", "--url", stack.url, "--key", MASTER, "--concurrency", "3",
            "--config", str(stack.extra["config_path"]), "--json", str(out), "--html", str(html)]
    r = eval_cmd(*args, *(["--stream"] if stream else []))
    assert r.returncode == 0, r.stderr
    n = len(GOLDEN)
    assert f"{2 * n}/{2 * n}" in r.stderr  # the progress bar got to the end
    doc = json.loads(out.read_text())
    summary = doc["summary"]
    fast_pass, slow_pass = (sum(g[k] for g in GOLDEN) for k in (1, 2))
    assert (summary["fast"]["passed"], summary["slow"]["passed"]) == (fast_pass, slow_pass)
    assert summary["fast"]["pass_rate"] == pytest.approx(fast_pass / n)
    answers = {(a["item_id"], a["alias"]): a for a in doc["answers"]}
    for i, (_, fast_ok, slow_ok) in enumerate(GOLDEN):
        assert answers[(f"q{i}", "fast")]["passed"] is fast_ok, answers[(f"q{i}", "fast")]
        assert answers[(f"q{i}", "slow")]["passed"] is slow_ok, answers[(f"q{i}", "slow")]
    assert {a["deployment"] for a in doc["answers"] if a["alias"] == "slow"} == {"slow-1"}
    assert {a["model"] for a in doc["answers"] if a["alias"] == "fast"} == {"fast-model"}
    fast, slow = summary["fast"], summary["slow"]
    assert fast["n"] == slow["n"] == n and fast["errors"] == slow["errors"] == 0
    # the slow simulator: TTFT 0.4 s, then 2 tokens at 10/s; the fast one answers its one token in 0.02 s
    expected_gap = SLOW_TTFT + (len(SLOW_REPLY) - 1) / SLOW_TPS - FAST_TTFT
    assert slow["latency_p50"] - fast["latency_p50"] == pytest.approx(expected_gap, abs=0.15)
    assert fast["latency_p50"] < 0.3
    if stream:
        assert slow["ttft_p50"] - fast["ttft_p50"] == pytest.approx(SLOW_TTFT - FAST_TTFT, abs=0.1)
        assert slow["tokens_per_s"] == pytest.approx(SLOW_TPS, rel=0.25)
    else:
        assert slow["ttft_p50"] is None and fast["streamed"] == 0
    # prices from --config: list price for `fast`, GPU hours for `slow`
    fast_answers = [a for a in doc["answers"] if a["alias"] == "fast"]
    assert all(a["completion_tokens"] == len(FAST_REPLY) and a["prompt_tokens"] > 0 for a in fast_answers)
    cost = sum(a["prompt_tokens"] * PRICE_IN + a["completion_tokens"] * PRICE_OUT for a in fast_answers)
    assert fast["cost_usd"] == pytest.approx(cost)
    assert PRICE_IN * 1e6 < fast["usd_per_1m"] < PRICE_OUT * 1e6 and fast["usd_per_1m_gpu"] is None
    slow_answers = [a for a in doc["answers"] if a["alias"] == "slow"]
    busy_usd = GPU_HOURLY * GPUS * sum(a["latency_s"] for a in slow_answers) / 3600
    tokens = sum(a["prompt_tokens"] + a["completion_tokens"] for a in slow_answers)
    assert slow["usd_per_1m_gpu"] == pytest.approx(busy_usd / tokens * 1e6)
    assert slow["usd_per_1m"] == 0.0  # no per-token price for the self-hosted one
    # the table on stdout, the HTML report
    table = r.stdout.splitlines()
    assert table[0].startswith("golden.jsonl: 7 items x 2 aliases")
    assert table[2].split() == ["fast", "slow"]
    row = next(ln for ln in table if ln.startswith("pass rate")).split()
    assert row[2:] == [f"{fast_pass}/{n}", f"({fast_pass / n:.1%})", f"{slow_pass}/{n}", f"({slow_pass / n:.1%})"]
    page = html.read_text()
    assert "<th>fast</th><th>slow</th>" in page and "data:image/png;base64," in page


def test_eval_pass_rate_gate(stack: Proc, golden: Path) -> None:
    base = [str(golden), "--aliases", "fast,slow", "--url", stack.url, "--key", MASTER, "--no-progress"]
    r = eval_cmd(*base, "--min-pass-rate", "0.4")
    assert r.returncode == 1 and "slow passed 28.6% < --min-pass-rate 40.0%" in r.stderr, r.stderr
    assert "fast passed" not in r.stderr and r.stdout  # the table is printed anyway
    assert eval_cmd(*base, "--min-pass-rate", "0.25").returncode == 0
    assert r.stderr.count("\r") == 0  # --no-progress


def test_eval_errors_before_sending(stack: Proc, golden: Path, tmp_path: Path) -> None:
    base = [str(golden), "--url", stack.url]
    r = eval_cmd(*base, "--aliases", "fast,nope", "--key", MASTER)
    assert r.returncode == 2 and "unknown alias nope: this key may use fast, slow" in r.stderr, r.stderr
    r = eval_cmd(*base, "--aliases", "fast", "--key", "sk-wrong")
    assert r.returncode == 2 and "401 unauthorized" in r.stderr, r.stderr
    r = eval_cmd(str(golden), "--aliases", "fast", "--url", f"http://127.0.0.1:{free_port()}")
    assert r.returncode == 2 and "cannot reach the gateway" in r.stderr, r.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text(line(contains="x") + "\n" + line() + "\n")
    r = eval_cmd(str(bad), "--aliases", "fast", "--url", stack.url)
    assert r.returncode == 2 and f"{bad}:2: needs exactly one of" in r.stderr, r.stderr
    r = eval_cmd(*base, "--aliases", "fast", "--min-pass-rate", "80")
    assert r.returncode == 2 and "--min-pass-rate is a share between 0 and 1" in r.stderr
    r = eval_cmd(*base, "--aliases", "fast", "--html", "a.html", "--png", "a.png")
    assert r.returncode == 2 and "not allowed with argument" in r.stderr


def test_eval_counts_upstream_failures_as_errors(golden: Path, tmp_path: Path, make_sim: Callable[..., Proc],
                                                 make_gateway: Callable[..., Proc]) -> None:
    """An alias whose upstream fails: every call an error (not a pass), and the run still exits 0."""
    broken = make_sim("--fault", "500")
    gw = make_gateway({"model_list": [deployment("broken", broken, id="broken-1")],
                       "router_settings": {"num_retries": 0}})  # no master key: open
    r = eval_cmd(str(golden), "--aliases", "broken", "--url", gw.url, "--json", str(tmp_path / "out.json"))
    doc = json.loads((tmp_path / "out.json").read_text())
    assert r.returncode == 0, r.stderr
    summary = doc["summary"]["broken"]
    assert (summary["n"], summary["errors"], summary["passed"]) == (len(GOLDEN), len(GOLDEN), 0)
    assert all(a["error"].startswith("http_502") and a["reason"] == a["error"] for a in doc["answers"])


# -- answers that are not chat completions ----------------------------------------------------------------


BAD_ANSWERS: dict[str, tuple[bytes, str]] = {  # alias -> (body, what the error says)
    "list": (b"[1, 2]", "bad_answer: AttributeError"),
    "text": (b"<html>oops</html>", "bad_answer: JSONDecodeError"),
    "choices": (b'{"choices": "x", "usage": {"prompt_tokens": "many"}}', "bad_answer"),
    "sse-string": (b'data: "just a string"\n\n', "bad_answer: AttributeError"),
    "sse-error": (b'data: {"error": "boom"}\n\n', "stream_error: boom"),
    "sse-long": (b"data: " + b"x" * (4 * 1024 * 1024) + b"\n\n", "bad_answer"),
    "sse-cut": (b'data: {"choices": [{"delta": {"content": "x"}}]}\n\n', "stream_truncated"),
}


async def test_answers_that_are_not_chat_completions_are_errors_of_that_call() -> None:
    """Whatever an (OpenAI-compatible) server answers, each call ends with an error of its own, never the run."""
    async def models(_: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": a} for a in BAD_ANSWERS]})

    async def chat(request: web.Request) -> web.StreamResponse:
        body, _ = BAD_ANSWERS[(await request.json())["model"]]
        return web.Response(body=body, content_type="text/event-stream" if body.startswith(b"data:") else "text/plain")

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        items = parse_golden(line(contains="x"), "g.jsonl")
        plain = await run_items(items, Options(f"http://127.0.0.1:{port}", None, tuple(a for a in BAD_ANSWERS
                                                                                 if not a.startswith("sse"))), Prices())
        streamed = await run_items(items, Options(f"http://127.0.0.1:{port}", None, tuple(
            a for a in BAD_ANSWERS if a.startswith("sse")), stream=True), Prices())
    finally:
        await runner.cleanup()
    for answer in plain + streamed:
        assert answer.error is not None and answer.error.startswith(BAD_ANSWERS[answer.alias][1]), answer
        assert not answer.passed and answer.reason == answer.error
