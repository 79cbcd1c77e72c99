"""Generation shared by the simulator's agent endpoints (Responses, Messages) and chat tool calls.

vLLM serves `/v1/messages` by converting the request to a chat request, running it, and converting the
chat answer (or each chat chunk) back; the simulator does the same with gateway.translate, so the
answer is the chat simulator's answer in the other API's shape. What is added here:
- `plan()`: how many tokens, which finish, and, when the request forces a tool (`tool_choice` naming a
  function, or `any`/`required`), a deterministic tool call whose arguments are built from the tool's
  JSON schema (strings are the last word of the last user message, integers its word count, ...);
- `ChatAnswer`: the chat.completion and the chat.completion.chunk dicts of a plan;
- `serve()`: the simulator's queueing, timing (ttft, tps), fault injection and accounting for any
  renderer (what turns chat chunks into the API's bytes).

Token rules for the agent endpoints (on top of gateway/simulator/tokens.py): the prompt is the chat
prompt of the translated request (tool definitions and tool-call arguments count 0); a forced tool call
costs one token per whitespace-separated piece of its JSON arguments (`{"city": "Paris"}` is 2); a text
answer is min(cap, default_tokens) tokens where cap is max_tokens / max_output_tokens clamped to the
context left (`length` when the cap cut it); a stop sequence ends the answer at the token completing
it (the stop string itself is not sent).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import string
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from aiohttp import web

from gateway.simulator import faults, tokens
from gateway.simulator.config import DROP_FAULTS, SimConfig
from gateway.simulator.faults import SimError

if TYPE_CHECKING:
    from gateway.simulator.server import Job, Simulator

DONE = b"data: [DONE]\n\n"
SSE_HEADERS: Mapping[str, str] = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
_PIECES = re.compile(r"\s*\S+")


# ---- tool calls ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tool:
    name: str
    schema: Mapping[str, Any]


def _word(prompt: tokens.Prompt) -> str:
    for word in reversed(prompt.echo):
        stripped = word.strip(string.punctuation)
        if stripped:
            return stripped
    return "value"


def arguments_for(schema: Any, prompt: tokens.Prompt, depth: int = 0) -> Any:
    """A deterministic value that fits a JSON schema (the simple subset tool schemas use)."""
    if not isinstance(schema, Mapping) or depth > 8:
        return _word(prompt)
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            return arguments_for(options[0], prompt, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    props = schema.get("properties")
    if kind == "object" or isinstance(props, Mapping):
        props = props if isinstance(props, Mapping) else {}
        required = schema.get("required")
        names = [k for k in props if k in required] if isinstance(required, list) and required else list(props)
        return {name: arguments_for(props[name], prompt, depth + 1) for name in names}
    if kind == "array":
        return [arguments_for(schema.get("items"), prompt, depth + 1)]
    if kind == "integer":
        return max(len(prompt.echo), 1)
    if kind == "number":
        return max(len(prompt.echo), 1) + 0.5
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return _word(prompt)


# ---- what to answer -------------------------------------------------------------------------------------
@dataclass
class Plan:
    """The answer to produce: one entry of `pieces` per completion token, text first, then tool arguments."""

    text: list[str]  # per text token: what is sent ("" for the token that completed a stop sequence)
    finish: str  # chat finish_reason: stop, length, tool_calls
    tool: Tool | None = None
    tool_pieces: list[str] = field(default_factory=list)
    stop_sequence: str | None = None
    call_id: str = ""

    @property
    def engine_finish(self) -> str:
        """vLLM's finished_reason label (a tool call is an ordinary stop for the engine)."""
        return "length" if self.finish == "length" else "stop"

    @property
    def n(self) -> int:
        return len(self.text) + len(self.tool_pieces)

    @property
    def content(self) -> str:
        return "".join(self.text)

    @property
    def arguments(self) -> str:
        return "".join(self.tool_pieces)


