"""`gateway-sim` / `python -m gateway.simulator`: run the upstream simulator."""

from __future__ import annotations

import argparse
import socket
from collections.abc import Sequence

from gateway.simulator.config import ERROR_STYLES, FAULTS, SimConfig, SimOptions, parse_fault
from gateway.simulator.engine import EngineParams


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gateway-sim",
        description="OpenAI-compatible upstream that behaves like vLLM's server, for tests and benchmarks.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--model",
        "--served-model-name",
        dest="models",
        action="append",
        metavar="NAME",
        help="served model name (repeatable; default sim-model); the first is the default",
    )
    p.add_argument(
        "--strict-models", action="store_true", help="404 for models not served (default: accept any)"
    )
    p.add_argument("--max-model-len", type=int, default=8192, help="context window in tokens (default 8192)")
    p.add_argument(
        "--default-tokens",
        type=int,
        default=16,
        help="completion tokens when the request has no max_tokens (default 16)",
    )
    p.add_argument("--embedding-dim", type=int, default=384, help="embedding dimensions (default 384)")
    p.add_argument("--ttft", type=float, default=0.0, help="seconds to first token (default 0)")
    p.add_argument("--tps", type=float, default=0.0, help="tokens per second after the first (0 = no delay)")
    p.add_argument("--fault", choices=("none", *FAULTS), default="none", help="fault injected into requests")
    p.add_argument("--fault-rate", type=float, default=1.0, help="share of requests that get --fault (0..1)")
    p.add_argument(
        "--fault-after-tokens",
        type=int,
        default=None,
        help="streaming: fire the fault after N token chunks (drop/reset default 0; -1 = before "
        "the response)",
    )
    p.add_argument("--retry-after", type=float, default=1.0, help="Retry-After seconds of the 429 fault")
    p.add_argument(
        "--no-stream-usage",
        action="store_true",
        help="like llama.cpp's server: ignore stream_options.include_usage",
    )
    p.add_argument(
        "--error-style",
        choices=ERROR_STYLES,
        default="flat",
        help='error body: flat = vLLM {"object":"error",...} (default), nested = {"error":{...}}',
    )
    p.add_argument(
        "--max-num-seqs",
        type=int,
        default=256,
        help="requests generating at once; more wait (vllm:num_requests_waiting)",
    )
    p.add_argument(
        "--kv-cache-tokens",
        type=int,
        default=65536,
        help="KV cache capacity in tokens, for vllm:kv_cache_usage_perc",
    )
    g = p.add_argument_group(
        "engine model",
        "vLLM's scheduler and prefix cache (gateway/simulator/engine.py): on when --prefill-tps or "
        "--decode-tps is given; then time to first token and token pace come from it (--ttft/--tps are ignored)",
    )
    g.add_argument("--prefill-tps", type=float, default=None,
                   help="prompt tokens computed per second (default with the model: 8000)")
    g.add_argument("--decode-tps", type=float, default=None,
                   help="tokens/s of one sequence at batch 1 (default with the model: 50)")
    g.add_argument("--batch-slowdown", type=float, default=0.02,
                   help="F: a step takes (1 + F*(batch-1))/decode-tps + prefill tokens/prefill-tps (default 0.02)")
    g.add_argument("--block-size", type=int, default=16,
                   help="tokens per KV block (default 16 as vLLM on GPU; vLLM's CPU build uses 128)")
    g.add_argument("--max-num-batched-tokens", type=int, default=8192,
                   help="tokens per engine step, chunked prefill (default 8192)")
    g.add_argument("--enable-prefix-caching", dest="prefix_caching", action="store_true", default=True,
                   help="reuse cached KV blocks of equal prompt prefixes (the default)")
    g.add_argument("--no-enable-prefix-caching", dest="prefix_caching", action="store_false")
    p.add_argument("--enable-prompt-tokens-details", action="store_true",
                   help="usage.prompt_tokens_details.cached_tokens, as vLLM's flag of that name")
    p.add_argument("--no-metrics", dest="serve_metrics", action="store_false",
                   help="no /metrics endpoint (404), like an OpenAI-compatible server that is not vLLM")
    p.add_argument(
        "--no-dcgm",
        dest="dcgm",
        action="store_false",
        help="do not serve the DCGM_FI_DEV_* GPU series on /metrics (served by default)",
    )
    p.add_argument("--dcgm", dest="dcgm", action="store_true", help="serve the DCGM series (the default)")
    p.add_argument(
        "--gpu-index",
        dest="gpu_indices",
        type=int,
        action="append",
        metavar="N",
        help="GPU index in the dcgm series (repeatable for several GPUs; default 0)",
    )
    p.add_argument("--gpu-model", default="NVIDIA H100 80GB HBM3", help="dcgm modelName label")
    p.add_argument("--gpu-memory-mib", type=int, default=81559, help="GPU frame buffer size in MiB")
    p.add_argument("--hostname", default=socket.gethostname(), help="dcgm Hostname label")
    p.add_argument("--seed", type=int, default=0, help="seed of the fault-rate dice")
    p.add_argument(
        "--shutdown-timeout", type=float, default=1.0, help="seconds to let requests finish on SIGTERM/SIGINT"
    )
    p.set_defaults(dcgm=True)
    return p


