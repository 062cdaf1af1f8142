"""One carrier per concern: the trainer hands ``opts.loss`` to the loss as configured (a new field included),
builds the alpha controller those settings describe, and the shared input rules live in one place."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from hdpo_core import steps
from hdpo_core.alpha import EntropyTargetAlpha, ScheduledAlpha, alpha_controller
from hdpo_core.choices import check_batch_split
from hdpo_core.errors import InputError
from hdpo_core.loss import HDPOLossOutput, hdpo_loss_with
from hdpo_core.settings import LossSettings, TrainOptions
from hdpo_core.tokenize import TokenizedPair, largest_token, token_id_problems
from hdpo_core.trainer import EvalSet, TrainHooks, TrainPaths, train

from ._tiny import PAD, random_pairs, tiny_llama

PAIRS = random_pairs(8, seed=3)


@dataclass(frozen=True)
class WithSmoothing(LossSettings):
    """A loss setting added the way a contributor would: one field on the core dataclass."""

    label_smoothing: float = 0.0
    """Probability that a preference label is flipped (cDPO)."""


def _train(tmp: Path, opts: TrainOptions, **kwargs: object) -> list[dict[str, float]]:
    from accelerate import Accelerator

    logged: list[dict[str, float]] = []
    train(Accelerator(cpu=True), tiny_llama(seed=0), tiny_llama(seed=0).eval().requires_grad_(False), PAIRS,
          pad_token_id=PAD, opts=opts, paths=TrainPaths(None, tmp / "final"), save_final=lambda m: None,
          hooks=TrainHooks(on_metrics=logged.append, on_message=lambda m: None), **kwargs)  # type: ignore[arg-type]
    return logged


def test_the_loss_gets_the_configured_settings_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A field the trainer has never heard of reaches the loss, in training and in evaluation: only alpha is
    this step's value (here the configured constant)."""
    seen: list[LossSettings] = []

    def spy(settings: LossSettings, *args: object, **kwargs: object) -> HDPOLossOutput:
        seen.append(settings)
        return hdpo_loss_with(settings, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(steps, "hdpo_loss_with", spy)
    loss = WithSmoothing(alpha=0.7, beta=0.2, sft_weight=0.5, label_smoothing=0.3)
    opts = TrainOptions(total_steps=2, batch_size=4, micro_batch_size=2, learning_rate=1e-3, eval_every=1, loss=loss)
    logged = _train(tmp_path, opts, evaluation=EvalSet(PAIRS[:3]))
    assert len(seen) == 2 * 2 + 2 * 2  # 2 steps x 2 micro-batches, plus 2 evaluations x 2 micro-batches
    assert all(s == loss for s in seen)  # same type and every field (dataclass equality checks the class)
    assert [m["alpha"] for m in logged] == [0.7, 0.7]


def test_the_trainer_builds_the_controller_the_settings_describe(tmp_path: Path) -> None:
    """``alpha=None`` (the service) gives the numbers of the same schedule handed in by hand (tests, bench)."""
    loss = LossSettings(alpha=0.8, alpha_schedule="linear", alpha_end=1.2)
    opts = TrainOptions(total_steps=3, batch_size=4, micro_batch_size=4, learning_rate=1e-3, loss=loss)
    built = _train(tmp_path / "a", opts)
    by_hand = _train(tmp_path / "b", opts, alpha=ScheduledAlpha(start=0.8, end=1.2, kind="linear", total_steps=3))
    assert [m["alpha"] for m in built] == pytest.approx([0.8, 1.0, 1.2])
    assert [m["loss"] for m in built] == [m["loss"] for m in by_hand]


def test_alpha_controller_follows_the_settings() -> None:
    assert alpha_controller(LossSettings(alpha=0.9), 7) == ScheduledAlpha(start=0.9, total_steps=7)
    assert alpha_controller(LossSettings(alpha=0.8, alpha_schedule="cosine", alpha_end=1.2), 5) == \
        ScheduledAlpha(start=0.8, end=1.2, kind="cosine", total_steps=5)
    relative = alpha_controller(LossSettings(alpha="auto", target_entropy="0.8x", alpha_init=1.5, alpha_lr=0.1,
                                             alpha_min=0.4, alpha_max=3.0), 5)
    assert isinstance(relative, EntropyTargetAlpha)
    assert (relative.target, relative.relative, relative.lr, relative.alpha_min, relative.alpha_max) == \
        (None, 0.8, 0.1, 0.4, 3.0)
    assert relative.value(0) == pytest.approx(1.5)
    absolute = alpha_controller(LossSettings(alpha="auto", target_entropy=0.5), 5)
    assert isinstance(absolute, EntropyTargetAlpha) and (absolute.target, absolute.relative) == (0.5, None)


def test_train_options_beta_shorthand_folds_into_the_loss() -> None:
    assert TrainOptions(total_steps=1, beta=0.3, sft_weight=0.2).loss == LossSettings(beta=0.3, sft_weight=0.2)
    assert TrainOptions(total_steps=1).loss == LossSettings()
    assert LossSettings(alpha="auto").with_alpha(1.3) == LossSettings(alpha=1.3)
    assert type(WithSmoothing(label_smoothing=0.1).with_alpha(0.5)) is WithSmoothing


def test_batch_split_is_one_input_error_for_the_stage_and_the_trainer(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"^train.batch_size \(8\) must be divisible by train.micro_batch_size "
                                         r"\(4\) x processes \(3\); adjust one of them$"):
        check_batch_split(8, 4, processes=3)
    check_batch_split(8, 4, processes=2)

    class ThreeProcesses:
        num_processes = 3

    with pytest.raises(InputError, match=r"x processes \(3\)"):
        train(ThreeProcesses(), tiny_llama(), None, PAIRS, pad_token_id=PAD, save_final=lambda m: None,
              opts=TrainOptions(total_steps=1, batch_size=8, micro_batch_size=4), paths=TrainPaths(None, tmp_path))


def test_token_id_rule_names_each_id_without_an_embedding_row() -> None:
    pairs = [TokenizedPair((5, 9), (3, 2), (4, 2), "a.jsonl:1"), TokenizedPair((1,), (12, 2), (12, 2), "a.jsonl:2"),
             TokenizedPair((12,), (3,), (4,), "a.jsonl:3")]
    assert largest_token(pairs) == (12, "a.jsonl:2")
    assert largest_token([]) is None
    assert token_id_problems(13, eos_token_id=2, pad_token_id=0, largest=largest_token(pairs)) == []
    tail = "the tokenizer does not belong to this model: use the model's own tokenizer or resize its embeddings"
    assert token_id_problems(12, eos_token_id=2, pad_token_id=12, largest=largest_token(pairs)) == [
        f"model.name_or_path: the tokenizer's pad token id 12 is beyond the model's embedding (12 rows); {tail}",
        f"model.name_or_path: a.jsonl:2: token id 12 is beyond the model's embedding (12 rows); {tail}",
    ]
