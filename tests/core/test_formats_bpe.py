"""TRL's preference formats (standard/conversational x explicit/implicit prompt) and OpenAI's preference
format, tokenised with byte-level BPE tokenizers built like GPT-2's, Llama 3's (digits split from the space
before them, BOS from the post-processor, header/eot template) and Qwen2's (single digits, ChatML).

Every test states the invariant that makes training correct: the prompt ids followed by a completion's ids
are exactly the tokenizer's ids of the full text (plus one EOS for standard rows), so the model is trained on
the sequence it would see at inference.
"""

import json

import pytest

from hdpo_core.data import load_preference_rows, normalise_row
from hdpo_core.errors import InputError
from hdpo_core.tokenize import tokenize_rows
from tests.fixtures.bpe import EOS, byte_level_bpe

STYLES = ("gpt2", "llama3", "qwen2")


@pytest.fixture(scope="module")
def tokenizers() -> dict:
    return {style: byte_level_bpe(style=style) for style in STYLES}


@pytest.fixture(scope="module")
def bpe(tokenizers):
    return tokenizers["gpt2"]


def ids(tok, text):
    return tok(text)["input_ids"]


def render_ids(tok, messages, generation_prompt=False, tools=None):
    text = tok.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=generation_prompt)
    return tok(text, add_special_tokens=False)["input_ids"]


def test_the_tokenizer_is_the_kind_that_broke_the_implicit_prompt(bpe):
    """The character prefix of " 146" and " 148" is " 14", a token of its own that neither sequence contains."""
    pieces = bpe.convert_ids_to_tokens(ids(bpe, "A: 146 A: 148 A: 14"))
    assert pieces == ["A", ":", "Ġ146", "ĠA", ":", "Ġ148", "ĠA", ":", "Ġ14"]


def test_implicit_prompt_splits_at_the_longest_common_token_prefix(bpe):
    chosen, rejected = "Q: what is 144 + 2? A: 146", "Q: what is 144 + 2? A: 148"
    row = normalise_row("d.jsonl:1", {"chosen": chosen, "rejected": rejected})
    assert row.prompt.endswith(" 14")  # the character prefix ends inside the answer's token
    # that character prefix, given as an explicit prompt, is (rightly) a misaligned boundary ...
    explicit = normalise_row("d.jsonl:2", {"prompt": row.prompt, "chosen": "6", "rejected": "8"})
    with pytest.raises(InputError, match="d.jsonl:2: the prompt's tokens are not a prefix"):
        tokenize_rows([explicit], bpe, max_length=64)
    # ... but the implicit row splits where the tokenizer agrees: before " 146" / " 148"
    (pair,), _ = tokenize_rows([row], bpe, max_length=64)
    assert list(pair.prompt_ids) + list(pair.chosen_ids) == ids(bpe, chosen) + [bpe.eos_token_id]
    assert list(pair.prompt_ids) + list(pair.rejected_ids) == ids(bpe, rejected) + [bpe.eos_token_id]
    assert bpe.decode(list(pair.prompt_ids)) == "Q: what is 144 + 2? A:"
    assert bpe.convert_ids_to_tokens(list(pair.chosen_ids)) == ["Ġ146", EOS]


@pytest.mark.parametrize("style", STYLES)
def test_implicit_prompt_ending_on_a_space_moves_the_space_to_the_completion(tokenizers, style):
    """The character prefix "Is the sky green? " ends with a space that belongs to the next word: TRL backs
    it off, on every tokenizer (docs/data.md's example)."""
    tok = tokenizers[style]
    row = normalise_row("d.jsonl:3", {"chosen": "Is the sky green? No, it is blue.", "rejected": "Is the sky green? Yes."})
    assert row.prompt == "Is the sky green?"
    (pair,), _ = tokenize_rows([row], tok, max_length=64)
    assert tok.decode(list(pair.prompt_ids), skip_special_tokens=True) == "Is the sky green?"
    assert tok.decode(list(pair.chosen_ids)) == " No, it is blue." + tok.eos_token
    assert tok.decode(list(pair.rejected_ids)) == " Yes." + tok.eos_token


