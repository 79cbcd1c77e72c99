"""router.yaml: LiteLLM proxy's config format, loaded and validated once into typed, immutable objects.

Every problem is reported with its YAML path (`model_list[2].litellm_params.api_base: not a URL`).
Keys LiteLLM knows but the gateway does not use are accepted and reported once as ignored.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from gateway.rollout.options import CanaryOptions, ShadowOptions, parse_canary, parse_shadow
from gateway.strategies import STRATEGIES
from gateway.strategies.engine_aware import EngineAwareOptions

# Providers served natively: any OpenAI-compatible server (vLLM, Ollama, llama.cpp, TGI, SGLang).
NATIVE_PROVIDERS = frozenset({"openai", "hosted_vllm", "openai_compatible", "custom_openai"})
ROUTING_STRATEGIES = frozenset(STRATEGIES)
# LiteLLM strategies we accept but serve as simple-shuffle (reported at load).
LITELLM_ONLY_STRATEGIES = frozenset(
    {"usage-based-routing", "usage-based-routing-v2", "latency-based-routing", "cost-based-routing"}
)
MAX_CACHE_ENTRIES = 10_000_000  # cache_params.max_entries: ~3 kB each, so 30 GB of index at most
CACHE_TYPES = frozenset({"redis-semantic", "redis", "local", "local-semantic", "qdrant-semantic", "s3", "disk"})

_LITELLM_PARAMS_USED = {
    "model", "api_base", "base_url", "api_key", "timeout", "stream_timeout", "rpm", "tpm",
    "max_parallel_requests", "weight", "input_cost_per_token", "output_cost_per_token", "max_retries",
    "silent_model",
}
# Passed on to the litellm library for non-native providers; meaningless for native ones.
_LITELLM_PROVIDER_PARAMS = {
    "api_version", "organization", "custom_llm_provider", "region_name", "aws_access_key_id",
    "aws_secret_access_key", "aws_region_name", "aws_session_token", "vertex_project", "vertex_location",
    "vertex_credentials", "api_type", "deployment_id", "litellm_credential_name", "extra_headers",
    "headers", "drop_params", "temperature", "max_tokens", "top_p", "seed", "use_in_pass_through",
}
_MODEL_INFO_USED = {
    "id", "max_input_tokens", "max_tokens", "max_output_tokens", "input_cost_per_token",
    "output_cost_per_token", "gpu_hourly_cost_usd", "gpu_count", "mode", "health_check", "max_num_seqs",
    "supports",
}
# The APIs a deployment serves natively (model_info.supports); the others are translated to chat/completions.
APIS = ("chat", "completions", "embeddings", "responses", "messages")
NATIVE_BY_PROVIDER = {"hosted_vllm": frozenset(APIS)}  # vLLM serves Responses and Messages itself
DEFAULT_SUPPORTS = frozenset({"chat", "completions", "embeddings"})
_ROUTER_SETTINGS_USED = {
    "routing_strategy", "num_retries", "timeout", "stream_timeout", "allowed_fails", "cooldown_time",
    "fallbacks", "context_window_fallbacks", "default_fallbacks", "retry_after", "engine_aware",
    "shadow", "canary",
}
_TOP_LEVEL_USED = {"model_list", "router_settings", "litellm_settings", "general_settings"}
_GENERAL_USED = {"master_key", "background_health_checks", "health_check_interval", "max_request_size_mb"}
_LITELLM_SETTINGS_USED = {"cache", "cache_params", "num_retries", "request_timeout", "fallbacks",
                          "context_window_fallbacks", "default_fallbacks"}

ENV_PREFIX = "os.environ/"


class ConfigError(Exception):
    """The config failed validation; `problems` lists each one with its YAML path."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Deployment:
    alias: str
    id: str
    index: int  # position in model_list
    model: str  # as written: "openai/gpt-oss-120b"
    provider: str  # "openai", "hosted_vllm", "bedrock", ...
    served_model: str  # what the upstream receives as `model` (native) and the `model` metric label
    native: bool  # served by the gateway's own OpenAI-compatible client
    api_base: str | None
    api_key: str | None = field(repr=False)
    timeout: float
    stream_timeout: float | None
    rpm: int | None
    tpm: int | None
    max_parallel_requests: int | None
    weight: float
    max_input_tokens: int | None
    max_output_tokens: int | None
    input_cost_per_token: float
    output_cost_per_token: float
    gpu_hourly_cost_usd: float | None
    gpu_count: int
    # model_info.mode, as LiteLLM writes it: validated but informational. It does not restrict which endpoints
    # the deployment takes (`supports` says which APIs it serves natively); its one use: engine-aware routing
    # does not poll an "embedding" deployment's engine metrics.
    mode: str  # "chat" | "completion" | "embedding"
    health_check: bool
    max_num_seqs: int | None = None  # the engine's batch size (vLLM --max-num-seqs), for engine-aware routing
    supports: frozenset[str] = frozenset({"chat", "completions", "embeddings"})  # APIs served natively
    provider_params: Mapping[str, Any] = field(default_factory=dict, repr=False)
    silent_model: str | None = None  # LiteLLM's traffic mirroring: an alias this deployment's requests mirror to

    @property
    def gpu_cost_per_hour(self) -> float | None:
        return None if self.gpu_hourly_cost_usd is None else self.gpu_hourly_cost_usd * self.gpu_count

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return prompt_tokens * self.input_cost_per_token + completion_tokens * self.output_cost_per_token


