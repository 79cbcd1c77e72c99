"""router.yaml's rollout settings, validated once at load: `router_settings.shadow` and `router_settings.canary`.

```yaml
router_settings:
  shadow:                 # alias -> mirror a share of its requests
    smart: {to: smart-next, share: 10, stream: as_primary, max_concurrency: 8, timeout: 60, judge: judge}
  canary:                 # alias -> move its traffic to another alias in steps
    smart: {to: smart-next, steps: [1, 5, 25, 50, 100], every: 10m, min_requests: 20,
            abort_if: {error_rate_over: 0.02, p95_ttft_over_ms: 1500, p95_latency_over_ms: 20000}}
```
`to` names an alias, or a deployment by its model_info.id (checked against model_list by gateway/config.py).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

STREAM_MODES = ("as_primary", "true", "false")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
MAX_SHADOW_CONCURRENCY = 10_000


def parse_duration(value: Any) -> float | None:
    """`10m`, `30s`, `1.5h`, `2d`, `250ms` or a number of seconds; None when it is none of those."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if value >= 0 else None
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _UNIT[m.group(2)]
    return None


@dataclass(frozen=True)
class ShadowOptions:
    to: str  # an alias, or a deployment id
    share: float  # percent of the alias's requests, 0-100
    stream: str = "as_primary"  # how a streamed request is mirrored: as_primary | true | false
    max_concurrency: int = 8  # shadow calls in flight per worker; more are dropped, never queued
    timeout: float | None = None  # seconds; default the shadow deployment's timeout
    judge: str | None = None  # an alias asked how far two long answers agree (optional)

    def stream_for(self, primary_streams: bool) -> bool:
        return primary_streams if self.stream == "as_primary" else self.stream == "true"


@dataclass(frozen=True)
class AbortIf:
    error_rate_over: float | None = None  # fraction 0-1 of the canary's requests in the current step
    p95_ttft_over_ms: float | None = None
    p95_latency_over_ms: float | None = None


@dataclass(frozen=True)
class CanaryOptions:
    to: str  # the alias traffic moves to
    steps: tuple[float, ...]  # percent of the alias's traffic on `to`, one step after another
    every: float  # seconds each step lasts (at least) before the next
    min_requests: int = 20  # canary requests a step needs before it may advance (or be judged)
    abort_if: AbortIf = field(default_factory=AbortIf)

    @property
    def rollout_id(self) -> str:
        """What identifies one rollout in the shared store: a reload that keeps `to` and `steps` keeps its
        progress (changing `every` or `abort_if` does not restart it); new ones start from the first step."""
        return hashlib.sha256(f"{self.to}|{','.join(f'{s:g}' for s in self.steps)}".encode()).hexdigest()[:12]


def _num(value: Any, path: str, problems: list[str], lo: float, hi: float | None = None,
         integer: bool = False) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and int(value) != value):
        problems.append(f"{path}: must be a{' whole' if integer else ''} number, got {value!r}")
        return None
    if value < lo or (hi is not None and value > hi):
        problems.append(f"{path}: must be between {lo:g} and {hi:g}, got {value!r}" if hi is not None
                        else f"{path}: must be >= {lo:g}, got {value!r}")
        return None
    return float(value)


def _unknown(raw: Mapping[str, Any], known: set[str], path: str, problems: list[str]) -> None:
    for key in raw:
        if key not in known:
            problems.append(f"{path}.{key}: unknown option (use {', '.join(sorted(known))})")


def _target(raw: Mapping[str, Any], path: str, problems: list[str]) -> str | None:
    to = raw.get("to")
    if not isinstance(to, str) or not to.strip():
        problems.append(f"{path}.to: required: the alias (or deployment id) to send to")
        return None
    return to


def _per_alias(raw: Any, path: str, known: set[str], example: str, problems: list[str]
               ) -> Iterator[tuple[str, str, Mapping[str, Any]]]:
    """(alias, its YAML path, its options) of a section `alias -> {to, ...}`, each checked for unknown keys."""
    if raw is None:
        return
    if not isinstance(raw, Mapping):
        problems.append(f"{path}: must be a mapping of alias -> {example}")
        return
    for alias, opts in raw.items():
        p = f"{path}.{alias}"
        if not isinstance(opts, Mapping):
            problems.append(f"{p}: must be a mapping like {example}")
            continue
        _unknown(opts, known, p, problems)
        yield str(alias), p, opts


