"""The shipped demo model and data: checksums, offline loading, parsing and tokenisation with the engine."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hdpo_core.data import load_preference_rows
from hdpo_core.tokenize import tokenize_rows
from tests.demo._demo import DEMO_DIR, read_checksums, sha256

from demo_tasks import extract_answer  # noqa: E402  isort: skip

MODEL = DEMO_DIR / "model"
DATA = DEMO_DIR / "data"


@pytest.fixture(scope="module")
def report() -> dict:
    return json.loads((DEMO_DIR / "build_report.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(MODEL)


def test_shipped_files_match_checksums() -> None:
    sums = read_checksums(DEMO_DIR)
    assert {"model/model.safetensors", "model/config.json", "model/tokenizer.json", "data/train.jsonl",
            "data/eval.jsonl", "data/tasks_eval.jsonl", "build_report.json"} <= set(sums)
    for name, digest in sums.items():
        assert sha256(DEMO_DIR / name) == digest, f"{name} changed since the build; rerun build_demo.py"
    on_disk = {f.relative_to(DEMO_DIR).as_posix() for d in ("model", "data") for f in (DEMO_DIR / d).rglob("*")
               if f.is_file()}
    assert on_disk <= set(sums), f"unlisted files: {sorted(on_disk - set(sums))}"
    total = sum(f.stat().st_size for f in DEMO_DIR.rglob("*") if f.is_file())
    assert total < 20 * 2**20


def test_model_loads_offline_and_solves_some_problems(tokenizer, report: dict) -> None:
    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32)
    assert sum(p.numel() for p in model.parameters()) == report["params"] < 5_000_000
    assert tokenizer.pad_token == "<pad>" and tokenizer.eos_token == "<eos>"
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    tasks = [json.loads(line) for line in (DATA / "tasks_eval.jsonl").read_text(encoding="utf-8").splitlines()]
    tasks = tasks[:32]
    tokenizer.padding_side = "left"
    enc = tokenizer([t["prompt"] for t in tasks], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**enc, do_sample=False, max_new_tokens=48)
    texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    greedy = sum(extract_answer(x) == t["answer"] for x, t in zip(texts, tasks, strict=True)) / len(tasks)
    # Greedy decoding must solve a real share (the build measured T=0.5 accuracy) but not everything.
    assert 0.15 <= greedy <= 0.95, greedy
    assert all("####" in x for x in texts[:8])  # it learned the GSM8K answer format


def test_data_parses_and_tokenizes_without_boundary_errors(tokenizer, report: dict) -> None:
    for name, key in (("train.jsonl", "train_pairs"), ("eval.jsonl", "eval_pairs")):
        rows, problems = load_preference_rows(str(DATA / name))
        assert len(rows) == report[key] and not problems.messages
        assert all(r.format == "standard" and r.prompt.endswith("Answer:") for r in rows)
        pairs, tok_problems = tokenize_rows(rows, tokenizer, max_length=160, overlong="error")
        assert len(pairs) == len(rows) and not tok_problems.skipped
        assert all(p.chosen_ids[-1] == tokenizer.eos_token_id for p in pairs)
        for r in rows:
            assert "####" in r.chosen and extract_answer(r.chosen) != extract_answer(r.rejected)
    assert 1000 <= report["train_pairs"] <= 3000 and 100 <= report["eval_pairs"] <= 250


def test_splits_are_disjoint_and_tasks_have_answers() -> None:
    def prompts(name: str) -> set[str]:
        lines = (DATA / name).read_text(encoding="utf-8").splitlines()
        return {json.loads(line)["prompt"] for line in lines}

    train, evals, tasks = prompts("train.jsonl"), prompts("eval.jsonl"), prompts("tasks_eval.jsonl")
    assert not train & evals and not train & tasks and not evals & tasks
    rows = [json.loads(line) for line in (DATA / "tasks_eval.jsonl").read_text(encoding="utf-8").splitlines()]
    assert 64 <= len(rows) <= 128
    assert all(set(r) == {"prompt", "answer"} and r["answer"].isdigit() for r in rows)


def test_chat_template_renders_the_task_layout(tokenizer) -> None:
    prompt = [{"role": "user", "content": "Tom has 3 apples. How many apples does he have?"}]
    rendered = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    assert rendered == "Question: Tom has 3 apples. How many apples does he have?\nAnswer:"
    full = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": "#### 3"}], tokenize=False)
    assert full == rendered + " #### 3<eos>"
    ids_prompt = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert tokenizer(full, add_special_tokens=False)["input_ids"][: len(ids_prompt)] == ids_prompt
