"""Tokenisation at the prompt/completion boundary for TRL's three formats, and the row checks."""

import json

import pytest

from hdpo_core.data import load_preference_rows, normalise_row
from hdpo_core.errors import InputError
from hdpo_core.tokenize import tokenize_rows
from tests.fixtures.tiny import train_tokenizer


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer()


def test_standard_explicit_prompt_completion_is_the_tail_plus_eos(tok):
    row = normalise_row("f:1", {"prompt": "What is the capital of France?", "chosen": " Paris.", "rejected": " Red."})
    (pair,), _ = tokenize_rows([row], tok, max_length=64)
    full = tok("What is the capital of France? Paris.")["input_ids"]
    prompt = tok("What is the capital of France?")["input_ids"]
    assert list(pair.prompt_ids) == prompt
    assert list(pair.chosen_ids) == full[len(prompt):] + [tok.eos_token_id]
    assert pair.rejected_ids[-1] == tok.eos_token_id and pair.source == "f:1"


def test_standard_implicit_prompt_is_the_common_prefix(tok):
    row = normalise_row("f:2", {"chosen": "Is the sky green? No, blue.", "rejected": "Is the sky green? Yes."})
    assert row.prompt == "Is the sky green?" and row.chosen == " No, blue." and row.rejected == " Yes."


def test_conversational_uses_the_chat_template_and_adds_no_second_eos(tok):
    prompt = [{"role": "user", "content": "Name a primary colour."}]
    row = normalise_row("f:3", {"prompt": prompt, "chosen": [{"role": "assistant", "content": "Red."}],
                                "rejected": [{"role": "assistant", "content": "Green."}]})
    (pair,), _ = tokenize_rows([row], tok, max_length=64)
    rendered_prompt = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    assert rendered_prompt.endswith("<|assistant|>")
    assert list(pair.prompt_ids) == tok(rendered_prompt, add_special_tokens=False)["input_ids"]
    assert tok.decode(list(pair.chosen_ids)) == "Red.<eos>"  # the template closes the turn: exactly one EOS


def test_conversational_implicit_prompt_is_the_shared_message_prefix(tok):
    user = {"role": "user", "content": "Count to five:"}
    row = normalise_row("f:4", {"chosen": [user, {"role": "assistant", "content": "one two three four five"}],
                                "rejected": [user, {"role": "assistant", "content": "six"}]})
    assert row.prompt == [user] and row.chosen[0]["content"] == "one two three four five"


def test_misaligned_boundary_is_an_error_naming_the_row(tok):
    # the prompt ends mid-word: "capi" + "tal" tokenises differently from "capi" alone
    row = normalise_row("data.jsonl:7", {"prompt": "What is the capi", "chosen": "tal of France?",
                                         "rejected": "Paris"})
    with pytest.raises(InputError, match=r"data.jsonl:7: the prompt's tokens are not a prefix"):
        tokenize_rows([row], tok, max_length=64)


def test_overlong_policies(tok):
    row = normalise_row("f:9", {"prompt": "Hello there,", "chosen": " nice to meet you! Good morning.",
                                "rejected": " no."})
    (pair,), problems = tokenize_rows([row], tok, max_length=8, overlong="truncate")
    assert len(pair.prompt_ids) + len(pair.chosen_ids) == 8 and problems.skipped["truncated"] == 1
    with pytest.raises(InputError, match="over data.max_length=8"):
        tokenize_rows([row], tok, max_length=8, overlong="error")
    keep = normalise_row("f:10", {"prompt": "Hi", "chosen": " yes", "rejected": " no"})
    pairs, problems = tokenize_rows([row, keep], tok, max_length=8, overlong="drop")
    assert [p.source for p in pairs] == ["f:10"] and problems.skipped["overlong"] == 1
    with pytest.raises(InputError, match="prompt alone"):
        tokenize_rows([row], tok, max_length=2, overlong="truncate")


def test_bad_rows_error_or_skip_with_file_and_row(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"prompt": "a", "chosen": " b", "rejected": " c"}, {"prompt": "a", "chosen": " b"},
            {"prompt": "a", "chosen": " same", "rejected": " same"}, {"prompt": "a", "chosen": 3, "rejected": " c"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(InputError, match=rf"{path}:2: missing field 'rejected'"):
        load_preference_rows(str(path))
    kept, problems = load_preference_rows(str(path), on_bad_row="skip")
    assert len(kept) == 1 and problems.skipped == {"bad_row": 3}
    assert any(":3: 'chosen' is identical to 'rejected'" in m for m in problems.messages)
    assert any(":4: 'chosen' and 'rejected' must both be strings" in m for m in problems.messages)


def test_standard_implicit_prompt_follows_trls_rule_except_where_trl_rebuilds_a_text():
    """TRL's extract_prompt: common character prefix less a trailing space; one text extending the other
    leaves the shorter's last character in both completions. Texts differing at the first character give an
    empty prompt and the texts as written (TRL's scan wraps to index -1 there and rebuilds 'rejected')."""
    extract_prompt = pytest.importorskip("trl.data_utils").extract_prompt
    pairs = [("A: 14", "A: 146"), ("Sky? Blue", "Sky?  Red"), ("Sky?  Blue", "Sky?  Red"), ("1, 2, 3", "1, 2, 4"),
             ("Is it? No.", "Is it?"), ("same start", "same start!")]
    for i, (chosen, rejected) in enumerate(pairs, 1):
        row = normalise_row(f"f:{i}", {"chosen": chosen, "rejected": rejected})
        assert extract_prompt({"chosen": chosen, "rejected": rejected}) == {
            "prompt": row.prompt, "chosen": row.chosen, "rejected": row.rejected}
    assert normalise_row("f:1", {"chosen": "A: 14", "rejected": "A: 146"}).prompt == "A: 1"
    row = normalise_row("f:9", {"chosen": "xab ", "rejected": "yab"})
    assert (row.prompt, row.chosen, row.rejected) == ("", "xab ", "yab")
