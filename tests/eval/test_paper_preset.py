"""``eval: {preset: paper}`` and the per-alpha table (``compare``) with the paper's columns: accuracy per
temperature, pass@n, diversity, the verifier's own numbers and the chance level."""

from scripted import scripted_side
from tiny import tiny_tokenizer

from hdpo_core.eval.compare import compare_table
from hdpo_core.eval.evaluate import SamplingSettings, run_evaluation
from hdpo_core.eval.verifiers import get_verifier
from service.spec.eval import EvalSpec


def test_paper_preset_fills_only_what_the_job_leaves_out():
    spec = EvalSpec.model_validate({"preset": "paper", "n_samples": 4})
    assert (spec.temperatures, spec.n_samples, spec.compare_reference) == ([0.25, 0.5, 0.75, 1.0], 4, True)
    assert EvalSpec.model_validate({"preset": "paper", "temperatures": [1.0]}).temperatures == [1.0]
    assert EvalSpec().temperatures == [0.25, 0.5, 1.0] and EvalSpec().preset is None
    again = EvalSpec.model_validate(spec.model_dump())  # the resolved job re-read: unchanged
    assert again == spec


def test_per_alpha_table_has_the_papers_columns():
    tok = tiny_tokenizer()
    tasks = [{"prompt": "Q1", "options": list("abcd"), "answer": "A"},
             {"prompt": "Q2", "options": list("abcd"), "answer": "B"}]
    runs = []
    for name, alpha, texts in (("sharp", 0.8, [["answer is (A)"] * 2, ["answer is (B)", "answer is (C)"]]),
                               ("dpo", 1.0, [["answer is (A)", "hmm"], ["answer is (D)", "no"]])):
        results, _ = run_evaluation(scripted_side(tok, texts), None, tok, tasks=tasks, verifier=get_verifier("choice"),
                                    settings=SamplingSettings(n=2, temperatures=(0.5, 1.0)), pairs=None, alpha=alpha,
                                    beta=0.1)
        runs.append({**results, "name": name})
    head, _, sharp, dpo = compare_table(runs).splitlines()
    assert head == ("| run | alpha | acc T=0.5 | acc T=1 | pass@n T=0.5 | pass@n T=1 | distinct-2 T=1 | "
                    "unique answers T=1 | extraction_failures T=1 | chance | entropy chosen | entropy samples | "
                    "reward acc. |")
    assert sharp.startswith("| sharp | 0.800 | 0.750 | 0.750 | 1.000 | 1.000 |")
    assert "| 0.750 | 0.000 | 0.250 |" in sharp  # unique answers (1 + 2)/2 / 2, no failures, chance 1/4
    assert dpo.startswith("| dpo | 1.000 | 0.250 | 0.250 | 0.500 | 0.500 |") and "| 0.500 | 0.250 |" in dpo
