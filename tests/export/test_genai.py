"""onnxruntime-genai serves RUN/onnx/ as exported (genai_config.json written by us): its greedy tokens equal
transformers' generate on the merged model, for the demo model (4 layers, its own digit-splitting BPE) and a
tiny LoRA-merged Llama; its tokenizer (onnxruntime-extensions) encodes as the merged tokenizer does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from service.ship import export_run
from tests.export.conftest import copy_run

og = pytest.importorskip("onnxruntime_genai")

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples" / "demo"


def genai_greedy(onnx_dir: Path, prompt_ids: list[int], new_tokens: int) -> list[int]:
    """The tokens onnxruntime-genai generates greedily after ``prompt_ids`` (stopping at EOS, like generate)."""
    model = og.Model(str(onnx_dir))
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(prompt_ids) + new_tokens)
    gen = og.Generator(model, params)
    gen.append_tokens(prompt_ids)
    out = []
    while not gen.is_done():
        gen.generate_next_token()
        out.append(int(gen.get_next_tokens()[0]))
    return out


def hf_greedy(model, prompt_ids: list[int], new_tokens: int, eos: int) -> list[int]:  # noqa: ANN001
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=new_tokens, do_sample=False,
                             eos_token_id=eos, pad_token_id=eos)
    return out[0, len(prompt_ids):].tolist()


@pytest.fixture(scope="module")
def demo_onnx(tmp_path_factory) -> Path:
    from hdpo_core.export.genai_config import write_genai_config
    from hdpo_core.export.onnx_export import export_decoder

    out = tmp_path_factory.mktemp("demo_onnx") / "onnx"
    export_decoder(DEMO / "model", out)
    write_genai_config(out)
    return out


def test_demo_model_greedy_equals_transformers(demo_onnx):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(DEMO / "model")
    model = AutoModelForCausalLM.from_pretrained(DEMO / "model", dtype=torch.float32).eval()
    tasks = [json.loads(line) for line in (DEMO / "data" / "tasks_eval.jsonl").read_text().splitlines()[:6]]
    gtok = og.Tokenizer(og.Model(str(demo_onnx)))
    for task in tasks:
        ids = tok(task["prompt"])["input_ids"]
        assert [int(i) for i in gtok.encode(task["prompt"])] == ids  # genai's tokenizer = the merged one
        got = genai_greedy(demo_onnx, ids, 40)
        want = hf_greedy(model, ids, 40, tok.eos_token_id)
        assert got == want, task["prompt"]
        assert gtok.decode(got) == tok.decode(want, skip_special_tokens=True)


def test_exported_run_has_genai_config_and_matches_transformers(llama_lora_template, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = copy_run(llama_lora_template, tmp_path / "run")
    export_run(run, log=lambda _: None)
    onnx_dir = run / "onnx"
    cfg = json.loads((onnx_dir / "genai_config.json").read_text())
    assert cfg["model"]["type"] == "llama" and cfg["search"]["past_present_share_buffer"] is False
    assert cfg["model"]["decoder"]["num_key_value_heads"] == 2  # GQA
    tok = AutoTokenizer.from_pretrained(run / "merged")
    model = AutoModelForCausalLM.from_pretrained(run / "merged", dtype=torch.float32).eval()
    for prompt in ("The aligned model answers the question carefully and", "Hi"):
        ids = tok(prompt)["input_ids"]
        assert genai_greedy(onnx_dir, ids, 24) == hf_greedy(model, ids, 24, tok.eos_token_id)
