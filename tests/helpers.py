"""Helpers shared by the tests: config entries for simulators, simulator control, metric reading."""

from __future__ import annotations

from typing import Any

import httpx

from tests.procs import Proc


def deployment(alias: str, sim: Proc, model: str = "sim-model", **info: Any) -> dict[str, Any]:
    """A model_list entry routing `alias` to a simulator."""
    params: dict[str, Any] = {"model": f"openai/{model}", "api_base": f"{sim.url}/v1"}
    for k in ("weight", "timeout", "stream_timeout", "rpm", "tpm", "max_parallel_requests", "api_key"):
        if k in info:
            params[k] = info.pop(k)
    entry: dict[str, Any] = {"model_name": alias, "litellm_params": params}
    if info:
        entry["model_info"] = info
    return entry


def sim_stats(sim: Proc) -> dict[str, Any]:
    return httpx.get(f"{sim.url}/sim/stats", timeout=5).json()


def sim_set(sim: Proc, **config: Any) -> None:
    httpx.post(f"{sim.url}/sim/config", json=config, timeout=5).raise_for_status()


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def metrics(gw: Proc) -> str:
    return httpx.get(f"{gw.url}/metrics", timeout=5).text
