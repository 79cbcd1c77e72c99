"""Token counts off the hot path for upstreams that sent no usage (no tokenizer is downloaded at run
time): the upstream's own `/tokenize` endpoint where it has one, else the endpoint's heuristic estimate
(gateway/endpoints: about 4 bytes of UTF-8 per token)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


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
