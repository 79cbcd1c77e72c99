"""How far two answers to the same request agree, 0..1, and how that was judged.

- `exact`: both short (a label, a number, a yes/no): equal after case, spacing and end punctuation.
- `json`: both parse as JSON: equal objects score 1, else the share of top-level keys with equal values.
- `cosine`: longer text, with the cache's sentence embedder in this process: cosine of the two embeddings.
- `lexical`: longer text without an embedder: F1 overlap of the words.
A judge alias (router_settings.shadow.<alias>.judge) may score long answers instead (gateway/rollout/shadow.py).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson

SHORT_WORDS = 8  # answers of at most this many words are compared exactly
MAX_CHARS = 8000  # longer answers are compared on their first MAX_CHARS characters
_WORD = re.compile(r"\w+", re.UNICODE)
Embed = Callable[[Sequence[str]], Awaitable[Any]]  # texts -> (n, dim) unit rows


def _norm(text: str) -> str:
    return " ".join(text.casefold().split()).strip(" .!?;:,\"'`")


def _json(text: str) -> Any:
    t = text.strip()
    if t.startswith("```"):
        t = t.strip("`").removeprefix("json").strip()
    if not t or t[0] not in "[{":
        return None
    try:
        return orjson.loads(t)
    except orjson.JSONDecodeError:
        return None


def structural(a: str, b: str) -> tuple[float, str] | None:
    """The exact / JSON verdict when it applies (no I/O), else None."""
    ja, jb = _json(a), _json(b)
    if ja is not None and jb is not None:
        if ja == jb:
            return 1.0, "json"
        if isinstance(ja, dict) and isinstance(jb, dict) and (ja or jb):
            keys = set(ja) | set(jb)
            return sum(1 for k in keys if ja.get(k, object()) == jb.get(k, object())) / len(keys), "json"
        return 0.0, "json"
    if len(a.split()) <= SHORT_WORDS and len(b.split()) <= SHORT_WORDS:
        return (1.0 if _norm(a) == _norm(b) else 0.0), "exact"
    return None


def lexical(a: str, b: str) -> float:
    wa, wb = Counter(_WORD.findall(a.casefold())), Counter(_WORD.findall(b.casefold()))
    if not wa or not wb:
        return 1.0 if not wa and not wb else 0.0
    common = sum((wa & wb).values())
    if not common:
        return 0.0
    p, r = common / sum(wb.values()), common / sum(wa.values())
    return 2 * p * r / (p + r)


async def agreement(a: str, b: str, embed: Embed | None) -> tuple[float, str]:
    a, b = a[:MAX_CHARS], b[:MAX_CHARS]
    verdict = structural(a, b)
    if verdict is not None:
        return verdict
    if embed is not None:
        try:
            vecs = await embed([a, b])
            return max(0.0, min(1.0, float((vecs[0] * vecs[1]).sum()))), "cosine"
        except Exception:  # noqa: BLE001 - no embedder right now: words instead
            pass
    return lexical(a, b), "lexical"


_SCORE = re.compile(r"(?<![\d.])(0(?:\.\d+)?|1(?:\.0+)?)(?![\d.])")


def judge_prompt(question: str, a: str, b: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You compare two answers to the same request. Reply with one number "
                                      "between 0 and 1: 1 when they say the same thing, 0 when they disagree."},
        {"role": "user", "content": f"Request:\n{question[:4000]}\n\nAnswer A:\n{a[:MAX_CHARS // 2]}\n\n"
                                    f"Answer B:\n{b[:MAX_CHARS // 2]}\n\nAgreement (0-1):"},
    ]


def judge_score(text: str) -> float | None:
    m = _SCORE.search(text)
    return float(m.group(1)) if m else None
