"""Decide whether a stored request may answer a new one (the semantic cache's safety check).

Three layers, all local (no LLM call):

1. **hard guards** that refuse outright, whatever the length, when the two texts disagree on something
   that changes the answer: numbers (digits, number words, ordinals, "squared"), negation ("or not",
   "with or without", "why or why not" are not negations), a pole of an opposition (on/off, in/out,
   enable/disable, increase/decrease, north/south, before/after, max/min ...), units and their order
   ("10 pounds to kilograms" vs "10 kilograms to pounds"; a unit word on one side only with no number
   anywhere is wording), named groups (languages, months, weekdays, OSes, colours ...) and their order,
   and two words joined by a relation word in the other direction ("how far is Paris from Rome" /
   "... Rome from Paris");
2. **wording checks** (the question word or number of questions, the order of the specific words, a
   *swap* of one specific word for another, or a single replacement of up to two words, capitalised names
   on both sides): they refuse outright (word order excepted) when a text is short (at most
   ``short_words`` content words: "limerick about a cat" vs "... a dog"), and are features of the
   confirmation model for longer texts, where they are often just rewording;
3. a **confirmation**: gradient-boosted trees over the MiniLM cosine and lexical features (content-word
   and IDF-weighted overlap, unmatched specific / rare words on each side, character trigrams, the
   wording checks, length), fitted by ``python -m gateway.cache.fit`` (5-fold cross-validation grouped
   by question text; the threshold is set on out-of-fold scores) and shipped in
   ``data/matcher-weights.json`` with the IDF table ``data/idf.json.gz``, plus two accept rules (same
   content words in the same order with cosine >= 0.97; long texts of >= 8 content words on which no
   wording check fires, with cosine >= 0.85); a floor on the cosine (the user's ``similarity_threshold``
   raises it, never lowers it).
"""

from __future__ import annotations

import difflib
import gzip
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import lexicon as lx

SWAP_MAX_SPECIFIC = 1   # a replaced specific word is a swap when it is the only specific difference ...
SWAP_SHORT_TEXT = 6     # ... or when the text has at most this many content words
_WH = frozenset({"why", "when", "where", "who", "whom", "whose"})
_HOW_KIND = frozenset({"many", "much", "often", "long", "far", "old", "big", "tall", "fast"})
WEIGHTS_FILE = Path(__file__).parent / "data" / "matcher-weights.json"

_TOKEN_RE = re.compile(r"[$€£¥%]|\d+(?:[.,]\d+)*(?:st|nd|rd|th|s|k|m|%)?|[a-z][a-z0-9+#]*(?:['’][a-z]+)*(?:\.[a-z](?=\.))?")
_NEUTRAL_NEG_RE = re.compile(r"\bwhy or why not\b\s*\??|\b(?:or (?:why )?not|with or without|whether or not|or no|or none)\b")
_RELATION_WORDS = frozenset({"to", "from", "into", "than", "in", "of", "per", "over", "before", "after", "by", "at"})
_CAP_RE = re.compile(r"\b[A-Z][a-zA-Z0-9]+")
_NUMBER_RE = re.compile(r"^\d+(?:[.,]\d+)*(st|nd|rd|th|s|k|m|%)?$")


def _stem(word: str) -> str:
    w = word
    if w.endswith("'s") or w.endswith("’s"):
        w = w[:-2]
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 4 and w.endswith("sses"):
        return w[:-2]
    if len(w) > 5 and w.endswith("ing"):
        w = w[:-3]
        if len(w) > 2 and w[-1] == w[-2] and w[-1] not in "lsz":
            w = w[:-1]
        return w
    if len(w) > 4 and w.endswith("ed") and not w.endswith("eed"):
        w = w[:-2]
        if len(w) > 2 and w[-1] == w[-2] and w[-1] not in "lsz":
            w = w[:-1]
        return w
    if len(w) > 5 and w.endswith("est"):
        return w[:-3]
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        return w[:-1]
    return w


def _norm_number(tok: str) -> str:
    m = _NUMBER_RE.match(tok)
    suffix = m.group(1) if m else None
    core = tok[: -len(suffix)] if suffix else tok
    core = core.replace(",", "")
    try:
        val = float(core)
        core = f"{val:g}"
    except ValueError:
        pass
    if suffix in ("st", "nd", "rd", "th"):
        return core + "th" if core != "1" else lx.ORDINAL_FIRST
    if suffix == "k":
        return f"{float(core) * 1000:g}" if core.replace(".", "").isdigit() else core
    return core


