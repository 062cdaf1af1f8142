import os
import time
import uuid

import pytest

from hdpo_core.eval.diversity import distinct_n, diversity_metrics, mean_pairwise_similarity
from hdpo_core.eval.sandbox import run_python
from hdpo_core.eval.verifiers import extract_math_answer, get_verifier, verify_many

TASK = {"prompt": "def add(a, b):\n", "entry_point": "add",
        "test": "def check(f):\n    assert f(2, 3) == 5\n    assert f(-1, 1) == 0\n"}
GOOD = "    return a + b\n"


def test_code_verifier_passes_and_fails():
    code = get_verifier("code")
    assert code.check(TASK, GOOD, {}) is True
    assert code.check(TASK, "    return a - b\n", {}) is False
    assert code.check(TASK, "    return (\n", {}) is False  # syntax error


def _escape_target(folder):
    """A path outside the sandbox (the host's /tmp is not the sandbox's private /tmp)."""
    return str(folder / f"hdpo-escape-{uuid.uuid4().hex}")


@pytest.mark.parametrize("name,body", [
    ("infinite loop", "    while True:\n        pass\n"),
    ("sleep", "    import time\n    time.sleep(60)\n"),
    ("unbounded allocation", "    xs = []\n    while True:\n        xs.append(bytearray(50 << 20))\n"),
    ("fork bomb", "    import os\n    while True:\n        os.fork()\n"),
    ("subprocess", "    import subprocess\n    subprocess.run(['sh', '-c', 'echo hi'])\n    return a + b\n"),
    ("socket", "    import socket\n    s = socket.socket()\n    s.connect(('93.184.216.34', 80))\n    return a + b\n"),
    ("ctypes", "    import ctypes\n    ctypes.CDLL(None).fork()\n    return a + b\n"),
])
def test_hostile_completions_fail_within_timeout(name, body):
    start = time.monotonic()
    result = run_python(f"{TASK['prompt']}{body}\n{TASK['test']}\ncheck(add)\n", timeout_s=2.0, memory_mb=256)
    assert not result.passed, (name, result)
    assert time.monotonic() - start < 6.0, name


def test_write_outside_workdir_is_blocked_inside_allowed(tmp_path):
    target = _escape_target(tmp_path)
    body = f"    open({target!r}, 'w').write('x')\n    return a + b\n"
    assert get_verifier("code").check(TASK, body, {"timeout_s": 2.0}) is False
    assert not os.path.exists(target)
    body = f"    import os\n    os.rename('/etc/hostname', {target!r})\n    return a + b\n"
    assert get_verifier("code").check(TASK, body, {"timeout_s": 2.0}) is False
    inside = "    open('scratch.txt', 'w').write('x')\n    return a + b\n"
    assert get_verifier("code").check(TASK, inside, {"timeout_s": 2.0}) is True


def test_evaluation_continues_after_hostile_samples():
    items = [(TASK, "    while True:\n        pass\n"), (TASK, GOOD), (TASK, "    import os\n    os.fork()\n"), (TASK, GOOD)]
    start = time.monotonic()
    assert verify_many(get_verifier("code"), items, workers=2, timeout_s=1.5) == [False, True, False, True]
    assert time.monotonic() - start < 8.0


@pytest.mark.parametrize("text,expected", [
    ("so the answer is\n#### 1,234", 1234.0), ("3 apples and 4 pears: 7.", 7.0), ("x = -2.5", -2.5),
    ("no number", None), ("#### 42\nthen 17", 42.0),
])
def test_math_answer_extraction(text, expected):
    assert extract_math_answer(text) == expected


def test_math_exact_regex_verifiers():
    math_v = get_verifier("math")
    assert math_v.check({"answer": "#### 1,000"}, "it is 1000.0", {})
    assert math_v.check({"answer": 12}, "12", {})
    assert not math_v.check({"answer": "12"}, "13", {})
    assert get_verifier("exact").check({"answer": " Paris "}, "Paris\n\nmore text", {})
    assert not get_verifier("exact").check({"answer": "Paris"}, "paris", {})
    assert get_verifier("regex").check({"answer": r"\b(yes|Yes)\b"}, "I think Yes.", {})


def test_diversity_numbers():
    assert distinct_n(["a b a b"], 1) == pytest.approx(2 / 4)
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert mean_pairwise_similarity(["abc", "abc", "abc"]) == 1.0
    d = diversity_metrics(["x 1", "x 1", "y 2", "z 3"], [1.0, 1.0, 2.0, 3.0])
    assert d["unique_answers"] == 0.75
    assert 0 < d["pairwise_similarity"] < 1
