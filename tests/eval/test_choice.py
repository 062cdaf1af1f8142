"""verifier: choice (MMLU-Pro's answer extraction): the three steps, their order, extraction failures apart from
wrong answers, the chance level, bad rows, and the numbers through the real evaluation and report."""

import json

import pytest
from scripted import scripted_side
from tiny import tiny_tokenizer

from hdpo_core.errors import InputError
from hdpo_core.eval.choice import extract_choice
from hdpo_core.eval.evaluate import SamplingSettings, run_evaluation
from hdpo_core.eval.report import summary_markdown
from hdpo_core.eval.tasks import load_tasks
from hdpo_core.eval.verifiers import get_verifier

CHOICE = get_verifier("choice")


@pytest.mark.parametrize(("text", "n", "expected"), [
    ("Let's think step by step. 3 + 4 = 7, so the answer is (C).", 10, "C"),       # step 1, MMLU-Pro's CoT form
    ("the answer is D because D is larger", 10, "D"),                              # step 1 without parentheses
    ("A looks right at first. The answer is (B). Not A.", 10, "B"),                 # step 1 beats a later letter
    ("Reasoning...\nAnswer: E\nalthough A could be argued", 10, "E"),               # step 2 beats the last letter
    ("answer: F", 10, "F"),                                                          # step 2, lower case
    ("Answer: B or maybe Answer: C", 10, "C"),                                      # step 2: last on its line
    ("I am not sure, but I would pick J", 10, "J"),                                  # step 3: last standalone letter
    ("Option (H) fits; G does not.", 10, "G"),                                      # step 3 takes the LAST one
    ("the answer is Because of that, C", 10, "C"),                                  # 'Because' is not 'B'
    ("The answer is (F).", 4, None),                                                 # F is not among 4 options
    ("Probably the second one.", 10, None),                                          # nothing to extract
    ("I think it's the second one.", 10, "I"),  # MMLU-Pro's step 3 reads the pronoun I as option I (kept as is)
    ("", 10, None),
    ("the answer is (b)", 10, None),                                                 # MMLU-Pro's letters are upper case
    ("The answer is (Z).", 26, "Z"),                                                 # any option count
])
def test_extraction_steps(text, n, expected):
    assert extract_choice(text, n) == expected


def test_correct_wrong_and_failed_are_told_apart():
    task = {"prompt": "Q", "options": ["1", "2", "3", "4"], "answer": "C"}
    assert CHOICE.verdict(task, "so the answer is (C)", {}).tally == {"extraction_failures": (0.0, 1.0)}
    assert CHOICE.verdict(task, "so the answer is (C)", {}).correct
    wrong = CHOICE.verdict(task, "so the answer is (A)", {})
    failed = CHOICE.verdict(task, "no idea", {})
    assert (wrong.correct, wrong.tally["extraction_failures"]) == (False, (0.0, 1.0))
    assert (failed.correct, failed.tally["extraction_failures"]) == (False, (1.0, 1.0))
    assert CHOICE.check({**task, "answer": 2}, "Answer: C", {})  # answer as MMLU-Pro's 0-based answer_index
    assert CHOICE.chance(task) == 0.25


@pytest.mark.parametrize(("row", "needle"), [
    ({"prompt": "Q", "answer": "A"}, "missing field(s) ['options']"),
    ({"prompt": "Q", "options": ["only one"], "answer": "A"}, "2 to 26 option texts"),
    ({"prompt": "Q", "options": ["x", ""], "answer": "A"}, "empty or non-string option"),
    ({"prompt": "Q", "options": ["x", "y", "z"], "answer": "D"}, "'D' is not one of the options' letters A-C"),
    ({"prompt": "Q", "options": ["x", "y"], "answer": 5}, "index 5 is out of range"),
    ({"prompt": "Q", "options": ["x", "y"], "answer": True}, "must be a letter A-B"),
])
def test_bad_rows_are_one_line_with_file_and_row(tmp_path, row, needle):
    path = tmp_path / "t.jsonl"
    good = {"prompt": "Q", "options": ["x", "y"], "answer": "B"}
    path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(InputError) as exc:
        load_tasks(path, CHOICE)
    assert str(exc.value).startswith(f"{path}:2: ") and needle in str(exc.value) and "\n" not in str(exc.value)
    problems: list[str] = []
    assert len(load_tasks(path, CHOICE, problems=problems)) == 1 and len(problems) == 1


def test_evaluation_reports_accuracy_failures_and_chance():
    tok = tiny_tokenizer()
    tasks = [{"prompt": "Q1", "options": list("abcd"), "answer": "B"},
             {"prompt": "Q2", "options": list("abcdefghij"), "answer": 9}]
    texts = [["The answer is (B).", "Answer: A", "hmm", "B"],       # right, wrong, failed, right (step 3)
             ["the answer is J", "no letter here", "(J)", "(I)"]]  # right, failed, right, wrong
    results, samples = run_evaluation(scripted_side(tok, texts), None, tok, tasks=tasks, verifier=CHOICE,
                                      settings=SamplingSettings(n=4, temperatures=(1.0,)), pairs=None, alpha=1.0,
                                      beta=0.1)
    m = results["sampling"]["policy"]["1"]
    assert m["accuracy"] == 4 / 8
    assert m["verifier_metrics"] == {"extraction_failures": 2 / 8}
    assert results["chance_accuracy"] == pytest.approx((1 / 4 + 1 / 10) / 2)
    assert results["headline"]["chance_accuracy"] == results["chance_accuracy"]
    assert [s["correct"] for s in samples] == [True, False, False, True, True, False, True, False]
    md = summary_markdown(results)
    assert "accuracy (chance 0.175)" in md and "extraction_failures" in md and "| 0.250 |" in md
