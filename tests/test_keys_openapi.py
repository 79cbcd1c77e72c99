"""The served OpenAPI spec declares the request schema of every endpoint, and a schemathesis run
against a live gateway (master key, state Redis) finds no 5xx and no crash."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.helpers import deployment
from tests.procs import Proc, start_gateway, start_simulator

MASTER = "sk-master-openapi-0123456789"


@pytest.fixture(scope="module")
def gateway(redis_server: Proc) -> Iterator[Proc]:
    sim = start_simulator()
    cfg = {"model_list": [deployment("smart", sim, "sim-smart", output_cost_per_token=0.001)]}
    gw = start_gateway(cfg, env={"GATEWAY_MASTER_KEY": MASTER, "GATEWAY_STATE_REDIS_URL": redis_server.extra["url"],
                                 "GATEWAY_STATE_KEY_PREFIX": f"st{uuid.uuid4().hex[:6]}"})
    yield gw
    gw.stop()
    sim.stop()


def test_every_endpoint_declares_its_request_schema(gateway: Proc) -> None:
    spec = httpx.get(f"{gateway.url}/openapi.json", timeout=5).json()
    paths = spec["paths"]
    for path in ("/key/generate", "/key/update", "/key/delete", "/team/new", "/team/update", "/team/delete",
                 "/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
        body = paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body, path
    generate = spec["components"]["schemas"]["GenerateKeyRequest"]["properties"]
    for field in ("key_alias", "team_id", "models", "max_budget", "budget_duration", "rpm_limit", "tpm_limit",
                  "max_parallel_requests", "duration", "metadata"):
        assert field in generate
    params = {p["name"] for p in paths["/spend/logs"]["get"]["parameters"]}
    assert {"api_key", "team_id", "start_date", "end_date", "format"} <= params
    assert {p["name"] for p in paths["/key/info"]["get"]["parameters"]} >= {"key"}


def test_schemathesis_finds_no_server_error(gateway: Proc) -> None:
    pytest.importorskip("schemathesis", reason="schemathesis is in the dev extras: pip install -e .[dev]")
    exe = shutil.which("schemathesis") or shutil.which("st")
    cmd = [exe] if exe else [sys.executable, "-m", "schemathesis.cli"]
    # one worker: hypothesis' lambda-source introspection is not thread-safe on CPython 3.11
    run = subprocess.run([*cmd, "run", f"{gateway.url}/openapi.json", "-H", f"Authorization: Bearer {MASTER}",
                          "--checks", "not_a_server_error", "--phases", "coverage,fuzzing", "--max-examples", "25",
                          "--seed", "4", "--workers", "1", "--suppress-health-check", "all",
                          "--request-timeout", "10"],
                         capture_output=True, text=True, timeout=120)
    out = run.stdout[-5000:] + run.stderr[-2000:]
    assert run.returncode == 0, out
    assert "passed" in out and "Server error" not in out
    errors = [line for line in gateway.log().splitlines() if " ERROR " in line or "Traceback" in line]
    assert not errors, errors[:5]
