"""OpenAI Responses API <-> chat/completions, for upstreams that do not speak Responses natively.

Pure functions and one small state machine, no I/O:
- `responses_to_chat(body, previous=...)`: a `POST /v1/responses` body -> a chat/completions body;
- `chat_to_response(response, request=...)`: a chat.completion -> a Response object;
- `ResponsesStream`: fed chat.completion.chunk dicts one by one, returns the Responses SSE events
  (with `sequence_number`) to send;
- `conversation_items(request, response, previous)`: what to keep so a later `previous_response_id`
  can continue the conversation (the translator holds no state: the caller stores these items and passes
  them back as `previous`; docs/agents.md says how the gateway keeps them).

Request mapping: `instructions` -> a leading system message (only the current request's: instructions
are not carried over from a previous response, as OpenAI documents); `input` as a string -> one user
message, or items: message items (roles user/system/developer/assistant; `developer` becomes `system`)
with input_text / input_image / output_text / refusal parts, `function_call` -> assistant `tool_calls`
(consecutive calls merge into one assistant message), `function_call_output` -> `tool` message,
`reasoning` items are dropped; `tools` of type function (flat `name`/`parameters`) -> chat functions
(other tool types -> 400); `tool_choice`; `max_output_tokens` -> `max_tokens`; `temperature`, `top_p`,
`parallel_tool_calls`, `user`, `reasoning.effort` -> `reasoning_effort`; `text.format` json_schema /
json_object -> `response_format`; `stream` -> `stream` + `stream_options.include_usage`. Responses-only
fields (`store`, `previous_response_id`, `include`, `truncation`, `background`, `metadata`, ...) are
consumed here or dropped; fields the Responses API does not define pass through untouched.
Response mapping: reasoning -> a `reasoning` item, text -> a `message` item with one `output_text` part,
each tool call -> a `function_call` item (`call_id` = the chat tool call id); finish_reason `length` ->
status `incomplete` with `incomplete_details.reason = "max_output_tokens"` (`content_filter` likewise);
usage -> input/output/total tokens with `input_tokens_details.cached_tokens` and
`output_tokens_details.reasoning_tokens`.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
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

# Every top-level field of OpenAI's create-response request (translated, consumed or deliberately dropped).
KNOWN_FIELDS: frozenset[str] = frozenset(
    {
        "model", "input", "instructions", "max_output_tokens", "max_tool_calls", "metadata",
        "parallel_tool_calls", "previous_response_id", "reasoning", "store", "stream", "stream_options",
        "temperature", "text", "tool_choice", "tools", "top_p", "top_logprobs", "truncation", "user",
        "include", "background", "service_tier", "prompt", "prompt_cache_key", "safety_identifier",
        "conversation", "context_management", "prompt_cache_retention",
    }
)
ERROR_CODES = {429: "rate_limit_exceeded", 400: "invalid_prompt"}


def error_body(status: int, message: str, type_: str | None = None, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape (the gateway's own table gives the type for each status)."""
    default = "invalid_request_error" if 400 <= status < 500 else "api_error"
    return {"error": {"message": message, "type": type_ or default, "param": param, "code": None}}


# ---- request: Responses -> chat --------------------------------------------------------------------
def _part(part: Any, role: str, param: str) -> dict[str, Any]:
    if isinstance(part, str):
        return {"type": "text", "text": part}
    part = want_dict(part, param)
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text", "summary_text", "reasoning_text"):
        return {"type": "text", "text": want_str(part.get("text"), f"{param}.text")}
    if kind == "refusal":
        return {"type": "text", "text": want_str(part.get("refusal"), f"{param}.refusal")}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            raise TranslationError(
                f"{param}: input_image needs an image_url (file_id images are not supported by this deployment)",
                f"{param}.image_url",
            )
        image: dict[str, Any] = {"url": url}
        if part.get("detail") in ("low", "high", "auto"):
            image["detail"] = part["detail"]
        if role not in ("user", "system"):
            raise TranslationError(f"{param}: images are only allowed in user messages", param)
        return {"type": "image_url", "image_url": image}
    raise TranslationError(f"{param}.type {kind!r} is not supported by this deployment", f"{param}.type")