def _cut_at_stop(words: list[str], stops: Sequence[str]) -> tuple[list[str], str | None]:
    full = "".join(words)
    hits = [(full.find(s), s) for s in stops if s and s in full]
    if not hits:
        return words, None
    pos, seq = min(hits)
    out: list[str] = []
    start = 0
    for word in words:
        end = start + len(word)
        out.append(full[start : min(end, pos)] if start < pos else "")
        if end >= pos + len(seq):
            break
        start = end
    return out, seq


def plan(
    prompt: tokens.Prompt,
    cap: int | None,
    cfg: SimConfig,
    tool: Tool | None = None,
    stop: Sequence[str] = (),
) -> Plan:
    """Tokens and finish for an agent endpoint (raises vLLM's context-length SimError)."""
    limit = cfg.max_model_len
    if prompt.tokens >= limit:
        raise SimError(400, faults.context_message(limit, prompt.tokens, None))
    room = limit - prompt.tokens
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        raise SimError(400, f"max_tokens must be at least 1, got {cap!r}.")
    allowed = room if cap is None else min(cap, room)
    if tool is not None:
        # json.dumps' default separators (", ", ": ") make the pieces that count as tokens
        arguments = json.dumps(arguments_for(tool.schema, prompt))
        pieces = _PIECES.findall(arguments)
        finish = "tool_calls"
        if len(pieces) > allowed:
            pieces, finish = pieces[:allowed], "length"
        return Plan([], finish, tool, pieces, call_id="chatcmpl-tool-" + os.urandom(16).hex())
    n = min(allowed, cfg.default_tokens)
    finish = "stop" if n == cfg.default_tokens else "length"
    words, seq = _cut_at_stop(tokens.generate(prompt, n), stop)
    if seq is not None:
        finish = "stop"
    return Plan(words, finish, stop_sequence=seq)


# ---- chat shapes of a plan ------------------------------------------------------------------------------
class ChatAnswer:
    """The chat.completion (plain) and chat.completion.chunk dicts (streamed) of a plan, vLLM-shaped."""

    def __init__(self, job: Job, out: Plan, cached: int = 0) -> None:
        self.job = job
        self.out = out
        self.cached = cached  # prompt tokens served from the (simulated) prefix cache

    def usage(self) -> dict[str, Any]:
        p, c = self.job.prompt.tokens, self.out.n
        usage: dict[str, Any] = {"prompt_tokens": p, "total_tokens": p + c, "completion_tokens": c}
        usage["prompt_tokens_details"] = {"cached_tokens": self.cached} if self.cached else None
        return usage

    def _tool_call(self, arguments: str, header: bool = True) -> dict[str, Any]:
        assert self.out.tool is not None
        call: dict[str, Any] = {"index": 0} if header else {}
        call.update(id=self.out.call_id, type="function", function={"name": self.out.tool.name, "arguments": arguments})
        return call

    def completion(self) -> dict[str, Any]:
        out = self.out
        message: dict[str, Any] = {
            "role": "assistant",
            "content": out.content if out.tool is None else None,
            "refusal": None,
            "annotations": None,
            "audio": None,
            "function_call": None,
            "tool_calls": [] if out.tool is None else [self._tool_call(out.arguments, header=False)],
            "reasoning_content": None,
        }
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": out.finish,
                  "stop_reason": out.stop_sequence}
        return {
            "id": self.job.id,
            "object": "chat.completion",
            "created": self.job.created,
            "model": self.job.model,
            "choices": [choice],
            "service_tier": None,
            "system_fingerprint": None,
            "usage": self.usage(),
            "prompt_logprobs": None,
            "kv_transfer_params": None,
        }

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        if finish is not None:
            choice["stop_reason"] = self.out.stop_sequence
        return {"id": self.job.id, "object": "chat.completion.chunk", "created": self.job.created,
                "model": self.job.model, "choices": [choice]}

    def first(self) -> dict[str, Any]:
        return self._chunk({"role": "assistant", "content": ""})

    def piece(self, i: int) -> dict[str, Any]:
        out = self.out
        finish = out.finish if i == out.n - 1 else None
        if i < len(out.text):
            return self._chunk({"content": out.text[i]}, finish)
        j = i - len(out.text)
        arguments = out.tool_pieces[j]
        call = self._tool_call(arguments) if j == 0 else {"index": 0, "function": {"arguments": arguments}}
        return self._chunk({"tool_calls": [call]}, finish)

    def usage_chunk(self) -> dict[str, Any]:
        return {"id": self.job.id, "object": "chat.completion.chunk", "created": self.job.created,
                "model": self.job.model, "choices": [], "usage": self.usage()}


