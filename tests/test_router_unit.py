"""Router choice, cooldown and per-deployment limits as pure logic: an injected clock and RNG, no
processes, no sleeps."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from gateway.config import Deployment, RouterSettings, parse_config
from gateway.router import NoDeployment, RouterState
from gateway.strategies import STRATEGIES


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def deps(*specs: dict[str, object]) -> tuple[Deployment, ...]:
    raw = {"model_list": [{"model_name": "smart",
                           "litellm_params": {"model": f"openai/m{i}", "api_base": f"http://gpu{i}:8000/v1",
                                              **spec},
                           "model_info": {"id": f"d{i}"}} for i, spec in enumerate(specs)]}
    return parse_config(raw).aliases["smart"]


def router(seed: int = 7) -> tuple[RouterState, Clock]:
    clock = Clock()
    return RouterState(clock=clock, rng=random.Random(seed)), clock


def test_every_configurable_strategy_is_registered() -> None:
    assert {"simple-shuffle", "least-busy"} <= set(STRATEGIES)
    cfg = parse_config({"model_list": [{"model_name": "a", "litellm_params": {"model": "openai/x",
                                                                              "api_base": "http://h:1/v1"}}],
                        "router_settings": {"routing_strategy": "least-busy"}})
    assert cfg.router.routing_strategy == "least-busy"


def test_simple_shuffle_follows_weights() -> None:
    r, _ = router()
    ds = deps({"weight": 1}, {"weight": 3})
    picks = Counter(r.pick("smart", ds, "simple-shuffle").deployment.id for _ in range(4000))
    share = picks["d1"] / 4000
    assert 0.70 < share < 0.80, picks  # 0.75 expected; bounds are > 5 standard deviations wide


def test_zero_weights_mean_uniform() -> None:
    r, _ = router()
    ds = deps({"weight": 0}, {"weight": 0})
    picks = Counter(r.pick("smart", ds, "simple-shuffle").deployment.id for _ in range(2000))
    assert picks["d0"] > 800 and picks["d1"] > 800


def test_least_busy_prefers_idle_deployment() -> None:
    r, _ = router()
    ds = deps({}, {}, {})
    r.state(ds[0]).in_flight = 3
    r.state(ds[1]).in_flight = 1
    r.state(ds[2]).in_flight = 2
    decision = r.pick("smart", ds, "least-busy")
    assert decision.deployment.id == "d1" and decision.reason == "load"


def test_single_candidate_is_only_choice() -> None:
    r, _ = router()
    ds = deps({}, {})
    r.set_health(ds[0], False, "down")
    decision = r.pick("smart", ds, "simple-shuffle")
    assert decision.deployment.id == "d1" and decision.reason == "only"


def test_cooldown_after_allowed_fails_and_recovery() -> None:
    r, clock = router()
    ds = deps({}, {})
    settings = RouterSettings(allowed_fails=2, cooldown_time=30)
    assert not r.record_failure(ds[0], settings, 2)
    assert not r.record_failure(ds[0], settings, 2)
    assert r.record_failure(ds[0], settings, 2)  # the third failure within a minute: cooldown
    assert all(r.pick("smart", ds, "simple-shuffle").deployment.id == "d1" for _ in range(50))
    clock.now += 30.01
    assert {r.pick("smart", ds, "simple-shuffle").deployment.id for _ in range(50)} == {"d0", "d1"}


def test_single_deployment_alias_is_never_cooled_down() -> None:
    r, _ = router()
    ds = deps({})
    settings = RouterSettings(allowed_fails=0, cooldown_time=30)
    assert not any(r.record_failure(ds[0], settings, 1) for _ in range(10))
    assert r.pick("smart", ds, "simple-shuffle").deployment.id == "d0"


def test_failures_older_than_a_minute_are_forgotten() -> None:
    r, clock = router()
    ds = deps({}, {})
    settings = RouterSettings(allowed_fails=1, cooldown_time=30)
    r.record_failure(ds[0], settings, 2)
    clock.now += 61
    assert not r.record_failure(ds[0], settings, 2)


def test_rpm_limit_and_retry_after() -> None:
    r, clock = router()
    ds = deps({"rpm": 2})
    for _ in range(2):
        d = r.pick("smart", ds, "simple-shuffle").deployment
        r.state(d).note_request(d, clock())
        clock.now += 10
    with pytest.raises(NoDeployment) as exc:
        r.pick("smart", ds, "simple-shuffle")
    assert exc.value.reason == "rate_limited"
    assert exc.value.retry_after == pytest.approx(40.0)  # the first request leaves the window at +60 s
    clock.now += 40.01
    assert r.pick("smart", ds, "simple-shuffle").deployment.id == "d0"


def test_tpm_limit() -> None:
    r, clock = router()
    ds = deps({"tpm": 100})
    r.state(ds[0]).note_tokens(ds[0], 120, clock())
    with pytest.raises(NoDeployment) as exc:
        r.pick("smart", ds, "simple-shuffle")
    assert exc.value.reason == "rate_limited"
    clock.now += 60.01
    assert r.pick("smart", ds, "simple-shuffle").deployment.id == "d0"


def test_parallel_limit() -> None:
    r, _ = router()
    ds = deps({"max_parallel_requests": 1}, {})
    r.state(ds[0]).in_flight = 1
    assert all(r.pick("smart", ds, "simple-shuffle").deployment.id == "d1" for _ in range(30))


def test_unhealthy_everywhere_is_unhealthy_not_rate_limited() -> None:
    r, _ = router()
    ds = deps({}, {})
    for d in ds:
        r.set_health(d, False, "down")
    with pytest.raises(NoDeployment) as exc:
        r.pick("smart", ds, "least-busy")
    assert exc.value.reason == "unhealthy"


def test_retry_prefers_untried_then_falls_back_to_tried() -> None:
    r, _ = router()
    ds = deps({}, {})
    assert all(r.pick("smart", ds, "simple-shuffle", {"d0"}).deployment.id == "d1" for _ in range(30))
    r.set_health(ds[1], False, "down")
    assert r.pick("smart", ds, "simple-shuffle", {"d0"}).deployment.id == "d0"


def test_state_survives_reload_and_removed_idle_states_go() -> None:
    r, _ = router()
    ds = deps({}, {})
    r.state(ds[0]).cooldown_until = 2000.0
    r.state(ds[1]).in_flight = 1
    r.sync(ds[:1])
    assert r.state(ds[0]).cooldown_until == 2000.0
    assert "d1" in r.states  # still has a request in flight
    r.state(ds[1]).in_flight = 0
    r.sync(ds[:1])
    assert "d1" not in r.states