_STOP_STEMS = frozenset(_stem(w) for w in lx.STOPWORDS)
_GENERIC_STEMS = frozenset({_stem(w) for w in lx.GENERIC} | lx.GENERIC)


@dataclass(frozen=True)
class Analysis:
    """Everything the matcher needs about one text (computed once, kept next to the index entry)."""

    text: str
    n_tokens: int
    numbers: tuple[str, ...]
    negated: bool
    poles: frozenset[tuple[int, int]]
    units: tuple[str, ...]
    named: frozenset[tuple[str, str]]
    named_order: tuple[str, ...]   # named words (languages, months, OSes ...) in text order
    relations: frozenset[tuple[str, str]]  # (x, y): content words joined by "to/from/into/than/in/of ..." ("paris", "rome")
    content: frozenset[str]
    sequence: tuple[str, ...]     # content stems in text order (for the swap guard)
    specific: frozenset[str]      # content words that are not generic
    caps: frozenset[str]          # capitalised words after the first token (entities), stemmed lower case
    trigrams: frozenset[str]
    wh: frozenset[str]            # question words that fix the kind of answer (why, when, how many ...)
    questions: int                # number of question marks


def analyse(text: str) -> Analysis:
    raw = text.strip()
    low = raw.lower().replace("’", "'")
    # "or not", "with or without", "whether or not", "why or why not" ask both ways: no negation
    low = _NEUTRAL_NEG_RE.sub(" ", low)
    low = re.sub(r"\b(can)not\b", r"\1 not", low)
    low = re.sub(r"\b(\w+)n't\b", r"\1 n't", low)
    tokens = [lx.SPELLING.get(t, t) for t in _TOKEN_RE.findall(low)] + (["n't"] * low.count(" n't"))
    numbers: list[str] = []
    units: list[str] = []
    poles: set[tuple[int, int]] = set()
    named: set[tuple[str, str]] = set()
    named_order: list[str] = []
    content: set[str] = set()
    sequence: list[str] = []
    negated = False
    prev_number = False
    stems: list[str | None] = []
    go_lang = re.search(r"\S\s+Go\b", raw) is not None   # "learn Go": the language, not the verb
    for i, tok in enumerate(tokens):
        stems.append(None)
        is_number = False
        if tok[0].isdigit():
            numbers.append(_norm_number(tok))
            if tok.endswith("%"):
                units.append("percent")
            is_number = True
        elif tok in lx.NUMBER_WORDS or tok == "first":
            if tok == "second" and prev_number:
                units.append("second")
            elif tok in ("one", "single", "once", "pair", "couple", "half", "square", "double") and not (
                    prev_number or (i + 1 < len(tokens) and tokens[i + 1] in lx.UNITS)):
                pass  # "one of the best", "a couple of", "half-life", "square feet" read as words
            else:
                numbers.append(lx.ORDINAL_FIRST if tok == "first" else lx.NUMBER_WORDS[tok])
                is_number = True
        if tok in lx.NEGATORS:
            negated = True
        if tok in lx.OPPOSITIONS:
            poles.add(lx.OPPOSITIONS[tok])
        if tok in lx.UNITS and (tok not in lx.UNIT_AFTER_NUMBER_ONLY or prev_number):
            unit = lx.UNITS[tok]
            if not units or units[-1] != unit:
                units.append(unit)
        if tok in lx.NAMED or (tok == "go" and go_lang):
            named.add((lx.NAMED.get(tok, "language"), tok))
            if tok not in named_order:
                named_order.append(tok)
        if not is_number and tok not in lx.STOPWORDS and tok not in lx.NEGATORS and len(tok) > 1:
            word = lx.SYNONYMS.get(tok, tok)
            stem = lx.SYNONYMS.get(_stem(word), _stem(word))
            content.add(stem)
            sequence.append(stem)
            stems[-1] = stem
        prev_number = is_number
    relations = set()
    for i, tok in enumerate(tokens):
        if tok in _RELATION_WORDS:
            x = next((st for st in reversed(stems[max(0, i - 2):i]) if st), None)
            y = next((st for st in stems[i + 1:i + 4] if st), None)
            if x and y and x != y:
                relations.add((x, y))
    words = raw.split()
    caps = {_stem(m.group(0).lower()) for w in words[1:] for m in [_CAP_RE.match(w)] if m}
    caps -= _STOP_STEMS
    caps = {lx.SYNONYMS.get(c, c) for c in caps}
    specific = {c for c in content if c not in _GENERIC_STEMS}
    wh = {t for t in tokens if t in _WH}
    wh |= {f"how {n}" for h, n in zip(tokens, tokens[1:], strict=False) if h == "how" and n in _HOW_KIND}
    squashed = " " + " ".join(tokens) + " "
    trigrams = {squashed[i:i + 3] for i in range(len(squashed) - 2)}
    return Analysis(text=raw, n_tokens=len(tokens), numbers=tuple(sorted(numbers)), negated=negated,
                    poles=frozenset(poles), units=tuple(units), named=frozenset(named),
                    named_order=tuple(named_order), relations=frozenset(relations),
                    content=frozenset(content), sequence=tuple(sequence), specific=frozenset(specific), caps=frozenset(caps),
                    trigrams=frozenset(trigrams), wh=frozenset(wh), questions=low.count("?"))


