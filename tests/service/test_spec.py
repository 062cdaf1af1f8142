"""The job spec: defaults, round trip, cross-field rules, messages, secrets, YAML pitfalls, fuzzing."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hdpo_core.errors import HdpoError, InputError
from service.spec.job import JobSpec, dump_yaml, json_schema, load_spec, redact_secrets, spec_to_dict
from service.spec.yaml_io import loads

TOKEN = "hf_" + "Ab3" * 10  # looks like a real token (hf_ + 30 alphanumerics)
MINIMAL = "model: {name_or_path: ./base}\ndata: {train: ./prefs.jsonl}\noutput: {dir: ./runs/exp1}\n"


def write(tmp_path: Path, text: str, name: str = "job.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def spec_with(tmp_path: Path, **sections: dict) -> Path:
    data = {"model": {"name_or_path": "./base"}, "data": {"train": "./prefs.jsonl"}, "output": {"dir": "./out"}}
    for name, values in sections.items():
        data[name] = values if values is None else {**data.get(name, {}), **values}
    return write(tmp_path, yaml.safe_dump(data))


def with_extra(tmp_path: Path, text: str) -> Path:
    """MINIMAL with ``text``'s sections merged in (key by key within a section)."""
    base = yaml.safe_load(MINIMAL)
    for name, values in loads(text).items():
        base[name] = {**base[name], **values} if isinstance(values, dict) and name in base else values
    return write(tmp_path, yaml.safe_dump(base).replace("'yes'", "yes"))


def problems(path: Path) -> list[str]:
    with pytest.raises(InputError) as info:
        load_spec(path)
    assert info.value.exit_code == 2
    return info.value.message.splitlines()


def test_defaults_match_the_documented_values(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, MINIMAL))
    assert spec.model.dtype == "float32" and spec.model.trust_remote_code is False and spec.model.allow_pickle is False
    assert spec.model.attn_implementation == "sdpa" and spec.model.revision is None
    assert spec.lora is None  # absent = full fine-tuning
    assert (spec.data.max_length, spec.data.overlong, spec.data.on_bad_row) == (1024, "truncate", "error")
    assert (spec.hdpo.alpha, spec.hdpo.beta, spec.hdpo.sft_weight) == (0.9, 0.1, 0.0)
    t = spec.train
    assert (t.max_steps, t.epochs) == (None, 1.0)  # neither given: one epoch, written out
    assert (t.batch_size, t.micro_batch_size, t.learning_rate, t.scheduler) == (8, 4, 1e-6, "cosine")
    assert (t.max_grad_norm, t.save_every, t.keep_checkpoints, t.on_nonfinite) == (1.0, 50, 2, "stop")
    assert (t.packing, t.row_tokens, t.mixed_precision) == (True, 4096, "no")
    assert spec.eval is None and spec.hub is None


def test_relative_paths_resolve_against_the_job_folder_and_hub_ids_stay(tmp_path: Path) -> None:
    sub = tmp_path / "jobs"
    sub.mkdir()
    spec = load_spec(write(sub, MINIMAL))
    assert spec.model.name_or_path == str(sub / "base")
    assert spec.data.train == str(sub / "prefs.jsonl")
    assert spec.output.dir == str(sub / "runs" / "exp1")
    hub = load_spec(write(sub, "model: {name_or_path: Qwen/Qwen2.5-0.5B}\ndata: {train: org/prefs, eval: ../e.jsonl}\n"
                               "output: {dir: out}\ntrain: {precompute_ref_logps: true, ref_cache_dir: cache}\n"))
    assert hub.model.name_or_path == "Qwen/Qwen2.5-0.5B" and hub.data.train == "org/prefs"
    assert hub.data.eval == str(tmp_path / "e.jsonl")
    assert hub.train.ref_cache_dir == str(sub / "cache")
    assert load_spec(write(sub, MINIMAL.replace("./base", "gpt2"))).model.name_or_path == "gpt2"
    (sub / "gpt2").mkdir()  # a local folder of that name wins
    assert load_spec(write(sub, MINIMAL.replace("./base", "gpt2"))).model.name_or_path == str(sub / "gpt2")


def test_round_trip_through_resolved_yaml(tmp_path: Path) -> None:
    spec = load_spec(spec_with(tmp_path, lora={"r": 8, "target_modules": ["q_proj", "v_proj"]},
                               train={"max_steps": 7, "learning_rate": 5e-7}, hub={"repo_id": "me/model"}))
    again = load_spec(write(tmp_path, dump_yaml(spec_to_dict(spec)), "resolved.yaml"))
    assert again == spec
    assert spec_to_dict(again)["lora"]["target_modules"] == ["q_proj", "v_proj"]
    assert spec_to_dict(again)["train"]["epochs"] is None and again.train.max_steps == 7


def test_spec_is_frozen(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, MINIMAL))
    with pytest.raises(Exception, match="frozen"):
        spec.train.batch_size = 3  # type: ignore[misc]


