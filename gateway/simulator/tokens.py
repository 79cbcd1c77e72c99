"""Deterministic "tokenizer", text generator and embedder of the simulator.

Counting rules (documented contract, the gateway's tests rely on them):
- a text's tokens are its whitespace-separated words: `len(text.split())`;
- chat prompt tokens = sum over messages of (words of the message's text + 3); a message's text is
  its `content` string, or the `text` of its text parts when `content` is a list (images count 0);
- completion prompt tokens = words of `prompt` (a string or a list of strings), or the number of
  ids when `prompt` is a list of token ids (or a list of such lists);
- completion tokens: every generated token is one word with a leading space (`" word"`), so
  `len(content.split()) == usage.completion_tokens` always holds.
The generated text echoes up to ECHO_WORDS words of the last user message (the prompt for
completions), then filler words picked by a generator seeded from a hash of the whole prompt:
the same prompt always gives the same answer.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

PER_MESSAGE_TOKENS = 3
ECHO_WORDS = 8
VOCAB_SIZE = 151_000
SPECIAL_IDS = (151_643, 151_644, 151_645)  # message start, role, header end (per chat message)
_MASK64 = (1 << 64) - 1
FILLER: tuple[str, ...] = (
    "the",
    "model",
    "answer",
    "is",
    "a",
    "simulated",
    "response",
    "with",
    "several",
    "words",
    "that",
    "look",
    "like",
    "text",
    "from",
    "an",
    "open",
    "weight",
    "language",
    "server",
    "and",
    "it",
    "keeps",
    "going",
    "until",
    "max_tokens",
    "or",
    "its",
    "default",
    "length",
    "of",
    "tokens",
    "has",
    "been",
    "reached",
    "so",
    "tests",
    "can",
    "count",
    "every",
    "one",
    "exactly",
    "while",
    "benchmarks",
    "measure",
    "latency",
    "throughput",
    "for",
    "streaming",
    "requests",
    "over",
    "loopback",
    "without",
    "any",
    "gpu",
    "at",
    "all",
    "here",
    "we",
    "go",
    "again",
    "then",
    "more",
    "data",
)


@dataclass(frozen=True)
class Prompt:
    """What the simulator needs from a request's prompt."""

    tokens: int
    echo: tuple[str, ...]  # words the answer starts with
    seed: int  # hash of the whole prompt: picks the filler words
    ids: tuple[int, ...] = ()  # explicit token ids (completions with a token-id prompt)


def content_text(content: Any) -> str:
    """The text of a chat message's `content` (string, null, or a list of typed parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts: list[str] = []
        for part in content:
            if isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    texts.append(text)
            elif isinstance(part, str):
                texts.append(part)
        return " ".join(texts)
    raise ValueError("messages: content must be a string, a list of parts or null")


def _seed(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def chat_prompt(messages: Sequence[Any]) -> Prompt:
    tokens = 0
    echo: list[str] = []
    last: list[str] = []
    texts: list[str] = []
    for message in messages:
        if not isinstance(message, dict):
            raise ValueError("messages: each message must be an object")
        text = content_text(message.get("content"))
        words = text.split()
        tokens += len(words) + PER_MESSAGE_TOKENS
        texts.append(f"{message.get('role')}\x00{text}")
        last = words
        if message.get("role") == "user":
            echo = words
    return Prompt(tokens, tuple((echo or last)[:ECHO_WORDS]), _seed("\x01".join(texts).encode()))


def completion_prompt(prompt: Any) -> Prompt:
    if isinstance(prompt, str):
        words = prompt.split()
        return Prompt(len(words), tuple(words[:ECHO_WORDS]), _seed(prompt.encode()))
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return completion_prompt(" ".join(prompt))
        if all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
            return Prompt(len(prompt), (), _seed(repr(prompt).encode()), tuple(prompt))
        if all(isinstance(p, list) and all(isinstance(i, int) for i in p) for p in prompt):
            flat = tuple(i for p in prompt for i in p)
            return Prompt(len(flat), (), _seed(repr(prompt).encode()), flat)
    raise ValueError("prompt must be a string, a list of strings or a list of token ids")


def generate(prompt: Prompt, n: int) -> list[str]:
    """n tokens, each one word with a leading space."""
    out = [" " + w for w in prompt.echo[:n]]
    x = prompt.seed | 1
    while len(out) < n:
        x = (x * 6364136223846793005 + 1442695040888963407) & _MASK64
        out.append(" " + FILLER[(x >> 33) % len(FILLER)])
    return out


def word_id(word: str) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest(), "little") % VOCAB_SIZE


def text_ids(text: str) -> list[int]:
    return [word_id(w) for w in text.split()]


def chat_ids(messages: Sequence[Any]) -> list[int]:
    """Token ids of a chat prompt; len() equals chat_prompt(messages).tokens."""
    ids: list[int] = []
    for message in messages:
        if not isinstance(message, dict):
            raise ValueError("messages: each message must be an object")
        role = message.get("role")
        ids += [SPECIAL_IDS[0], word_id(str(role)), SPECIAL_IDS[2]]
        ids += text_ids(content_text(message.get("content")))
    return ids


def embedding_inputs(value: Any) -> list[list[str]]:
    """The `input` of an embeddings request as lists of words (token ids become words)."""
    if isinstance(value, str):
        return [value.split()]
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            return [v.split() for v in value]
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return [[str(v) for v in value]]
        if all(isinstance(v, list) and all(isinstance(i, int) for i in v) for v in value):
            return [[str(i) for i in v] for v in value]
    raise ValueError("input must be a string, a list of strings or a list of token ids")


def embed(words: Sequence[str], dim: int) -> list[float]:
    """A unit vector: the sum of hash-seeded vectors of the (lower-cased) words.

    Deterministic, and texts that share words point in similar directions."""
    acc = [0.0] * dim
    for word, count in Counter(w.lower() for w in words).items() or [("", 1)]:
        raw = hashlib.shake_256(word.encode()).digest(dim)
        for i, b in enumerate(raw):
            acc[i] += count * (b - 127.5)
    norm = math.sqrt(sum(x * x for x in acc)) or 1.0
    return [x / norm for x in acc]
