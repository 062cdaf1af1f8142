"""The spec produces the core's settings objects: defaults written once (in hdpo_core.settings), the ``hdpo:``
section built from LossSettings (a new field is a new documented spec key with no spec edit), and each
section's ``core`` equal to the field-by-field mapping it replaces."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import ValidationError

from hdpo_core.settings import LoraOptions, LossSettings, ModelOptions, TrainOptions
from service.spec.core_fields import attribute_docs, core_defaults
from service.spec.hdpo import HdpoSpec, hdpo_section
from service.spec.job import JobSpec, TrainSpec, json_schema
from service.spec.template import _render_model, render_example_spec

SECTIONS = {"ModelSpec": ModelOptions, "LoraSpec": LoraOptions, "TrainSpec": TrainOptions, "HdpoSpec": LossSettings}


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_spec_defaults_are_the_core_defaults(section: str) -> None:
    """Every field a spec section shares with its core object has the core's default in the JSON schema (what
    docs/spec.md, `hdpo-tune init` and job.resolved.yaml show)."""
    props = json_schema()["$defs"][section]["properties"]
    core = SECTIONS[section]
    shared = {name: default for name, default in core_defaults(core).items() if name in props}
    assert len(shared) >= {"ModelSpec": 6, "LoraSpec": 4, "TrainSpec": 18, "HdpoSpec": 10}[section]
    for name, default in shared.items():
        assert props[name]["default"] == default, f"{section}.{name}"
    if core is TrainOptions:
        assert (props["adam_beta1"]["default"], props["adam_beta2"]["default"]) == TrainOptions(1).adam_betas


def test_hdpo_section_is_the_core_dataclass() -> None:
    """Same fields in the same order, each described by its docstring in the core."""
    names = [f.name for f in dataclasses.fields(LossSettings)]
    assert list(HdpoSpec.model_fields) == names
    docs = attribute_docs(LossSettings)
    assert set(docs) == set(names)
    assert {n: HdpoSpec.model_fields[n].description for n in names} == docs
    assert HdpoSpec().core == LossSettings()
    spec = JobSpec.model_validate({"model": {"name_or_path": "m"}, "data": {"train": "t.jsonl"},
                                   "output": {"dir": "run"}, "hdpo": {"alpha": "auto", "target_entropy": "0.8x",
                                                                      "beta": 0.2}})
    assert spec.hdpo.core == LossSettings(alpha="auto", target_entropy="0.8x", beta=0.2)


@dataclass(frozen=True)
class WithSmoothing(LossSettings):
    label_smoothing: float = 0.0
    """Probability that a preference label is flipped (cDPO)."""


def test_a_new_loss_setting_is_a_spec_key_without_a_spec_edit() -> None:
    """Edit 1 (the field on the core dataclass) is all the spec needs: the key validates with its type, has its
    default and description in the schema and in `hdpo-tune init`, and comes out in the core object that the
    trainer hands to the loss unchanged (edit 2 is its use there; tests/core/test_settings.py)."""
    section = hdpo_section(WithSmoothing)
    prop = section.model_json_schema()["properties"]["label_smoothing"]
    assert (prop["default"], prop["description"]) == (0.0, "Probability that a preference label is flipped (cDPO).")
    core = section.model_validate({"alpha": 0.8, "label_smoothing": 0.1}).core
    assert core == WithSmoothing(alpha=0.8, label_smoothing=0.1)
    with pytest.raises(ValidationError, match="label_smoothing"):
        section.model_validate({"label_smoothing": "0.1"})  # strict like every spec field
    with pytest.raises(ValidationError, match="hdpo.target_entropy: required with hdpo.alpha: auto"):
        section.model_validate({"alpha": "auto", "label_smoothing": 0.1})  # the section's rules still hold
    lines = _render_model(("hdpo",), section, 0, False)
    assert "  label_smoothing: 0.0" in lines and "  # Probability that a preference label is flipped (cDPO)." in lines
    opts = TrainSpec().core(10, loss=core)
    assert opts.loss is core


def test_init_example_shows_every_loss_setting() -> None:
    text = render_example_spec()
    for f in dataclasses.fields(LossSettings):
        assert f"\n  {f.name}: " in text, f.name


def _spec(**sections: dict[str, Any]) -> JobSpec:
    base: dict[str, Any] = {"model": {"name_or_path": "m"}, "data": {"train": "t.jsonl"}, "output": {"dir": "run"}}
    return JobSpec.model_validate({**base, **sections})


def test_sections_give_what_the_field_by_field_copies_gave() -> None:
    """Equivalence with the mappings the train stage used to write out (every field set off its default)."""
    spec = _spec(
        model={"name_or_path": "m", "dtype": "bfloat16", "revision": "r1", "trust_remote_code": True,
               "allow_pickle": True, "attn_implementation": "eager", "gradient_checkpointing": True},
        lora={"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]},
        hdpo={"alpha": 0.7, "beta": 0.3, "sft_weight": 0.2},
        train={"max_steps": 40, "batch_size": 12, "micro_batch_size": 3, "learning_rate": 2e-5, "scheduler": "linear",
               "warmup_ratio": 0.1, "weight_decay": 0.01, "max_grad_norm": None, "adam_beta1": 0.8,
               "adam_beta2": 0.99, "adam_eps": 1e-6, "seed": 7, "log_every": 2, "save_every": 5, "eval_every": 4,
               "keep_checkpoints": 3, "packing": False, "row_tokens": 512, "share_prompt": False,
               "on_nonfinite": "skip", "activation_offloading": True},
        data={"train": "t.jsonl", "eval": "e.jsonl"})
    m, lo, t, h = spec.model, spec.lora, spec.train, spec.hdpo
    assert lo is not None
    assert m.core() == ModelOptions(name_or_path="m", dtype="bfloat16", revision="r1", trust_remote_code=True,
                                    allow_pickle=True, attn_implementation="eager", gradient_checkpointing=True)
    assert lo.core == LoraOptions(r=4, alpha=8, dropout=0.1, target_modules=("q_proj", "v_proj"))
    assert t.core(40, loss=h.core) == TrainOptions(
        total_steps=40, batch_size=12, micro_batch_size=3, learning_rate=2e-5, scheduler="linear", warmup_steps=4,
        weight_decay=0.01, max_grad_norm=None, adam_betas=(0.8, 0.99), adam_eps=1e-6, seed=7, log_every=2,
        save_every=5, eval_every=4, keep_checkpoints=3, packing=False, row_tokens=512, share_prompt=False,
        on_nonfinite="skip", activation_offloading=True, beta=0.3, sft_weight=0.2,
        loss=LossSettings(alpha=0.7))
    assert _spec(train={"max_steps": 10, "warmup_steps": 3}).train.core(10, loss=LossSettings()).warmup_steps == 3
