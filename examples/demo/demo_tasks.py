"""The demo task: small, verifiable GSM8K-like arithmetic word problems.

Each problem is 2-3 operations (add, subtract, multiply by 2 or 3) on small non-negative integers, worded
from a few templates, names and objects. The prompt and the worked solution follow GSM8K's layout::

    prompt:     "Question: Tom has 3 apples. He buys 5 more. He gives 2 away. How many apples does he have now?\\nAnswer:"
    completion: " 3 + 5 = 8. 8 - 2 = 6.\\n#### 6"

The prompt ends on ``Answer:`` and the completion starts with a space, so the prompt always ends on a
token boundary. Everything is drawn from one ``random.Random(seed)``, so the same seed gives the same
problems on any machine (Python's ``random`` is platform-independent for integer draws and choices).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

NAMES = (("Tom", "he"), ("Anna", "she"), ("Ben", "he"), ("Mia", "she"), ("Sam", "he"),
         ("Lucy", "she"), ("Omar", "he"), ("Zoe", "she"), ("Leo", "he"), ("Ivy", "she"))
OBJECTS = ("apples", "marbles", "stickers", "pencils", "cookies", "books", "coins", "shells", "cards", "stamps")

# Phrasings for each operation; {P} is the capitalised pronoun, {o} the object pronoun, {n} the operand.
ADD = ("{P} buys {n} more.", "{P} finds {n} more.", "A friend gives {o} {n} more.", "{P} gets {n} more.")
SUB = ("{P} gives {n} away.", "{P} loses {n}.", "{P} sells {n}.", "{P} gives {n} to a friend.")
MUL = {2: ("The number of {obj} doubles.", "{P} doubles the {obj}."),
       3: ("The number of {obj} triples.", "{P} triples the {obj}.")}
START = ("{name} has {a} {obj}.", "{name} starts with {a} {obj}.", "{name} owns {a} {obj}.")
QUESTION = ("How many {obj} does {p} have now?", "How many {obj} does {name} have at the end?",
            "How many {obj} are left?")

_OBJ_PRONOUN = {"he": "him", "she": "her"}


@dataclass(frozen=True)
class Problem:
    """One word problem: ``prompt`` (ends with ``Answer:``), worked ``solution`` (starts with a space,
    ends with ``#### N``) and the integer ``answer``."""

    prompt: str
    solution: str
    answer: int


def make_problem(rng: random.Random) -> Problem:
    """Draw one problem. Operations never go below zero and results stay under 100."""
    name, pronoun = rng.choice(NAMES)
    obj = rng.choice(OBJECTS)
    value = rng.randint(2, 20)
    fmt = {"name": name, "obj": obj, "p": pronoun, "P": pronoun.capitalize(), "o": _OBJ_PRONOUN[pronoun]}
    sentences = [rng.choice(START).format(a=value, **fmt)]
    steps = []
    for _ in range(rng.choice((2, 2, 3))):
        kinds = ["add"] + (["sub"] if value >= 1 else []) + (["mul"] if value <= 15 else [])
        kind = rng.choice(kinds)
        if kind == "add":
            n = rng.randint(1, 12)
            sentences.append(rng.choice(ADD).format(n=n, **fmt))
            new, step = value + n, f"{value} + {n} = {value + n}."
        elif kind == "sub":
            n = rng.randint(1, min(value, 12))
            sentences.append(rng.choice(SUB).format(n=n, **fmt))
            new, step = value - n, f"{value} - {n} = {value - n}."
        else:
            n = rng.choice((2, 3))
            sentences.append(rng.choice(MUL[n]).format(**fmt))
            new, step = value * n, f"{value} * {n} = {value * n}."
        steps.append(step)
        value = new
    question = rng.choice(QUESTION).format(**fmt)
    prompt = f"Question: {' '.join(sentences)} {question}\nAnswer:"
    solution = " " + " ".join(steps) + f"\n#### {value}"
    return Problem(prompt=prompt, solution=solution, answer=value)


def make_problems(seed: int, count: int, *, exclude: set[str] | None = None) -> list[Problem]:
    """``count`` problems with distinct prompts, none of which is in ``exclude`` (prompts already used
    by another split); ``exclude`` is updated in place so splits stay disjoint."""
    rng = random.Random(seed)
    seen = exclude if exclude is not None else set()
    out: list[Problem] = []
    while len(out) < count:
        problem = make_problem(rng)
        if problem.prompt in seen:
            continue
        seen.add(problem.prompt)
        out.append(problem)
    return out


_HASH_ANSWER = re.compile(r"####\s*(-?[\d,]*\d(?:\.\d+)?)")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def extract_answer(text: str) -> str | None:
    """The final answer of a completion as a canonical number string, or ``None``.

    Takes the number after the first ``####`` (GSM8K's marker); without one, the last number in the
    text. Commas are dropped and ``6.0`` becomes ``6`` so answers compare as strings.
    """
    match = _HASH_ANSWER.search(text)
    if match is not None:
        raw = match.group(1)
    else:
        numbers = _NUMBER.findall(text)
        if not numbers:
            return None
        raw = numbers[-1]
    raw = raw.replace(",", "")
    if "." in raw:
        whole, frac = raw.split(".", 1)
        raw = whole if not frac.strip("0") else raw.rstrip("0")
    if raw in ("-0", ""):
        raw = "0"
    return raw


def is_correct(completion: str, answer: int | str) -> bool:
    """True when the completion's extracted answer equals ``answer``."""
    return extract_answer(completion) == str(answer)