def parse_shadow(raw: Any, path: str) -> tuple[dict[str, ShadowOptions], list[str]]:
    problems: list[str] = []
    out: dict[str, ShadowOptions] = {}
    for alias, p, opts in _per_alias(raw, path, {"to", "share", "stream", "max_concurrency", "timeout", "judge"},
                                     "{to: smart-next, share: 10}", problems):
        to = _target(opts, p, problems)
        share = _num(opts.get("share", 100), f"{p}.share", problems, 0, 100)
        stream = opts.get("stream", "as_primary")
        stream = {True: "true", False: "false"}.get(stream, stream) if isinstance(stream, bool) else stream
        if stream not in STREAM_MODES:
            problems.append(f"{p}.stream: must be as_primary, true or false, got {stream!r}")
        conc = _num(opts.get("max_concurrency", 8), f"{p}.max_concurrency", problems, 1, MAX_SHADOW_CONCURRENCY,
                    integer=True)
        timeout = opts.get("timeout")
        t = None
        if timeout is not None:
            t = parse_duration(timeout)
            if t is None or t <= 0:
                problems.append(f"{p}.timeout: must be a positive duration (60, 30s, 2m), got {timeout!r}")
        judge = opts.get("judge")
        if judge is not None and (not isinstance(judge, str) or not judge):
            problems.append(f"{p}.judge: must be an alias")
            judge = None
        if to is not None and share is not None and conc is not None and stream in STREAM_MODES:
            out[alias] = ShadowOptions(to=to, share=share, stream=str(stream), max_concurrency=int(conc),
                                            timeout=t, judge=judge)
    return out, problems


def parse_canary(raw: Any, path: str) -> tuple[dict[str, CanaryOptions], list[str]]:
    problems: list[str] = []
    out: dict[str, CanaryOptions] = {}
    for alias, p, opts in _per_alias(raw, path, {"to", "steps", "every", "min_requests", "abort_if"},
                                     "{to: smart-next, steps: [1, 5, 25, 50, 100], every: 10m}", problems):
        to = _target(opts, p, problems)
        raw_steps = opts.get("steps", [1, 5, 25, 50, 100])
        steps: list[float] = []
        if not isinstance(raw_steps, list) or not raw_steps:
            problems.append(f"{p}.steps: must be a list of percentages like [1, 5, 25, 50, 100]")
        else:
            for i, s in enumerate(raw_steps):
                v = _num(s, f"{p}.steps[{i}]", problems, 0, 100)
                if v is not None:
                    if steps and v <= steps[-1]:
                        problems.append(f"{p}.steps[{i}]: steps must increase, got {s!r} after {steps[-1]:g}")
                    steps.append(v)
        every_raw = opts.get("every", "10m")
        every = parse_duration(every_raw)
        if every is None or every <= 0:
            problems.append(f"{p}.every: must be a positive duration (10m, 30s, 1h), got {every_raw!r}")
        mr = _num(opts.get("min_requests", 20), f"{p}.min_requests", problems, 0, integer=True)
        ab = opts.get("abort_if") or {}
        abort = AbortIf()
        if not isinstance(ab, Mapping):
            problems.append(f"{p}.abort_if: must be a mapping like {{error_rate_over: 0.02}}")
        else:
            _unknown(ab, {"error_rate_over", "p95_ttft_over_ms", "p95_latency_over_ms"}, f"{p}.abort_if", problems)
            er = ab.get("error_rate_over")
            ttft = ab.get("p95_ttft_over_ms")
            lat = ab.get("p95_latency_over_ms")
            abort = AbortIf(
                error_rate_over=None if er is None else _num(er, f"{p}.abort_if.error_rate_over", problems, 0, 1),
                p95_ttft_over_ms=None if ttft is None else _num(ttft, f"{p}.abort_if.p95_ttft_over_ms", problems, 0),
                p95_latency_over_ms=None if lat is None else _num(lat, f"{p}.abort_if.p95_latency_over_ms",
                                                                  problems, 0))
        if to is not None and steps and every and mr is not None:
            out[alias] = CanaryOptions(to=to, steps=tuple(steps), every=every, min_requests=int(mr),
                                            abort_if=abort)
    return out, problems