def _message(item: dict[str, Any], param: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in ("user", "system", "developer", "assistant"):
        raise TranslationError(
            f"{param}.role must be user, system, developer or assistant; got {role!r}", f"{param}.role"
        )
    chat_role = "system" if role == "developer" else role
    content = item.get("content")
    if isinstance(content, str):
        return {"role": chat_role, "content": content}
    if not isinstance(content, list):
        raise TranslationError(f"{param}.content must be a string or a list of parts", f"{param}.content")
    parts = [_part(p, chat_role, f"{param}.content.{j}") for j, p in enumerate(content)]
    if all(p["type"] == "text" for p in parts):  # text-only content as one string (what every template takes)
        return {"role": chat_role, "content": "\n".join(p["text"] for p in parts)}
    return {"role": chat_role, "content": parts}


def _output_text(output: Any, param: str) -> str:
    """A function_call_output's `output`: a string, or a list of parts whose text is joined."""
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        texts: list[str] = []
        for j, part in enumerate(output):
            converted = _part(part, "user", f"{param}.{j}")
            if converted["type"] != "text":
                raise TranslationError(f"{param}.{j}: only text tool outputs are supported by this deployment", param)
            texts.append(converted["text"])
        return "\n".join(texts)
    raise TranslationError(f"{param} must be a string or a list of parts", param)


def items_to_messages(items: Sequence[Any], param: str = "input") -> list[dict[str, Any]]:
    """Responses input/output items -> chat messages."""
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        iparam = f"{param}.{i}"
        item = want_dict(item, iparam)
        kind = item.get("type", "message")
        if kind == "message":
            out.append(_message(item, iparam))
        elif kind == "function_call":
            call = {
                "id": want_str(item.get("call_id"), f"{iparam}.call_id"),
                "type": "function",
                "function": {
                    "name": want_str(item.get("name"), f"{iparam}.name"),
                    "arguments": want_str(item.get("arguments", ""), f"{iparam}.arguments"),
                },
            }
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant" and isinstance(last.get("content"), (str, type(None))):
                last.setdefault("tool_calls", []).append(call)  # the calls of one assistant turn
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            out.append(
                {
                    "role": "tool",
                    "tool_call_id": want_str(item.get("call_id"), f"{iparam}.call_id"),
                    "content": _output_text(item.get("output"), f"{iparam}.output"),
                }
            )
        elif kind == "reasoning":
            continue
        elif kind == "item_reference":
            raise TranslationError(f"{iparam}: item references are not supported by this deployment", iparam)
        else:
            raise TranslationError(f"{iparam}.type {kind!r} is not supported by this deployment", f"{iparam}.type")
    return out


def input_items(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The request's `input` as a list of items (a string is one user message)."""
    value = body.get("input")
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    if isinstance(value, list):
        return [want_dict(item, f"input.{i}") for i, item in enumerate(value)]
    raise TranslationError("input: a string or a list of input items is required", "input")


def _tools(body: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    tools = body.get("tools")
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise TranslationError("tools must be a list", "tools")
    out: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        tool = want_dict(tool, f"tools.{i}")
        if tool.get("type") != "function":
            raise TranslationError(
                f"tools.{i}.type {tool.get('type')!r}: only function tools are supported by this deployment",
                f"tools.{i}.type",
            )
        function: dict[str, Any] = {"name": want_str(tool.get("name"), f"tools.{i}.name")}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        function["parameters"] = (
            want_dict(tool["parameters"], f"tools.{i}.parameters")
            if tool.get("parameters") is not None
            else {"type": "object", "properties": {}}
        )
        if isinstance(tool.get("strict"), bool):
            function["strict"] = tool["strict"]
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any) -> Any:
    if choice is None or choice in ("auto", "none", "required"):
        return choice
    choice = want_dict(choice, "tool_choice")
    if choice.get("type") == "function":
        return {"type": "function", "function": {"name": want_str(choice.get("name"), "tool_choice.name")}}
    raise TranslationError(
        f"tool_choice {choice.get('type')!r} is not supported by this deployment (auto, none, required, function)",
        "tool_choice",
    )


def _response_format(text: Any) -> dict[str, Any] | None:
    if text is None:
        return None
    fmt = want_dict(text, "text").get("format")
    if fmt is None:
        return None
    fmt = want_dict(fmt, "text.format")
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        schema: dict[str, Any] = {
            "name": want_str(fmt.get("name", "output"), "text.format.name"),
            "schema": want_dict(fmt.get("schema"), "text.format.schema"),
        }
        if isinstance(fmt.get("description"), str):
            schema["description"] = fmt["description"]
        if isinstance(fmt.get("strict"), bool):
            schema["strict"] = fmt["strict"]
        return {"type": "json_schema", "json_schema": schema}
    raise TranslationError(f"text.format.type {kind!r} is not supported", "text.format.type")


# Fields the Response object echoes: a wrong type would make the answer itself invalid, so it is a 400 here.
_ECHOED: Mapping[str, tuple[type, ...]] = {
    "metadata": (dict,), "user": (str,), "store": (bool,), "reasoning": (dict,), "parallel_tool_calls": (bool,),
    "background": (bool,), "max_tool_calls": (int,), "instructions": (str,), "truncation": (str,),
}


def _check_echoed(body: Mapping[str, Any]) -> None:
    for key, types in _ECHOED.items():
        value = body.get(key)
        if value is not None and (not isinstance(value, types) or (bool not in types and isinstance(value, bool))):
            raise TranslationError(f"{key} must be of type {types[0].__name__}", key)
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and not all(isinstance(v, str) for v in metadata.values()):
        raise TranslationError("metadata values must be strings", "metadata")
    if body.get("truncation") not in (None, "auto", "disabled"):
        raise TranslationError("truncation must be 'auto' or 'disabled'", "truncation")


def responses_to_chat(body: Mapping[str, Any], *, previous: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """A Responses request -> a chat/completions request (raises TranslationError on bad input).

    `previous`: the items of the conversation so far when the request has `previous_response_id`
    (`conversation_items` of the earlier response); the caller looks them up, this function keeps no state."""
    _check_echoed(body)
    out: dict[str, Any] = {}
    if "model" in body:
        out["model"] = body["model"]
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if instructions is not None:
        messages.append({"role": "system", "content": want_str(instructions, "instructions")})
    if previous:
        messages += items_to_messages(list(previous), "previous_response_id")
    messages += items_to_messages(input_items(body))
    if not messages:
        raise TranslationError("input: at least one input item is required", "input")
    out["messages"] = messages
    limit = body.get("max_output_tokens")
    if limit is not None:
        if not is_int(limit) or limit < 1:
            raise TranslationError(f"max_output_tokens must be a positive integer, got {limit!r}", "max_output_tokens")
        out["max_tokens"] = limit
    for key in ("temperature", "top_p"):
        value = body.get(key)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TranslationError(f"{key} must be a number", key)
            out[key] = value
    tools = _tools(body)
    if tools:
        out["tools"] = tools
    choice = _tool_choice(body.get("tool_choice"))
    if choice is not None:
        out["tool_choice"] = choice
    if isinstance(body.get("parallel_tool_calls"), bool) and tools:
        out["parallel_tool_calls"] = body["parallel_tool_calls"]
    if isinstance(body.get("user"), str):
        out["user"] = body["user"]
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and isinstance(reasoning.get("effort"), str):
        out["reasoning_effort"] = reasoning["effort"]
    fmt = _response_format(body.get("text"))
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


# ---- response: chat -> Response --------------------------------------------------------------------
def response_skeleton(
    request: Mapping[str, Any], *, response_id: str, created_at: int, model: str | None = None
) -> dict[str, Any]:
    """The Response object's fields that echo the request (status, output and usage filled in later)."""
    tools = []
    for tool in request.get("tools") or ():
        if isinstance(tool, dict):
            tools.append({"parameters": None, "strict": None, "description": None, **tool})
    temperature = request.get("temperature")
    top_p = request.get("top_p")
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": "in_progress",
        "background": bool(request.get("background") or False),
        "error": None,
        "incomplete_details": None,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "max_tool_calls": request.get("max_tool_calls"),
        "model": model or request.get("model") or "",
        "output": [],
        "parallel_tool_calls": request.get("parallel_tool_calls", True) is not False,
        "previous_response_id": request.get("previous_response_id"),
        "reasoning": request.get("reasoning"),
        "service_tier": "auto",
        "store": request.get("store", True) is not False,
        "temperature": temperature if temperature is not None else 1.0,
        "text": request.get("text") or {"format": {"type": "text"}},
        "tool_choice": request.get("tool_choice", "auto"),
        "tools": tools,
        "top_p": top_p if top_p is not None else 1.0,
        "truncation": request.get("truncation") or "disabled",
        "usage": None,
        "user": request.get("user"),
        "metadata": request.get("metadata") or {},
    }


def usage_object(prompt: int, completion: int, cached: int, reasoning: int) -> dict[str, Any]:
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": prompt + completion,
    }


def status_of(finish: Any) -> tuple[str, dict[str, str] | None]:
    if finish == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "message", "role": "assistant", "status": status, "content": [text_part(text)]}


