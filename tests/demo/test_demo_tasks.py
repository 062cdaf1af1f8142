"""The demo task generator, answer extractor and pair maker (pure Python, no model)."""

from __future__ import annotations

import re

from tests.demo._demo import DEMO_DIR  # noqa: F401  (puts examples/demo on sys.path)

from build_demo import make_pairs  # noqa: E402  isort: skip
from demo_tasks import Problem, extract_answer, is_correct, make_problems  # noqa: E402  isort: skip

STEP = re.compile(r"(\d+) ([+\-*]) (\d+) = (\d+)\.")


def test_generator_is_deterministic_and_seed_dependent() -> None:
    a, b = make_problems(7, 200), make_problems(7, 200)
    assert a == b
    assert make_problems(8, 200) != a
    assert len({p.prompt for p in a}) == 200


def test_exclude_keeps_splits_disjoint() -> None:
    used: set[str] = set()
    first = make_problems(1, 300, exclude=used)
    second = make_problems(1, 300, exclude=used)  # same seed: must skip every prompt already drawn
    assert not {p.prompt for p in first} & {p.prompt for p in second}
    assert len(used) == 600


def test_worked_solutions_are_correct_arithmetic() -> None:
    ops = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y}
    for p in make_problems(3, 500):
        assert p.prompt.startswith("Question: ") and p.prompt.endswith("\nAnswer:")
        assert p.solution.startswith(" ") and p.solution.endswith(f"\n#### {p.answer}")
        steps = STEP.findall(p.solution)
        assert 2 <= len(steps) <= 3
        value = None
        for x, op, y, z in steps:
            assert value is None or int(x) == value  # each step continues from the last result
            assert ops[op](int(x), int(y)) == int(z)
            value = int(z)
        assert value == p.answer and 0 <= p.answer < 100
        assert str(int(steps[0][0])) in p.prompt  # the start amount is stated in the question


def test_extract_answer_marker_fallback_and_signs() -> None:
    assert extract_answer(" 3 + 5 = 8.\n#### 42") == "42"
    assert extract_answer("#### 42\nthen 7") == "42"  # the marker wins over later numbers
    assert extract_answer("#### -17") == "-17"
    assert extract_answer("She has 3 - 5 = -2 apples") == "-2"  # last number, negative
    assert extract_answer("I think 12 or 13") == "13"
    assert extract_answer("#### 1,234") == "1234"
    assert extract_answer("#### 6.0") == "6"
    assert extract_answer("#### 2.50") == "2.5"
    assert extract_answer("no numbers here") is None
    assert extract_answer("") is None
    assert is_correct(" 2 * 3 = 6.\n#### 6", 6) and not is_correct("#### 7", 6)


def test_make_pairs_pairs_correct_with_wrong() -> None:
    problems = [Problem("Q1\nAnswer:", " 1 + 1 = 2.\n#### 2", 2), Problem("Q2\nAnswer:", " x\n#### 5", 5),
                Problem("Q3\nAnswer:", " x\n#### 9", 9)]
    samples = [
        [" 1 + 1 = 2.\n#### 2", " 1 + 1 = 3.\n#### 3", " 1 + 1 = 2.\n#### 2", " 4", " 2", " \ufffd 1"],
        ["#### 5", "#### 5"],  # all correct: no pair
        ["#### 1", "#### 2"],  # all wrong: no pair
    ]
    rows = make_pairs(problems, samples, max_pairs=4)
    # Distinct good: 1 (" 2" has no #### marker, so it is neither chosen nor rejected); distinct bad: 2
    # (the undecodable sample is dropped).
    assert rows == [
        {"prompt": "Q1\nAnswer:", "chosen": " 1 + 1 = 2.\n#### 2", "rejected": " 1 + 1 = 3.\n#### 3"},
        {"prompt": "Q1\nAnswer:", "chosen": " 1 + 1 = 2.\n#### 2", "rejected": " 4"},
    ]
    assert len(make_pairs(problems, samples, max_pairs=1)) == 1