@dataclass(frozen=True)
class RouterSettings:
    routing_strategy: str = "simple-shuffle"
    num_retries: int = 2
    timeout: float = 600.0
    stream_timeout: float | None = None
    allowed_fails: int = 3
    cooldown_time: float = 30.0
    fallbacks: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    context_window_fallbacks: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    default_fallbacks: tuple[str, ...] = ()
    engine_aware: EngineAwareOptions = field(default_factory=EngineAwareOptions)
    shadow: Mapping[str, ShadowOptions] = field(default_factory=dict)  # alias -> mirror (gateway/rollout)
    canary: Mapping[str, CanaryOptions] = field(default_factory=dict)  # alias -> stepped rollout


@dataclass(frozen=True)
class CacheParams:
    enabled: bool = False
    type: str = "redis-semantic"
    ttl: float | None = None
    similarity_threshold: float | None = None
    redis_url: str | None = None
    namespace: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GatewayConfig:
    deployments: tuple[Deployment, ...]
    aliases: Mapping[str, tuple[Deployment, ...]]
    router: RouterSettings
    cache: CacheParams
    master_key: str | None = field(repr=False)
    background_health_checks: bool
    health_check_interval: float | None
    max_request_bytes: int | None
    ignored: tuple[str, ...]
    notes: tuple[str, ...]
    digest: str

    def describe(self) -> str:
        """alias → deployments, one line per deployment (what `gateway check` prints)."""
        lines: list[str] = []
        for alias, deps in self.aliases.items():
            lines.append(f"{alias}:")
            for d in deps:
                where = d.api_base if d.native else f"litellm provider '{d.provider}'"
                limits = ", ".join(
                    f"{k}={v}" for k, v in (("rpm", d.rpm), ("tpm", d.tpm), ("max_parallel", d.max_parallel_requests),
                                            ("max_input_tokens", d.max_input_tokens)) if v is not None
                )
                lines.append(f"  - {d.id}: {d.served_model} @ {where} (weight {d.weight:g}{', ' + limits if limits else ''})")
        r = self.router
        lines.append(f"routing: {r.routing_strategy}, num_retries={r.num_retries}, timeout={r.timeout:g}s, "
                     f"allowed_fails={r.allowed_fails}, cooldown_time={r.cooldown_time:g}s")
        for name, table in (("fallbacks", r.fallbacks), ("context_window_fallbacks", r.context_window_fallbacks)):
            for src, dst in table.items():
                lines.append(f"{name}: {src} -> {', '.join(dst)}")
        for src, sh in r.shadow.items():
            lines.append(f"shadow: {src} -> {sh.to} ({sh.share:g}% of requests, at most {sh.max_concurrency} "
                         f"in flight per worker)")
        for src, ca in r.canary.items():
            lines.append(f"canary: {src} -> {ca.to} (steps {'/'.join(f'{x:g}' for x in ca.steps)}%, every "
                         f"{ca.every:g}s)")
        lines.append(f"cache: {'on (' + self.cache.type + ')' if self.cache.enabled else 'off'}")
        lines.append(f"auth: {'master key set' if self.master_key else 'open (no master_key)'}")
        return "\n".join(lines)


class _Problems:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.ignored: list[str] = []
        self.notes: list[str] = []

    def error(self, path: str, message: str) -> None:
        self.errors.append(f"{path}: {message}")