def reasoning_item(item_id: str, text: str) -> dict[str, Any]:
    return {"id": item_id, "type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": text}]}


def call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def chat_to_response(
    response: Mapping[str, Any],
    *,
    request: Mapping[str, Any],
    response_id: str | None = None,
    created_at: int | None = None,
    model: str | None = None,
) -> dict[str, Any]:
    """A chat.completion -> a Response object for `request` (the client's Responses body)."""
    choice = first_choice(response)
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    output: list[dict[str, Any]] = []
    status, incomplete = status_of(choice.get("finish_reason"))
    thinking = reasoning_text(message)
    if thinking:
        output.append(reasoning_item(new_id("rs_"), thinking))
    text = message.get("content")
    if isinstance(text, str) and text:
        output.append(message_item(new_id("msg_"), text, status))
    for call in message.get("tool_calls") or ():
        if not isinstance(call, dict):
            continue
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        call_id = call.get("id") if isinstance(call.get("id"), str) and call.get("id") else new_id("call_")
        arguments = function.get("arguments")
        arguments = arguments if isinstance(arguments, str) else orjson.dumps(arguments or {}).decode()
        output.append(call_item(new_id("fc_"), call_id, function.get("name") or "", arguments, "completed"))
    created = created_at if created_at is not None else int(response.get("created") or time.time())
    out = response_skeleton(request, response_id=response_id or new_id("resp_"), created_at=created, model=model)
    out.update(
        status=status,
        incomplete_details=incomplete,
        output=output,
        usage=usage_object(*chat_usage(response.get("usage"))),
    )
    return out


