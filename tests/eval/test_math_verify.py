"""verifier: math_verify (Hugging Face's math-verify) against the hand-written math verifier on hard cases
written here (fractions, units, thousands separators, LaTeX), each with its right verdict."""

import json
import sys
from pathlib import Path

import pytest

from hdpo_core.errors import InputError
from hdpo_core.eval.verifiers import get_verifier

CASES = [json.loads(x) for x in (Path(__file__).parent / "data" / "math_hard_cases.jsonl").read_text().splitlines()]
MATH, MV = get_verifier("math"), get_verifier("math_verify")


@pytest.mark.parametrize("case", CASES, ids=[c["note"] for c in CASES])
def test_hard_cases(case):
    """Both checkers give the recorded verdict (docs/eval.md's table is these numbers)."""
    task = {"prompt": "q", "answer": case["answer"]}
    assert MATH.check(task, case["completion"], {}) is case["math"]
    assert MV.check(task, case["completion"], {}) is case["math_verify"]


def test_math_verify_is_the_better_checker_and_where_it_is_not():
    wrong = {c["note"] for c in CASES if c["math_verify"] != c["right"]}
    assert wrong == {"escaped dollar sign", "number in words"}
    hand_wrong = {c["note"] for c in CASES if c["math"] != c["right"]}
    assert len(hand_wrong) == 8 and "wrong expression, same last number" in hand_wrong  # a false positive


def test_gsm8k_convention_and_gold_forms():
    assert MV.check({"answer": "#### 1,234"}, "so 1000 + 234 = 1234.\n#### 1,234", {})
    assert not MV.check({"answer": 6}, "#### 7\n(6 was wrong)", {})  # the #### line decides, as in GSM8K
    assert MV.check({"answer": 2.5}, "$\\frac{5}{2}$", {})
    assert MV.answer("#### 12") == "12" and MV.answer("no answer") is None
    assert MV.row_problem({"answer": "no math here"}).startswith("'answer' 'no math here' is not an answer")
    assert MV.row_problem({"answer": "\\frac{1}{2}"}) is None


def test_missing_extra_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "math_verify", None)
    with pytest.raises(InputError, match=r"^verifier math_verify needs math-verify; install the extra: pip install "
                                         r"'hdpo-tune\[eval\]'$"):
        MV.check({"answer": "7"}, "7", {})