def _resolve_env(value: Any, path: str, p: _Problems, required: bool) -> Any:
    if isinstance(value, str) and value.startswith(ENV_PREFIX):
        name = value[len(ENV_PREFIX):]
        resolved = os.environ.get(name)
        if resolved is None or resolved == "":
            if required:
                p.error(path, f"environment variable {name} is not set")
            else:
                p.notes.append(f"{path}: environment variable {name} is not set; treated as absent")
            return None
        return resolved
    return value


def _number(value: Any, path: str, p: _Problems, *, minimum: float = 0.0, integer: bool = False,
            allow_zero: bool = True) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            p.error(path, f"not a number: {value!r}")
            return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        p.error(path, f"not a number: {value!r}")
        return None
    if integer and float(value) != int(value):
        p.error(path, f"not a whole number: {value!r}")
        return None
    if value < minimum or (not allow_zero and value == 0):
        p.error(path, f"must be {'>' if not allow_zero else '>='} {minimum:g}, got {value!r}")
        return None
    return float(value)


def _int(value: Any, path: str, p: _Problems, *, minimum: int = 0, allow_zero: bool = True) -> int | None:
    n = _number(value, path, p, minimum=minimum, integer=True, allow_zero=allow_zero)
    return None if n is None else int(n)


def _mapping(value: Any, path: str, p: _Problems) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        p.error(path, f"must be a mapping, got {type(value).__name__}")
        return {}
    return value


def _check_url(value: Any, path: str, p: _Problems) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        p.error(path, "not a URL")
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        p.error(path, f"not a URL: {value!r} (expected http://host:port/v1)")
        return None
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        p.error(path, f"not a URL: bad port in {value!r}")
        return None
    return value.rstrip("/")


def _ignore_unknown(section: Mapping[str, Any], known: set[str], path: str, p: _Problems) -> None:
    for key in section:
        if key not in known:
            p.ignored.append(f"{path}.{key}" if path else str(key))


def _derive_id(alias: str, served_model: str, api_base: str | None, index: int) -> str:
    host = ""
    if api_base:
        parts = urlsplit(api_base)
        host = f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)
    base = f"{alias}/{served_model}@{host}" if host else f"{alias}/{served_model}"
    return re.sub(r"[^A-Za-z0-9_.:@/-]", "-", base) if base else f"deployment-{index}"


