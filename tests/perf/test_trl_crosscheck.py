"""With alpha = 1, hdpo-tune's loss equals TRL DPOTrainer's sigmoid loss on the same model, data and reference.

TRL tokenizes the text itself; the word-level tokenizer gives one id per word, so both sides see the same ids
(checked). The policy is perturbed away from the reference so the loss is not log 2.
"""

import copy
import math

import pytest
import torch

from bench.fixtures import LengthSpec, ModelShape, build_model_folder, make_pairs
from hdpo_core.alpha import ScheduledAlpha
from hdpo_core.batching import packed_batch
from hdpo_core.forward import SequenceScorer, score
from hdpo_core.loss import hdpo_loss
from hdpo_core.tokenize import TokenizedPair
from hdpo_core.trainer import TrainHooks, TrainOptions, TrainPaths, train

SHAPE = ModelShape(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                   intermediate_size=64)
BETA = 0.1


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("model")
    build_model_folder(SHAPE, folder, seed=0)
    rows = make_pairs(4, LengthSpec(prompt=(3, 9), completion=(2, 7)), SHAPE.vocab_size, seed=5)
    policy = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return folder, rows, policy, AutoTokenizer.from_pretrained(folder)


def _trl_loss(folder, rows, policy, tok, tmp_path) -> float:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    ds = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])
    args = DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=len(rows), beta=BETA, loss_type=["sigmoid"],
                     use_cpu=True, bf16=False, max_length=None, report_to="none", gradient_checkpointing=False)
    trainer = DPOTrainer(model=copy.deepcopy(policy), args=args, train_dataset=ds, processing_class=tok)
    examples = [trainer.train_dataset[i] for i in range(len(rows))]
    for ex, row in zip(examples, rows, strict=True):  # TRL tokenized the text into exactly our ids
        assert (ex["prompt_ids"], ex["chosen_ids"], ex["rejected_ids"]) == \
            (row["prompt_ids"], row["chosen_ids"], row["rejected_ids"])
    batch = trainer.data_collator(examples)
    with torch.no_grad():
        return float(trainer.compute_loss(trainer.model, batch))


def _pairs(rows):
    return [TokenizedPair(tuple(r["prompt_ids"]), tuple(r["chosen_ids"]), tuple(r["rejected_ids"]), f"r:{i}")
            for i, r in enumerate(rows)]


def test_engine_first_step_loss_equals_trl(setup, tmp_path):
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM

    folder, rows, policy, tok = setup
    expected = _trl_loss(folder, rows, policy, tok, tmp_path / "trl")
    assert abs(expected - math.log(2)) > 1e-3  # the perturbation matters

    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval().requires_grad_(False)
    logged = []
    opts = TrainOptions(total_steps=1, batch_size=len(rows), micro_batch_size=len(rows), learning_rate=1e-9,
                        beta=BETA, save_every=10**9)
    train(Accelerator(cpu=True), copy.deepcopy(policy), reference, _pairs(rows), pad_token_id=0,
          alpha=ScheduledAlpha(1.0), opts=opts, paths=TrainPaths(tmp_path / "ck", tmp_path / "final"),
          save_final=lambda m: None, hooks=TrainHooks(on_metrics=logged.append, on_message=lambda s: None))
    assert abs(logged[0]["loss"] - expected) < 1e-5

    # the prompt-sharing fast path gives the same loss
    batch = packed_batch(_pairs(rows), 0, row_tokens=64, share_prompt=True)
    with torch.no_grad():
        pol = score(SequenceScorer(policy), batch)
        ref = score(SequenceScorer(reference), batch)
    loss = hdpo_loss(pol.chosen, pol.rejected, ref.chosen, ref.rejected, beta=BETA, alpha=1.0).losses.mean()
    assert abs(float(loss) - expected) < 1e-5


def test_unperturbed_policy_gives_log2_on_both_sides(setup, tmp_path):
    from transformers import AutoModelForCausalLM

    folder, rows, _, tok = setup
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert abs(_trl_loss(folder, rows, base, tok, tmp_path) - math.log(2)) < 1e-6
