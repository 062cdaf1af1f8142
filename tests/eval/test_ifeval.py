"""verifier: ifeval (lm-evaluation-harness's IFEval checker, offline): real instructions followed and broken,
strict vs loose, IFEval's prompt- and instruction-level numbers through the real evaluation, bad rows."""

import json

import pytest
from scripted import scripted_side
from tiny import tiny_tokenizer

from hdpo_core.errors import InputError
from hdpo_core.eval.evaluate import SamplingSettings, run_evaluation
from hdpo_core.eval.ifeval import judge_ifeval
from hdpo_core.eval.tasks import load_tasks
from hdpo_core.eval.verifiers import get_verifier

IFEVAL = get_verifier("ifeval")


def _task(ids, kwargs, prompt="Write about the sea."):
    return {"prompt": prompt, "instruction_id_list": ids, "kwargs": kwargs}


@pytest.mark.parametrize(("iid", "kwargs", "good", "bad"), [
    ("punctuation:no_comma", {}, "The sea is calm and blue.", "The sea, calm and blue."),
    ("change_case:english_lowercase", {}, "the sea is calm.", "The sea is calm."),
    ("change_case:english_capital", {}, "THE SEA IS CALM.", "THE SEA is calm."),
    ("length_constraints:number_words", {"relation": "less than", "num_words": 6}, "The sea is calm.",
     "The sea is very calm and blue today."),
    ("length_constraints:number_sentences", {"relation": "at least", "num_sentences": 3},
     "Dr. Smith swims. The sea is calm. Mr. Jones agrees.", "Dr. Smith swims. Mr. Jones agrees."),  # Punkt: Dr. / Mr.
    ("keywords:existence", {"keywords": ["tide", "salt"]}, "The tide brings salt.", "The tide comes in."),
    ("keywords:forbidden_words", {"forbidden_words": ["blue"]}, "The sea is green.", "The sea is Blue."),
    ("detectable_format:json_format", {}, '{"sea": "calm"}', "sea: calm"),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n* two", "* one\n* two\n* three"),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Calm. Any other questions?", "Calm."),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Calm.\nP.S. waves", "Calm."),
    ("language:response_language", {"language": "de"},
     "Das Meer ist heute sehr ruhig und die Wellen sind klein.", "The sea is very calm today and the waves are small."),
])
def test_instructions_followed_and_broken(iid, kwargs, good, bad):
    task = _task([iid], [kwargs])
    assert IFEVAL.row_problem(task) is None
    assert IFEVAL.check(task, good, {}) is True
    assert IFEVAL.check(task, bad, {}) is False


def test_loose_forgives_a_first_line_and_markdown_stars():
    task = _task(["startend:quotation"], [{}])
    text = 'Sure, here it is:\n"The sea is calm."'
    tally = judge_ifeval(task, text)
    assert tally["prompt_level_strict_acc"] == (0.0, 1.0) and tally["prompt_level_loose_acc"] == (1.0, 1.0)
    assert IFEVAL.check(task, text, {}) is False  # the headline accuracy is IFEval's strict prompt level


def test_prompt_and_instruction_level_through_the_evaluation():
    tok = tiny_tokenizer()
    tasks = [_task(["punctuation:no_comma", "change_case:english_lowercase"], [{}, {}]),
             _task(["length_constraints:number_words"], [{"relation": "at least", "num_words": 3}])]
    texts = [["the sea is calm.", "the sea, calm.", "The Sea, Calm."],  # both, one of two, none of two
             ["one two three", "one two", "a b c d"]]                   # yes, no, yes
    results, _ = run_evaluation(scripted_side(tok, texts), None, tok, tasks=tasks, verifier=IFEVAL,
                                settings=SamplingSettings(n=3, temperatures=(0.5,)), pairs=None, alpha=1.0, beta=0.1)
    m = results["sampling"]["policy"]["0.5"]
    assert m["accuracy"] == pytest.approx(3 / 6)
    vm = m["verifier_metrics"]
    assert vm["prompt_level_strict_acc"] == pytest.approx(3 / 6)
    assert vm["inst_level_strict_acc"] == pytest.approx((2 + 1 + 0 + 1 + 0 + 1) / 9)  # micro-average, as IFEval
    assert "chance_accuracy" not in results


@pytest.mark.parametrize(("row", "needle"), [
    (_task(["punctuation:no_commas"], [{}]), "unknown IFEval instruction id 'punctuation:no_commas'; ids in "
                                             "'punctuation': ['punctuation:no_comma']"),
    (_task(["punctuation:no_comma", "change_case:english_capital"], [{}]), "'kwargs' must be a list of 2 objects"),
    (_task(["length_constraints:number_words"], [{"relation": "less than", "num_word": 5}]),
     "unknown argument(s) ['num_word']; it takes ['num_words', 'relation']"),
    (_task(["length_constraints:number_words"], [{"relation": "less than"}]), "missing ['num_words']"),
    (_task(["length_constraints:number_words"], [{"relation": "about", "num_words": 5}]), "ValueError"),
    ({"prompt": "p", "kwargs": [{}]}, "missing field(s) ['instruction_id_list']"),
])
def test_bad_rows_are_one_line(tmp_path, row, needle):
    path = tmp_path / "if.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(InputError) as exc:
        load_tasks(path, IFEVAL)
    msg = str(exc.value)
    assert msg.startswith(f"{path}:1: ") and needle in msg and "\n" not in msg


def test_ifeval_runs_without_nltk_data_or_network(tmp_path):
    """A fresh interpreter with NLTK's search path emptied and downloads made to fail: the Punkt data comes
    from the installed package, and nothing tries the network."""
    import subprocess
    import sys

    code = ("import nltk, nltk.data\n"
            "nltk.data.path[:] = []\n"
            "def no(*a, **k): raise SystemExit('download attempted')\n"
            "nltk.download = no\n"
            "from hdpo_core.eval.verifiers import get_verifier\n"
            "t = {'prompt': 'p', 'instruction_id_list': ['length_constraints:number_sentences'],"
            " 'kwargs': [{'relation': 'less than', 'num_sentences': 2}]}\n"
            "v = get_verifier('ifeval')\n"
            "print(v.check(t, 'Mr. Smith came at 5 p.m. today.', {}), v.check(t, 'One. Two.', {}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "NLTK_DATA": str(tmp_path / "none")})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "True False"
