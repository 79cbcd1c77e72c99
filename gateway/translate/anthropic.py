"""Anthropic Messages API <-> OpenAI chat/completions, for upstreams that do not speak Messages natively.

Pure functions and one small state machine, no I/O:
- `messages_to_chat(body)`: a `POST /v1/messages` body -> a chat/completions body;
- `count_tokens_to_chat(body)`: a `POST /v1/messages/count_tokens` body -> the chat messages to count;
- `chat_to_message(response, ...)`: a chat.completion -> an Anthropic `message`;
- `MessagesStream`: fed chat.completion.chunk dicts one by one, returns the Anthropic SSE events to send;
- `error_body(status, message)` / `error_event(...)`: Anthropic's error shape.

Mapping (see docs/agents.md for the whole table):
- `system` (string or text blocks) -> one leading system message; `cache_control` is dropped;
- content blocks: text -> text part, image (base64 or url) -> `image_url` part (data: URL for base64),
  `document` with a text source -> text part; assistant `tool_use` -> `tool_calls`; user `tool_result`
  -> a `tool` message (placed before the rest of that user turn; images in a result follow as a user
  message, as vLLM does); `thinking` / `redacted_thinking` blocks are dropped (chat servers take no
  signed reasoning back);
- `tools[].input_schema` -> `functions.parameters`; `tool_choice` auto/any/tool/none -> auto/required/
  named function/none; `disable_parallel_tool_use` -> `parallel_tool_calls: false`;
- `max_tokens`, `stop_sequences` -> `stop`, `temperature`, `top_p`; `top_k` is dropped (not an OpenAI
  field); `metadata.user_id` -> `user`; `stream` -> `stream` + `stream_options.include_usage`;
- fields Anthropic defines but chat has no equivalent for (`thinking`, `service_tier`, `container`, ...)
  are dropped; fields Anthropic does not define pass through untouched.
Back: text / tool_calls / reasoning -> text / tool_use (arguments parsed) / thinking blocks;
finish_reason stop/length/tool_calls/content_filter -> end_turn/max_tokens/tool_use/refusal, and a stop
that vLLM reports as one of the request's `stop_sequences` (`choice.stop_reason`) -> `stop_sequence`;
usage: `input_tokens` = prompt tokens not read from the prompt cache, `cache_read_input_tokens` = cached
prompt tokens (Anthropic's split: the three input counters add up to the prompt), `output_tokens`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import orjson

from gateway.translate.common import (
    TranslationError,
    chat_usage,
    first_choice,
    is_int,
    new_id,
    passthrough,
    reasoning_text,
    sse_event,
    want_dict,
    want_str,
)

# Every top-level field of Anthropic's create-message request (translated or deliberately dropped).
KNOWN_FIELDS: frozenset[str] = frozenset(
    {
        "model", "messages", "max_tokens", "system", "metadata", "stop_sequences", "stream", "temperature",
        "top_p", "top_k", "tools", "tool_choice", "thinking", "service_tier", "container", "mcp_servers",
        "context_management", "output_config", "output_format", "betas", "anthropic_version",
    }
)
STOP_REASONS: Mapping[str, str] = MappingProxyType(
    {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
     "content_filter": "refusal"}
)
# HTTP status -> Anthropic error type (https://docs.anthropic.com/en/api/errors).
ERROR_TYPES: Mapping[int, str] = MappingProxyType(
    {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
     403: "permission_error", 404: "not_found_error", 408: "timeout_error", 413: "request_too_large",
     429: "rate_limit_error", 500: "api_error", 502: "api_error", 503: "overloaded_error", 504: "timeout_error",
     529: "overloaded_error"}
)
BILLING_HEADER = "x-anthropic-billing-header"  # Claude Code's per-request system block (defeats prefix caching)


# ---- errors ---------------------------------------------------------------------------------------
def error_type(status: int) -> str:
    if status in ERROR_TYPES:
        return ERROR_TYPES[status]
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def error_body(status: int, message: str, type_: str | None = None) -> dict[str, Any]:
    """`{"type": "error", "error": {"type": ..., "message": ...}}` for an HTTP status."""
    return {"type": "error", "error": {"type": type_ or error_type(status), "message": message}}


def error_event(status: int, message: str, type_: str | None = None) -> dict[str, Any]:
    """The `event: error` a stream that fails after its first byte ends with (same shape as the body)."""
    return error_body(status, message, type_)


# ---- request: Messages -> chat ---------------------------------------------------------------------
def _image_url(source: Any, param: str) -> str:
    source = want_dict(source, param)
    kind = source.get("type")
    if kind == "url":
        return want_str(source.get("url"), f"{param}.url")
    if kind == "base64":
        media = want_str(source.get("media_type"), f"{param}.media_type")
        data = want_str(source.get("data"), f"{param}.data")
        return f"data:{media};base64,{data}"
    raise TranslationError(f"{param}.type {kind!r} is not supported by this deployment (use base64 or url)", param)


def _text_of(block: dict[str, Any], param: str) -> str:
    return want_str(block.get("text"), f"{param}.text")


def _user_part(block: dict[str, Any], param: str) -> dict[str, Any]:
    """A text, image or text-document block of a user turn as a chat content part."""
    kind = block.get("type")
    if kind == "text":
        return {"type": "text", "text": _text_of(block, param)}
    if kind == "image":
        return {"type": "image_url", "image_url": {"url": _image_url(block.get("source"), f"{param}.source")}}
    if kind == "document":
        source = want_dict(block.get("source"), f"{param}.source")
        if source.get("type") == "text":
            return {"type": "text", "text": want_str(source.get("data"), f"{param}.source.data")}
        raise TranslationError(f"{param}: only text documents are supported by this deployment", param)
    raise TranslationError(f"{param}.type {kind!r} is not supported in a user message by this deployment", param)


def _tool_result(block: dict[str, Any], param: str) -> list[dict[str, Any]]:
    """A tool_result block -> a `tool` message (+ a user message carrying its images)."""
    call_id = want_str(block.get("tool_use_id"), f"{param}.tool_use_id")
    content = block.get("content")
    texts: list[str] = []
    images: list[dict[str, Any]] = []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for j, item in enumerate(content):
            item = want_dict(item, f"{param}.content.{j}")
            part = _user_part(item, f"{param}.content.{j}")
            if part["type"] == "text":
                texts.append(part["text"])
            else:
                images.append(part)
    elif content is not None:
        raise TranslationError(f"{param}.content must be a string or a list of blocks", f"{param}.content")
    text = "\n".join(texts)
    if block.get("is_error") is True:
        text = "Error: " + text
    out: list[dict[str, Any]] = [{"role": "tool", "tool_call_id": call_id, "content": text}]
    if images:
        out.append({"role": "user", "content": images})
    return out


def _tool_call(block: dict[str, Any], param: str) -> dict[str, Any]:
    name = want_str(block.get("name"), f"{param}.name")
    arguments = block.get("input", {})
    if not isinstance(arguments, dict):
        raise TranslationError(f"{param}.input must be an object", f"{param}.input")
    call_id = block.get("id")
    return {
        "id": call_id if isinstance(call_id, str) and call_id else new_id("call_"),
        "type": "function",
        "function": {"name": name, "arguments": orjson.dumps(arguments).decode()},
    }


def _content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """Text-only content as one string (what every chat template takes), otherwise the parts."""
    if all(p["type"] == "text" for p in parts):
        return "\n".join(p["text"] for p in parts)
    return parts


def _system_text(system: Any, param: str) -> list[str]:
    if system is None:
        return []
    if isinstance(system, str):
        return [system] if system else []
    if not isinstance(system, list):
        raise TranslationError(f"{param} must be a string or a list of text blocks", param)
    texts: list[str] = []
    for i, block in enumerate(system):
        block = want_dict(block, f"{param}.{i}")
        if block.get("type") != "text":
            raise TranslationError(f"{param}.{i}: system blocks must be text blocks", f"{param}.{i}.type")
        text = _text_of(block, f"{param}.{i}")
        if text and not text.startswith(BILLING_HEADER):
            texts.append(text)
    return texts


def _turn(message: dict[str, Any], param: str) -> list[dict[str, Any]]:
    """One Anthropic message -> the chat messages it becomes."""
    role = message.get("role")
    content = message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise TranslationError(f"{param}.content must be a string or a list of content blocks", f"{param}.content")
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        bparam = f"{param}.content.{j}"
        block = want_dict(block, bparam)
        kind = block.get("type")
        if kind in ("thinking", "redacted_thinking"):
            continue
        if role == "assistant":
            if kind == "text":
                parts.append({"type": "text", "text": _text_of(block, bparam)})
            elif kind == "tool_use":
                calls.append(_tool_call(block, bparam))
            else:
                raise TranslationError(
                    f"{bparam}.type {kind!r} is not supported in an assistant message by this deployment", bparam
                )
        elif kind == "tool_result":
            out.extend(_tool_result(block, bparam))  # tool messages first: they answer the previous turn
        else:
            parts.append(_user_part(block, bparam))
    if role == "assistant":
        if parts or calls:
            msg: dict[str, Any] = {"role": "assistant", "content": _content(parts) if parts else None}
            if calls:
                msg["tool_calls"] = calls
            out.append(msg)
    elif parts:
        out.append({"role": "user", "content": _content(parts)})
    return out


def _chat_messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise TranslationError("messages: a list of messages is required", "messages")
    system = _system_text(body.get("system"), "system")
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        message = want_dict(message, f"messages.{i}")
        role = message.get("role")
        if role == "system":  # not Anthropic's API, but vLLM accepts it: fold into the system prompt
            system.extend(_system_text(message.get("content"), f"messages.{i}.content"))
            continue
        if role not in ("user", "assistant"):
            raise TranslationError(f"messages.{i}.role must be 'user' or 'assistant', got {role!r}", f"messages.{i}.role")
        out.extend(_turn(message, f"messages.{i}"))
    if system:
        out.insert(0, {"role": "system", "content": "\n".join(system)})
    if not out:
        raise TranslationError("messages: at least one message is required", "messages")
    return out


def _tools(body: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    tools = body.get("tools")
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise TranslationError("tools must be a list", "tools")
    out: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        tool = want_dict(tool, f"tools.{i}")
        kind = tool.get("type")
        if kind not in (None, "custom"):
            raise TranslationError(
                f"tools.{i}.type {kind!r}: server tools are not supported by this deployment", f"tools.{i}.type"
            )
        schema = want_dict(tool.get("input_schema"), f"tools.{i}.input_schema")
        function: dict[str, Any] = {"name": want_str(tool.get("name"), f"tools.{i}.name"), "parameters": schema}
        description = tool.get("description")
        if isinstance(description, str):
            function["description"] = description
        if isinstance(tool.get("strict"), bool):
            function["strict"] = tool["strict"]
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any, out: dict[str, Any]) -> None:
    if choice is None:
        return
    choice = want_dict(choice, "tool_choice")
    kind = choice.get("type")
    if kind == "auto":
        out["tool_choice"] = "auto"
    elif kind == "any":
        out["tool_choice"] = "required"
    elif kind == "none":
        out["tool_choice"] = "none"
    elif kind == "tool":
        name = want_str(choice.get("name"), "tool_choice.name")
        out["tool_choice"] = {"type": "function", "function": {"name": name}}
    else:
        raise TranslationError(f"tool_choice.type must be auto, any, tool or none; got {kind!r}", "tool_choice.type")
    if choice.get("disable_parallel_tool_use") is True:
        out["parallel_tool_calls"] = False


def _response_format(body: Mapping[str, Any]) -> dict[str, Any] | None:
    config = body.get("output_config")
    fmt = config.get("format") if isinstance(config, dict) else body.get("output_format")
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        return None
    schema = want_dict(fmt.get("schema"), "output_config.format.schema")
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}


def messages_to_chat(body: Mapping[str, Any]) -> dict[str, Any]:
    """A Messages request body -> a chat/completions request body (raises TranslationError on bad input)."""
    max_tokens = body.get("max_tokens")
    if not is_int(max_tokens) or max_tokens < 1:
        raise TranslationError(f"max_tokens: a positive integer is required, got {max_tokens!r}", "max_tokens")
    out: dict[str, Any] = {}
    if "model" in body:
        out["model"] = body["model"]
    out["messages"] = _chat_messages(body)
    out["max_tokens"] = max_tokens
    stop = body.get("stop_sequences")
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise TranslationError("stop_sequences must be a list of strings", "stop_sequences")
        if stop:
            out["stop"] = stop
    for key in ("temperature", "top_p"):
        value = body.get(key)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TranslationError(f"{key} must be a number", key)
            out[key] = value
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise TranslationError("metadata must be an object", "metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        out["user"] = metadata["user_id"]
    tools = _tools(body)
    if tools:
        out["tools"] = tools
    _tool_choice(body.get("tool_choice"), out)
    fmt = _response_format(body)
    if fmt is not None:
        out["response_format"] = fmt
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise TranslationError("stream must be true or false", "stream")
    if stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    out.update(passthrough(body, KNOWN_FIELDS))
    return out


def count_tokens_to_chat(body: Mapping[str, Any]) -> dict[str, Any]:
    """A count_tokens body -> a chat request whose prompt has the same tokens (model, messages, tools)."""
    out: dict[str, Any] = {}
    if "model" in body:
        out["model"] = body["model"]
    out["messages"] = _chat_messages(body)
    tools = _tools(body)
    if tools:
        out["tools"] = tools
    _tool_choice(body.get("tool_choice"), out)
    return out


# ---- response: chat -> Messages --------------------------------------------------------------------
def tool_input(arguments: Any) -> dict[str, Any]:
    """A chat tool call's `arguments` string as Anthropic's `input` object.

    Empty -> {}; JSON that is not an object, or not JSON at all (a model that wrote broken JSON, or was cut by
    max_tokens), is kept whole as {"_raw_arguments": text} rather than dropped."""
    if isinstance(arguments, dict):
        return arguments
    if not isinstance(arguments, str) or not arguments.strip():
        return {}
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return {"_raw_arguments": arguments}
    return parsed if isinstance(parsed, dict) else {"_raw_arguments": arguments}


def stop_reason(finish: Any, matched: Any, stop_sequences: Sequence[str], has_tool_use: bool) -> tuple[str, str | None]:
    """(Anthropic stop_reason, stop_sequence) of a chat finish_reason (+ vLLM's matched `stop_reason`)."""
    if finish == "stop" and isinstance(matched, str) and matched in stop_sequences:
        return "stop_sequence", matched
    if has_tool_use and finish != "length":
        return "tool_use", None
    return STOP_REASONS.get(finish, "end_turn") if isinstance(finish, str) else "end_turn", None


def usage_block(prompt: int, completion: int, cached: int) -> dict[str, int]:
    return {
        "input_tokens": max(prompt - cached, 0),
        "output_tokens": completion,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
    }


def message_id(chat_id: Any) -> str:
    if isinstance(chat_id, str) and chat_id:
        return "msg_" + chat_id.removeprefix("chatcmpl-")
    return new_id("msg_")


def chat_to_message(
    response: Mapping[str, Any], *, model: str | None = None, stop_sequences: Sequence[str] = ()
) -> dict[str, Any]:
    """A chat.completion -> an Anthropic Message. `model` replaces the upstream's name (the alias the client
    asked for); `stop_sequences` are the request's, to tell a matched stop sequence from a natural end."""
    choice = first_choice(response)
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    content: list[dict[str, Any]] = []
    thinking = reasoning_text(message)
    if thinking:
        content.append({"type": "thinking", "thinking": thinking, "signature": ""})
    text = message.get("content")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or ():
        if not isinstance(call, dict):
            continue
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        call_id = call.get("id")
        content.append(
            {
                "type": "tool_use",
                "id": call_id if isinstance(call_id, str) and call_id else new_id("toolu_"),
                "name": function.get("name") or "",
                "input": tool_input(function.get("arguments")),
            }
        )
    has_tool_use = any(block["type"] == "tool_use" for block in content)
    reason, sequence = stop_reason(choice.get("finish_reason"), choice.get("stop_reason"), stop_sequences, has_tool_use)
    prompt, completion, cached, _ = chat_usage(response.get("usage"))
    return {
        "id": message_id(response.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model or response.get("model") or "",
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": usage_block(prompt, completion, cached),
    }


# ---- streaming: chat chunks -> Messages events -----------------------------------------------------
class MessagesStream:
    """Turns a chat.completion.chunk stream into Anthropic stream events (dicts; frame each with `encode`).

    `feed(chunk)` for each parsed `data:` object, `finish()` at `data: [DONE]` (or the end of a stream that
    carried a finish_reason), `error(status, message)` when the upstream fails mid-way. Events:
    message_start (+ ping) first; one content block at a time (thinking, text, each tool call with
    input_json_delta), each closed before the next opens; then message_delta (stop_reason, stop_sequence,
    usage) and message_stop. Usage comes from the upstream's usage chunk (`include_usage`); an upstream
    that sends none gets the counts passed to `finish(usage=...)` (the gateway's own estimate)."""

    def __init__(
        self, *, model: str | None = None, stop_sequences: Sequence[str] = (), input_tokens: int = 0
    ) -> None:
        self.model = model
        self.stop_sequences = tuple(stop_sequences)
        self.input_tokens = input_tokens  # for message_start when the first chunk carries no usage
        self.started = False
        self.done = False
        self.next_index = 0
        self.open_kind: str | None = None  # "thinking", "text" or "tool"
        self.open_index = -1
        self.open_tool: int | None = None  # chat tool_calls index of the open tool_use block
        self.tool_blocks: dict[int, int] = {}  # chat tool_calls index -> content block index
        self.finish_reason: str | None = None
        self.matched_stop: str | None = None
        self.usage: Mapping[str, Any] | None = None
        self.saw_tool = False

    @staticmethod
    def encode(event: Mapping[str, Any]) -> bytes:
        return sse_event(event)

    def _start(self, chunk: Mapping[str, Any]) -> list[dict[str, Any]]:
        self.started = True
        prompt, _, cached, _ = chat_usage(chunk.get("usage"))
        if not prompt:
            prompt, cached = self.input_tokens, 0
        message = {
            "id": message_id(chunk.get("id")),
            "type": "message",
            "role": "assistant",
            "model": self.model or chunk.get("model") or "",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage_block(prompt, 0, cached),
        }
        return [{"type": "message_start", "message": message}, {"type": "ping"}]

    def _close(self) -> list[dict[str, Any]]:
        if self.open_kind is None:
            return []
        event = {"type": "content_block_stop", "index": self.open_index}
        self.open_kind, self.open_tool = None, None
        return [event]

    def _open(self, kind: str, block: dict[str, Any]) -> list[dict[str, Any]]:
        events = self._close()
        self.open_kind, self.open_index = kind, self.next_index
        self.next_index += 1
        events.append({"type": "content_block_start", "index": self.open_index, "content_block": block})
        return events

    def _delta(self, index: int, delta: dict[str, Any]) -> dict[str, Any]:
        return {"type": "content_block_delta", "index": index, "delta": delta}

    def _tool_delta(self, call: Mapping[str, Any]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        index = call.get("index")
        if not is_int(index):
            index = max(self.tool_blocks, default=-1) + (0 if call.get("id") is None else 1)
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        if index not in self.tool_blocks:
            call_id = call.get("id")
            block = {
                "type": "tool_use",
                "id": call_id if isinstance(call_id, str) and call_id else new_id("toolu_"),
                "name": function.get("name") or "",
                "input": {},
            }
            events += self._open("tool", block)
            self.tool_blocks[index] = self.open_index
            self.open_tool = index
            self.saw_tool = True
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            # Upstreams stream tool calls one after the other; a late delta for an earlier (closed) call
            # keeps that call's block index, which is where Anthropic clients accumulate it.
            events.append(self._delta(self.tool_blocks[index], {"type": "input_json_delta", "partial_json": arguments}))
        return events

    def feed(self, chunk: Mapping[str, Any]) -> list[dict[str, Any]]:
        if self.done:
            return []
        if isinstance(chunk.get("error"), Mapping):  # vLLM's mid-stream error chunk
            err = chunk["error"]
            code = err.get("code")
            status = code if is_int(code) else 500
            return self.error(status, str(err.get("message") or "upstream error"))
        events = [] if self.started else self._start(chunk)
        if isinstance(chunk.get("usage"), Mapping):
            self.usage = chunk["usage"]
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
            return events
        choice = choices[0]
        delta = choice.get("delta") if isinstance(choice.get("delta"), Mapping) else {}
        thinking = reasoning_text(delta)
        if thinking:
            if self.open_kind != "thinking":
                events += self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            events.append(self._delta(self.open_index, {"type": "thinking_delta", "thinking": thinking}))
        text = delta.get("content")
        if isinstance(text, str) and text:
            if self.open_kind != "text":
                events += self._open("text", {"type": "text", "text": ""})
            events.append(self._delta(self.open_index, {"type": "text_delta", "text": text}))
        for call in delta.get("tool_calls") or ():
            if isinstance(call, Mapping):
                events += self._tool_delta(call)
        if choice.get("finish_reason") is not None:
            self.finish_reason = choice["finish_reason"]
            if isinstance(choice.get("stop_reason"), str):
                self.matched_stop = choice["stop_reason"]
        return events

    def finish(self, usage: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Close the message. `usage` (chat-shaped) is used only when the upstream sent none."""
        if self.done:
            return []
        events = [] if self.started else self._start({})
        events += self._close()
        self.done = True
        prompt, completion, cached, _ = chat_usage(self.usage if self.usage is not None else usage)
        if not prompt:
            prompt = self.input_tokens
        reason, sequence = stop_reason(self.finish_reason, self.matched_stop, self.stop_sequences, self.saw_tool)
        events.append(
            {
                "type": "message_delta",
                "delta": {"stop_reason": reason, "stop_sequence": sequence},
                "usage": usage_block(prompt, completion, cached),
            }
        )
        events.append({"type": "message_stop"})
        return events

    def error(self, status: int, message: str) -> list[dict[str, Any]]:
        """The error event that ends a failed stream (nothing more is sent after it)."""
        if self.done:
            return []
        self.done = True
        return [error_event(status, message)]