def _parse_deployment(entry: Any, index: int, p: _Problems) -> Deployment | None:
    path = f"model_list[{index}]"
    if not isinstance(entry, Mapping):
        p.error(path, "must be a mapping with model_name and litellm_params")
        return None
    _ignore_unknown(entry, {"model_name", "litellm_params", "model_info"}, path, p)
    alias = entry.get("model_name")
    if not isinstance(alias, str) or not alias.strip():
        p.error(f"{path}.model_name", "required: the alias apps send as `model`")
        return None
    lp = _mapping(entry.get("litellm_params"), f"{path}.litellm_params", p)
    info = _mapping(entry.get("model_info"), f"{path}.model_info", p)
    lpp = f"{path}.litellm_params"
    mip = f"{path}.model_info"
    model = lp.get("model")
    if not isinstance(model, str) or not model.strip():
        p.error(f"{lpp}.model", "required: e.g. openai/gpt-oss-120b")
        return None
    provider, _, name = model.partition("/")
    if not name:
        provider, name = "openai", model
    custom = lp.get("custom_llm_provider")
    if isinstance(custom, str) and custom:
        provider = custom
    native = provider in NATIVE_PROVIDERS
    api_base = _check_url(_resolve_env(lp.get("api_base", lp.get("base_url")), f"{lpp}.api_base", p, True),
                          f"{lpp}.api_base", p)
    if native and api_base is None and "api_base" not in lp and "base_url" not in lp:
        if provider == "openai":
            api_base = "https://api.openai.com/v1"
        else:
            p.error(f"{lpp}.api_base", f"required for {provider}/ models: the server's URL, e.g. http://host:8000/v1")
    api_key = _resolve_env(lp.get("api_key"), f"{lpp}.api_key", p, False)
    if api_key is not None and not isinstance(api_key, str):
        p.error(f"{lpp}.api_key", "must be a string")
        api_key = None
    timeout = _number(lp.get("timeout"), f"{lpp}.timeout", p, allow_zero=False)
    stream_timeout = _number(lp.get("stream_timeout"), f"{lpp}.stream_timeout", p, allow_zero=False)
    rpm = _int(lp.get("rpm"), f"{lpp}.rpm", p, allow_zero=False)
    tpm = _int(lp.get("tpm"), f"{lpp}.tpm", p, allow_zero=False)
    mpr = _int(lp.get("max_parallel_requests"), f"{lpp}.max_parallel_requests", p, allow_zero=False)
    weight = _number(lp.get("weight", 1), f"{lpp}.weight", p)
    known_lp = _LITELLM_PARAMS_USED | (set() if native else _LITELLM_PROVIDER_PARAMS)
    _ignore_unknown(lp, known_lp, lpp, p)
    _ignore_unknown(info, _MODEL_INFO_USED, mip, p)
    in_cost = _number(info.get("input_cost_per_token", lp.get("input_cost_per_token", 0)),
                      f"{mip}.input_cost_per_token", p)
    out_cost = _number(info.get("output_cost_per_token", lp.get("output_cost_per_token", 0)),
                       f"{mip}.output_cost_per_token", p)
    gpu_cost = _number(info.get("gpu_hourly_cost_usd"), f"{mip}.gpu_hourly_cost_usd", p)
    gpu_count = _int(info.get("gpu_count", 1), f"{mip}.gpu_count", p, allow_zero=False)
    max_in = _int(info.get("max_input_tokens"), f"{mip}.max_input_tokens", p, allow_zero=False)
    max_out = _int(info.get("max_output_tokens", info.get("max_tokens")), f"{mip}.max_output_tokens", p,
                   allow_zero=False)
    max_num_seqs = _int(info.get("max_num_seqs"), f"{mip}.max_num_seqs", p, allow_zero=False)
    supports = NATIVE_BY_PROVIDER.get(provider, DEFAULT_SUPPORTS) if native else DEFAULT_SUPPORTS
    if "supports" in info:
        raw = info["supports"]
        if not isinstance(raw, list) or not all(isinstance(x, str) and x in APIS for x in raw):
            p.error(f"{mip}.supports", f"must be a list of: {', '.join(APIS)}")
        else:
            supports = frozenset(raw)
    mode = info.get("mode", "chat")
    if mode not in ("chat", "completion", "embedding"):
        p.error(f"{mip}.mode", f"must be chat, completion or embedding, got {mode!r}")
        mode = "chat"
    health = info.get("health_check", True)
    if not isinstance(health, bool):
        p.error(f"{mip}.health_check", "must be true or false")
        health = True
    dep_id = info.get("id")
    if dep_id is not None and (not isinstance(dep_id, (str, int)) or str(dep_id).strip() == ""):
        p.error(f"{mip}.id", "must be a non-empty string")
        dep_id = None
    provider_params = {k: v for k, v in lp.items() if k in _LITELLM_PROVIDER_PARAMS}
    silent = lp.get("silent_model")
    if silent is not None and (not isinstance(silent, str) or not silent.strip()):
        p.error(f"{lpp}.silent_model", "must be an alias (model_name) to mirror this deployment's requests to")
        silent = None
    return Deployment(
        alias=alias,
        id=str(dep_id) if dep_id is not None else _derive_id(alias, name, api_base, index),
        index=index,
        model=model,
        provider=provider,
        served_model=name,
        native=native,
        api_base=api_base,
        api_key=api_key,
        timeout=timeout or 0.0,  # 0 = use router_settings.timeout (filled in below)
        stream_timeout=stream_timeout,
        rpm=rpm,
        tpm=tpm,
        max_parallel_requests=mpr,
        weight=1.0 if weight is None else weight,
        max_input_tokens=max_in,
        max_output_tokens=max_out,
        input_cost_per_token=in_cost or 0.0,
        output_cost_per_token=out_cost or 0.0,
        gpu_hourly_cost_usd=gpu_cost,
        gpu_count=gpu_count or 1,
        mode=str(mode),
        health_check=health,
        max_num_seqs=max_num_seqs,
        supports=supports,
        provider_params=provider_params,
        silent_model=silent,
    )


