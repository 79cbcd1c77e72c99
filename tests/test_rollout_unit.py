"""Pure logic of shadow traffic and canaries: config validation, the canary's judgement and transitions
(a fake clock, the in-process store), agreement, the shadow's share and its concurrency bound."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from gateway.config import ConfigError, parse_config
from gateway.rollout import agreement as ag
from gateway.rollout.canary import (
    ABORTED,
    COMPLETE,
    RUNNING,
    Canaries,
    CanaryState,
    LocalCanaryStore,
    StepStats,
    judge,
)
from gateway.rollout.options import AbortIf, CanaryOptions, parse_duration

BASE = {"model_list": [
    {"model_name": "smart", "litellm_params": {"model": "openai/a", "api_base": "http://h1:8000/v1"}},
    {"model_name": "smart-next", "litellm_params": {"model": "openai/b", "api_base": "http://h2:8000/v1"},
     "model_info": {"id": "next-gpu2"}},
]}


def cfg(**router: Any) -> Any:
    return parse_config({**BASE, "router_settings": router})


# -- config ------------------------------------------------------------------------------------------------

def test_shadow_and_canary_parse_with_defaults() -> None:
    c = cfg(shadow={"smart": {"to": "smart-next", "share": 10}},
            canary={"smart": {"to": "smart-next", "steps": [1, 5, 25, 50, 100], "every": "10m",
                              "abort_if": {"error_rate_over": 0.02, "p95_ttft_over_ms": 1500}}})
    sh = c.router.shadow["smart"]
    assert (sh.to, sh.share, sh.stream, sh.max_concurrency, sh.timeout) == ("smart-next", 10.0, "as_primary", 8, None)
    ca = c.router.canary["smart"]
    assert ca.steps == (1, 5, 25, 50, 100) and ca.every == 600 and ca.min_requests == 20
    assert ca.abort_if == AbortIf(0.02, 1500, None)
    assert cfg(shadow={"smart": {"to": "next-gpu2", "share": 100, "stream": False}}).router.shadow["smart"].stream == "false"
    lines = c.describe().splitlines()  # what `gateway check` prints
    assert "shadow: smart -> smart-next (10% of requests, at most 8 in flight per worker)" in lines
    assert "canary: smart -> smart-next (steps 1/5/25/50/100%, every 600s)" in lines


@pytest.mark.parametrize(("router", "path"), [
    ({"shadow": {"smart": {"to": "nope"}}}, "router_settings.shadow.smart.to: unknown alias or deployment id"),
    ({"shadow": {"smart": {"to": "smart"}}}, "router_settings.shadow.smart.to: an alias cannot mirror to itself"),
    ({"shadow": {"smart": {"to": "smart-next", "share": 150}}}, "router_settings.shadow.smart.share: must be between"),
    ({"shadow": {"smart": {"to": "smart-next", "stream": "sometimes"}}}, "router_settings.shadow.smart.stream"),
    ({"shadow": {"smart": {"to": "smart-next", "max_concurrency": 0}}}, "router_settings.shadow.smart.max_concurrency"),
    ({"shadow": {"smart": {"to": "smart-next", "judge": "nobody"}}}, "router_settings.shadow.smart.judge: unknown"),
    ({"shadow": {"ghost": {"to": "smart-next"}}}, "router_settings.shadow.ghost: unknown alias 'ghost'"),
    ({"shadow": {"smart": {"to": "smart-next", "colour": 1}}}, "router_settings.shadow.smart.colour: unknown option"),
    ({"shadow": ["smart"]}, "router_settings.shadow: must be a mapping"),
    ({"canary": {"smart": {"to": "next-gpu2"}}}, "router_settings.canary.smart.to: unknown alias 'next-gpu2'"),
    ({"canary": {"smart": {"to": "smart-next", "steps": [5, 1]}}}, "router_settings.canary.smart.steps[1]: steps must increase"),
    ({"canary": {"smart": {"to": "smart-next", "steps": []}}}, "router_settings.canary.smart.steps: must be a list"),
    ({"canary": {"smart": {"to": "smart-next", "every": "soon"}}}, "router_settings.canary.smart.every: must be a positive"),
    ({"canary": {"smart": {"to": "smart-next", "abort_if": {"error_rate_over": 2}}}},
     "router_settings.canary.smart.abort_if.error_rate_over: must be between 0 and 1"),
    ({"canary": {"smart": {"to": "smart-next", "abort_if": {"p99": 1}}}}, "router_settings.canary.smart.abort_if.p99"),
])
def test_bad_rollout_config_names_the_yaml_path(router: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as err:
        cfg(**router)
    assert any(p.startswith(path) for p in err.value.problems), err.value.problems


def test_litellm_silent_model_is_a_shadow() -> None:
    raw = {"model_list": [
        {"model_name": "smart", "litellm_params": {"model": "openai/a", "api_base": "http://h1:8000/v1",
                                                   "silent_model": "smart-next", "weight": 1}},
        {"model_name": "smart", "litellm_params": {"model": "openai/a", "api_base": "http://h3:8000/v1", "weight": 3}},
        BASE["model_list"][1]]}
    c = parse_config(raw)
    assert c.router.shadow["smart"].to == "smart-next" and c.router.shadow["smart"].share == 25
    assert any("silent_model" in n for n in c.notes) and not c.ignored
    raw["model_list"][0]["litellm_params"]["silent_model"] = "ghost"
    with pytest.raises(ConfigError, match=r"model_list\[0\].litellm_params.silent_model: unknown alias 'ghost'"):
        parse_config(raw)


def test_durations() -> None:
    assert [parse_duration(x) for x in ("10m", "30s", "1.5h", "2d", "250ms", 90, "7")] == \
        [600, 30, 5400, 172800, 0.25, 90, 7]
    assert parse_duration("soon") is None and parse_duration(True) is None and parse_duration(-1) is None


# -- canary: judgement ----------------------------------------------------------------------------------------

OPTS = CanaryOptions(to="smart-next", steps=(10, 50, 100), every=60, min_requests=5,
                     abort_if=AbortIf(error_rate_over=0.2, p95_ttft_over_ms=500))


def test_judge() -> None:
    st = CanaryState(OPTS.rollout_id, "smart-next", 0, since=1000.0)
    healthy = StepStats(10, 1, [100.0] * 10, [300.0] * 10)
    assert judge(OPTS, st, healthy, 1030) is None  # not yet `every`
    assert judge(OPTS, st, healthy, 1060) == ("advance", "10 requests, error rate 0.100")
    assert judge(OPTS, st, StepStats(3, 0), 1100) is None  # too few requests to advance
    assert judge(OPTS, st, StepStats(10, 3), 1001)[0] == "abort"  # 30% errors, at once, not after `every`
    assert judge(OPTS, st, StepStats(4, 4), 1001) is None  # 4 of 4 failed, but fewer than min_requests
    slow = StepStats(20, 0, [100.0] * 18 + [900.0] * 2, [1.0] * 20)
    assert judge(OPTS, st, slow, 1001) == ("abort", "p95 time to first token 900 ms over 500 ms")
    last = CanaryState(OPTS.rollout_id, "smart-next", 2, since=1000.0)
    assert judge(OPTS, last, healthy, 1060)[0] == "complete"
    assert judge(OPTS, CanaryState("x", "smart-next", 0, 0, ABORTED), healthy, 1e9) is None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_canary_steps_through_aborts_and_rolls_back() -> None:
    clock, store = Clock(), LocalCanaryStore()
    events: list[tuple[str, str, str]] = []
    c = Canaries(lambda: {"smart": OPTS}, store, lambda *e: events.append(e), clock=clock, rng=random.Random(1).random)
    await c.step()
    assert c.percent == {"smart": 10} and events == [("smart", "smart-next", "start")]
    routed = [c.route("smart") for _ in range(2000)]
    share = sum(r is not None for r in routed) / 2000
    assert 0.07 < share < 0.13  # 10% +- 3 sd
    for _ in range(6):
        c.observe("smart", c.states["smart"], False, 0.3, 0.1)
    clock.now += 61
    await c.step()
    assert c.percent == {"smart": 50} and events[-1] == ("smart", "smart-next", "advance")
    assert (await store.stats("smart", c.states["smart"])).requests == 0  # a new step starts counting afresh
    for i in range(10):
        c.observe("smart", c.states["smart"], i < 3, 0.3, 0.1)  # 30% errors
    await c.step()
    assert c.percent == {"smart": 0.0} and c.states["smart"].state == ABORTED
    assert "error rate 0.300" in c.states["smart"].reason and events[-1][2] == "abort"
    assert all(c.route("smart") is None for _ in range(100))  # rolled back: every request on the alias
    clock.now += 3600
    await c.step()
    assert c.percent == {"smart": 0.0}  # stays aborted until restarted
    await c.command("smart", "restart")
    assert c.percent == {"smart": 10} and c.states["smart"].state == RUNNING
    await c.command("smart", "advance")
    await c.command("smart", "advance")
    assert c.percent == {"smart": 100}
    await c.command("smart", "advance")
    assert c.states["smart"].state == COMPLETE and c.percent == {"smart": 100}


async def test_two_workers_share_one_rollout_and_make_each_transition_once() -> None:
    clock, store = Clock(), LocalCanaryStore()
    events: list[tuple[str, str, str]] = []
    workers = [Canaries(lambda: {"smart": OPTS}, store, lambda *e: events.append(e), clock=clock) for _ in range(2)]
    for w in workers:
        await w.step()
    for w in workers:
        for _ in range(3):
            w.observe("smart", w.states["smart"], False, 0.2, None)  # 3 each: 6 >= min_requests together
    clock.now += 61
    await asyncio.gather(*(w.step() for w in workers))
    await asyncio.gather(*(w.step() for w in workers))
    assert [e[2] for e in events] == ["start", "advance"]
    assert all(w.percent == {"smart": 50} for w in workers)


async def test_a_changed_rollout_starts_again_and_a_removed_one_leaves() -> None:
    clock, store = Clock(), LocalCanaryStore()
    opts = {"smart": OPTS}
    c = Canaries(lambda: opts, store, clock=clock)
    await c.step()
    await c.command("smart", "advance")
    assert c.percent["smart"] == 50
    opts["smart"] = CanaryOptions("smart-next", (10, 50, 100), every=1, min_requests=0)  # every/abort_if only
    await c.step()
    assert c.percent["smart"] == 50  # same rollout: progress kept
    opts["smart"] = CanaryOptions("smart-next", (20, 100), every=1, min_requests=0)
    await c.step()
    assert c.percent["smart"] == 20 and c.states["smart"].step == 0
    del opts["smart"]
    await c.step()
    assert c.percent == {} and c.route("smart") is None


# -- agreement ---------------------------------------------------------------------------------------------

async def test_agreement_methods() -> None:
    assert await ag.agreement("Paris.", " paris", None) == (1.0, "exact")
    assert await ag.agreement("Yes", "No", None) == (0.0, "exact")
    assert await ag.agreement('{"a": 1, "b": 2}', '```json\n{"b": 2, "a": 1}\n```', None) == (1.0, "json")
    assert await ag.agreement('{"a": 1, "b": 2}', '{"a": 1, "b": 3}', None) == (0.5, "json")
    long_a = "the quick brown fox jumps over the lazy dog near the river bank today"
    score, method = await ag.agreement(long_a, long_a.replace("today", "tonight"), None)
    assert method == "lexical" and 0.9 < score < 1.0

    async def embed(texts: Any) -> Any:
        import numpy as np

        return np.array([[1.0, 0.0], [0.6, 0.8]])

    assert await ag.agreement(long_a, "something else entirely with many different words here", embed) == \
        pytest.approx((0.6, "cosine"))
    assert ag.judge_score("Agreement: 0.85") == 0.85 and ag.judge_score("1") == 1.0 and ag.judge_score("maybe") is None
