"""aiohttp application of the simulator: vLLM-like OpenAI endpoints, fault injection and test hooks."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import random
import socket
import struct
import time
from array import array
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from gateway import safejson, sse
from gateway.simulator import faults, generation, messages, responses, tokens
from gateway.simulator.config import DROP_FAULTS, SimConfig, SimOptions
from gateway.simulator.engine import SimEngine
from gateway.simulator.faults import SimError
from gateway.simulator.metrics import ModelLoad, SimMetrics

DONE = sse.DONE
SSE_HEADERS: Mapping[str, str] = MappingProxyType(
    {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
)
JSON = "application/json"
MAX_DIMENSIONS = 16384  # embeddings: a bigger `dimensions` is refused (the vector is built in memory)
VERSION = "0.0.0+gateway-sim"


@dataclass
class Stats:
    """Counters served by GET /sim/stats (zeroed by POST /sim/reset)."""

    requests: dict[str, int] = field(default_factory=dict)  # by path, every endpoint but /sim/*
    completed: int = 0  # inference requests answered in full (200, whole stream)
    cancelled: int = 0  # client went away before the simulator finished
    errors: int = 0  # error answers: validation, injected status faults, SSE error events
    faults: dict[str, int] = field(default_factory=dict)  # injected faults by name
    models: dict[str, int] = field(default_factory=dict)  # inference requests by requested model
    prompt_tokens: int = 0  # usage of completed requests
    completion_tokens: int = 0
    last_path: str | None = None
    last_request: Any = None
    last_headers: Mapping[str, str] | None = None

    def to_dict(self, in_flight: int) -> dict[str, Any]:
        headers = None if self.last_headers is None else {k.lower(): v for k, v in self.last_headers.items()}
        return {
            "requests": self.requests,
            "completed": self.completed,
            "in_flight": in_flight,
            "cancelled": self.cancelled,
            "errors": self.errors,
            "faults": self.faults,
            "models": self.models,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "last_path": self.last_path,
            "last_request": self.last_request,
            "last_headers": headers,
        }


@dataclass(slots=True)
class Job:
    """One inference request once parsed and validated."""

    kind: str  # "chat", "completion", "embedding"
    model: str
    prompt: tokens.Prompt
    n: int  # completion tokens to produce
    finish: str  # finish_reason when all n are produced
    max_tokens: int | None
    cfg: SimConfig
    load: ModelLoad
    arrived: float
    include_usage: bool = False
    sent: int = 0  # tokens produced so far
    dropped: bool = False  # the simulator itself closed the connection
    id: str = ""
    created: int = 0
    inputs: list[list[str]] | None = None  # embeddings: the words of each input
    encoding: str = "float"  # embeddings: "float" or "base64"
    dim: int = 0  # embeddings: vector size
    body: Any = None  # the parsed request (the engine model reads the prompt's token ids from it)
    seq: Any = None  # the request inside the engine model (engine.Seq), when there is one


def _json(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type=JSON, headers=headers)


class Simulator:
    def __init__(self, options: SimOptions) -> None:
        self.options = options
        self.config = options.config
        self.stats = Stats()
        self.in_flight = 0
        self.rng = random.Random(options.seed)
        self.metrics = SimMetrics(
            options.models, options.kv_cache_tokens, options.gpus() if options.dcgm else ()
        )
        self.slots = asyncio.Semaphore(options.max_num_seqs)
        self.engine = SimEngine(options.engine, self.metrics.registry, options.models) if options.engine else None
        self.metrics.engine = self.engine
        self.created = int(time.time())

    def add_routes(self, router: web.UrlDispatcher) -> None:
        for prefix in ("/v1", ""):
            router.add_post(f"{prefix}/chat/completions", self.chat_completions)
            router.add_post(f"{prefix}/completions", self.completions)
            router.add_post(f"{prefix}/embeddings", self.embeddings)
            router.add_get(f"{prefix}/models", self.list_models)
            router.add_post(f"{prefix}/tokenize", self.tokenize)
        responses.ResponsesAPI(self).add_routes(router)
        messages.MessagesAPI(self).add_routes(router)
        router.add_get("/health", self.health)
        router.add_get("/version", self.version)
        if self.options.serve_metrics:
            router.add_get("/metrics", self.prometheus)
        router.add_get("/sim/config", self.get_config)
        router.add_post("/sim/config", self.set_config)
        router.add_get("/sim/stats", self.get_stats)
        router.add_post("/sim/reset", self.reset)

    # ---- request helpers -------------------------------------------------------------------
    def _hit(self, path: str) -> None:
        requests = self.stats.requests
        requests[path] = requests.get(path, 0) + 1

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise SimError(400, f"The request body is larger than {request.client_max_size} bytes") from None
        try:  # nesting checked before the parse: orjson < 3.9 crashes (SIGSEGV) on ~100,000 levels
            body = safejson.loads(raw, safejson.MAX_DEPTH_CEILING)
        except (safejson.TooDeep, orjson.JSONDecodeError) as exc:
            raise SimError(400, f"Invalid JSON body: {exc}") from None
        if not isinstance(body, dict):
            raise SimError(400, "The request body must be a JSON object")
        stats = self.stats
        stats.last_path, stats.last_request, stats.last_headers = request.path, body, request.headers
        return body

    def _model(self, body: Mapping[str, Any]) -> str:
        model = body.get("model")
        if model is None:
            return self.options.models[0]
        if not isinstance(model, str):
            raise SimError(400, "model must be a string")
        if self.options.strict_models and model not in self.options.models:
            raise SimError(404, f"The model `{model}` does not exist.")
        return model

    def _config(self, body: Mapping[str, Any]) -> SimConfig:
        sim = body.get("sim")
        if sim is None:
            return self.config
        try:
            return self.config.merged(sim)
        except ValueError as exc:
            raise SimError(400, f"sim: {exc}") from None

    def _error(self, exc: SimError) -> web.Response:
        self.stats.errors += 1
        return web.Response(
            body=faults.error_body(exc.status, exc.message, self.options.error_style),
            status=exc.status,
            content_type=JSON,
        )

    @staticmethod
    def _budget(cfg: SimConfig, prompt_tokens: int, max_tokens: Any) -> tuple[int, str]:
        """Completion tokens and finish_reason, or vLLM's context-length error."""
        limit = cfg.max_model_len
        if max_tokens is None:
            if prompt_tokens >= limit:
                raise SimError(400, faults.context_message(limit, prompt_tokens, None))
            n = min(cfg.default_tokens, limit - prompt_tokens)
            return n, "stop" if n == cfg.default_tokens else "length"
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise SimError(400, f"max_tokens must be at least 1, got {max_tokens!r}.")
        if prompt_tokens + max_tokens > limit:
            raise SimError(400, faults.context_message(limit, prompt_tokens, max_tokens))
        return max_tokens, "length"

    def _finished(self, job: Job) -> None:
        stats = self.stats
        stats.completed += 1
        stats.prompt_tokens += job.prompt.tokens
        stats.completion_tokens += job.n
        job.sent = job.n
        job.load.success[job.finish].inc()
        job.load.e2e.observe(time.monotonic() - job.arrived)

    @contextlib.asynccontextmanager
    async def _slot(self, job: Job) -> AsyncIterator[None]:
        """Wait for a free sequence slot (vllm:num_requests_waiting), then count as running."""
        if self.engine is not None and job.kind != "embedding":  # the engine model queues and paces it
            async with self.engine.admit(job):
                yield
            return
        load = job.load
        load.waiting += 1
        try:
            await self.slots.acquire()
        finally:
            load.waiting -= 1
        kv = job.prompt.tokens + job.n
        self.metrics.start(load, kv, job.prompt.tokens)
        try:
            yield
        except (asyncio.CancelledError, ConnectionResetError):
            load.success["abort"].inc()
            raise
        finally:
            if job.sent:
                load.generation_tokens.inc(job.sent)
            self.metrics.stop(load, kv)
            self.slots.release()

    async def _run(self, request: web.Request, job: Job, stream: bool) -> web.StreamResponse:
        """Serve a validated job: inject its fault, or answer it (plain or streamed)."""
        fault = faults.pick_fault(job.cfg, self.rng)
        after: int | None = None
        if fault is not None:
            after = job.cfg.fault_after_tokens
            if after is None and (fault in DROP_FAULTS or fault == "truncate"):
                after = 0
        self.in_flight += 1
        models = self.stats.models
        models[job.model] = models.get(job.model, 0) + 1
        try:
            if fault is not None and (not stream or after is None or after < 0):
                return await self._fault(request, job, fault)
            if stream:
                return await self._stream(request, job, fault, after)
            if job.kind == "embedding":
                return await self._embed(job)
            return await self._plain(job)
        except asyncio.CancelledError:
            if not job.dropped:
                self.stats.cancelled += 1
            raise
        finally:
            self.in_flight -= 1

    # ---- faults ----------------------------------------------------------------------------
    def _count_fault(self, fault: str) -> None:
        self.stats.faults[fault] = self.stats.faults.get(fault, 0) + 1

    def _fault_message(self, job: Job, fault: str) -> str:
        if fault != "context":
            return faults.FAULT_MESSAGES[fault]
        limit = job.cfg.max_model_len
        if job.kind == "embedding":
            return faults.embedding_context_message(limit, job.prompt.tokens)
        return faults.context_message(limit, job.prompt.tokens, job.n)

    async def _fault(self, request: web.Request, job: Job, fault: str) -> web.Response:
        """A fault before any response byte."""
        self._count_fault(fault)
        if fault == "truncate":  # a complete 200 response whose JSON body is cut short
            return web.Response(body=b'{"id": "' + job.id.encode(), content_type=JSON)
        if fault == "hang":
            await self._hang()
        if fault in DROP_FAULTS:
            self._drop(request, job, reset=fault == "reset")
        status = faults.fault_status(fault)
        headers = {"Retry-After": f"{job.cfg.retry_after:g}"} if status == 429 else None
        self.stats.errors += 1
        return web.Response(
            body=faults.error_body(status, self._fault_message(job, fault), self.options.error_style),
            status=status,
            content_type=JSON,
            headers=headers,
        )

    @staticmethod
    async def _hang() -> None:
        """Never answer; the handler is cancelled when the client goes away."""
        await asyncio.get_running_loop().create_future()

    @staticmethod
    def _drop(request: web.Request, job: Job, *, reset: bool) -> None:
        """Close the TCP connection abruptly (FIN without a complete response; RST with reset)."""
        job.dropped = True
        transport = request.transport
        if transport is not None:
            if reset:
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        raise asyncio.CancelledError

    async def _mid_stream_fault(
        self, request: web.Request, resp: web.StreamResponse, job: Job, fault: str
    ) -> None:
        self._count_fault(fault)
        if fault == "truncate":  # the response ends cleanly: no finish_reason, no usage, no [DONE]
            return
        await self.fail_stream(request, job, fault)
        event = faults.stream_error_event(faults.fault_status(fault), self._fault_message(job, fault))
        await resp.write(event + DONE)

    async def fail_stream(self, request: web.Request, job: Job, fault: str) -> None:
        """A fault after a stream's first bytes, up to the error event the caller writes in its API's shape:
        hang, or drop the connection once what was already written has reached the socket."""
        if fault == "hang":
            await self._hang()
        if fault in DROP_FAULTS:
            transport = request.transport
            for _ in range(200):  # let the events already written reach the socket first
                if transport is None or transport.get_write_buffer_size() == 0:
                    break
                await asyncio.sleep(0.005)
            self._drop(request, job, reset=fault == "reset")
        self.stats.errors += 1

    # ---- generation --------------------------------------------------------------------------
    def _usage(self, job: Job) -> dict[str, Any]:
        p, c = job.prompt.tokens, job.n
        usage: dict[str, Any] = {"prompt_tokens": p, "total_tokens": p + c, "completion_tokens": c}
        if self.options.prompt_tokens_details and job.seq is not None and job.seq.cached_tokens:
            usage["prompt_tokens_details"] = {"cached_tokens": job.seq.cached_tokens}
        return usage

    async def _plain(self, job: Job) -> web.Response:
        cfg = job.cfg
        async with self._slot(job):
            if job.seq is not None:
                await SimEngine.wait(job.seq, 1)
            elif cfg.ttft > 0:
                await asyncio.sleep(cfg.ttft)
            job.load.ttft.observe(time.monotonic() - job.arrived)
            if job.seq is not None:
                await SimEngine.wait(job.seq, job.n)
            elif cfg.tps > 0 and job.n > 1:
                await asyncio.sleep((job.n - 1) / cfg.tps)
            text = "".join(self._tokens(job))
            usage = self._usage(job)
            usage.setdefault("prompt_tokens_details", None)
            choice: dict[str, Any]
            if job.kind == "chat":
                message = {
                    "role": "assistant",
                    "content": text,
                    "refusal": None,
                    "annotations": None,
                    "audio": None,
                    "function_call": None,
                    "tool_calls": [],
                    "reasoning_content": None,
                }
                choice = {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": job.finish,
                    "stop_reason": None,
                }
                obj = "chat.completion"
            else:
                choice = {
                    "index": 0,
                    "text": text,
                    "logprobs": None,
                    "finish_reason": job.finish,
                    "stop_reason": None,
                    "prompt_logprobs": None,
                }
                obj = "text_completion"
            body = {
                "id": job.id,
                "object": obj,
                "created": job.created,
                "model": job.model,
                "choices": [choice],
                "service_tier": None,
                "system_fingerprint": None,
                "usage": usage,
                "prompt_logprobs": None,
                "kv_transfer_params": None,
            }
            self._finished(job)
        return _json(body)

    @staticmethod
    def _tokens(job: Job) -> list[str]:
        reply = job.cfg.reply
        return list(reply[: job.n]) if reply is not None else tokens.generate(job.prompt, job.n)

    def _chunk(self, job: Job, token: str | None, finish: str | None) -> bytes:
        choice: dict[str, Any]
        if job.kind == "chat":
            delta = {"role": "assistant", "content": ""} if token is None else {"content": token}
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            if finish is not None:
                choice["stop_reason"] = None
            obj = "chat.completion.chunk"
        else:
            choice = {
                "index": 0,
                "text": token,
                "logprobs": None,
                "finish_reason": finish,
                "stop_reason": None,
            }
            obj = "text_completion"
        data = {"id": job.id, "object": obj, "created": job.created, "model": job.model, "choices": [choice]}
        return sse.encode_json(data)

    def _usage_chunk(self, job: Job) -> bytes:
        obj = "chat.completion.chunk" if job.kind == "chat" else "text_completion"
        data = {
            "id": job.id,
            "object": obj,
            "created": job.created,
            "model": job.model,
            "choices": [],
            "usage": self._usage(job),
        }
        return sse.encode_json(data)

    async def _stream(
        self, request: web.Request, job: Job, fault: str | None, after: int | None
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers=SSE_HEADERS)
        try:
            await resp.prepare(request)
            async with self._slot(job):
                await self._stream_body(request, resp, job, fault, -1 if after is None else after)
        except ConnectionResetError:  # the client went away while we were writing
            self.stats.cancelled += 1
        return resp

    async def _stream_body(
        self, request: web.Request, resp: web.StreamResponse, job: Job, fault: str | None, fault_at: int
    ) -> None:
        cfg = job.cfg
        loop = asyncio.get_running_loop()
        seq = job.seq
        if seq is not None:
            await SimEngine.wait(seq, 1)
        elif cfg.ttft > 0:
            await asyncio.sleep(cfg.ttft)
        first_at = loop.time()
        job.load.ttft.observe(time.monotonic() - job.arrived)
        pending: list[bytes] = [self._chunk(job, None, None)] if job.kind == "chat" else []
        last = job.n - 1
        for i, token in enumerate(self._tokens(job)):
            if i == fault_at and fault is not None:
                await _flush(resp, pending)
                return await self._mid_stream_fault(request, resp, job, fault)
            if seq is not None:
                if seq.generated <= i:  # the engine's next step brings the next token
                    await _flush(resp, pending)
                    await SimEngine.wait(seq, i + 1)
            elif cfg.tps > 0 and i > 0:
                await _flush(resp, pending)
                delay = first_at + i / cfg.tps - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            pending.append(self._chunk(job, token, job.finish if i == last else None))
            job.sent = i + 1
        if fault is not None and fault_at >= job.n:
            await _flush(resp, pending)
            return await self._mid_stream_fault(request, resp, job, fault)
        if job.include_usage:
            pending.append(self._usage_chunk(job))
        pending.append(DONE)
        await _flush(resp, pending)
        self._finished(job)
        return None

    # ---- OpenAI endpoints --------------------------------------------------------------------
    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "chat")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "completion")

    async def _generate(self, request: web.Request, kind: str) -> web.StreamResponse:
        arrived = time.monotonic()
        self._hit(request.path)
        try:
            body = await self._body(request)
            model = self._model(body)
            if kind == "chat":
                messages = body.get("messages")
                if not isinstance(messages, list) or not messages:
                    raise SimError(400, "messages: a non-empty list of messages is required")
                prompt = tokens.chat_prompt(messages)
                max_tokens = body.get("max_completion_tokens")
                if max_tokens is None:
                    max_tokens = body.get("max_tokens")
            else:
                prompt = tokens.completion_prompt(body.get("prompt"))
                max_tokens = body.get("max_tokens")
            cfg = self._config(body)
            n, finish = self._budget(cfg, prompt.tokens, max_tokens)
            if cfg.reply is not None and (max_tokens is None or len(cfg.reply) <= n):
                n, finish = len(cfg.reply), "stop"
            tool = generation.forced_chat_tool(body) if kind == "chat" else None
        except SimError as exc:
            return self._error(exc)
        except ValueError as exc:
            return self._error(SimError(400, str(exc)))
        stream = body.get("stream") is True
        options = body.get("stream_options")
        include_usage = (
            stream
            and not cfg.no_stream_usage
            and isinstance(options, dict)
            and options.get("include_usage") is True
        )
        job = Job(
            kind,
            model,
            prompt,
            n,
            finish,
            max_tokens,
            cfg,
            self.metrics.model(model),
            arrived,
            include_usage,
            id=("chatcmpl-" if kind == "chat" else "cmpl-") + os.urandom(16).hex(),
            created=int(time.time()),
            body=body,
        )
        if tool is not None:
            return await generation.serve_chat_tool_call(self, request, job, tool, stream, include_usage)
        return await self._run(request, job, stream)

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        self._hit(request.path)
        try:
            body = await self._body(request)
            model = self._model(body)
            inputs = tokens.embedding_inputs(body.get("input"))
            cfg = self._config(body)
            fmt = body.get("encoding_format") or "float"
            if fmt not in ("float", "base64"):
                raise SimError(400, f"encoding_format must be 'float' or 'base64', got {fmt!r}")
            dim = body.get("dimensions") or self.options.embedding_dim
            if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= MAX_DIMENSIONS:
                raise SimError(400, f"dimensions must be an integer from 1 to {MAX_DIMENSIONS}, got {dim!r}")
            longest = max(len(words) for words in inputs)
            if longest > cfg.max_model_len:
                raise SimError(400, faults.embedding_context_message(cfg.max_model_len, longest))
        except SimError as exc:
            return self._error(exc)
        except ValueError as exc:
            return self._error(SimError(400, str(exc)))
        total = sum(len(words) for words in inputs)
        job = Job(
            "embedding",
            model,
            tokens.Prompt(total, (), 0),
            0,
            "stop",
            None,
            cfg,
            self.metrics.model(model),
            arrived,
            id="embd-" + os.urandom(16).hex(),
            created=int(time.time()),
            inputs=inputs,
            encoding=fmt,
            dim=dim,
        )
        return await self._run(request, job, False)

    async def _embed(self, job: Job) -> web.Response:
        async with self._slot(job):
            if job.cfg.ttft > 0:
                await asyncio.sleep(job.cfg.ttft)
            data = []
            for i, words in enumerate(job.inputs or ()):
                vector: Any = tokens.embed(words, job.dim)
                if job.encoding == "base64":
                    vector = base64.b64encode(array("f", vector).tobytes()).decode()
                data.append({"index": i, "object": "embedding", "embedding": vector})
            usage = {
                "prompt_tokens": job.prompt.tokens,
                "total_tokens": job.prompt.tokens,
                "completion_tokens": 0,
                "prompt_tokens_details": None,
            }
            body = {
                "id": job.id,
                "object": "list",
                "created": job.created,
                "model": job.model,
                "data": data,
                "usage": usage,
            }
            self._finished(job)
        return _json(body)

    async def tokenize(self, request: web.Request) -> web.Response:
        self._hit(request.path)
        try:
            body = await self._body(request)
            self._model(body)
            cfg = self._config(body)
            if isinstance(body.get("messages"), list):
                ids = tokens.chat_ids(body["messages"])
            else:
                prompt = body.get("prompt")
                if isinstance(prompt, str):
                    ids = tokens.text_ids(prompt)
                else:
                    parsed = tokens.completion_prompt(prompt)
                    ids = list(parsed.ids) if parsed.ids else tokens.text_ids(" ".join(prompt))
        except SimError as exc:
            return self._error(exc)
        except ValueError as exc:
            return self._error(SimError(400, str(exc)))
        return _json(
            {"count": len(ids), "max_model_len": cfg.max_model_len, "tokens": ids, "token_strs": None}
        )

    async def list_models(self, request: web.Request) -> web.Response:
        self._hit(request.path)
        data = [
            {
                "id": name,
                "object": "model",
                "created": self.created,
                "owned_by": "vllm",
                "root": name,
                "parent": None,
                "max_model_len": self.config.max_model_len,
                "permission": [
                    {
                        "id": f"modelperm-{name}",
                        "object": "model_permission",
                        "created": self.created,
                        "allow_create_engine": False,
                        "allow_sampling": True,
                        "allow_logprobs": True,
                        "allow_search_indices": False,
                        "allow_view": True,
                        "allow_fine_tuning": False,
                        "organization": "*",
                        "group": None,
                        "is_blocking": False,
                    }
                ],
            }
            for name in self.options.models
        ]
        return _json({"object": "list", "data": data})

    async def health(self, request: web.Request) -> web.Response:
        self._hit(request.path)
        return web.Response(status=200)

    async def version(self, request: web.Request) -> web.Response:
        self._hit(request.path)
        return _json({"version": VERSION})

    async def prometheus(self, request: web.Request) -> web.Response:
        self._hit(request.path)
        return web.Response(body=self.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    # ---- test hooks --------------------------------------------------------------------------
    async def get_config(self, request: web.Request) -> web.Response:
        return _json(self.config.to_dict())

    async def set_config(self, request: web.Request) -> web.Response:
        try:
            data = safejson.loads(await request.read() or b"{}", safejson.MAX_DEPTH_CEILING)
            if not isinstance(data, dict):
                raise ValueError("sim config must be a JSON object")
            base = self.options.config if data.pop("reset", False) is True else self.config
            self.config = base.merged(data)
        except (ValueError, orjson.JSONDecodeError) as exc:
            return _json(faults.error_dict(400, str(exc), "nested"), status=400)
        return _json(self.config.to_dict())

    async def get_stats(self, request: web.Request) -> web.Response:
        return _json(self.stats.to_dict(self.in_flight))

    async def reset(self, request: web.Request) -> web.Response:
        self.stats = Stats()
        return _json(self.stats.to_dict(self.in_flight))


async def _flush(resp: web.StreamResponse, pending: list[bytes]) -> None:
    if pending:
        data = b"".join(pending)
        pending.clear()
        await resp.write(data)


SIMULATOR = web.AppKey("simulator", Simulator)


def build_app(options: SimOptions) -> web.Application:
    """The simulator as an aiohttp application (usable in-process with aiohttp's test server)."""
    sim = Simulator(options)
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[SIMULATOR] = sim
    sim.add_routes(app.router)
    return app


def run(options: SimOptions, host: str, port: int, shutdown_timeout: float = 1.0) -> None:
    loop: asyncio.AbstractEventLoop | None = None
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = None
    app = build_app(options)

    def started(*_: object) -> None:  # run_app calls this once the socket is bound
        print(f"gateway-sim serving {', '.join(options.models)} on http://{host}:{port}", flush=True)

    web.run_app(
        app,
        host=host,
        port=port,
        access_log=None,
        handler_cancellation=True,
        print=started,
        shutdown_timeout=shutdown_timeout,
        backlog=2048,
        loop=loop,
    )