@pytest.mark.parametrize(("sections", "expected"), [
    ({"train": {"max_steps": 10, "epochs": 2}}, "train.max_steps (10) and train.epochs (2.0) are both set; choose one"),
    ({"train": {"batch_size": 10, "micro_batch_size": 4}},
     "train.batch_size (10) must be divisible by train.micro_batch_size (4); choose a micro_batch_size that divides "
     "batch_size (e.g. 2)"),
    ({"train": {"warmup_steps": 5, "warmup_ratio": 0.1}}, "train.warmup_steps (5) and train.warmup_ratio (0.1) are "
     "both set; can't provide both, choose one"),
    ({"train": {"max_steps": 10, "warmup_steps": 10}}, "train.warmup_steps (10) must be smaller than "
     "train.max_steps (10)"),
    ({"train": {"ref_cache_dir": "/tmp/c"}}, "train.ref_cache_dir is set but train.precompute_ref_logps is false"),
    ({"train": {"eval_every": 5}}, "train.eval_every (5) is set but data.eval is not"),
    ({"train": {"mixed_precision": "fp16"}, "model": {"dtype": "float16"}}, "train.mixed_precision: fp16 with "
     "model.dtype: float16"),
])
def test_cross_field_rules(tmp_path: Path, sections: dict, expected: str) -> None:
    lines = problems(spec_with(tmp_path, **sections))
    assert len(lines) == 1
    assert lines[0].startswith(expected)


def test_cross_field_rules_pass_when_consistent(tmp_path: Path) -> None:
    spec = load_spec(spec_with(tmp_path, train={"max_steps": 10, "batch_size": 12, "micro_batch_size": 3,
                                                "warmup_ratio": 0.1, "eval_every": 2},
                               data={"eval": "./e.jsonl"}, lora={}))
    assert spec.train.batch_size // spec.train.micro_batch_size == 4
    # fp16 autocast with float16 weights is fine under LoRA (the adapter is float32)
    load_spec(spec_with(tmp_path, train={"mixed_precision": "fp16"}, model={"dtype": "float16"}, lora={}))


def test_every_problem_is_listed_once_each_with_its_field(tmp_path: Path) -> None:
    path = write(tmp_path, "model: {name_or_path: ./base, dtype: float64}\ndata: {train: ./p.jsonl, max_length: 0}\n"
                           "hdpo: {alpha: 0, beta: -0.1}\ntrain: {batch_size: 10, micro_batch_size: 4, lr: 1}\n"
                           "lora: {r: 0}\n")
    lines = problems(path)
    fields = ["model.dtype", "data.max_length", "hdpo.alpha", "hdpo.beta", "train.lr", "lora.r", "output",
              "train.batch_size"]
    assert len(lines) == len(fields), lines
    for f, line in zip(sorted(fields), sorted(lines), strict=True):
        assert line.startswith(f), (f, line)
    assert "model.dtype: invalid choice (got 'float64'); use one of 'float32', 'bfloat16' or 'float16'" in lines
    assert "hdpo.beta: must be greater than 0.0 (got -0.1); change the value" in lines


