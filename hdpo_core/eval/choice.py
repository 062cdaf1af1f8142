"""Multiple choice (MMLU-Pro style): the letter a completion chose, extracted the way MMLU-Pro's own evaluation
extracts it, so accuracies are comparable with published MMLU-Pro numbers.

A task row holds ``prompt`` (the question with its lettered options, as the model sees it), ``options`` (the
option texts, 2 to 26; MMLU-Pro has up to ten, A-J) and ``answer`` (the correct letter, or its 0-based index as
MMLU-Pro's ``answer_index``). The letters a task allows are the first ``len(options)`` letters of the alphabet.

Extraction, first match wins (MMLU-Pro's ``extract_answer`` -> ``extract_again`` -> ``extract_final``):

1. ``answer is (X)`` / ``answer is X`` (the chain-of-thought prompt ends "the answer is (X)");
2. ``Answer: X`` (``answer:`` in either case), the last one on the first line that has one;
3. the last standalone option letter anywhere in the completion.

One deliberate difference: in step 1 the letter must stand alone ("the answer is Because ..." is not "B").
Step 3 is kept as MMLU-Pro has it, quirks included: "I think ..." reads as option I when there are nine or more.
A completion with none of the three is an *extraction failure*: scored wrong, and counted on its own so a
model that does not follow the answer format is told apart from one that answers wrongly.
"""

from __future__ import annotations

import re
import string
from functools import lru_cache
from typing import Any

LETTERS = string.ascii_uppercase
MIN_OPTIONS, MAX_OPTIONS = 2, len(LETTERS)


@lru_cache(maxsize=32)
def _patterns(n_options: int) -> tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str]]:
    cls = f"[A-{LETTERS[n_options - 1]}]"
    return (re.compile(rf"answer is \(?({cls})(?![A-Za-z])\)?"),
            re.compile(rf".*[aA]nswer:\s*({cls})"),
            re.compile(rf"\b({cls})\b(?!.*\b{cls}\b)", re.DOTALL))


def extract_choice(text: str, n_options: int = 10) -> str | None:
    """The option letter ``text`` chose (steps 1-3 above), or ``None`` (an extraction failure)."""
    for pattern in _patterns(n_options):
        m = pattern.search(text)
        if m:
            return m.group(1)
    return None


def correct_letter(task: dict[str, Any]) -> str:
    """The task's correct letter (``answer`` as a letter or a 0-based index)."""
    answer = task["answer"]
    return LETTERS[answer] if isinstance(answer, int) else str(answer).strip().upper()


def row_problem(task: dict[str, Any]) -> str | None:
    """What is wrong with a choice task row, with the fix; ``None`` when it is usable."""
    options = task.get("options")
    if not isinstance(options, list) or not MIN_OPTIONS <= len(options) <= MAX_OPTIONS:
        return (f"'options' must be a list of {MIN_OPTIONS} to {MAX_OPTIONS} option texts (got "
                f"{type(options).__name__}{f' of {len(options)}' if isinstance(options, list) else ''})")
    if any(not isinstance(o, str) or not o.strip() for o in options):
        return "'options' has an empty or non-string option; give each option's text"
    answer, allowed = task.get("answer"), LETTERS[:len(options)]
    if isinstance(answer, bool) or not isinstance(answer, int | str):
        return f"'answer' must be a letter {allowed[0]}-{allowed[-1]} or a 0-based option index"
    if isinstance(answer, int) and not 0 <= answer < len(options):
        return f"'answer' index {answer} is out of range; {len(options)} options take 0-{len(options) - 1}"
    if isinstance(answer, str) and answer.strip().upper() not in allowed:
        return f"'answer' '{answer}' is not one of the options' letters {allowed[0]}-{allowed[-1]}"
    return None


def judge_choice(task: dict[str, Any], completion: str) -> tuple[bool, bool]:
    """``(correct, extraction_failed)``."""
    chosen = extract_choice(completion, len(task["options"]))
    return chosen is not None and chosen == correct_letter(task), chosen is None


def chance(task: dict[str, Any]) -> float:
    """Accuracy of a uniform random guess: 1 / number of options."""
    return 1.0 / len(task["options"])
