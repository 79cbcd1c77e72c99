"""What the request path asks of the rollout machinery: where an alias's request starts (its canary or
itself), whether to mirror it, and what it did once it is over."""

from __future__ import annotations

import time

from gateway.call import Call
from gateway.config import GatewayConfig
from gateway.rollout.canary import Canaries
from gateway.rollout.shadow import Shadows


class Rollout:
    def __init__(self, shadows: Shadows, canaries: Canaries) -> None:
        self.shadows = shadows
        self.canaries = canaries

    def start(self, call: Call, config: GatewayConfig) -> str:
        """The request was admitted and missed the cache: mirror it (maybe) and say which alias serves it."""
        if config.router.shadow:
            self.shadows.start(call, config)
        if call.pinned is None and self.canaries.percent:
            routed = self.canaries.route(call.alias)
            if routed is not None and routed[0] in config.aliases:
                call.canary = routed[1]
                return routed[0]
        return call.alias

    def finish(self, call: Call, status: int) -> None:
        now = time.perf_counter()
        ttft = None if call.first_byte_at is None or not call.stream else call.first_byte_at - call.started
        if call.mirror is not None:
            call.mirror.on_finish(status, now - call.started, ttft, call.deployment)
        st = call.canary
        if st is not None and status != 499:
            if call.canary_failed:
                self.canaries.observe(call.alias, st, True, now - call.started, None)
            elif call.deployment is not None and call.deployment.alias == st.to:
                self.canaries.observe(call.alias, st, status >= 500, now - call.started, ttft)
