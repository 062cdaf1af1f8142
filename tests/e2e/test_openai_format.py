"""A preference file prepared for OpenAI's DPO fine-tuning API trains here unchanged (`hdpo-tune run`), and
tokenises to exactly the pairs of the same data in TRL's conversational format."""

import json
from pathlib import Path

from hdpo_core.data import load_preference_rows
from hdpo_core.model import ModelOptions, load_tokenizer
from hdpo_core.tokenize import tokenize_rows
from tests.e2e.test_run import run_cli, write_job


def to_openai(trl_file: Path, out: Path) -> Path:
    """TRL's conversational rows (explicit prompt) rewritten as OpenAI preference rows."""
    rows = [json.loads(line) for line in trl_file.read_text().splitlines()]
    out.write_text("".join(json.dumps({"input": {"messages": r["prompt"], "parallel_tool_calls": True},
                                       "preferred_output": r["chosen"], "non_preferred_output": r["rejected"]}) + "\n"
                           for r in rows))
    return out


def test_openai_preference_file_trains_and_equals_trl_conversational(tmp_path, tiny_model_dir, tiny_conv_pairs):
    openai_file = to_openai(tiny_conv_pairs, tmp_path / "openai.jsonl")
    tok = load_tokenizer(ModelOptions(name_or_path=str(tiny_model_dir)))
    ours, _ = tokenize_rows(load_preference_rows(str(openai_file))[0], tok, max_length=64)
    trl, _ = tokenize_rows(load_preference_rows(str(tiny_conv_pairs))[0], tok, max_length=64)
    assert [(p.prompt_ids, p.chosen_ids, p.rejected_ids) for p in ours] == \
        [(p.prompt_ids, p.chosen_ids, p.rejected_ids) for p in trl]

    job = write_job(tmp_path, tiny_model_dir, openai_file, lora=True, steps=1)
    result = run_cli("validate", str(job))
    assert result.exit_code == 0 and "16 pairs (conversational)" in result.output, result.output
    result = run_cli("run", str(job))
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "run" / "data_info.json").read_text())
    assert info["train"]["format"] == "conversational" and info["train"]["pairs"] == 16
