"""Evaluation pairs: the cache-eval files and rule-generated hard negatives (for tuning and benchmarks)."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pair:
    a: str
    b: str
    same: bool
    kind: str = ""


def load_eval(data_dir: str | Path) -> dict[str, list[Pair]]:
    """``qqp`` (same true/false), ``paraphrase`` and ``hard_negatives`` from a cache-eval directory."""
    d = Path(data_dir)
    out: dict[str, list[Pair]] = {}
    for name, file in (("qqp", "qqp-dev.jsonl"), ("paraphrase", "paraphrase-dev.jsonl")):
        path = d / file
        if not path.exists():  # a held-out split may name its files differently
            cands = sorted(d.glob(f"{file.split('-')[0]}*.jsonl"))
            if not cands:
                continue
            path = cands[0]
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        out[name] = [Pair(str(r["a"]), str(r["b"]), bool(r["same"]), name) for r in rows]
    hn = d / "hard-negatives-dev.txt"
    if not hn.exists():
        cands = sorted(d.glob("hard-negatives*.txt"))
        hn = cands[0] if cands else hn
    if hn.exists():
        pairs = []
        for line in hn.read_text().splitlines():
            if line.startswith("#") or "|||" not in line:
                continue
            a, b = line.split("|||", 1)
            pairs.append(Pair(a.strip(), b.strip(), False, "hard_negative"))
        out["hard_negatives"] = pairs
    return out


# --- rule-generated hard negatives ---------------------------------------------------------------
# Two disjoint vocabularies: "fit" words may be seen while fitting, "holdout" words only in validation.
_SLOTS: dict[str, tuple[list[str], list[str]]] = {
    "country": (["France", "Germany", "Japan", "Brazil", "Canada", "Kenya", "Norway", "Mexico", "Egypt", "Chile"],
                ["Italy", "Spain", "India", "Peru", "Sweden", "Poland", "Vietnam", "Ghana", "Turkey", "Greece"]),
    "city": (["Paris", "London", "Tokyo", "Berlin", "Madrid", "Chicago", "Toronto", "Sydney"],
             ["Rome", "Boston", "Seattle", "Dublin", "Lisbon", "Vienna", "Denver", "Osaka"]),
    "animal": (["cat", "dog", "horse", "rabbit", "parrot", "hamster", "goat"],
               ["cow", "pig", "snake", "turtle", "eagle", "shark", "wolf"]),
    "metal": (["iron", "copper", "gold", "silver"], ["zinc", "lead", "nickel", "tin", "aluminum"]),
    "food": (["rice", "pasta", "bread", "chicken", "salmon", "tofu"], ["beef", "quinoa", "lentils", "eggs", "shrimp"]),
    "lang": (["Python", "Java", "Rust", "Go"], ["Ruby", "Kotlin", "Swift", "Perl"]),
    "tool": (["Docker", "Kubernetes", "Git", "Nginx", "Postgres"], ["Redis", "Kafka", "Terraform", "Ansible", "MySQL"]),
    "person": (["Einstein", "Newton", "Darwin", "Lincoln", "Shakespeare"], ["Curie", "Tesla", "Gandhi", "Mozart", "Picasso"]),
    "sport": (["tennis", "soccer", "golf", "chess"], ["rugby", "hockey", "cricket", "baseball"]),
}
_TEMPLATES: dict[str, list[str]] = {
    "country": ["What is the capital of {x}?", "What language is spoken in {x}?", "What is the population of {x}?",
                "What currency does {x} use?", "Do I need a visa to visit {x}?"],
    "city": ["What is the weather like in {x} in spring?", "What are the best places to visit in {x}?",
             "How expensive is it to live in {x}?", "What time zone is {x} in?"],
    "animal": ["Write a short poem about a {x}", "How long does a {x} live?", "What does a {x} eat?",
               "How do I take care of a pet {x}?"],
    "metal": ["What is the melting point of {x}?", "Is {x} magnetic?", "What is the density of {x}?"],
    "food": ["How many calories are in 100 grams of {x}?", "How long should I cook {x}?", "Is {x} high in protein?"],
    "lang": ["How do I read a file in {x}?", "How do I sort a list in {x}?", "What is the best way to learn {x}?"],
    "tool": ["How do I install {x} on Ubuntu?", "How do I check the version of {x}?", "What is {x} used for?"],
    "person": ["When was {x} born?", "What is {x} famous for?", "Write a short biography of {x}"],
    "sport": ["What are the basic rules of {x}?", "How do I get better at {x}?", "Who is the best {x} player ever?"],
}
_NUMBER_TEMPLATES = ["What is {n}% of {m}?", "What is {n} times {m}?", "Is {n} a prime number?", "What is {n} squared?",
                     "Convert {n} dollars to euros", "How many days are in {n} weeks?", "What is the square root of {n}?",
                     "Write a {n} word summary of the French revolution", "Give me {n} ideas for a birthday party"]
_DATE_TEMPLATES = ["Who won the World Cup in {y}?", "What happened in {y}?", "Who was the US president in {y}?",
                   "What day of the week was March 3, {y}?", "What was the inflation rate in {y}?",
                   "What holidays are in {mo}?", "What is the weather like in Paris in {mo}?"]
_MONTHS = ["January", "February", "March", "April", "June", "July", "August", "September", "October", "November"]
_UNIT_TEMPLATES = ["Convert {n} {u} to {v}", "How many {u} are in a {v}?", "What is {n} {u} in {v}?"]
_UNITS = [("miles", "kilometers"), ("pounds", "kilograms"), ("feet", "meters"), ("inches", "centimeters"),
          ("cups", "liters"), ("ounces", "grams"), ("Celsius", "Fahrenheit"), ("hours", "minutes")]
# Oppositions: the first list is in the matcher's lexicon, the second mostly is not (tests the swap guard).
_POLAR = ([("turn on", "turn off"), ("enable", "disable"), ("increase", "decrease"), ("upload", "download"),
           ("lock", "unlock"), ("install", "uninstall"), ("maximize", "minimize"), ("show", "hide"),
           ("add", "remove"), ("import", "export"), ("connect", "disconnect"), ("before", "after")],
          [("inflate", "deflate"), ("attach", "detach"), ("tighten", "loosen"), ("freeze", "thaw"),
           ("archive", "unarchive"), ("expand", "collapse"), ("zoom in", "zoom out"), ("pin", "unpin"),
           ("sunrise", "sunset"), ("import", "export"), ("undo", "redo"), ("merge", "split")])
_POLAR_TEMPLATES = ["How do I {x} notifications on my iPhone?", "How do I {x} a file in Linux?",
                    "What is the keyboard shortcut to {x} a window?", "How can I {x} the volume on Windows?",
                    "How do I {x} a column in Excel?"]
_NEG_TEMPLATES = [("Is coffee good for you?", "Is coffee not good for you?"),
                  ("Why is my laptop charging?", "Why is my laptop not charging?"),
                  ("Why does my code compile?", "Why doesn't my code compile?"),
                  ("Can dogs eat grapes?", "Can't dogs eat grapes?"),
                  ("What happens if I pay my taxes?", "What happens if I don't pay my taxes?"),
                  ("Which foods contain gluten?", "Which foods do not contain gluten?"),
                  ("How do I sleep with a cold?", "How do I sleep without a cold?"),
                  ("Why is the sky blue?", "Why is the sky not blue?"),
                  ("Should I use tabs?", "Should I never use tabs?"),
                  ("Which countries use the euro?", "Which countries don't use the euro?")]
_DIRECTION_TEMPLATES = [("How far is {x} from {y}?", "How far is {y} from {x}?"),
                        ("Translate 'good morning' from {l1} to {l2}", "Translate 'good morning' from {l2} to {l1}"),
                        ("Which is bigger, {x} or {y}?", "Which is smaller, {x} or {y}?"),
                        ("What is north of {x}?", "What is south of {x}?"),
                        ("What is the maximum speed limit in {x}?", "What is the minimum speed limit in {x}?")]
_LANGS = ["English", "German", "French", "Spanish", "Italian", "Japanese", "Dutch", "Polish"]


def generate_hard_negatives(split: str = "fit", seed: int = 7) -> list[Pair]:
    """Rule-generated near-identical pairs whose answers differ (numbers, entities, negation, polarity,
    directions, units, dates).  ``split`` = "fit" or "holdout" uses disjoint word lists and seeds."""
    col = 0 if split == "fit" else 1
    rng = random.Random(seed + col * 1000)
    out: list[Pair] = []
    for slot, (fit_words, hold_words) in _SLOTS.items():
        words = fit_words if col == 0 else hold_words
        for tpl in _TEMPLATES[slot]:
            for _ in range(3):
                x, y = rng.sample(words, 2)
                out.append(Pair(tpl.format(x=x), tpl.format(x=y), False, f"entity:{slot}"))
    for tpl in _NUMBER_TEMPLATES:
        for _ in range(4):
            n, m = rng.randint(2, 300), rng.randint(2, 500)
            n2 = n + rng.choice([1, 2, 5, 10, 50]) if rng.random() < 0.7 else n
            m2 = m if n2 != n else m + rng.choice([1, 3, 100])
            out.append(Pair(tpl.format(n=n, m=m), tpl.format(n=n2, m=m2), False, "number"))
    for tpl in _DATE_TEMPLATES:
        for _ in range(4):
            y1, y2 = rng.sample(range(1950, 2024), 2)
            m1, m2 = rng.sample(_MONTHS, 2)
            out.append(Pair(tpl.format(y=y1, mo=m1), tpl.format(y=y2, mo=m2), False, "date"))
    for tpl in _UNIT_TEMPLATES:
        for _ in range(4):
            (u, v), (u2, v2) = rng.sample(_UNITS, 2)
            n = rng.randint(2, 90)
            out.append(Pair(tpl.format(n=n, u=u, v=v), tpl.format(n=n, u=v, v=u), False, "unit:order"))
            out.append(Pair(tpl.format(n=n, u=u, v=v), tpl.format(n=n, u=u2, v=v2), False, "unit:swap"))
    for x, y in _POLAR[col]:
        for tpl in rng.sample(_POLAR_TEMPLATES, 3):
            out.append(Pair(tpl.format(x=x), tpl.format(x=y), False, "polarity"))
    for a, b in _NEG_TEMPLATES:
        out.append(Pair(a, b, False, "negation"))
    cities = _SLOTS["city"][col]
    for a_tpl, b_tpl in _DIRECTION_TEMPLATES:
        for _ in range(3):
            x, y = rng.sample(cities, 2)
            l1, l2 = rng.sample(_LANGS, 2)
            out.append(Pair(a_tpl.format(x=x, y=y, l1=l1, l2=l2), b_tpl.format(x=x, y=y, l1=l1, l2=l2),
                            False, "direction"))
    # no second request may equal any first request (so store-everything-then-ask stays meaningful)
    firsts = {p.a for p in out}
    seen: set[tuple[str, str]] = set()
    unique = []
    for p in out:
        if p.a != p.b and p.b not in firsts and (p.a, p.b) not in seen:
            seen.add((p.a, p.b))
            unique.append(p)
    return unique