def _swapped(a: Analysis, b: Analysis) -> bool:
    """A specific word replaced by another, in a short text or as the only specific difference."""
    only_a = a.specific - b.content
    only_b = b.specific - a.content
    if not only_a or not only_b:
        return False
    sm = difflib.SequenceMatcher(a=a.sequence, b=b.sequence, autojunk=False)
    ops = sm.get_opcodes()
    if not any(tag == "equal" for tag, *_ in ops):
        return False
    diffs = [op for op in ops if op[0] != "equal"]
    single = len(diffs) == 1 and diffs[0][0] == "replace" and \
        max(diffs[0][2] - diffs[0][1], diffs[0][4] - diffs[0][3]) <= 2   # "science fiction" -> "fantasy"
    small = max(len(only_a), len(only_b)) <= SWAP_MAX_SPECIFIC or single or \
        max(len(a.sequence), len(b.sequence)) <= SWAP_SHORT_TEXT
    if not small:
        return False
    for tag, i1, i2, j1, j2 in ops:
        if tag == "replace" and only_a.intersection(a.sequence[i1:i2]) and only_b.intersection(b.sequence[j1:j2]):
            return True
    return False


def _reordered(a: Analysis, b: Analysis) -> bool:
    """The same specific words in another order ("flights from Paris to Rome" / "from Rome to Paris")."""
    shared = a.specific & b.specific
    if len(shared) < 2 or max(len(a.sequence), len(b.sequence)) > SWAP_SHORT_TEXT:
        return False
    seq_a = [w for w in dict.fromkeys(a.sequence) if w in shared]
    seq_b = [w for w in dict.fromkeys(b.sequence) if w in shared]
    return seq_a != seq_b


def hard_guard(a: Analysis, b: Analysis) -> str | None:
    """Differences that always change the answer: numbers, negation, poles, units, named groups."""
    if a.numbers != b.numbers:
        return "number"
    if a.negated != b.negated:
        return "negation"
    if a.poles != b.poles:
        groups_a = {g for g, _ in a.poles}
        groups_b = {g for g, _ in b.poles}
        for g in groups_a & groups_b:
            if {p for gg, p in a.poles if gg == g} != {p for gg, p in b.poles if gg == g}:
                return "polarity"
    if a.units != b.units and (a.units and b.units or a.numbers or b.numbers):
        return "unit"   # a unit named on one side only, with no number anywhere ("per year"), is wording
    if a.named != b.named:
        groups_a = {g for g, _ in a.named}
        for g in groups_a & {g for g, _ in b.named}:
            if {w for gg, w in a.named if gg == g} != {w for gg, w in b.named if gg == g}:
                return "entity"
    elif a.named_order != b.named_order:
        return "order"   # "from French to Italian" / "from Italian to French"
    if any((y, x) in b.relations for x, y in a.relations):
        return "order"   # "how far is Paris from Rome" / "... Rome from Paris", "convert X to Y" / "Y to X"
    return None


SOFT_REASONS = ("question", "order", "swap", "caps")