def _parse_fallbacks(value: Any, path: str, p: _Problems) -> dict[str, tuple[str, ...]]:
    """LiteLLM writes fallbacks as a list of one-key mappings: [{smart: [fast]}, {fast: [long]}]."""
    out: dict[str, tuple[str, ...]] = {}
    if value is None:
        return out
    items = value if isinstance(value, list) else [value] if isinstance(value, Mapping) else None
    if items is None:
        p.error(path, "must be a list like [{smart: [fast]}]")
        return out
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            p.error(f"{path}[{i}]", "must be a mapping like {smart: [fast]}")
            continue
        for src, dst in item.items():
            targets = [dst] if isinstance(dst, str) else dst
            if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
                p.error(f"{path}[{i}].{src}", "must be a list of aliases")
                continue
            out[str(src)] = out.get(str(src), ()) + tuple(targets)
    return out


def _parse_router(rs: Mapping[str, Any], ls: Mapping[str, Any], p: _Problems) -> RouterSettings:
    _ignore_unknown(rs, _ROUTER_SETTINGS_USED, "router_settings", p)
    strategy = rs.get("routing_strategy", "simple-shuffle")
    if strategy in LITELLM_ONLY_STRATEGIES:
        p.notes.append(f"router_settings.routing_strategy: {strategy} is served as simple-shuffle")
        strategy = "simple-shuffle"
    elif strategy not in ROUTING_STRATEGIES:
        p.error("router_settings.routing_strategy",
                f"unknown strategy {strategy!r} (use one of: {', '.join(sorted(ROUTING_STRATEGIES))})")
        strategy = "simple-shuffle"

    def pick(key: str) -> Any:
        return rs.get(key, ls.get(key))

    num_retries = _int(pick("num_retries"), "router_settings.num_retries", p)
    timeout = _number(rs.get("timeout", ls.get("request_timeout")), "router_settings.timeout", p, allow_zero=False)
    stream_timeout = _number(rs.get("stream_timeout"), "router_settings.stream_timeout", p, allow_zero=False)
    allowed_fails = _int(rs.get("allowed_fails"), "router_settings.allowed_fails", p)
    cooldown = _number(rs.get("cooldown_time"), "router_settings.cooldown_time", p)
    default_fb = pick("default_fallbacks") or []
    if not isinstance(default_fb, list) or not all(isinstance(x, str) for x in default_fb):
        p.error("router_settings.default_fallbacks", "must be a list of aliases")
        default_fb = []
    ea_raw = rs.get("engine_aware") or {}
    if not isinstance(ea_raw, Mapping):
        p.error("router_settings.engine_aware", "must be a mapping of options")
        ea_raw = {}
    engine_aware, ea_problems = EngineAwareOptions.parse(ea_raw, "router_settings.engine_aware")
    shadow, sh_problems = parse_shadow(rs.get("shadow"), "router_settings.shadow")
    canary, ca_problems = parse_canary(rs.get("canary"), "router_settings.canary")
    for problem in (*ea_problems, *sh_problems, *ca_problems):
        where, _, what = problem.partition(": ")
        p.error(where, what)
    return RouterSettings(
        routing_strategy=str(strategy),
        num_retries=2 if num_retries is None else num_retries,
        timeout=600.0 if timeout is None else timeout,
        stream_timeout=stream_timeout,
        allowed_fails=3 if allowed_fails is None else allowed_fails,
        cooldown_time=30.0 if cooldown is None else cooldown,
        fallbacks=_parse_fallbacks(pick("fallbacks"), "router_settings.fallbacks", p),
        context_window_fallbacks=_parse_fallbacks(pick("context_window_fallbacks"),
                                                  "router_settings.context_window_fallbacks", p),
        default_fallbacks=tuple(default_fb),
        engine_aware=engine_aware,
        shadow=shadow,
        canary=canary,
    )