def conversation_items(
    request: Mapping[str, Any], response: Mapping[str, Any], previous: Sequence[Mapping[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """The conversation after `response`: previous items + this request's input items + its output items.

    Store this under the response id; pass it as `previous` when a request names that id in
    `previous_response_id` (instructions are not part of it: they do not carry over)."""
    items = [dict(item) for item in previous or ()]
    items += input_items(request)
    items += [dict(item) for item in response.get("output") or () if isinstance(item, Mapping)]
    return items


# ---- streaming: chat chunks -> Responses events ----------------------------------------------------
class ResponsesStream:
    """Turns a chat.completion.chunk stream into Responses stream events (dicts with `sequence_number`).

    `feed(chunk)` for each parsed `data:` object, `finish()` at `data: [DONE]`, `error(status, message)` when
    the upstream fails mid-way. Events: response.created, response.in_progress; per output item
    output_item.added, then for text content_part.added + output_text.delta ... output_text.done +
    content_part.done, for a tool call function_call_arguments.delta ... .done, for reasoning
    reasoning_text.delta ... .done; output_item.done; finally response.completed carrying the whole
    Response (status `incomplete` when cut by max_output_tokens, as vLLM sends it). `response` holds the
    final object afterwards (for the store and usage accounting)."""

    def __init__(
        self,
        request: Mapping[str, Any],
        *,
        response_id: str | None = None,
        created_at: int | None = None,
        model: str | None = None,
    ) -> None:
        self.request = request
        self.response = response_skeleton(
            request,
            response_id=response_id or new_id("resp_"),
            created_at=created_at if created_at is not None else int(time.time()),
            model=model,
        )
        self.seq = 0
        self.started = False
        self.done = False
        self.output: list[dict[str, Any]] = []
        self.open: dict[str, Any] | None = None  # the output item being streamed
        self.open_text = ""  # its text / arguments so far
        self.tool_items: dict[int, int] = {}  # chat tool_calls index -> output index
        self.finish_reason: str | None = None
        self.usage: Mapping[str, Any] | None = None

    @staticmethod
    def encode(event: Mapping[str, Any]) -> bytes:
        return sse_event(event)

    def _event(self, type_: str, **fields: Any) -> dict[str, Any]:
        event = {"type": type_, "sequence_number": self.seq, **fields}
        self.seq += 1
        return event

    def _snapshot(self) -> dict[str, Any]:
        return orjson.loads(orjson.dumps(self.response))

    def _start(self) -> list[dict[str, Any]]:
        self.started = True
        snap = self._snapshot()
        return [self._event("response.created", response=snap), self._event("response.in_progress", response=snap)]

    def _close(self) -> list[dict[str, Any]]:
        item = self.open
        if item is None:
            return []
        self.open = None
        index = len(self.output)
        events: list[dict[str, Any]] = []
        if item["type"] == "message":
            text = self.open_text
            events.append(
                self._event(
                    "response.output_text.done", item_id=item["id"], output_index=index, content_index=0,
                    text=text, logprobs=[],
                )
            )
            events.append(
                self._event(
                    "response.content_part.done", item_id=item["id"], output_index=index, content_index=0,
                    part=text_part(text),
                )
            )
            done = message_item(item["id"], text, "completed")
        elif item["type"] == "reasoning":
            text = self.open_text
            events.append(
                self._event(
                    "response.reasoning_text.done", item_id=item["id"], output_index=index, content_index=0, text=text
                )
            )
            done = reasoning_item(item["id"], text)
        else:
            events.append(
                self._event(
                    "response.function_call_arguments.done", item_id=item["id"], output_index=index,
                    name=item["name"], arguments=self.open_text,
                )
            )
            done = call_item(item["id"], item["call_id"], item["name"], self.open_text, "completed")
        self.output.append(done)
        events.append(self._event("response.output_item.done", output_index=index, item=copy.deepcopy(done)))
        return events

    def _open(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        events = self._close()
        self.open, self.open_text = item, ""
        index = len(self.output)
        added = dict(item, status="in_progress")
        if item["type"] == "message":
            added["content"] = []
        events.append(self._event("response.output_item.added", output_index=index, item=added))
        if item["type"] == "message":
            events.append(
                self._event(
                    "response.content_part.added", item_id=item["id"], output_index=index, content_index=0,
                    part=text_part(""),
                )
            )
        return events

    def begin(self) -> list[dict[str, Any]]:
        """response.created and response.in_progress, if not sent yet (vLLM sends them before the first
        token; `feed` sends them with the first chunk when `begin` was not called)."""
        return [] if self.started or self.done else self._start()

    def feed(self, chunk: Mapping[str, Any]) -> list[dict[str, Any]]:
        if self.done:
            return []
        if isinstance(chunk.get("error"), Mapping):  # vLLM's mid-stream error chunk
            err = chunk["error"]
            code = err.get("code")
            return self.error(code if is_int(code) else 500, str(err.get("message") or "upstream error"))
        events = [] if self.started else self._start()
        if isinstance(chunk.get("usage"), Mapping):
            self.usage = chunk["usage"]
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
            return events
        choice = choices[0]
        delta = choice.get("delta") if isinstance(choice.get("delta"), Mapping) else {}
        index = len(self.output)
        thinking = reasoning_text(delta)
        if thinking:
            if self.open is None or self.open["type"] != "reasoning":
                events += self._open({"id": new_id("rs_"), "type": "reasoning", "summary": []})
                index = len(self.output)
            self.open_text += thinking
            events.append(
                self._event(
                    "response.reasoning_text.delta", item_id=self.open["id"], output_index=index, content_index=0,
                    delta=thinking,
                )
            )
        text = delta.get("content")
        if isinstance(text, str) and text:
            if self.open is None or self.open["type"] != "message":
                events += self._open({"id": new_id("msg_"), "type": "message", "role": "assistant"})
                index = len(self.output)
            self.open_text += text
            events.append(
                self._event(
                    "response.output_text.delta", item_id=self.open["id"], output_index=index, content_index=0,
                    delta=text, logprobs=[],
                )
            )
        for call in delta.get("tool_calls") or ():
            if isinstance(call, Mapping):
                events += self._tool_delta(call)
        if choice.get("finish_reason") is not None:
            self.finish_reason = choice["finish_reason"]
        return events

    def _tool_delta(self, call: Mapping[str, Any]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        index = call.get("index") if is_int(call.get("index")) else len(self.tool_items)
        function = call.get("function") if isinstance(call.get("function"), Mapping) else {}
        if index not in self.tool_items:
            call_id = call.get("id") if isinstance(call.get("id"), str) and call.get("id") else new_id("call_")
            item = {"id": new_id("fc_"), "type": "function_call", "call_id": call_id,
                    "name": function.get("name") or "", "arguments": ""}
            events += self._open(item)
            self.tool_items[index] = len(self.output)
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            out_index = self.tool_items[index]
            if self.open is not None and out_index == len(self.output):
                self.open_text += arguments
                item_id = self.open["id"]
            else:  # a late delta for a call already closed: amend the finished item
                done = self.output[out_index]
                done["arguments"] += arguments
                item_id = done["id"]
            events.append(
                self._event(
                    "response.function_call_arguments.delta", item_id=item_id, output_index=out_index, delta=arguments
                )
            )
        return events

    def finish(self, usage: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Close the last item and send response.completed. `usage` is used only if the upstream sent none."""
        if self.done:
            return []
        events = [] if self.started else self._start()
        events += self._close()
        self.done = True
        status, incomplete = status_of(self.finish_reason)
        if status == "incomplete":
            for item in self.output:
                if item["type"] == "message":
                    item["status"] = "incomplete"
        self.response.update(
            status=status,
            incomplete_details=incomplete,
            output=self.output,
            usage=usage_object(*chat_usage(self.usage if self.usage is not None else usage)),
        )
        events.append(self._event("response.completed", response=self._snapshot()))
        return events

    def error(self, status: int, message: str) -> list[dict[str, Any]]:
        """`error` then `response.failed`: what a client sees when the upstream fails mid-way."""
        if self.done:
            return []
        events = [] if self.started else self._start()
        self.done = True
        code = ERROR_CODES.get(status, "server_error")
        events.append(self._event("error", code=code, message=message, param=None))
        self.response.update(status="failed", output=self.output, error={"code": code, "message": message})
        events.append(self._event("response.failed", response=self._snapshot()))
        return events