def soft_flags(a: Analysis, b: Analysis) -> tuple[bool, bool, bool, bool]:
    """The wording checks (question kind, word order, a replaced specific word, capitalised names)."""
    question = a.wh != b.wh or (max(a.questions, b.questions) > 1 and a.questions != b.questions)
    caps_a = a.caps - b.content - b.caps
    caps_b = b.caps - a.content - a.caps
    return question, _reordered(a, b), _swapped(a, b), bool(caps_a and caps_b)


def is_short(a: Analysis, b: Analysis, short_words: int) -> bool:
    return min(len(a.sequence), len(b.sequence)) <= short_words


def guard(a: Analysis, b: Analysis, short_words: int = 1000) -> str | None:
    """The reason two texts must not share an answer, or None.

    The hard checks always apply; the wording checks (``SOFT_REASONS``) refuse outright only when one of
    the texts has at most ``short_words`` content words (short requests are where one word is the whole
    question); for longer texts they are features of the confirmation model instead."""
    reason = hard_guard(a, b)
    if reason is not None:
        return reason
    if is_short(a, b, short_words):
        for name, flag in zip(SOFT_REASONS, soft_flags(a, b), strict=True):
            if flag and name != "order":
                return "entity" if name == "caps" else name
    return None


IDF_FILE = Path(__file__).parent / "data" / "idf.json.gz"
_IDF: dict[str, float] = {}
_IDF_DEFAULT = [9.0]


def _idf(word: str) -> float:
    """Inverse document frequency of a content stem (rare words weigh more; unknown words are rare)."""
    if not _IDF:
        data = json.loads(gzip.decompress(IDF_FILE.read_bytes()))
        _IDF.update(data["idf"])
        _IDF_DEFAULT[0] = float(data["default"])
    return _IDF.get(word, _IDF_DEFAULT[0])


FEATURES = ("bias", "cos", "cos2", "jaccard", "unmatched_a", "unmatched_b", "spec_a", "spec_b", "spec_min",
            "trigram", "len_ratio", "caps_diff", "shared", "cos_x_jac",
            "soft_question", "soft_order", "soft_swap", "soft_caps", "min_words", "wh_conflict", "questions_diff",
            "idf_jaccard", "idf_unmatched_a", "idf_unmatched_b", "idf_max_unmatched", "idf_min_max_unmatched")


def features(a: Analysis, b: Analysis, cos: float) -> list[float]:
    union = len(a.content | b.content) or 1
    shared = len(a.content & b.content)
    jac = shared / union
    un_a = len(a.content - b.content) / max(len(a.content), 1)
    un_b = len(b.content - a.content) / max(len(b.content), 1)
    sp_a = len(a.specific - b.content)
    sp_b = len(b.specific - a.content)
    tri = len(a.trigrams & b.trigrams) / (len(a.trigrams | b.trigrams) or 1)
    lr = min(a.n_tokens, b.n_tokens) / max(a.n_tokens, b.n_tokens, 1)
    caps = len((a.caps ^ b.caps) - (a.content & b.content))
    soft = [float(f) for f in soft_flags(a, b)]
    idf_a = {w: _idf(w) for w in sorted(a.content)}   # sorted: the same sums whatever the hash seed
    idf_b = {w: _idf(w) for w in sorted(b.content)}
    only_a = [v for w, v in idf_a.items() if w not in idf_b]
    only_b = [v for w, v in idf_b.items() if w not in idf_a]
    tot = sum(idf_a.values()) + sum(v for v in only_b)
    idf_shared = sum(v for w, v in idf_a.items() if w in idf_b)
    max_a = max(only_a, default=0.0)
    max_b = max(only_b, default=0.0)
    return [1.0, cos, cos * cos, jac, un_a, un_b, math.log1p(sp_a), math.log1p(sp_b),
            math.log1p(min(sp_a, sp_b)), tri, lr, math.log1p(caps), math.log1p(shared), cos * jac,
            *soft, math.log1p(min(len(a.sequence), len(b.sequence))),
            float(bool(a.wh) and bool(b.wh) and a.wh != b.wh), float(abs(a.questions - b.questions)),
            idf_shared / (tot or 1.0), sum(only_a) / (sum(idf_a.values()) or 1.0),
            sum(only_b) / (sum(idf_b.values()) or 1.0), max(max_a, max_b), min(max_a, max_b)]