@pytest.mark.parametrize(("text", "expected"), [
    ("train: {learning_rte: 1.0e-6}", "train.learning_rte: unknown field; did you mean 'learning_rate'?"),
    ("trian: {max_steps: 3}", "trian: unknown field; did you mean 'train'?"),
    ("lora: {rank: 4}", "lora.rank: unknown field; valid fields here: r, alpha, dropout, target_modules"),
    ("data: {train: ./p.jsonl, max_len: 5}", "data.max_len: unknown field; did you mean 'max_length'?"),
])
def test_unknown_keys_suggest_the_closest_field(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in problems(with_extra(tmp_path, text))


@pytest.mark.parametrize(("text", "expected"), [
    ("train: {batch_size: eight}", "train.batch_size: wrong type (got 'eight'); use an integer"),
    ("train: {batch_size: 8.5}", "train.batch_size: wrong type (got 8.5); use an integer"),
    ("model: {name_or_path: ./b, trust_remote_code: yes}", "model.trust_remote_code: wrong type (got 'yes'); use true "
     "or false"),
    ("train: 5", "train: wrong type (got 5); use a mapping of fields"),
    ("lora: {target_modules: 5}", "lora.target_modules: wrong type (got 5); use a string or a list"),
    ("hdpo: {beta: .nan}", "hdpo.beta: wrong type (got nan); use a finite number"),
    ("output: {dir: ''}", "output.dir: must not be empty (got ''); fill it in"),
])
def test_wrong_types_are_named(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in problems(with_extra(tmp_path, text))


def test_yaml_12_scalars(tmp_path: Path) -> None:
    """`no` is a string (not False) and `5e-7` a float (not a string), unlike PyYAML's YAML 1.1 defaults."""
    spec = load_spec(write(tmp_path, MINIMAL + "train: {mixed_precision: no, learning_rate: 5e-7, weight_decay: 1E-2}\n"))
    assert spec.train.mixed_precision == "no"
    assert spec.train.mixed_precision == "no"
    assert spec.train.learning_rate == pytest.approx(5e-7) and spec.train.weight_decay == pytest.approx(0.01)


@pytest.mark.parametrize(("text", "expected"), [
    ("model:\n  name_or_path: ./b\n   dtype: float32\n", "job.yaml:3:9: invalid YAML (mapping values are not allowed "
     "here)"),
    ("model: [unclosed\n", "job.yaml:2:1: invalid YAML"),
    ("model:\n\tname_or_path: x\n", "job.yaml:2:1: invalid YAML"),
    ("model: {}\nmodel: {}\n", "job.yaml:2:1: invalid YAML (duplicate key 'model'"),
    ("", "job.yaml: job file is empty"),
    ("- a\n- b\n", "job.yaml: job file must be a YAML mapping"),
])
def test_malformed_yaml_gives_file_line_column(tmp_path: Path, text: str, expected: str) -> None:
    lines = problems(write(tmp_path, text))
    assert len(lines) == 1 and lines[0].startswith(str(tmp_path / expected.split(":")[0]))
    assert expected.split(":", 1)[1] in lines[0]


def test_unreadable_job_files(tmp_path: Path) -> None:
    assert "job file not found" in problems(tmp_path / "nope.yaml")[0]
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"model: {name_or_path: caf\xe9}\n")
    assert "not UTF-8 text (byte offset 25)" in problems(bad)[0]


@pytest.mark.parametrize("text", [
    f"hub: {{repo_id: me/x, token: {TOKEN}}}",
    f"model: {{name_or_path: ./b, revision: {TOKEN}}}",
    "hub: {hf_token: abc123secretvalue}",
    "train: {api_key: sk-abcdef}",
    f"eval: {{extra: [{{a: '{TOKEN}'}}]}}",
    f"{TOKEN}: 1",
])
def test_tokens_in_the_spec_are_refused_and_never_echoed(tmp_path: Path, text: str) -> None:
    lines = problems(with_extra(tmp_path, text))
    message = "\n".join(lines)
    assert "do not put tokens in the job file; set the HF_TOKEN environment variable" in message
    for secret in (TOKEN, "abc123secretvalue", "sk-abcdef"):
        assert secret not in message
    unknown_paths = [line.split(":", 1)[0] for line in lines if "unknown field" in line]
    assert not any("token" in path or "api_key" in path for path in unknown_paths)


def test_redact_secrets_hides_pattern_and_env_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "plain-secret-value-123")
    text = redact_secrets(f"a {TOKEN} b plain-secret-value-123 c")
    assert text == "a hf_*** b *** c"


def test_json_schema_documents_every_field_with_its_default() -> None:
    schema = json_schema()
    assert set(schema["properties"]) == {"model", "lora", "data", "hdpo", "train", "output", "eval", "merge",
                                         "export", "hub", "distributed", "tracking", "quantization"}
    assert set(schema["required"]) == {"model", "data", "output"}
    for name, sub in schema["$defs"].items():
        for field, node in sub["properties"].items():
            assert node.get("description"), f"{name}.{field} has no description"
    train = schema["$defs"]["TrainSpec"]["properties"]
    assert train["learning_rate"]["default"] == 1e-6 and train["batch_size"]["exclusiveMinimum"] == 0
    assert schema["$defs"]["TrainSpec"]["additionalProperties"] is False
    assert JobSpec.model_config["extra"] == "forbid"


# --- fuzzing: only HdpoError (or a valid spec) ever comes out ----------------------------------------------

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                     st.text(max_size=20), st.sampled_from(["./x", "org/name", "no", "yes", "1e-5", TOKEN, "~"]))
_keys = st.one_of(st.sampled_from(["model", "data", "train", "hdpo", "lora", "output", "eval", "hub", "name_or_path",
                                   "train", "dir", "batch_size", "micro_batch_size", "beta", "alpha", "max_steps",
                                   "epochs", "token", "r", "target_modules", "max_length"]),
                  st.text(string.ascii_letters + "_", max_size=12))
_trees = st.recursive(_scalars, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                       st.dictionaries(_keys, kids, max_size=6)), max_leaves=25)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=_trees)
def test_fuzz_load_spec_on_random_trees(tmp_path: Path, tree: object) -> None:
    path = write(tmp_path, yaml.safe_dump(tree, allow_unicode=True))
    try:
        load_spec(path)
    except HdpoError as exc:
        assert exc.message and TOKEN not in exc.message


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.text(max_size=200),
                      st.lists(st.sampled_from(["model:", "  name_or_path: x", "data: {train: a", "- ", "? [a]",
                                                ": b", "&a [*a]", "\t", "'", "\"", "!!binary abc", "{", "}", "#",
                                                "output: {dir: o}", "data:\n  train: p.jsonl", "key: !!python/none",
                                                "2001-12-14", "%YAML 1.1", "---", "..."]),
                               max_size=12).map("\n".join)))
def test_fuzz_load_spec_on_random_text(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    try:
        load_spec(path)
    except HdpoError as exc:
        assert exc.message
