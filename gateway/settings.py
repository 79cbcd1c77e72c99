"""Process settings from the environment (GATEWAY_*), validated once at start."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.safejson import DEFAULT_MAX_DEPTH, MAX_DEPTH_CEILING


class Settings(BaseSettings):
    """Every field is read from `GATEWAY_<NAME>`; the README lists them."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore")

    config: Path = Field(Path("router.yaml"), description="path of router.yaml")
    host: str = "0.0.0.0"
    port: int = Field(4000, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=64)
    redis_url: str | None = Field(None, description="Redis for the response cache (may evict)")
    state_redis_url: str | None = Field(
        None, description="Redis for keys, spend, limits and the ledger (must not evict); defaults to redis_url"
    )
    master_key: str | None = Field(None, description="used when router.yaml sets no general_settings.master_key")
    max_request_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="larger bodies get 413")
    max_json_depth: int = Field(DEFAULT_MAX_DEPTH, ge=2, le=MAX_DEPTH_CEILING,
                                description="bodies nesting objects/arrays deeper get 400, checked before "
                                            "any parse (docs/security.md)")
    reload_interval: float = Field(0.25, gt=0, description="seconds between checks of router.yaml")
    health_check_interval: float = Field(5.0, gt=0, description="seconds between deployment health checks")
    health_check_timeout: float = Field(3.0, gt=0)
    grace_period: float = Field(30.0, ge=0, description="SIGTERM: seconds to finish in-flight requests")
    upstream_connections: int = Field(1000, ge=1, description="connection pool size per worker")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    metrics_dir: Path | None = Field(None, description="prometheus multiprocess dir (made and cleaned at start)")
    # virtual keys, limits, spend (docs/keys.md)
    limits_fail_mode: Literal["open", "closed"] = Field(
        "open", description="state Redis down: keys with limits pass (open) or get 503 (closed)")
    state_redis_timeout: float = Field(1.0, gt=0, description="seconds a state Redis reply may take before it "
                                                              "counts as down")
    state_key_prefix: str = Field("gw", min_length=1, max_length=64, description="prefix of every state Redis key")
    key_cache_ttl: float = Field(5.0, ge=0, description="seconds a verified key without limits is reused "
                                                        "in-process (a delete or new limit applies within this)")
    key_grace_period: float = Field(60.0, ge=0, description="state Redis down: keys verified this recently "
                                                           "keep working")
    inflight_lease_seconds: float = Field(900.0, gt=0, description="a request's parallel slot and budget "
                                                                   "reservation expire after this (crash safety)")
    ledger_retention_days: float = Field(400.0, ge=0, description="spend ledger entries older than this are "
                                                                  "trimmed; 0 = no ledger")
    ledger_backlog: int = Field(100_000, ge=0, description="settlements kept in memory while the state Redis "
                                                           "is down")
    budget_default_max_tokens: int = Field(4096, ge=1, description="output tokens reserved against a budget "
                                                                   "when neither the request nor the deployment "
                                                                   "caps them")
    canary_tick: float = Field(1.0, gt=0, le=60, description="seconds between canary evaluations (flush "
                                                             "outcomes, judge the step, advance or abort)")
    comparison_records: int = Field(100_000, ge=100, le=10_000_000, description="shadow comparison records "
                                    "kept in the state Redis stream, newest (about 700 bytes each); without "
                                    "Redis each worker keeps 20,000")
    admin_max_body_bytes: int = Field(65536, ge=1024, description="larger admin request bodies get 413")