# ---- serving --------------------------------------------------------------------------------------------
class Renderer(Protocol):
    """Turns a ChatAnswer into one API's bytes."""

    def plain(self) -> bytes: ...
    def preamble(self) -> list[bytes]: ...  # sent with the headers, before queueing and ttft
    def head(self) -> list[bytes]: ...  # sent after ttft, before the first token
    def piece(self, i: int) -> list[bytes]: ...
    def tail(self) -> list[bytes]: ...
    def error_body(self, status: int, message: str) -> bytes: ...
    def stream_error(self, status: int, message: str) -> list[bytes]: ...


def error_response(sim: Simulator, body: bytes, status: int, headers: Mapping[str, str] | None = None) -> web.Response:
    sim.stats.errors += 1
    return web.Response(body=body, status=status, content_type="application/json", headers=headers)


async def serve(sim: Simulator, request: web.Request, job: Job, stream: bool, r: Renderer) -> web.StreamResponse:
    """A validated job: inject its fault, or answer it (plain or streamed), as Simulator._run does."""
    fault = faults.pick_fault(job.cfg, sim.rng)
    after: int | None = None
    if fault is not None:
        after = job.cfg.fault_after_tokens
        if after is None and fault in DROP_FAULTS:
            after = 0
    sim.in_flight += 1
    models = sim.stats.models
    models[job.model] = models.get(job.model, 0) + 1
    try:
        if fault is not None and (not stream or after is None or after < 0):
            return await _fault(sim, request, job, fault, r)
        if stream:
            return await _stream(sim, request, job, r, fault, -1 if after is None else after)
        return await _plain(sim, job, r)
    except asyncio.CancelledError:
        if not job.dropped:
            sim.stats.cancelled += 1
        raise
    finally:
        sim.in_flight -= 1


async def _fault(sim: Simulator, request: web.Request, job: Job, fault: str, r: Renderer) -> web.Response:
    sim._count_fault(fault)
    if fault == "hang":
        await sim._hang()
    if fault in DROP_FAULTS:
        sim._drop(request, job, reset=fault == "reset")
    status = faults.fault_status(fault)
    headers = {"Retry-After": f"{job.cfg.retry_after:g}"} if status == 429 else None
    return error_response(sim, r.error_body(status, sim._fault_message(job, fault)), status, headers)


async def _plain(sim: Simulator, job: Job, r: Renderer) -> web.Response:
    cfg = job.cfg
    async with sim._slot(job):
        if cfg.ttft > 0:
            await asyncio.sleep(cfg.ttft)
        job.load.ttft.observe(time.monotonic() - job.arrived)
        if cfg.tps > 0 and job.n > 1:
            await asyncio.sleep((job.n - 1) / cfg.tps)
        body = r.plain()
        sim._finished(job)
    return web.Response(body=body, content_type="application/json")


async def _flush(resp: web.StreamResponse, pending: list[bytes]) -> None:
    if pending:
        data = b"".join(pending)
        pending.clear()
        await resp.write(data)


