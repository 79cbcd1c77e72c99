"""oss-gateway: a self-hosted, OpenAI-compatible gateway for open-weight models."""

__version__ = "0.1.0"
