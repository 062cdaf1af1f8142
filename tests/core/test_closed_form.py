"""Ground truth for entropy control (issues 8 and 9).

One prompt, one-token responses over K = 6 tokens, a designed reference distribution and exact
Bradley-Terry preference data (see :func:`hdpo_core.closed_form.bradley_terry_pairs`). The real engine
(`hdpo_core.trainer.train`, full fine-tuning of a tiny Llama) trained to convergence must land on the
closed-form H-DPO optimum ``pi_ref^(1/alpha) exp(r/(alpha*beta))`` — not on "DPO with a scaled beta", whose
optimum ``pi_ref exp(r/(alpha*beta))`` differs by 0.07-0.27 in total variation at these alphas — and the
entropy-target controller must settle on the alpha whose optimum has the target entropy.
"""

import copy
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hdpo_core import closed_form as cf
from hdpo_core.alpha import EntropyTargetAlpha, ScheduledAlpha
from hdpo_core.trainer import TrainHooks, TrainOptions, TrainPaths, train

K = 6
BETA = 0.5
REF_LOGITS = torch.tensor([1.0, 0.5, 0.0, -0.5, 0.3, -1.0])
REWARD, PAIRS = cf.bradley_terry_pairs([1, 3, 2, 6, 1, 4], prompt=(0,))
TV_TOL = 0.01


def _model():
    """Tiny Llama whose next-token distribution after the prompt token is softmax(REF_LOGITS)."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=K, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, intermediate_size=32)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        h = model.model(input_ids=torch.tensor([[0]])).last_hidden_state[0, -1]
        model.lm_head.weight.copy_(REF_LOGITS[:, None] * h[None, :] / (h @ h))
    return model


def _policy(model) -> torch.Tensor:
    with torch.no_grad():
        return torch.softmax(model(input_ids=torch.tensor([[0]])).logits[0, -1].double(), -1)


REF_PROBS = _policy(_model())


def _train(tmp: Path, controller, steps: int):
    model = _model()
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    logged = []
    from accelerate import Accelerator

    train(Accelerator(cpu=True), model, reference, PAIRS, pad_token_id=0, alpha=controller,
          opts=TrainOptions(total_steps=steps, batch_size=len(PAIRS), micro_batch_size=len(PAIRS), learning_rate=0.05,
                            scheduler="constant", beta=BETA, packing=False, save_every=10**6, max_grad_norm=None),
          paths=TrainPaths(tmp / "ck", tmp / "final"), save_final=lambda m: None,
          hooks=TrainHooks(on_metrics=logged.append))
    return _policy(model), logged


def test_reference_is_the_designed_distribution():
    torch.testing.assert_close(REF_PROBS, torch.softmax(REF_LOGITS.double(), -1), atol=1e-6, rtol=0)


def test_engine_lands_on_the_closed_form_optimum_and_entropy_falls_with_alpha(tmp_path):
    entropies = {}
    for alpha in (0.5, 0.8, 1.0, 1.5):
        policy, logged = _train(tmp_path / str(alpha), ScheduledAlpha(alpha), steps=100)
        target = cf.optimum(REF_PROBS, REWARD, alpha=alpha, beta=BETA)
        tv = 0.5 * (policy - target).abs().sum().item()
        assert tv < TV_TOL, f"alpha={alpha}: TV to closed form {tv:.4f}"
        scaled_beta_dpo = torch.softmax(REF_PROBS.log() + REWARD / (alpha * BETA), -1)
        if alpha != 1.0:  # the test can tell H-DPO from DPO with beta' = alpha*beta
            assert 0.5 * (target - scaled_beta_dpo).abs().sum().item() > 5 * TV_TOL
        # the logged per-token entropy is the policy's exact entropy at the response position
        assert logged[-1]["entropy"] == pytest.approx(cf.entropy(policy), abs=1e-3)
        entropies[alpha] = cf.entropy(policy)
    assert entropies[0.5] < entropies[0.8] < entropies[1.0] < entropies[1.5]


@pytest.mark.parametrize("true_alpha", [0.7, 1.4])
def test_auto_alpha_reaches_the_target_entropy_and_the_matching_alpha(tmp_path, true_alpha):
    """Targets below (alpha 0.7) and above (alpha 1.4) the DPO optimum's entropy, starting from alpha = 1."""
    target = cf.entropy(cf.optimum(REF_PROBS, REWARD, alpha=true_alpha, beta=BETA))
    assert cf.alpha_for_entropy(REF_PROBS, REWARD, beta=BETA, target=target) == pytest.approx(true_alpha, rel=1e-6)
    controller = EntropyTargetAlpha(target=target, init=1.0, lr=0.1, alpha_min=0.3, alpha_max=3.0)
    policy, logged = _train(tmp_path, controller, steps=160)
    assert abs(cf.entropy(policy) - target) / target < 0.02  # the issue asks for 10%
    assert logged[-1]["alpha"] == pytest.approx(true_alpha, rel=0.03)
    assert logged[-1]["entropy_target"] == pytest.approx(target)
    assert logged[0]["alpha"] == 1.0


def test_relative_target_resolves_from_the_first_step_and_alpha_stays_in_bounds():
    c = EntropyTargetAlpha(relative=0.8, init=1.0, lr=10.0, alpha_min=0.5, alpha_max=2.0)
    c.update(0, 2.0)
    assert c.state()["entropy_target"] == pytest.approx(1.6)
    assert c.value(1) == pytest.approx(0.5)  # entropy above target -> alpha down, clamped
    c.update(1, 0.1)
    assert c.value(2) == pytest.approx(2.0)
    restored = EntropyTargetAlpha(relative=0.8)
    restored.load_state(c.state())
    assert restored.value(3) == c.value(3) and restored.target == c.target


@pytest.mark.parametrize("kind", ["constant", "linear", "cosine"])
def test_alpha_schedules(tmp_path, kind):
    import math

    sched = ScheduledAlpha(start=0.8, end=1.2, kind=kind, total_steps=5)
    _, logged = _train(tmp_path, sched, steps=5)
    expected = {
        "constant": [0.8] * 5,
        "linear": [0.8, 0.9, 1.0, 1.1, 1.2],
        "cosine": [1.2 + (0.8 - 1.2) * 0.5 * (1 + math.cos(math.pi * s / 4)) for s in range(5)],
    }[kind]
    assert [m["alpha"] for m in logged] == pytest.approx(expected, abs=1e-12)
