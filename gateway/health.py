"""Active health checks: each native deployment's `GET {api_base}/models` every few seconds.

A deployment that does not answer 2xx is taken out of routing before a user hits it, and put back
when it answers again. Cooldowns (from failed requests) are separate and kept by the router.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from gateway.config import Deployment, GatewayConfig
from gateway.upstreams import OpenAICompatible, UpstreamError

log = logging.getLogger("gateway.health")


class HealthChecker:
    def __init__(self, client: OpenAICompatible, config: Callable[[], GatewayConfig], interval: float,
                 timeout: float, on_result: Callable[[Deployment, bool, str | None], None]) -> None:
        self.client = client
        self.config = config
        self.interval = interval
        self.timeout = timeout
        self.on_result = on_result

    async def check(self, dep: Deployment) -> None:
        try:
            await self.client.get_json(f"{dep.api_base}/models", self.timeout, dep.api_key)
        except UpstreamError as exc:
            self.on_result(dep, False, f"HTTP {exc.status}")
        except TimeoutError:
            self.on_result(dep, False, f"no answer within {self.timeout:g}s")
        except Exception as exc:  # noqa: BLE001 - any failure means unhealthy
            self.on_result(dep, False, type(exc).__name__)
        else:
            self.on_result(dep, True, None)

    async def check_all(self) -> None:
        cfg = self.config()
        if not cfg.background_health_checks:
            return
        targets = [d for d in cfg.deployments if d.native and d.health_check]
        if targets:
            await asyncio.gather(*(self.check(d) for d in targets))

    async def run(self) -> None:
        while True:
            try:
                await self.check_all()
            except Exception:  # noqa: BLE001
                log.exception("health check round failed")
            cfg = self.config()
            await asyncio.sleep(cfg.health_check_interval or self.interval)
