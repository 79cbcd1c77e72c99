"""`gateway eval`: send a golden set to several aliases through the gateway and report, side by side,
quality (pass rate), speed (latency, TTFT, tokens/s), errors and cost.

    gateway eval golden.jsonl --aliases smart,fast [--url] [--key] [--config router.yaml] [--concurrency 4]
                 [--stream] [--html F | --png F] [--json F] [--min-pass-rate X]

Each (item, alias) is one POST /v1/chat/completions (cache bypassed: `Cache-Control: no-cache, no-store`),
at most --concurrency at once, items in file order with the aliases interleaved so that each alias sees
the same load. Latency is measured from the request to the last byte, TTFT (--stream) to the first chunk
carrying generated text; tokens from the answer's usage; the deployment from `x-gateway-deployment`,
priced from --config (its input/output_cost_per_token, gpu_hourly_cost_usd x gpu_count).
Exit status: 0 it ran (whatever the answers), 1 an alias passed fewer than --min-pass-rate, 2 usage or
input errors (bad file, unreachable gateway, refused key, unknown alias).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

import aiohttp
from aiohttp.http_exceptions import HttpProcessingError

from gateway.rollout.client import error_message, gateway_url
from gateway.rollout.golden import GoldenError, GoldenItem, load_golden, score
from gateway.rollout.report import (
    ReportError,
    Sample,
    Section,
    Series,
    format_table,
    require_matplotlib,
    stats_rows,
    write_report,
)

MAX_BODY = 32 * 1024 * 1024  # the most of one answer read


class EvalError(Exception):
    """The eval cannot run (gateway unreachable, key refused, unknown alias); the message says why."""


@dataclass(frozen=True, slots=True)
class Options:
    url: str
    key: str | None
    aliases: tuple[str, ...]
    concurrency: int = 4
    stream: bool = False
    max_tokens: int = 256
    temperature: float | None = 0.0
    timeout: float = 300.0


@dataclass(frozen=True, slots=True)
class Reply:
    """What one call returned, before scoring and pricing."""

    status: int  # 0: no HTTP answer
    deployment: str
    model: str
    latency_s: float
    ttft_s: float | None
    prompt_tokens: int
    completion_tokens: int
    text: str
    error: str | None


@dataclass(frozen=True, slots=True)
class Answer:
    item_id: str
    line: int
    alias: str
    status: int
    deployment: str
    model: str
    latency_s: float
    ttft_s: float | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None
    gpu_usd_per_hour: float | None
    text: str
    error: str | None
    passed: bool
    reason: str

    @property
    def ok(self) -> bool:
        return self.error is None and 200 <= self.status < 300

    def sample(self) -> Sample:
        return Sample(ok=self.ok, latency_s=self.latency_s, ttft_s=self.ttft_s, prompt_tokens=self.prompt_tokens,
                      completion_tokens=self.completion_tokens, cost_usd=self.cost_usd,
                      gpu_usd_per_hour=self.gpu_usd_per_hour, model=self.model)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Prices:
    """Deployment id -> (USD per prompt token, per completion token, GPU USD per hour), from router.yaml."""

    def __init__(self, table: Mapping[str, tuple[float, float, float | None]] | None = None) -> None:
        self.table = dict(table or {})
        self.unknown: set[str] = set()

    @staticmethod
    def from_config(path: Path) -> Prices:
        from gateway.config import load_file  # raises ConfigError

        cfg = load_file(path)
        return Prices({d.id: (d.input_cost_per_token, d.output_cost_per_token, d.gpu_cost_per_hour)
                       for d in cfg.deployments})

    def price(self, deployment: str, prompt_tokens: int, completion_tokens: int) -> tuple[float | None, float | None]:
        """(list-price cost, GPU USD per hour) of one call; (None, None) when the deployment is not known."""
        entry = self.table.get(deployment)
        if entry is None:
            if self.table and deployment:
                self.unknown.add(deployment)
            return None, None
        pin, pout, gpu = entry
        return prompt_tokens * pin + completion_tokens * pout, gpu


class Progress:
    """`[#####.....] done/total` on one line of stderr, redrawn in place."""

    def __init__(self, total: int, out: TextIO | None = None, width: int = 30, enabled: bool = True) -> None:
        self.total, self.done, self.width, self.enabled = total, 0, width, enabled
        self.out = out or sys.stderr

    def draw(self) -> None:
        if not self.enabled:
            return
        filled = self.width * self.done // max(1, self.total)
        self.out.write(f"\r[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total}")
        self.out.flush()

    def step(self) -> None:
        self.done += 1
        self.draw()

    def close(self) -> None:
        if self.enabled:
            self.out.write("\n")
            self.out.flush()


def _headers(key: str | None) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "Cache-Control": "no-cache, no-store"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return headers


async def _read_bounded(resp: aiohttp.ClientResponse, limit: int = MAX_BODY) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise ValueError(f"answer over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _usage(data: Mapping[str, Any]) -> tuple[int, int]:
    usage = data.get("usage")
    if not isinstance(usage, Mapping):
        return 0, 0
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


def _delta_text(chunk: Mapping[str, Any]) -> tuple[str, bool]:
    """(content of the chunk's first choice, whether it carried any generated token)."""
    choices = chunk.get("choices") or []
    if not choices or not isinstance(choices[0], Mapping):
        return "", False
    delta = choices[0].get("delta") or {}
    content = delta.get("content") or ""
    generated = bool(content or delta.get("reasoning_content") or delta.get("reasoning") or delta.get("tool_calls"))
    return content, generated


async def ask(session: aiohttp.ClientSession, opts: Options, alias: str, item: GoldenItem) -> Reply:
    """One chat completion through the gateway, timed."""
    body: dict[str, Any] = {"model": alias, "messages": list(item.messages),
                            "max_tokens": item.max_tokens or opts.max_tokens}
    if opts.temperature is not None:
        body["temperature"] = opts.temperature
    if opts.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    status, deployment, model, ttft = 0, "", "", None
    prompt = completion = 0
    text: list[str] = []
    error: str | None = None
    t0 = time.perf_counter()
    try:
        async with session.post(f"{opts.url}/v1/chat/completions", json=body, headers=_headers(opts.key),
                                timeout=aiohttp.ClientTimeout(total=opts.timeout)) as resp:
            status = resp.status
            deployment = resp.headers.get("x-gateway-deployment", "")
            if status >= 400:
                error = f"http_{status}: {error_message(await resp.content.read(64 * 1024))}"
            elif not opts.stream:
                data = json.loads(await _read_bounded(resp))
                model = str(data.get("model") or "")
                prompt, completion = _usage(data)
                choices = data.get("choices") or [{}]
                text.append(str((choices[0].get("message") or {}).get("content") or ""))
            else:
                done = False
                while not done:
                    line = await resp.content.readline()  # LineTooLong past aiohttp's bound
                    if not line:
                        error = "stream_truncated: the stream ended without data: [DONE]"
                        break
                    if not line.startswith(b"data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        done = True
                        continue
                    chunk = json.loads(payload)
                    if "error" in chunk:
                        err = chunk["error"]
                        error = f"stream_error: {err.get('message', err) if isinstance(err, dict) else err}"
                        break
                    model = model or str(chunk.get("model") or "")
                    content, generated = _delta_text(chunk)
                    if generated and ttft is None:
                        ttft = time.perf_counter() - t0
                    text.append(content)
                    if chunk.get("usage"):
                        prompt, completion = _usage(chunk)
    except TimeoutError:
        error = f"timeout after {opts.timeout:g}s"
    except aiohttp.ClientConnectorError as exc:
        error = f"connect: {exc.os_error}"
    except aiohttp.ClientError as exc:
        error = f"client_error: {type(exc).__name__}: {exc}"
    except (ValueError, TypeError, AttributeError, KeyError, IndexError, HttpProcessingError) as exc:
        # not JSON, not the shape of a chat completion, an oversized answer or SSE line (LineTooLong): this
        # call's error
        error = f"bad_answer: {type(exc).__name__}: {exc}"
    latency = time.perf_counter() - t0
    return Reply(status, deployment, model, latency, ttft if error is None else None, prompt, completion,
                 "".join(text), error)


async def preflight(session: aiohttp.ClientSession, opts: Options) -> None:
    """The gateway answers, takes the key and serves every alias (GET /v1/models); raises EvalError."""
    try:
        async with session.get(f"{opts.url}/v1/models", headers=_headers(opts.key),
                               timeout=aiohttp.ClientTimeout(total=30)) as resp:
            body = await resp.content.read(4 * 1024 * 1024)
            status = resp.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise EvalError(f"cannot reach the gateway at {opts.url} ({exc}): is it running? (--url)") from None
    if status == 401:
        raise EvalError(f"{opts.url}: 401 unauthorized ({error_message(body)}): pass an API key with --key "
                        "or GATEWAY_MASTER_KEY")
    if status != 200:
        raise EvalError(f"{opts.url}: GET /v1/models answered HTTP {status} ({error_message(body)})")
    try:
        served = {str(m["id"]) for m in json.loads(body)["data"]}
    except (ValueError, KeyError, TypeError):
        raise EvalError(f"{opts.url}: GET /v1/models did not answer a model list: is this an "
                        "OpenAI-compatible gateway?") from None
    missing = [a for a in opts.aliases if a not in served]
    if missing:
        raise EvalError(f"unknown alias{'es' if len(missing) > 1 else ''} {', '.join(missing)}: this key may use "
                        f"{', '.join(sorted(served)) or 'none'}")


async def run_items(items: Sequence[GoldenItem], opts: Options, prices: Prices,
                    on_done: Callable[[], None] | None = None) -> list[Answer]:
    """Every item sent to every alias (bounded concurrency); answers in (item, alias) order."""
    limit = asyncio.Semaphore(opts.concurrency)  # taken before the clock starts: no call times another's wait
    async with aiohttp.ClientSession() as session:
        await preflight(session, opts)

        async def one(item: GoldenItem, alias: str) -> Answer:
            async with limit:
                reply = await ask(session, opts, alias, item)
            if on_done is not None:
                on_done()
            ok = reply.error is None and 200 <= reply.status < 300
            verdict = score(item.check, reply.text) if ok else None
            cost, gpu = prices.price(reply.deployment, reply.prompt_tokens, reply.completion_tokens)
            return Answer(
                item_id=item.id, line=item.line, alias=alias, status=reply.status, deployment=reply.deployment,
                model=reply.model, latency_s=reply.latency_s, ttft_s=reply.ttft_s,
                prompt_tokens=reply.prompt_tokens, completion_tokens=reply.completion_tokens, cost_usd=cost,
                gpu_usd_per_hour=gpu, text=reply.text, error=reply.error,
                passed=verdict is not None and verdict.passed,
                reason=(reply.error or "") if verdict is None else verdict.reason,
            )

        return list(await asyncio.gather(*(one(item, alias) for item in items for alias in opts.aliases)))


# -- the report -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AliasResult:
    alias: str
    items: int
    passed: int
    series: Series

    @property
    def pass_rate(self) -> float | None:
        return self.passed / self.items if self.items else None


def summarize(aliases: Sequence[str], answers: Sequence[Answer]) -> list[AliasResult]:
    out = []
    for alias in aliases:
        mine = [a for a in answers if a.alias == alias]
        out.append(AliasResult(alias, len(mine), sum(a.passed for a in mine),
                               Series.of(alias, alias, (a.sample() for a in mine))))
    return out


def _total_usd(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.6f}" if value < 0.01 else f"{value:,.4f}"


def eval_section(title: str, results: Sequence[AliasResult], priced: bool) -> Section:
    rows = [("pass rate", tuple("-" if r.pass_rate is None else f"{r.passed}/{r.items} ({r.pass_rate:.1%})"
                                for r in results))]
    rows += stats_rows([r.series for r in results])
    rows.append(("total cost (USD)", tuple(_total_usd(r.series.stats.cost_usd) for r in results)))
    notes = [] if priced else ["no --config: USD columns need router.yaml's prices"]
    if any(r.series.stats.usd_per_1m_gpu is not None for r in results):
        from gateway.rollout.report import BUSY_TIME_NOTE

        notes.append(BUSY_TIME_NOTE)
    return Section(title=title, series=tuple(r.series for r in results), rows=tuple(rows), notes=tuple(notes),
                   bars=("pass rate", tuple(r.pass_rate for r in results)),
                   extra={r.alias: {"items": r.items, "passed": r.passed, "pass_rate": r.pass_rate,
                                    **r.series.stats.to_dict()} for r in results})


# -- the command ----------------------------------------------------------------------------------------


def _fail(message: str, code: int = 2) -> int:
    print(f"gateway eval: {message}", file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int:
    aliases = tuple(dict.fromkeys(a.strip() for a in args.aliases.split(",") if a.strip()))
    if not aliases:
        return _fail("--aliases: give at least one alias, e.g. --aliases smart,fast")
    if args.concurrency < 1:
        return _fail("--concurrency must be >= 1")
    if args.max_tokens < 1:
        return _fail("--max-tokens must be >= 1")
    if args.timeout <= 0:
        return _fail("--timeout must be > 0")
    if args.min_pass_rate is not None and not 0 <= args.min_pass_rate <= 1:
        return _fail(f"--min-pass-rate is a share between 0 and 1; got {args.min_pass_rate}")
    try:
        items = load_golden(args.golden)
    except GoldenError as exc:
        print(f"gateway eval: {args.golden}: {len(exc.problems)} problem{'s' if len(exc.problems) != 1 else ''}",
              file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    prices = Prices()
    if args.config is not None:
        from gateway.config import ConfigError

        try:
            prices = Prices.from_config(args.config)
        except ConfigError as exc:
            return _fail(f"--config {args.config}: " + "; ".join(exc.problems))
    if args.html or args.png:
        try:
            require_matplotlib()
        except ReportError as exc:
            return _fail(str(exc))
    opts = Options(url=gateway_url(args.url),
                   key=args.key or os.environ.get("GATEWAY_MASTER_KEY") or None, aliases=aliases,
                   concurrency=args.concurrency, stream=args.stream, max_tokens=args.max_tokens,
                   temperature=args.temperature, timeout=args.timeout)
    progress = Progress(len(items) * len(aliases), enabled=not args.no_progress)
    progress.draw()
    try:
        answers = asyncio.run(run_items(items, opts, prices, progress.step))
    except EvalError as exc:
        progress.close()
        return _fail(str(exc))
    progress.close()
    if prices.unknown:
        print(f"gateway eval: warning: deployments not in {args.config}, not priced: "
              f"{', '.join(sorted(prices.unknown))}", file=sys.stderr)
    results = summarize(aliases, answers)
    title = f"{args.golden.name}: {len(items)} item{'s' if len(items) != 1 else ''} x {len(aliases)} " \
            f"alias{'es' if len(aliases) != 1 else ''}{' (streamed)' if opts.stream else ''}"
    section = eval_section(title, results, priced=args.config is not None)
    sys.stdout.write(format_table([section]))
    if args.json is not None:
        doc = {"golden": str(args.golden), "url": opts.url, "aliases": list(aliases), "items": len(items),
               "stream": opts.stream, "summary": dict(section.extra), "answers": [a.to_dict() for a in answers]}
        try:
            args.json.write_text(json.dumps(doc, indent=2) + "\n")
        except OSError as exc:
            return _fail(f"--json {args.json}: cannot write ({exc.strerror})", 1)
    if args.html or args.png:
        try:
            path = write_report(args.html or args.png, [section], "Golden set evaluation",
                                f"{args.golden} through {opts.url}", kind="html" if args.html else "png")
        except ReportError as exc:
            return _fail(str(exc), 1)
        print(f"report written to {path}", file=sys.stderr)
    if args.min_pass_rate is not None:
        below = [r for r in results if (r.pass_rate or 0.0) < args.min_pass_rate]
        if below:
            for r in below:
                print(f"gateway eval: {r.alias} passed {r.pass_rate or 0.0:.1%} < --min-pass-rate "
                      f"{args.min_pass_rate:.1%}", file=sys.stderr)
            return 1
    return 0
