"""Math answers through Hugging Face's ``math-verify`` (``verifier: math_verify``): LaTeX (``\\frac``,
``\\sqrt``, ``\\boxed``), expressions, sets and intervals compared symbolically with SymPy, where the hand-written
``math`` verifier only compares the last number.

GSM8K's convention is kept: a completion with a ``#### N`` line is judged by ``N`` (commas dropped), like the
``math`` verifier; without one, math-verify extracts the answer (``\\boxed{}`` first, then LaTeX, then the
last expression). The gold ``answer`` is a number, ``#### N``, or a string math-verify parses (plain or LaTeX,
``$...$`` optional). Installed with the ``eval`` extra.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from hdpo_core.errors import InputError

_HASHES = re.compile(r"####\s*(-?[\d,]*\.?\d+)")


def _api() -> tuple[Callable[..., list[Any]], Callable[..., bool]]:
    try:
        from math_verify import parse, verify
    except ImportError:
        raise InputError("verifier math_verify needs math-verify; install the extra: pip install "
                         "'hdpo-tune[eval]'") from None
    return parse, verify


def _timeout() -> int | None:
    """math-verify bounds SymPy with SIGALRM, which only the main thread may set; elsewhere it runs unbounded."""
    return 5 if threading.current_thread() is threading.main_thread() else None


def _gsm8k_number(text: str) -> str | None:
    m = _HASHES.search(text)
    return m.group(1).replace(",", "") if m else None


@lru_cache(maxsize=4096)
def _parse_gold(gold: str) -> tuple[Any, ...]:
    parse, _ = _api()
    number = _gsm8k_number(gold)
    text = number if number is not None else gold
    if "$" not in text and any(c in text for c in "\\^{(["):  # bare LaTeX ("2\pi", "x^2+1", "(1, 2)")
        text = f"${text}$"
    return tuple(parse(text, parsing_timeout=_timeout()))


def parse_answer(completion: str) -> list[Any]:
    """The completion's answer as math-verify sees it (``#### N`` first); ``[]`` when there is none."""
    parse, _ = _api()
    number = _gsm8k_number(completion)
    answer = parse(number if number is not None else completion, parsing_timeout=_timeout())
    return answer


def gold_problem(task: dict[str, Any]) -> str | None:
    """A gold answer math-verify cannot read, with the fix."""
    answer = task["answer"]
    if isinstance(answer, bool) or not isinstance(answer, int | float | str):
        return "'answer' must be a number or a string (e.g. \"#### 42\", \"\\\\frac{1}{2}\")"
    if not _parse_gold(str(answer)):
        return f"'answer' {str(answer)[:60]!r} is not an answer math-verify can parse; write it as LaTeX or a number"
    return None


def check_math_verify(task: dict[str, Any], completion: str) -> bool:
    """Symbolic equality of the completion's answer and the gold one."""
    _, verify = _api()
    gold = _parse_gold(str(task["answer"]))
    target = parse_answer(completion)
    return bool(gold and target and verify(list(gold), target, timeout_seconds=_timeout()))


def answer_key(completion: str) -> str | None:
    """A printable form of the extracted answer (the "unique answers" diversity number)."""
    parsed = parse_answer(completion)
    return str(parsed[-1]) if parsed else None
