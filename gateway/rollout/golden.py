"""Golden sets: a JSONL file of prompts with the answer each one must give, and how an answer is scored.

One JSON object a line (blank lines are skipped):

    {"id": "capital-fr", "messages": [{"role": "user", "content": "Capital of France? One word."}],
     "contains": "Paris", "max_tokens": 8}

- `messages` (required): the chat messages, each an object with a `role` and a `content`;
- exactly one check: `expected` (the whole answer, surrounding whitespace ignored), `contains` (a
  substring, or a list of substrings that must all appear; case-insensitive) or `json_schema` (the answer,
  optionally inside a ``` fence, must parse as JSON and validate against the schema);
- optional `id` (default `line<N>`; unique) and `max_tokens` (a positive integer).

Every problem of a file is reported at once, each naming its line and field (`GoldenError.problems`).
`gateway eval` (gateway/rollout/evaluate.py) sends the items and scores the answers with `score`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.rollout.schema import schema_problems, validation_errors

CHECKS = ("expected", "contains", "json_schema")
FIELDS = frozenset({"id", "messages", "max_tokens", *CHECKS})
MAX_PROBLEMS = 50
_FENCE = re.compile(r"^\s*```[A-Za-z0-9_-]*\s*\n(.*?)\n?\s*```\s*$", re.DOTALL)


class GoldenError(Exception):
    """The golden file cannot be used; `problems` names the line and field of each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Check:
    kind: str  # "expected" | "contains" | "json_schema"
    value: Any  # str | tuple[str, ...] | schema

    def describe(self) -> str:
        if self.kind == "json_schema":
            return "json_schema"
        return f"{self.kind} {self.value!r}"


@dataclass(frozen=True, slots=True)
class GoldenItem:
    line: int
    id: str
    messages: tuple[dict[str, Any], ...]
    check: Check
    max_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    passed: bool
    reason: str = ""  # why it failed


def _messages_problem(value: Any) -> str | None:
    if not isinstance(value, list) or not value:
        return "must be a non-empty list of {\"role\", \"content\"} objects"
    for i, msg in enumerate(value):
        if not isinstance(msg, dict):
            return f"[{i}] must be an object with role and content"
        if not isinstance(msg.get("role"), str) or not msg["role"]:
            return f"[{i}].role must be a non-empty string"
        if "content" not in msg or not isinstance(msg["content"], (str, list)):
            return f"[{i}].content must be a string or a list of content parts"
    return None


def _check(obj: dict[str, Any], where: str, problems: list[str]) -> Check | None:
    given = [k for k in CHECKS if k in obj]
    if len(given) != 1:
        problems.append(f"{where}: needs exactly one of {', '.join(CHECKS)}"
                        + (f" (has {', '.join(given)})" if given else ""))
        return None
    kind = given[0]
    value = obj[kind]
    if kind == "expected":
        if not isinstance(value, str) or not value.strip():
            problems.append(f"{where}: expected: must be a non-empty string")
            return None
        return Check(kind, value)
    if kind == "contains":
        parts = [value] if isinstance(value, str) else value
        if not isinstance(parts, list) or not parts or not all(isinstance(p, str) and p for p in parts):
            problems.append(f"{where}: contains: must be a non-empty string or a list of them")
            return None
        return Check(kind, tuple(parts))
    if not isinstance(value, dict):
        problems.append(f"{where}: json_schema: must be an object (a JSON Schema)")
        return None
    bad = schema_problems(value)
    if bad:
        problems.append(f"{where}: json_schema: {bad[0]}")
        return None
    return Check(kind, value)


def parse_golden(text: str, source: str = "golden") -> list[GoldenItem]:
    """Items of a JSONL golden set; raises GoldenError with every problem (`<source>:<line>: <field>: ...`)."""
    problems: list[str] = []
    items: list[GoldenItem] = []
    seen: dict[str, int] = {}
    for n, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"{source}:{n}"
        try:
            obj = json.loads(raw)
        except ValueError as exc:
            problems.append(f"{where}: not valid JSON ({exc})")
            continue
        if not isinstance(obj, dict):
            problems.append(f"{where}: must be a JSON object")
            continue
        unknown = sorted(set(obj) - FIELDS)
        if unknown:
            problems.append(f"{where}: unknown field{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                            f"(known: {', '.join(sorted(FIELDS))})")
        bad = _messages_problem(obj.get("messages"))
        if bad:
            problems.append(f"{where}: messages{'' if bad.startswith('[') else ': '}{bad}")
        check = _check(obj, where, problems)
        raw_id = obj.get("id", f"line{n}")
        if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)) or str(raw_id) == "":
            problems.append(f"{where}: id: must be a non-empty string or an integer")
            raw_id = f"line{n}"
        item_id = str(raw_id)
        if item_id in seen:
            problems.append(f"{where}: id: {item_id!r} is also the id of line {seen[item_id]}")
        seen.setdefault(item_id, n)
        max_tokens = obj.get("max_tokens")
        if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                       or max_tokens < 1):
            problems.append(f"{where}: max_tokens: must be a positive integer")
            max_tokens = None
        if bad is None and check is not None:
            items.append(GoldenItem(n, item_id, tuple(obj["messages"]), check, max_tokens))
    if not problems and not items:
        problems.append(f"{source}: no items (one JSON object a line)")
    if problems:
        more = len(problems) - MAX_PROBLEMS
        raise GoldenError(problems[:MAX_PROBLEMS] + ([f"... and {more} more"] if more > 0 else []))
    return items


def load_golden(path: str | Path) -> list[GoldenItem]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise GoldenError([f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})"]) from None
    return parse_golden(text, str(path))


def _short(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def unfence(text: str) -> str:
    """The body of a ``` fenced block when the whole answer is one; else the answer."""
    m = _FENCE.match(text)
    return m.group(1) if m else text


def score(check: Check, answer: str) -> Verdict:
    """Does `answer` pass `check`? The reason says why not."""
    if check.kind == "expected":
        if answer.strip() == check.value.strip():
            return Verdict(True)
        return Verdict(False, f"expected {_short(check.value.strip())}, got {_short(answer.strip())}")
    if check.kind == "contains":
        folded = answer.casefold()
        missing = [p for p in check.value if p.casefold() not in folded]
        if not missing:
            return Verdict(True)
        return Verdict(False, f"missing {', '.join(map(repr, missing))} in {_short(answer.strip())}")
    try:
        value = json.loads(unfence(answer))
    except ValueError as exc:
        return Verdict(False, f"not JSON ({exc}): {_short(answer.strip())}")
    errors = validation_errors(value, check.value)
    return Verdict(True) if not errors else Verdict(False, f"schema: {errors[0]}")
