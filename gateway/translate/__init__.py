"""Translation between the agent APIs (OpenAI Responses, Anthropic Messages) and chat/completions, for
upstreams that do not serve those APIs natively. Pure functions; the gateway does the I/O."""

from gateway.translate.common import TranslationError

__all__ = ["TranslationError"]
