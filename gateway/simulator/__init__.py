"""Upstream simulator: an OpenAI-compatible server that behaves like vLLM, for tests and benchmarks.

Run it with `gateway-sim --port 8001` (or `python -m gateway.simulator`); embed it with `build_app`.
"""

from gateway.simulator.config import SimConfig, SimOptions

__all__ = ["SimConfig", "SimOptions", "build_app"]


def __getattr__(name: str) -> object:
    if name == "build_app":  # lazy: importing the package does not pull in aiohttp
        from gateway.simulator.server import build_app

        return build_app
    raise AttributeError(name)
