"""Upstreams: the native OpenAI-compatible client (vLLM, llama.cpp, any OpenAI-compatible server) and
the litellm adapter for every other provider, behind one `send` (see base.py); failures and what
follows from them in failures.py."""

from __future__ import annotations

from gateway.config import Deployment
from gateway.upstreams.base import EventStream, Upstream, UpstreamReply, UpstreamRequest
from gateway.upstreams.failures import (
    POLICIES,
    Attempt,
    AttemptsFailed,
    Failure,
    UpstreamError,
    upstream_message,
)
from gateway.upstreams.litellm import LiteLLMUpstream
from gateway.upstreams.openai_compatible import OpenAICompatible


class Upstreams:
    """The upstream clients of one process, and which one serves a deployment."""

    def __init__(self, connections: int) -> None:
        self.native = OpenAICompatible(connections)
        self.litellm = LiteLLMUpstream()

    def for_deployment(self, dep: Deployment) -> Upstream:
        return self.native if dep.native else self.litellm

    async def start(self) -> None:
        await self.native.start()

    async def close(self) -> None:
        await self.native.close()


__all__ = ["POLICIES", "Attempt", "AttemptsFailed", "EventStream", "Failure", "LiteLLMUpstream", "OpenAICompatible",
           "Upstream", "UpstreamError", "UpstreamReply", "UpstreamRequest", "Upstreams", "upstream_message"]