@pytest.mark.parametrize("style", ["llama3", "qwen2"])
def test_a_digit_split_from_its_space_leaves_the_space_in_both_completions(tokenizers, style):
    """With Llama 3's / Qwen2's pre-tokenizer " 3" is " " + "3", so the longest common *token* prefix of
    "1, 2, 3" and "1, 2, 4" would end with the space; TRL's prompt "1, 2," does not (docs/data.md)."""
    tok = tokenizers[style]
    row = normalise_row("d.jsonl:1", {"chosen": "Count: 1, 2, 3", "rejected": "Count: 1, 2, 4"})
    (pair,), _ = tokenize_rows([row], tok, max_length=64)
    assert tok.decode(list(pair.prompt_ids), skip_special_tokens=True) == "Count: 1, 2,"
    assert tok.convert_ids_to_tokens(list(pair.chosen_ids)) == ["Ġ", "3", tok.eos_token]
    assert tok.convert_ids_to_tokens(list(pair.rejected_ids)) == ["Ġ", "4", tok.eos_token]
    assert (pair.prompt_ids[0] == tok.bos_token_id) == (style == "llama3")  # Llama 3's post-processor BOS


@pytest.mark.parametrize("style", STYLES)
def test_every_implicit_row_reassembles_to_the_full_sequences(tokenizers, style):
    """Over many number pairs (shared digits, shared first token, nothing shared after the colon): prompt +
    completion == ids(full) + EOS on every tokenizer, so the prompt never ends inside a token."""
    tok = tokenizers[style]
    rows = [normalise_row(f"d.jsonl:{i}", {"chosen": f"Q: {a} + 1? A: {a + 1}", "rejected": f"Q: {a} + 1? A: {b}"})
            for i, (a, b) in enumerate(((a, b) for a in range(100, 150, 7) for b in (a, a + 2, a + 10, 7)), 1)]
    pairs, problems = tokenize_rows(rows, tok, max_length=64)
    assert len(pairs) == len(rows) and not problems.messages
    for row, pair in zip(rows, pairs, strict=True):
        for text, completion in ((row.prompt + row.chosen, pair.chosen_ids),
                                 (row.prompt + row.rejected, pair.rejected_ids)):
            assert list(pair.prompt_ids) + list(completion) == ids(tok, text) + [tok.eos_token_id]


def test_implicit_rows_where_one_text_extends_the_other(bpe):
    """The characters of "A: 14" are a prefix of "A: 146" (and "...green?" of "...green? No."): TRL's prompt
    stops one character before the shorter text ends, so both completions keep that character."""
    row = normalise_row("d.jsonl:1", {"chosen": "Q: what is 7 + 7? A: 14", "rejected": "Q: what is 7 + 7? A: 146"})
    assert row.prompt == "Q: what is 7 + 7? A: 1"
    (pair,), _ = tokenize_rows([row], bpe, max_length=64)
    assert bpe.decode(list(pair.prompt_ids)) == "Q: what is 7 + 7? A:"
    assert bpe.convert_ids_to_tokens(list(pair.chosen_ids)) == ["Ġ14", EOS]
    assert bpe.convert_ids_to_tokens(list(pair.rejected_ids)) == ["Ġ146", EOS]
    row = normalise_row("d.jsonl:2", {"chosen": "Is the sky green?", "rejected": "Is the sky green? No."})
    (pair,), _ = tokenize_rows([row], bpe, max_length=64)
    assert bpe.decode(list(pair.chosen_ids)) == "?" + EOS and bpe.decode(list(pair.rejected_ids)) == "? No." + EOS
    with pytest.raises(InputError, match="d.jsonl:3: empty completion in 'chosen'"):
        normalise_row("d.jsonl:3", {"chosen": "  ", "rejected": "Yes."})


@pytest.mark.parametrize("prompt", [None, "Q: what is 101 + 1? A:"])
def test_a_completion_ending_with_the_eos_text_gets_no_second_eos(bpe, prompt):
    row = {"chosen": f"Q: what is 101 + 1? A: 102{EOS}", "rejected": "Q: what is 101 + 1? A: 104"}
    if prompt is not None:
        row = {"prompt": prompt, "chosen": f" 102{EOS}", "rejected": " 104"}
    (pair,), _ = tokenize_rows([normalise_row("d.jsonl:1", row)], bpe, max_length=64)
    assert pair.chosen_ids.count(bpe.eos_token_id) == 1 and pair.chosen_ids[-1] == bpe.eos_token_id
    assert pair.rejected_ids.count(bpe.eos_token_id) == 1 and pair.rejected_ids[-1] == bpe.eos_token_id