def _parse_cache(ls: Mapping[str, Any], p: _Problems) -> CacheParams:
    enabled = ls.get("cache", False)
    if not isinstance(enabled, bool):
        p.error("litellm_settings.cache", "must be true or false")
        enabled = False
    cp = _mapping(ls.get("cache_params"), "litellm_settings.cache_params", p)
    ctype = cp.get("type", "redis-semantic" if enabled else "local")
    if ctype not in CACHE_TYPES:
        p.error("litellm_settings.cache_params.type", f"unknown cache type {ctype!r} (use redis-semantic, redis or local)")
    elif ctype in ("qdrant-semantic", "s3", "disk"):
        p.notes.append(f"litellm_settings.cache_params.type: {ctype} is served by the gateway's own Redis cache")
    ttl = _number(cp.get("ttl"), "litellm_settings.cache_params.ttl", p, allow_zero=False)
    thr = _number(cp.get("similarity_threshold"), "litellm_settings.cache_params.similarity_threshold", p)
    if thr is not None and thr > 1:
        p.error("litellm_settings.cache_params.similarity_threshold", "must be between 0 and 1")
    redis_url = _resolve_env(cp.get("redis_url"), "litellm_settings.cache_params.redis_url", p, False)
    if redis_url is None and cp.get("host"):
        host = _resolve_env(cp.get("host"), "litellm_settings.cache_params.host", p, False)
        port = _resolve_env(cp.get("port", 6379), "litellm_settings.cache_params.port", p, False) or 6379
        password = _resolve_env(cp.get("password"), "litellm_settings.cache_params.password", p, False)
        if host:
            auth = f":{password}@" if password else ""
            redis_url = f"redis://{auth}{host}:{port}/0"
    namespace = cp.get("namespace")
    params = dict(cp)
    if params.get("max_entries", 0) is None:
        del params["max_entries"]  # null: the default
    elif "max_entries" in params:  # the semantic index of a replica holds at most this many (LRU)
        raw = cp["max_entries"]
        value = int(raw) if isinstance(raw, str) and raw.strip().isdigit() else raw
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CACHE_ENTRIES:
            p.error("litellm_settings.cache_params.max_entries",
                    f"must be a whole number from 1 to {MAX_CACHE_ENTRIES:,}, got {raw!r}")
            params.pop("max_entries")
        else:
            params["max_entries"] = value
    return CacheParams(
        enabled=enabled, type=str(ctype), ttl=ttl, similarity_threshold=thr, redis_url=redis_url,
        namespace=str(namespace) if namespace is not None else None, params=params,
    )


def _silent_models(router: RouterSettings, aliases: Mapping[str, tuple[Deployment, ...]], p: _Problems
                   ) -> RouterSettings:
    """LiteLLM's `litellm_params.silent_model` (traffic mirroring) is served as router_settings.shadow: the
    alias mirrors the share of its traffic that its deployments with a silent_model take (by weight)."""
    shadow = dict(router.shadow)
    for alias, deps in aliases.items():
        silent = [d for d in deps if d.silent_model]
        if not silent or alias in shadow:
            continue
        targets = {d.silent_model for d in silent}
        if len(targets) > 1:
            p.error(f"model_list[{silent[1].index}].litellm_params.silent_model",
                    f"the deployments of {alias!r} mirror to different models ({', '.join(sorted(map(str, targets)))})"
                    "; use router_settings.shadow")
            continue
        if silent[0].silent_model not in aliases:
            p.error(f"model_list[{silent[0].index}].litellm_params.silent_model",
                    f"unknown alias {silent[0].silent_model!r}")
            continue
        total = sum(d.weight for d in deps) or 1.0
        share = round(100.0 * sum(d.weight for d in silent) / total, 3)
        shadow[alias] = ShadowOptions(to=str(silent[0].silent_model), share=share)
        p.notes.append(f"model_list[{silent[0].index}].litellm_params.silent_model: {alias} mirrors {share:g}% of its "
                       f"requests to {silent[0].silent_model} (router_settings.shadow)")
    return replace(router, shadow=shadow) if shadow != router.shadow else router


def _check_rollouts(router: RouterSettings, aliases: Mapping[str, Any], ids: set[str], p: _Problems) -> None:
    """Shadow and canary name aliases (a shadow may name a deployment id) that model_list has."""
    for alias, sh in router.shadow.items():
        where = f"router_settings.shadow.{alias}"
        if alias not in aliases:
            p.error(where, f"unknown alias {alias!r}")
        if sh.to == alias:
            p.error(f"{where}.to", "an alias cannot mirror to itself")
        elif sh.to not in aliases and sh.to not in ids:
            p.error(f"{where}.to", f"unknown alias or deployment id {sh.to!r}")
        if sh.judge is not None and sh.judge not in aliases:
            p.error(f"{where}.judge", f"unknown alias {sh.judge!r}")
    for alias, ca in router.canary.items():
        where = f"router_settings.canary.{alias}"
        if alias not in aliases:
            p.error(where, f"unknown alias {alias!r}")
        if ca.to == alias:
            p.error(f"{where}.to", "an alias cannot be its own canary")
        elif ca.to not in aliases:
            p.error(f"{where}.to", f"unknown alias {ca.to!r}")