async def _stream(
    sim: Simulator, request: web.Request, job: Job, r: Renderer, fault: str | None, fault_at: int
) -> web.StreamResponse:
    resp = web.StreamResponse(headers=SSE_HEADERS)
    try:
        await resp.prepare(request)
        preamble = r.preamble()
        if preamble:
            await resp.write(b"".join(preamble))
        async with sim._slot(job):
            cfg = job.cfg
            loop = asyncio.get_running_loop()
            if cfg.ttft > 0:
                await asyncio.sleep(cfg.ttft)
            first_at = loop.time()
            job.load.ttft.observe(time.monotonic() - job.arrived)
            pending = r.head()
            for i in range(job.n):
                if i == fault_at and fault is not None:
                    await _flush(resp, pending)
                    return await _mid_stream_fault(sim, request, resp, job, fault, r)
                if cfg.tps > 0 and i > 0:
                    await _flush(resp, pending)
                    delay = first_at + i / cfg.tps - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                pending += r.piece(i)
                job.sent = i + 1
            if fault is not None and fault_at >= job.n:
                await _flush(resp, pending)
                return await _mid_stream_fault(sim, request, resp, job, fault, r)
            pending += r.tail()
            await _flush(resp, pending)
            sim._finished(job)
    except ConnectionResetError:  # the client went away while we were writing
        sim.stats.cancelled += 1
    return resp


async def _mid_stream_fault(
    sim: Simulator, request: web.Request, resp: web.StreamResponse, job: Job, fault: str, r: Renderer
) -> web.StreamResponse:
    sim._count_fault(fault)
    await sim.fail_stream(request, job, fault)
    await resp.write(b"".join(r.stream_error(faults.fault_status(fault), sim._fault_message(job, fault))))
    return resp


# ---- chat/completions with a forced tool call -------------------------------------------------------------
def forced_chat_tool(body: Mapping[str, Any]) -> Tool | None:
    """The function a chat request forces (`tool_choice` required or naming a function), if any."""
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if not isinstance(tools, list) or not tools or choice in (None, "auto", "none"):
        return None
    functions = [t.get("function") for t in tools if isinstance(t, dict) and isinstance(t.get("function"), dict)]
    functions = [f for f in functions if isinstance(f.get("name"), str)]
    if not functions:
        raise SimError(400, "tools: each tool needs a function with a name")
    if choice == "required":
        chosen = functions[0]
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        chosen = next((f for f in functions if f["name"] == name), None)
        if chosen is None:
            raise SimError(400, f"tool_choice: no function named {name!r} in tools")
    else:
        raise SimError(400, f"tool_choice must be none, auto, required or a named function; got {choice!r}")
    schema = chosen.get("parameters")
    return Tool(chosen["name"], schema if isinstance(schema, dict) else {})


class ChatToolRenderer:
    """chat/completions bytes of a forced tool call (vLLM: role chunk, tool call header, argument deltas)."""

    def __init__(self, sim: Simulator, answer: ChatAnswer, include_usage: bool) -> None:
        self.sim = sim
        self.answer = answer
        self.include_usage = include_usage

    @staticmethod
    def _data(chunk: Mapping[str, Any]) -> bytes:
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def plain(self) -> bytes:
        return orjson.dumps(self.answer.completion())

    def preamble(self) -> list[bytes]:
        return []

    def head(self) -> list[bytes]:
        return [self._data(self.answer.first())]

    def piece(self, i: int) -> list[bytes]:
        return [self._data(self.answer.piece(i))]

    def tail(self) -> list[bytes]:
        return ([self._data(self.answer.usage_chunk())] if self.include_usage else []) + [DONE]

    def error_body(self, status: int, message: str) -> bytes:
        return faults.error_body(status, message, self.sim.options.error_style)

    def stream_error(self, status: int, message: str) -> list[bytes]:
        return [faults.stream_error_event(status, message), DONE]


async def serve_chat_tool_call(
    sim: Simulator, request: web.Request, job: Job, tool: Tool, stream: bool, include_usage: bool
) -> web.StreamResponse:
    """Answer a chat request whose tool_choice forces a call (the plain chat path answers text only)."""
    out = plan(job.prompt, job.max_tokens, job.cfg, tool)
    job.n, job.finish = out.n, out.engine_finish
    return await serve(sim, request, job, stream, ChatToolRenderer(sim, ChatAnswer(job, out), include_usage))