def test_standard_explicit_prompt_on_a_token_boundary(bpe):
    row = normalise_row("d.jsonl:1", {"prompt": "Q: what is 120 + 3? A:", "chosen": " 123", "rejected": " 125"})
    (pair,), _ = tokenize_rows([row], bpe, max_length=64)
    assert list(pair.prompt_ids) == ids(bpe, "Q: what is 120 + 3? A:")
    assert list(pair.prompt_ids) + list(pair.chosen_ids) == ids(bpe, "Q: what is 120 + 3? A: 123") + [bpe.eos_token_id]


USER = {"role": "user", "content": "What is 120 + 3?"}
SYSTEM = {"role": "system", "content": "Answer with a number."}
GOOD, BAD = {"role": "assistant", "content": "123"}, {"role": "assistant", "content": "125"}


@pytest.mark.parametrize("raw", [
    {"prompt": [SYSTEM, USER], "chosen": [GOOD], "rejected": [BAD]},        # conversational, explicit prompt
    {"chosen": [SYSTEM, USER, GOOD], "rejected": [SYSTEM, USER, BAD]},     # conversational, implicit prompt
    {"input": {"messages": [{**SYSTEM, "role": "developer"}, USER]},         # OpenAI preference format
     "preferred_output": [GOOD], "non_preferred_output": [BAD]},
], ids=["explicit", "implicit", "openai"])
def test_conversational_formats_render_with_the_chat_template(bpe, raw):
    row = normalise_row("d.jsonl:1", raw)
    (pair,), _ = tokenize_rows([row], bpe, max_length=128)
    assert list(pair.prompt_ids) == render_ids(bpe, [SYSTEM, USER], generation_prompt=True)
    assert list(pair.prompt_ids) + list(pair.chosen_ids) == render_ids(bpe, [SYSTEM, USER, GOOD])
    assert list(pair.prompt_ids) + list(pair.rejected_ids) == render_ids(bpe, [SYSTEM, USER, BAD])
    assert bpe.decode(list(pair.chosen_ids)) == "123<|im_end|>\n"  # the template closes the turn; no extra EOS


WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                                 "parameters": {"type": "object",
                                                                "properties": {"city": {"type": "string"}}}}}


