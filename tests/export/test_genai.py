"""onnxruntime-genai serves RUN/onnx/ as exported (genai_config.json written by us): its greedy tokens equal
transformers' generate on the merged model, for the demo model (4 layers, its own digit-splitting BPE) and a
tiny LoRA-merged Llama; its tokenizer (onnxruntime-extensions) encodes as the merged tokenizer does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from service.stages.ship import export_run
from tests.export.conftest import copy_run

og = pytest.importorskip("onnxruntime_genai")
pytestmark = pytest.mark.e2e  # three ONNX exports and the genai runtime: `make test-e2e`

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


def genai_tokenizers(onnx_dir: Path):  # noqa: ANN201 - (plain-text tokenizer, chat tokenizer), og.Tokenizer
    """The two tokenizers docs/export.md's recipe makes: onnxruntime-genai creates its tokenizer with
    ``add_special_tokens`` off (a rendered chat template already starts with the BOS), so plain text needs
    ``update_options(add_special_tokens="true")`` to get the BOS the model's tokenizer adds."""
    model = og.Model(str(onnx_dir))
    plain, chat = og.Tokenizer(model), og.Tokenizer(model)
    plain.update_options(add_special_tokens="true")
    return plain, chat


@pytest.fixture(scope="module")
def llama3_onnx(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny Llama exported with its Llama-3-style tokenizer (BOS from the post-processor, header/eot template)."""
    from hdpo_core.export.genai_config import write_genai_config
    from hdpo_core.export.onnx_export import export_decoder
    from tests.export.gguf_models import tiny_model

    root = tmp_path_factory.mktemp("llama3")
    merged = tiny_model("llama", root / "merged")
    export_decoder(merged, root / "onnx")
    write_genai_config(root / "onnx")
    return merged, root / "onnx"


def with_tokenizer_of(family: str, llama3_onnx: tuple[Path, Path], tmp: Path) -> tuple[Path, Path]:
    """(model folder, ONNX folder) whose tokenizer is ``family``'s: tokenization needs genai to load a folder,
    not that family's graph, so the Llama graph is reused (one export instead of three)."""
    from tests.export.gguf_models import tiny_model

    if family == "llama":
        return llama3_onnx
    merged = tiny_model(family, tmp / "merged")
    onnx_dir = tmp / "onnx"
    shutil.copytree(llama3_onnx[1], onnx_dir)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy2(merged / name, onnx_dir / name)
    return merged, onnx_dir


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_genai_tokenizer_recipe_equals_transformers(llama3_onnx, family, tmp_path):
    """Llama 3's tokenizer adds BOS in its post-processor; genai's default encode drops it (0 of 8 prompts
    equal), the recipe's tokenizer keeps it (8 of 8) and adds nothing for Qwen2's and GPT-2's (Mistral) kind;
    chat prompts rendered by genai's own template engine encode to transformers' ``apply_chat_template`` ids."""
    from transformers import AutoTokenizer

    from hdpo_core.export.gguf_validate import PROBE_TEXTS
    from hdpo_core.export.onnx_validate import PROMPTS

    merged, onnx_dir = with_tokenizer_of(family, llama3_onnx, tmp_path)
    tok = AutoTokenizer.from_pretrained(merged)
    plain, chat = genai_tokenizers(onnx_dir)
    texts = [*PROBE_TEXTS, *PROMPTS, "Question: what is 146 + 148?\nAnswer:", f"{tok.eos_token} after a special"]
    want = [tok(t)["input_ids"] for t in texts]
    assert [[int(i) for i in plain.encode(t)] for t in texts] == want
    default = sum([int(i) for i in chat.encode(t)] == w for t, w in zip(texts, want, strict=True))
    assert default == (0 if family == "llama" else len(texts))  # the BOS is what the default drops
    conversations = [[{"role": "user", "content": "What is 146 + 148?"}],
                     [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}]]
    for messages in conversations:
        rendered = chat.apply_chat_template(json.dumps(messages), add_generation_prompt=True)
        assert rendered == tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert [int(i) for i in chat.encode(rendered)] == list(
            tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"])


def test_genai_greedy_from_the_recipes_ids_equals_transformers_on_llama3(llama3_onnx):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hdpo_core.export.onnx_validate import PROMPTS
    from hdpo_core.export.ort_generate import generate_text

    merged, onnx_dir = llama3_onnx
    tok = AutoTokenizer.from_pretrained(merged)
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    plain, _ = genai_tokenizers(onnx_dir)
    for text in PROMPTS:
        ids = [int(i) for i in plain.encode(text)]
        assert ids[0] == tok.bos_token_id and ids == tok(text)["input_ids"]
        want = hf_greedy(model, ids, 16, tok.eos_token_id)
        assert genai_greedy(onnx_dir, ids, 16) == want
        # `hdpo-tune generate` encodes with tokenizer.json's post-processor: the same BOS, the same tokens
        assert generate_text(onnx_dir, text, max_new_tokens=16)[1] == want
