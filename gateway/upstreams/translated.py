"""An upstream that does not speak an endpoint's API (llama.cpp, litellm providers, an `openai/` server
without Responses or Messages): the request is translated to chat/completions, sent as such, and the
answer — plain or streamed — translated back by the endpoint (gateway/translate)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from gateway import sse
from gateway.config import Deployment
from gateway.endpoints import BY_NAME, Endpoint
from gateway.upstreams.base import EventStream, Upstream, UpstreamReply, UpstreamRequest
from gateway.upstreams.failures import UpstreamError

CHAT = BY_NAME["chat"]


class TranslatedStream:
    """A chat.completion.chunk stream read as the endpoint's own events."""

    def __init__(self, upstream: EventStream, translator: Any) -> None:
        self._upstream = upstream
        self._tr = translator
        self._decoder = sse.Decoder()
        self._ended = False
        self.first_byte_elapsed = upstream.first_byte_elapsed
        self.first = self._translate(upstream.first)
        self.final: Mapping[str, Any] | None = None

    def _emit(self, events: list[dict[str, Any]]) -> bytes:
        return b"".join(self._tr.encode(e) for e in events)

    def _translate(self, piece: bytes, block: bytes | None = None) -> bytes:
        out: list[dict[str, Any]] = []
        if block is None:
            block = self._decoder.feed(piece)
        for raw in sse.split_events(block) if block else ():
            ev = sse.parse_event(raw)
            if ev is None or not ev.data:
                continue
            if ev.data == sse.DONE_DATA:
                out += self._tr.finish()
                continue
            try:
                chunk = orjson.loads(ev.data)
            except orjson.JSONDecodeError:
                continue
            if isinstance(chunk, dict) and "error" in chunk:
                err = chunk["error"]
                message = err.get("message") if isinstance(err, dict) else str(err)
                raise UpstreamError("drop", f"upstream stream error: {str(message)[:200]}")
            if isinstance(chunk, dict):
                out += self._tr.feed(chunk)
        return self._emit(out)

    async def read(self) -> bytes:
        while not self._ended:
            piece = await self._upstream.read()
            if not piece:
                self._ended = True
                tail = self._translate(b"", self._decoder.flush())
                return tail + self._emit(self._tr.finish())
            out = self._translate(piece)
            if out:
                return out
        return b""

    def close(self) -> None:
        self._upstream.close()

    def release(self) -> None:
        self._upstream.release()


async def send_translated(upstream: Upstream, dep: Deployment, api: Endpoint, body: Mapping[str, Any], alias: str,
                          context: Any, stream: bool, request_id: str, first_byte_timeout: float | None
                          ) -> UpstreamReply | EventStream:
    chat = api.to_chat(body, context)
    assert chat is not None
    chat["model"] = dep.served_model
    req = UpstreamRequest(endpoint=CHAT.name, path=CHAT.upstream_path, body=chat,
                          payload=orjson.dumps(CHAT.upstream_body(chat, dep.served_model, stream, False))
                          if dep.native else b"",
                          stream=stream, request_id=request_id, first_byte_timeout=first_byte_timeout)
    reply = await upstream.send(dep, req)
    if isinstance(reply, UpstreamReply):
        try:
            data = orjson.loads(reply.body)
        except orjson.JSONDecodeError:
            raise UpstreamError("drop", "the upstream's answer is not JSON") from None
        if not isinstance(data, dict):
            raise UpstreamError("drop", "the upstream's answer is not a JSON object")
        return UpstreamReply(reply.status, orjson.dumps(api.from_chat(data, body, alias, context)), reply.elapsed)
    return TranslatedStream(reply, api.chat_stream(body, alias, context))