def openai_tool_row():
    """A row as OpenAI's DPO fine-tuning docs show it, with a tool and a tool call (arguments as a JSON string)."""
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    return {"input": {"messages": [{"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]}],
                      "tools": [WEATHER_TOOL], "parallel_tool_calls": True},
            "preferred_output": [{"role": "assistant", "content": None, "tool_calls": [call]}],
            "non_preferred_output": [{"role": "assistant", "content": "It is sunny."}]}


def test_openai_row_with_tools_renders_the_schema_and_the_call_once(bpe):
    row = normalise_row("d.jsonl:1", openai_tool_row())
    assert row.format == "conversational" and row.tools == [WEATHER_TOOL]
    (pair,), _ = tokenize_rows([row], bpe, max_length=256)
    user = {"role": "user", "content": "Weather in Paris?"}
    assert list(pair.prompt_ids) == render_ids(bpe, [user], generation_prompt=True, tools=[WEATHER_TOOL])
    prompt = bpe.decode(list(pair.prompt_ids))
    assert '"name": "get_weather"' in prompt and prompt.startswith("<|im_start|>system\n# Tools")
    # arguments parsed from OpenAI's JSON string: rendered as an object, not a JSON-encoded string
    assert bpe.decode(list(pair.chosen_ids)) == ('\n<tool_call>\n{"name": "get_weather", "arguments": '
                                                 '{"city": "Paris"}}\n</tool_call><|im_end|>\n')


def test_tools_with_a_template_that_cannot_render_them_are_an_error(tmp_path):
    from tests.fixtures.tiny import train_tokenizer

    with pytest.raises(InputError, match=r"d.jsonl:1: the row has tools but the model's chat template does not"):
        tokenize_rows([normalise_row("d.jsonl:1", openai_tool_row())], train_tokenizer(), max_length=256)


def test_openai_file_bad_rows_name_file_and_row(tmp_path):
    good = {"input": {"messages": [USER]}, "preferred_output": [GOOD], "non_preferred_output": [BAD]}
    bad = [
        ({"input": {"messages": [USER]}, "preferred_output": [GOOD]}, "missing field 'non_preferred_output'"),
        ({**good, "input": {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}},
         "input.messages[0].content has a part of type 'image_url'"),
        ({**good, "preferred_output": [USER]}, "preferred_output[0] has role 'user'"),
        ({**good, "non_preferred_output": [GOOD]}, "'chosen' is identical to 'rejected'"),
        ({**good, "input": {"messages": [{"role": "critic", "content": "x"}]}}, "input.messages[0] has role 'critic'"),
        ({**good, "preferred_output": [{"role": "assistant", "content": None, "tool_calls": [
            {"function": {"name": "f", "arguments": "{oops"}}]}]}, "tool_calls[0].function.arguments is not valid JSON"),
        ({**good, "preferred_output": [{"role": "assistant", "content": ""}]}, "empty completion in 'chosen'"),
    ]
    path = tmp_path / "openai.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [good] + [r for r, _ in bad]))
    with pytest.raises(InputError, match=rf"^{path}:2: missing field 'non_preferred_output'"):
        load_preference_rows(str(path))
    rows, problems = load_preference_rows(str(path), on_bad_row="skip")
    assert len(rows) == 1 and rows[0].prompt == [USER] and problems.skipped == {"bad_row": len(bad)}
    for line, (_, expected) in enumerate(bad, start=2):
        message = problems.messages[line - 2]
        assert message.startswith(f"{path}:{line}: ") and expected in message and "\n" not in message


def trl_rows(name: str, eos: str) -> list[dict]:
    """Rows of each TRL format; the implicit ones cover every way two answers can share characters."""
    return {
        "standard-implicit": [
            {"chosen": f"Q: what is {a} + 2? A: {a + 2}", "rejected": f"Q: what is {a} + 2? A: {b}"}
            for a in range(100, 140, 9) for b in (a, a + 4, 7, a + 20, (a + 2) * 10)]
        + [{"chosen": f"Count: {s}, {n}", "rejected": f"Count: {s}, {n + 1}"}
           for s, n in (("1, 2", 3), ("7, 8", 9), ("10, 11", 12), ("98, 99", 100))]
        + [{"chosen": "Is the sky green? No, it is blue.", "rejected": "Is the sky green? Yes."},
           {"chosen": "Is the sky green?", "rejected": "Is the sky green? No."},
           {"chosen": "Q: what is 7 + 7? A: 14", "rejected": "Q: what is 7 + 7? A: 146"},
           {"chosen": f"Q: what is 101 + 1? A: 102{eos}", "rejected": "Q: what is 101 + 1? A: 104"}],
        "standard-explicit": [{"prompt": "Q: what is 120 + 3? A:", "chosen": " 123", "rejected": " 125"},
                              {"prompt": "Q: what is 120 + 3? A:", "chosen": f" 123{eos}", "rejected": " 125"}],
        "conversational-explicit": [{"prompt": [SYSTEM, USER], "chosen": [GOOD], "rejected": [BAD]}],
        "conversational-implicit": [{"chosen": [SYSTEM, USER, GOOD], "rejected": [SYSTEM, USER, BAD]}],
    }[name]


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("name", ["standard-implicit", "standard-explicit", "conversational-explicit",
                                  "conversational-implicit"])
def test_token_ids_equal_trls_own_dataset_preparation(tokenizers, style, name):
    """TRL's DPOTrainer prepares these rows (extract the prompt, add EOS when missing, tokenise, cut where the
    prompt's ids and prompt+completion's ids diverge) into exactly our ids, on each tokenizer family."""
    from types import SimpleNamespace

    from datasets import Dataset
    trl = pytest.importorskip("trl")

    bpe = tokenizers[style]
    rows = trl_rows(name, bpe.eos_token)
    args = SimpleNamespace(dataset_num_proc=None, max_length=None, truncation_mode="keep_start")
    prepared = trl.DPOTrainer._prepare_dataset(SimpleNamespace(_tokenizer=bpe), Dataset.from_list(rows), bpe, args,
                                               name)
    theirs = [(tuple(r["prompt_ids"]), tuple(r["chosen_ids"]), tuple(r["rejected_ids"])) for r in prepared]
    ours, _ = tokenize_rows([normalise_row(f"d.jsonl:{i}", r) for i, r in enumerate(rows, 1)], bpe, max_length=256)
    assert [(p.prompt_ids, p.chosen_ids, p.rejected_ids) for p in ours] == theirs