def parse_config(raw: Any, source: str = "") -> GatewayConfig:
    """Validate a parsed YAML document. Raises ConfigError naming every problem's path."""
    p = _Problems()
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(["(top level): must be a mapping with model_list"])
    _ignore_unknown(raw, _TOP_LEVEL_USED, "", p)
    model_list = raw.get("model_list")
    if not isinstance(model_list, list) or not model_list:
        p.error("model_list", "required: a list of deployments (model_name + litellm_params)")
        model_list = []
    rs = _mapping(raw.get("router_settings"), "router_settings", p)
    ls = _mapping(raw.get("litellm_settings"), "litellm_settings", p)
    gs = _mapping(raw.get("general_settings"), "general_settings", p)
    _ignore_unknown(ls, _LITELLM_SETTINGS_USED, "litellm_settings", p)
    _ignore_unknown(gs, _GENERAL_USED, "general_settings", p)
    router = _parse_router(rs, ls, p)
    deployments: list[Deployment] = []
    for i, entry in enumerate(model_list):
        dep = _parse_deployment(entry, i, p)
        if dep is not None:
            if dep.timeout == 0.0:
                dep = replace(dep, timeout=router.timeout)
            deployments.append(dep)
    seen: dict[str, int] = {}
    for d in deployments:
        if d.id in seen:
            p.error(f"model_list[{d.index}].model_info.id",
                    f"duplicate deployment id {d.id!r} (also model_list[{seen[d.id]}])")
        seen[d.id] = d.index
    aliases: dict[str, tuple[Deployment, ...]] = {}
    for d in deployments:
        aliases[d.alias] = aliases.get(d.alias, ()) + (d,)
    for name, table in (("fallbacks", router.fallbacks), ("context_window_fallbacks", router.context_window_fallbacks)):
        for src, dsts in table.items():
            if src not in aliases:
                p.error(f"router_settings.{name}", f"unknown alias {src!r}")
            for dst in dsts:
                if dst not in aliases:
                    p.error(f"router_settings.{name}.{src}", f"unknown alias {dst!r}")
    for dst in router.default_fallbacks:
        if dst not in aliases:
            p.error("router_settings.default_fallbacks", f"unknown alias {dst!r}")
    router = _silent_models(router, aliases, p)
    _check_rollouts(router, aliases, {d.id for d in deployments}, p)
    cache = _parse_cache(ls, p)
    embed_alias = cache.params.get("redis_semantic_cache_embedding_model")
    if embed_alias is not None:
        where = "litellm_settings.cache_params.redis_semantic_cache_embedding_model"
        if embed_alias not in aliases:
            p.error(where, f"unknown alias {embed_alias!r}")
        elif not all(d.native for d in aliases[embed_alias]):
            p.error(where, f"alias {embed_alias!r} must be served by OpenAI-compatible deployments")
    dim = cache.params.get("embedding_dim")
    if dim is not None and (not isinstance(dim, int) or isinstance(dim, bool) or dim < 1):
        p.error("litellm_settings.cache_params.embedding_dim", "must be a positive whole number")
    master_key = _resolve_env(gs.get("master_key"), "general_settings.master_key", p, False)
    if master_key is not None and not isinstance(master_key, str):
        p.error("general_settings.master_key", "must be a string")
        master_key = None
    bhc = gs.get("background_health_checks", True)
    if not isinstance(bhc, bool):
        p.error("general_settings.background_health_checks", "must be true or false")
        bhc = True
    hci = _number(gs.get("health_check_interval"), "general_settings.health_check_interval", p, allow_zero=False)
    mrs = _number(gs.get("max_request_size_mb"), "general_settings.max_request_size_mb", p, allow_zero=False)
    if p.errors:
        raise ConfigError(p.errors)
    return GatewayConfig(
        deployments=tuple(deployments),
        aliases=aliases,
        router=router,
        cache=cache,
        master_key=master_key,
        background_health_checks=bhc,
        health_check_interval=hci,
        max_request_bytes=int(mrs * 1024 * 1024) if mrs else None,
        ignored=tuple(p.ignored),
        notes=tuple(p.notes),
        digest=hashlib.sha256(source.encode()).hexdigest()[:16],
    )


def load_text(text: str) -> GatewayConfig:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "(document)"
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError([f"{where}: {problem}"]) from None
    return parse_config(raw, text)


def load_file(path: str | Path) -> GatewayConfig:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read ({exc.strerror})"]) from None
    return load_text(text)
