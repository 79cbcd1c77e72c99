"""Every client mistake and upstream failure gets the OpenAI error shape with the right status."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import httpx
import openai
import pytest

from tests.helpers import deployment, metric_value, metrics, sim_stats
from tests.procs import Proc, free_port, start_gateway, start_simulator


@pytest.fixture(scope="module")
def setup() -> Iterator[tuple[Proc, Proc, Proc]]:
    ok = start_simulator("--model", "ok-model")
    broken = start_simulator("--fault", "500")
    dead_port = free_port()  # nothing listens here
    config = {
        "model_list": [
            deployment("smart", ok, "ok-model"),
            deployment("fast", ok, "ok-model"),
            deployment("broken", broken, "b1"),
            deployment("broken", broken, "b2"),
            {"model_name": "dead", "litellm_params": {"model": "openai/x", "api_base": f"http://127.0.0.1:{dead_port}/v1"}},
            deployment("slow", ok, "ok-model", timeout=1),
        ],
        "router_settings": {"num_retries": 1, "allowed_fails": 100},
        "general_settings": {"max_request_size_mb": 0.01},
    }
    gw = start_gateway(config)
    yield gw, ok, broken
    gw.stop()
    ok.stop()
    broken.stop()


def err(resp: httpx.Response) -> dict[str, object]:
    body = resp.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert "Traceback" not in resp.text
    return body["error"]


def post(gw: Proc, payload: object | None = None, raw: bytes | None = None, **kw: object) -> httpx.Response:
    if raw is not None:
        return httpx.post(f"{gw.url}/v1/chat/completions", content=raw,
                          headers={"content-type": "application/json"}, timeout=10, **kw)  # type: ignore[arg-type]
    return httpx.post(f"{gw.url}/v1/chat/completions", json=payload, timeout=10, **kw)  # type: ignore[arg-type]


def test_malformed_json(setup: tuple[Proc, Proc, Proc]) -> None:
    gw = setup[0]
    r = post(gw, raw=b'{"model": "smart", "messages": [')
    assert r.status_code == 400
    e = err(r)
    assert e["type"] == "invalid_request_error"
    assert "JSON" in str(e["message"])
    assert r.headers["x-request-id"]


def test_body_not_an_object(setup: tuple[Proc, Proc, Proc]) -> None:
    r = post(setup[0], raw=b"[1, 2]")
    assert r.status_code == 400
    assert "JSON object" in str(err(r)["message"])


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"model": "smart"}, "messages"),
        ({"model": "smart", "messages": "hello"}, "messages"),
        ({"model": "smart", "messages": []}, "messages"),
        ({"model": "smart", "messages": [{"content": "hi"}]}, "messages[0].role"),
        ({"model": "smart", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
        ({"model": 7, "messages": [{"role": "user", "content": "hi"}]}, "model"),
        ({"model": "smart", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, "stream"),
        ({"model": "smart", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "ten"}, "max_tokens"),
        ({"model": "smart", "messages": [{"role": "user", "content": "hi"}], "temperature": 9}, "temperature"),
        ({"model": "smart", "messages": [{"role": "user", "content": "hi"}], "tools": {"a": 1}}, "tools"),
    ],
)
def test_wrong_fields_named(setup: tuple[Proc, Proc, Proc], payload: dict[str, object], param: str) -> None:
    r = post(setup[0], payload)
    assert r.status_code == 400, r.text
    e = err(r)
    assert e["type"] == "invalid_request_error"
    assert e["param"] == param
    assert param.split("[")[0] in str(e["message"])


def test_unknown_alias_lists_aliases(setup: tuple[Proc, Proc, Proc]) -> None:
    r = post(setup[0], {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 404
    e = err(r)
    assert e["code"] == "model_not_found"
    assert e["param"] == "model"
    for alias in ("smart", "fast", "broken", "dead"):
        assert alias in str(e["message"])
    # the unknown name never becomes a metric label value
    assert 'alias="gpt-4"' not in metrics(setup[0])


def test_body_too_large(setup: tuple[Proc, Proc, Proc]) -> None:
    big = {"model": "smart", "messages": [{"role": "user", "content": "x" * 20000}]}
    r = post(setup[0], big)
    assert r.status_code == 413
    assert err(r)["type"] == "invalid_request_error"


def test_all_deployments_failing_is_502(setup: tuple[Proc, Proc, Proc]) -> None:
    gw, _, broken = setup
    before = sim_stats(broken)["requests"].get("/v1/chat/completions", 0)
    r = post(gw, {"model": "broken", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 502
    e = err(r)
    assert e["type"] == "upstream_error"
    assert "broken" in str(e["message"])
    assert "127.0.0.1" not in str(e["message"])  # names the alias, not where it runs
    assert r.headers["x-should-retry"] == "false"
    # num_retries=1: the first attempt and one retry on the other deployment
    assert sim_stats(broken)["requests"]["/v1/chat/completions"] - before == 2
    assert metric_value(metrics(gw), "oss_retries_total", alias="broken") >= 1


def test_unreachable_upstream_then_unhealthy_is_503(setup: tuple[Proc, Proc, Proc]) -> None:
    gw = setup[0]
    # the active health check (every 0.5 s in tests) takes the dead deployment out
    for _ in range(40):  # up to 10 s
        r = post(gw, {"model": "dead", "messages": [{"role": "user", "content": "hi"}]})
        if r.status_code == 503:
            break
        assert r.status_code == 502, r.text
        time.sleep(0.25)
    assert r.status_code == 503
    e = err(r)
    assert e["type"] == "service_unavailable"
    assert "dead" in str(e["message"])
    report = httpx.get(f"{gw.url}/health/deployments").json()["deployments"]
    dead = [d for d in report if d["alias"] == "dead"][0]
    assert dead["healthy"] is False
    # readiness is about the gateway, not one GPU: still ready (also on LiteLLM's probe paths)
    assert httpx.get(f"{gw.url}/health/ready").status_code == 200
    assert httpx.get(f"{gw.url}/health/readiness").status_code == 200
    assert httpx.get(f"{gw.url}/health/liveliness").json() == {"status": "ok"}


def test_timeout_is_504(setup: tuple[Proc, Proc, Proc]) -> None:
    r = post(setup[0], {"model": "slow", "messages": [{"role": "user", "content": "hi"}], "sim": {"fault": "hang"}})
    assert r.status_code == 504
    assert err(r)["type"] == "timeout"


def test_upstream_context_error_without_fallback_is_400(setup: tuple[Proc, Proc, Proc]) -> None:
    gw, ok, _ = setup
    before = sim_stats(ok)["requests"].get("/v1/chat/completions", 0)
    r = post(gw, {"model": "smart", "messages": [{"role": "user", "content": "hi"}], "sim": {"fault": "context"}})
    assert r.status_code == 400
    e = err(r)
    assert e["code"] == "context_length_exceeded"
    assert "maximum context length" in str(e["message"])
    # a client error is not retried on another deployment
    assert sim_stats(ok)["requests"]["/v1/chat/completions"] - before == 1


def test_sdk_sees_statuses(setup: tuple[Proc, Proc, Proc]) -> None:
    gw = setup[0]
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="none", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="smart", messages="hi")  # type: ignore[arg-type]
    assert bad.value.param == "messages"  # type: ignore[attr-defined]
    with pytest.raises(openai.InternalServerError) as exc:
        client.chat.completions.create(model="broken", messages=[{"role": "user", "content": "hi"}])
    assert exc.value.status_code == 502


def test_admin_disabled_without_master_key(setup: tuple[Proc, Proc, Proc]) -> None:
    r = httpx.post(f"{setup[0].url}/admin/reload", headers={"Authorization": "Bearer anything"})
    assert r.status_code == 403
    assert "disabled" in str(err(r)["message"])


def test_unknown_path_is_openai_shaped(setup: tuple[Proc, Proc, Proc]) -> None:
    r = httpx.get(f"{setup[0].url}/v1/nothing-here")
    assert r.status_code == 404
    err(r)


def test_master_key_guards_requests_and_admin(make_sim: Callable[..., Proc],
                                             make_gateway: Callable[..., Proc]) -> None:
    sim = make_sim()
    gw = make_gateway({"model_list": [deployment("smart", sim)],
                       "general_settings": {"master_key": "os.environ/TEST_MASTER"}},
                      env={"TEST_MASTER": "sk-master-123"})
    payload = {"model": "smart", "messages": [{"role": "user", "content": "hi"}]}
    r = post(gw, payload)
    assert r.status_code == 401
    assert err(r)["type"] == "authentication_error"
    r = post(gw, payload, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    r = post(gw, payload, headers={"Authorization": "Bearer sk-master-123"})
    assert r.status_code == 200
    r = httpx.post(f"{gw.url}/admin/reload", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    r = httpx.post(f"{gw.url}/admin/reload", headers={"Authorization": "Bearer sk-master-123"})
    assert r.status_code == 200
    assert "sk-master-123" not in gw.log()
