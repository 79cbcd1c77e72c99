"""Hot reload: an edit of router.yaml switches a route within a second, under load, with no failed request;
a bad edit is rejected and the running routes stay."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from tests.helpers import deployment, metric_value, metrics
from tests.procs import Proc

HI = [{"role": "user", "content": "hi"}]


def write_atomically(path: Path, config: dict[str, Any] | str) -> None:
    """Save the way editors do: write a new file, rename it over the old one."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    os.replace(tmp, path)


def served_by(gw: Proc) -> str:
    r = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "smart", "messages": HI, "max_tokens": 1},
                   timeout=5)
    r.raise_for_status()
    return str(r.json()["model"])


def wait_for_model(gw: Proc, model: str, timeout: float = 1.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout + 2:
        if served_by(gw) == model:
            return time.monotonic() - t0
        time.sleep(0.02)
    raise AssertionError(f"route did not switch to {model}")


@pytest.mark.parametrize("workers", [1, 2])
def test_reload_under_load_switches_route_with_no_failures(make_sim: Callable[..., Proc],
                                                          make_gateway: Callable[..., Proc],
                                                          workers: int) -> None:
    old = make_sim("--model", "old-model", "--tps", "200")
    new = make_sim("--model", "new-model", "--tps", "200")
    cfg = {"model_list": [deployment("smart", old, "old-model")]}
    gw = make_gateway(cfg, workers=workers)
    path: Path = gw.extra["config_path"]  # type: ignore[assignment]

    results: list[tuple[float, str | None, str | None]] = []  # (finished at, model, error)

    async def load(stop_at: float) -> None:
        ac = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="none", max_retries=0)

        async def worker() -> None:
            while time.monotonic() < stop_at:
                try:
                    stream = await ac.chat.completions.create(model="smart", messages=HI, max_tokens=5, stream=True)
                    model = None
                    n = 0
                    async for ch in stream:
                        model = ch.model
                        n += 1 if ch.choices and ch.choices[0].delta.content else 0
                    results.append((time.monotonic(), model, None if n == 5 else f"only {n} tokens"))
                    r = await ac.chat.completions.create(model="smart", messages=HI, max_tokens=2)
                    results.append((time.monotonic(), r.model, None))
                except Exception as exc:  # noqa: BLE001 - recorded and asserted on
                    results.append((time.monotonic(), None, repr(exc)))

        await asyncio.gather(*(worker() for _ in range(8)))
        await ac.close()

    async def scenario() -> tuple[float, float]:
        stop_at = time.monotonic() + 4.0
        task = asyncio.create_task(load(stop_at))
        await asyncio.sleep(1.0)
        switched_at = time.monotonic()
        write_atomically(path, {"model_list": [deployment("smart", new, "new-model")]})
        await asyncio.sleep(1.2)
        rejected_at = time.monotonic()
        write_atomically(path, "model_list:\n  - model_name: smart\n    litellm_params: {model: openai/x, api_base: nope}\n")
        await task
        return switched_at, rejected_at

    switched_at, rejected_at = asyncio.run(scenario())
    failures = [r for r in results if r[2] is not None]
    assert not failures, failures[:5]
    assert len(results) > 100
    # every request that finished more than a second after the edit was served by the new route
    late = [m for t, m, _ in results if t > switched_at + 1.0]
    assert late and set(late) == {"new-model"}
    # the bad edit changed nothing
    after_bad = [m for t, m, _ in results if t > rejected_at + 0.5]
    assert set(after_bad) == {"new-model"}
    text = metrics(gw)
    assert metric_value(text, "oss_config_reloads_total", result="rejected") == workers
    assert metric_value(text, "oss_config_reloads_total", result="ok") == workers
    assert "model_list[0].litellm_params.api_base: not a URL" in gw.log()


def test_reload_sees_symlink_swap_like_a_configmap(make_sim: Callable[..., Proc],
                                                   make_gateway: Callable[..., Proc], tmp_path: Path) -> None:
    a = make_sim("--model", "model-a")
    b = make_sim("--model", "model-b")
    # the layout kubelet makes: router.yaml -> ..data/router.yaml, ..data -> ..<timestamp>
    v1 = tmp_path / "..2024_01"
    v1.mkdir()
    (v1 / "router.yaml").write_text(yaml.safe_dump({"model_list": [deployment("smart", a, "model-a")]}))
    (tmp_path / "..data").symlink_to(v1.name)
    (tmp_path / "router.yaml").symlink_to("..data/router.yaml")
    gw = make_gateway(tmp_path / "router.yaml")
    assert served_by(gw) == "model-a"
    v2 = tmp_path / "..2024_02"
    v2.mkdir()
    (v2 / "router.yaml").write_text(yaml.safe_dump({"model_list": [deployment("smart", b, "model-b")]}))
    (tmp_path / "..data_tmp").symlink_to(v2.name)
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    assert wait_for_model(gw, "model-b") < 1.0


def test_sighup_and_admin_reload(make_sim: Callable[..., Proc], make_gateway: Callable[..., Proc]) -> None:
    a = make_sim("--model", "model-a")
    b = make_sim("--model", "model-b")
    key = "sk-test-master"
    cfg_a = {"model_list": [deployment("smart", a, "model-a")], "general_settings": {"master_key": key}}
    cfg_b = {"model_list": [deployment("smart", b, "model-b")], "general_settings": {"master_key": key}}
    # a long poll interval, so only the explicit triggers can apply the edit in time
    gw = make_gateway(cfg_a, workers=2, env={"GATEWAY_RELOAD_INTERVAL": "60"})
    path: Path = gw.extra["config_path"]  # type: ignore[assignment]
    auth = {"Authorization": f"Bearer {key}"}

    def model() -> str:
        r = httpx.post(f"{gw.url}/v1/chat/completions", headers=auth, timeout=5,
                       json={"model": "smart", "messages": HI, "max_tokens": 1})
        return str(r.json()["model"])

    path.write_text(yaml.safe_dump(cfg_b))
    gw.signal(signal.SIGHUP)
    time.sleep(0.5)
    assert {model() for _ in range(20)} == {"model-b"}  # every worker
    path.write_text(yaml.safe_dump(cfg_a))
    r = httpx.post(f"{gw.url}/admin/reload", headers=auth, timeout=5)
    assert r.status_code == 200 and r.json()["status"] == "reloaded"
    time.sleep(0.5)
    assert {model() for _ in range(20)} == {"model-a"}
    path.write_text("model_list: [")
    r = httpx.post(f"{gw.url}/admin/reload", headers=auth, timeout=5)
    assert r.status_code == 400
    assert {model() for _ in range(10)} == {"model-a"}