def engine_params(args: argparse.Namespace) -> EngineParams | None:
    """The engine model's parameters, or None when neither --prefill-tps nor --decode-tps is given."""
    if args.prefill_tps is None and args.decode_tps is None:
        return None
    defaults = EngineParams()
    return EngineParams(
        prefill_tps=defaults.prefill_tps if args.prefill_tps is None else args.prefill_tps,
        decode_tps=defaults.decode_tps if args.decode_tps is None else args.decode_tps,
        batch_slowdown=args.batch_slowdown,
        block_size=args.block_size,
        num_blocks=max(1, args.kv_cache_tokens // max(1, args.block_size)),
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        prefix_caching=args.prefix_caching,
    )


def options_from_args(args: argparse.Namespace) -> SimOptions:
    config = SimConfig(
        fault=parse_fault(args.fault),
        fault_rate=args.fault_rate,
        fault_after_tokens=args.fault_after_tokens,
        ttft=args.ttft,
        tps=args.tps,
        no_stream_usage=args.no_stream_usage,
        retry_after=args.retry_after,
        default_tokens=args.default_tokens,
        max_model_len=args.max_model_len,
    )
    return SimOptions(
        models=tuple(args.models or ["sim-model"]),
        strict_models=args.strict_models,
        embedding_dim=args.embedding_dim,
        error_style=args.error_style,
        max_num_seqs=args.max_num_seqs,
        kv_cache_tokens=args.kv_cache_tokens,
        engine=engine_params(args),
        prompt_tokens_details=args.enable_prompt_tokens_details,
        serve_metrics=args.serve_metrics,
        dcgm=args.dcgm,
        gpu_indices=tuple(args.gpu_indices or [0]),
        gpu_model=args.gpu_model,
        gpu_memory_mib=args.gpu_memory_mib,
        hostname=args.hostname,
        seed=args.seed,
        config=config,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        # validate the numbers the same way POST /sim/config does
        SimConfig().merged(
            {k: v for k, v in options_from_args(args).config.to_dict().items() if k != "fault"}
        )
    except ValueError as exc:
        parser.error(str(exc))
    for flag in ("embedding_dim", "max_num_seqs", "kv_cache_tokens", "gpu_memory_mib", "block_size",
                 "max_num_batched_tokens"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1")
    params = engine_params(args)
    if params is not None:
        try:
            params.validate()
        except ValueError as exc:
            parser.error(f"engine model: {exc}")
        if params.num_blocks * params.block_size < args.max_model_len:
            # vLLM refuses to start when one sequence of max_model_len cannot fit in the KV cache
            parser.error(f"--kv-cache-tokens ({params.num_blocks * params.block_size} usable in blocks of "
                         f"{params.block_size}) must hold --max-model-len ({args.max_model_len})")
    from gateway.simulator.server import run

    run(options_from_args(args), args.host, args.port, args.shutdown_timeout)