@dataclass(frozen=True)
class MatcherModel:
    """The confirmation model: gradient-boosted trees (or a logistic regression) over ``FEATURES``.

    ``trees``: each a tuple of nodes ``(feature, threshold, left, right, value)``; a node with feature -1
    is a leaf; ``x[feature] < threshold`` goes left.  The score is ``sigmoid(base + sum of leaf values)``.
    """

    weights: tuple[float, ...]
    threshold: float      # minimum probability for a match
    min_cosine: float     # cosine floor
    meta: dict[str, Any]
    short_words: int = 1000      # wording checks refuse outright when a text has at most this many content words
    same_words_cosine: float = 2.0  # same content words in the same order and this cosine: accepted
    long_words: int = 0          # long-text rule: both texts have at least this many content words, none of the
    long_cosine: float = 2.0     # ... wording checks fires, and this cosine: accepted without the model
    base: float = 0.0
    trees: tuple[tuple[tuple[int, float, int, int, float], ...], ...] = ()

    @classmethod
    def load(cls, path: Path = WEIGHTS_FILE) -> MatcherModel:
        data = json.loads(path.read_text())
        if tuple(data["features"]) != FEATURES:
            raise ValueError(f"{path}: features {data['features']} do not match the code's {FEATURES}")
        trees = tuple(tuple((int(n[0]), float(n[1]), int(n[2]), int(n[3]), float(n[4])) for n in t)
                      for t in data.get("trees", ()))
        return cls(weights=tuple(float(w) for w in data.get("weights", ())), threshold=float(data["threshold"]),
                   min_cosine=float(data["min_cosine"]), meta=dict(data.get("meta", {})),
                   short_words=int(data.get("short_words", 1000)),
                   same_words_cosine=float((data.get("same_words") or {}).get("min_cosine", 2.0)),
                   long_words=int((data.get("long_text") or {}).get("min_words", 0)),
                   long_cosine=float((data.get("long_text") or {}).get("min_cosine", 2.0)),
                   base=float(data.get("base", 0.0)), trees=trees)

    def rule_ok(self, a: Analysis, b: Analysis, cos: float) -> bool:
        """The accept rules besides the model (only after the guards): the same content words in the same
        order; long texts with a high cosine on which no wording check fires."""
        if cos >= self.same_words_cosine and a.sequence == b.sequence:
            return True
        return bool(self.long_words) and cos >= self.long_cosine and \
            min(len(a.sequence), len(b.sequence)) >= self.long_words and not any(soft_flags(a, b))

    def score(self, x: list[float]) -> float:
        if self.trees:
            z = self.base
            for nodes in self.trees:
                n = nodes[0]
                while n[0] >= 0:
                    n = nodes[n[2]] if x[n[0]] < n[1] else nodes[n[3]]
                z += n[4]
        else:
            z = sum(w * v for w, v in zip(self.weights, x, strict=True))
        return 1.0 / (1.0 + math.exp(-max(min(z, 50.0), -50.0)))

    def probability(self, a: Analysis, b: Analysis, cos: float) -> float:
        return self.score(features(a, b, cos))


@dataclass(frozen=True)
class Verdict:
    ok: bool
    probability: float
    reason: str | None


class Matcher:
    """Guards + confirmation; ``floor`` is the user's similarity_threshold (raises the cosine floor)."""

    def __init__(self, model: MatcherModel | None = None, floor: float | None = None,
                 threshold: float | None = None) -> None:
        self.model = model or MatcherModel.load()
        self.min_cosine = max(self.model.min_cosine, floor or 0.0)
        self.threshold = self.model.threshold if threshold is None else threshold

    def judge(self, query: Analysis, candidate: Analysis, cos: float) -> Verdict:
        if query.text.lower() == candidate.text.lower():
            return Verdict(True, 1.0, None)
        if cos < self.min_cosine:
            return Verdict(False, 0.0, "cosine")
        reason = guard(query, candidate, self.model.short_words)
        if reason is not None:
            return Verdict(False, 0.0, reason)
        p = self.model.probability(query, candidate, cos)
        if p < self.threshold and self.model.rule_ok(query, candidate, cos):
            return Verdict(True, p, None)
        return Verdict(p >= self.threshold, p, None if p >= self.threshold else "confirm")
