"""Bad input, table-driven (issue 7): each case gives exit code 2, a line naming the field or file:row and the
fix, no traceback, and nothing written anywhere. Plus hypothesis fuzzing of the data loader."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from hdpo_core.data import load_preference_rows, normalise_row
from hdpo_core.errors import HdpoError
from service.cli import app
from service.runfolder.record import RunDir
from service.spec.job import load_spec, spec_to_dict
from tests.fixtures.tiny import build_tiny_llama, write_pairs_jsonl

TOKEN = "hf_" + "Qx7" * 10
runner = CliRunner()


@dataclass
class Ctx:
    """What a case may change: the job folder, the spec dict (written after setup) and the models."""

    dir: Path
    spec: dict[str, Any]
    models: dict[str, Path]

    def set(self, section: str, key: str, value: Any) -> None:
        self.spec.setdefault(section, {})[key] = value

    def job_text(self, text: str) -> None:
        (self.dir / "job.yaml").write_text(text, encoding="utf-8")

    def data(self, *lines: str, name: str = "prefs.jsonl") -> None:
        (self.dir / name).write_text("".join(line + "\n" for line in lines), encoding="utf-8")

    def model_copy(self, change: Callable[[Path], None]) -> None:
        copy = self.dir / "model"
        shutil.copytree(self.models["good"], copy)
        change(copy)
        self.set("model", "name_or_path", "./model")


def row(prompt: Any = "Hi", chosen: Any = " yes", rejected: Any = " no") -> str:
    return json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected})


def to_pickle(folder: Path) -> None:
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")


def other_run(c: Ctx) -> None:
    """A run of the same job but another learning rate already lives in output.dir."""
    job = c.dir / "job.yaml"
    job.write_text(yaml.safe_dump({**c.spec, "train": {**c.spec["train"], "learning_rate": 0.5}}))
    from service.runfolder.ownership import claim

    claim(c.dir / "run")  # a run folder hdpo-tune created (it carries the marker)
    RunDir(c.dir / "run").write_resolved_spec(spec_to_dict(load_spec(job)))
    job.unlink()


VALID = "model: {name_or_path: M}\ndata: {train: ./prefs.jsonl}\noutput: {dir: ./run}\n"

# (id, setup, substrings the output must contain; "{dir}" is the job folder)
CASES: list[tuple[str, Callable[[Ctx], Any], tuple[str, ...]]] = [
    ("yaml-bad-indent", lambda c: c.job_text("model:\n  name_or_path: x\n   dtype: float32\n"),
     ("{dir}/job.yaml:3:9: invalid YAML",)),
    ("yaml-unclosed-flow", lambda c: c.job_text("model: {name_or_path: x\n"), ("{dir}/job.yaml:2:1: invalid YAML",)),
    ("yaml-tab", lambda c: c.job_text("model:\n\tname_or_path: x\n"), ("{dir}/job.yaml:2:1: invalid YAML",)),
    ("yaml-duplicate-key", lambda c: c.job_text(VALID + "output: {dir: ./other}\n"),
     ("{dir}/job.yaml:4:1: invalid YAML (duplicate key 'output'",)),
    ("yaml-empty", lambda c: c.job_text("# nothing\n"), ("job file is empty",)),
    ("yaml-not-mapping", lambda c: c.job_text("- model\n"), ("job file must be a YAML mapping",)),
    ("unknown-section", lambda c: c.set("trian", "max_steps", 1), ("trian: unknown field; did you mean 'train'?",)),
    ("misspelled-key", lambda c: c.set("train", "learning_rte", 1e-6),
     ("train.learning_rte: unknown field; did you mean 'learning_rate'?",)),
    ("misspelled-model-key", lambda c: c.set("model", "name_or_pth", "x"),
     ("model.name_or_pth: unknown field; did you mean 'name_or_path'?",)),
    ("wrong-type-int", lambda c: c.set("train", "batch_size", "eight"),
     ("train.batch_size: wrong type (got 'eight'); use an integer",)),
    ("wrong-type-bool", lambda c: c.job_text(VALID.replace("{name_or_path: M}", "{name_or_path: M, trust_remote_code: yes}")),
     ("model.trust_remote_code: wrong type (got 'yes'); use true or false",)),
    ("wrong-type-section", lambda c: c.spec.update(train=[1, 2]), ("train: wrong type (got [1, 2])",)),
    ("wrong-choice", lambda c: c.set("model", "dtype", "fp64"), ("model.dtype: invalid choice (got 'fp64')",)),
    ("beta-zero", lambda c: c.set("hdpo", "beta", 0), ("hdpo.beta: must be greater than 0.0 (got 0)",)),
    ("beta-negative", lambda c: c.set("hdpo", "beta", -0.5), ("hdpo.beta: must be greater than 0.0 (got -0.5)",)),
    ("alpha-zero", lambda c: c.set("hdpo", "alpha", 0.0), ("hdpo.alpha: must be greater than 0.0 (got 0.0)",)),
    ("batch-not-divisible", lambda c: c.spec["train"].update(batch_size=6, micro_batch_size=4),
     ("train.batch_size (6) must be divisible by train.micro_batch_size (4)",)),
    ("steps-and-epochs", lambda c: c.set("train", "epochs", 2), ("train.max_steps (3) and train.epochs (2.0)",)),
    ("lora-dropout-range", lambda c: c.set("lora", "dropout", 1.0), ("lora.dropout: must be less than 1.0 (got 1.0)",)),
    ("max-length-range", lambda c: c.set("data", "max_length", 0), ("data.max_length: must be greater than 1",)),
    ("missing-required", lambda c: c.spec.pop("output"), ("output: required field is missing",)),
    ("missing-data-file", lambda c: c.set("data", "train", "./nope.jsonl"),
     ("data.train: {dir}/nope.jsonl: data file not found",)),
    ("missing-eval-file", lambda c: c.set("data", "eval", "./nope_eval.jsonl"),
     ("data.eval: {dir}/nope_eval.jsonl: data file not found",)),
    ("unsupported-data-type", lambda c: (c.data("a,b", name="prefs.csv"), c.set("data", "train", "./prefs.csv")),
     ("unsupported data file type '.csv'",)),
    ("missing-model-folder", lambda c: c.set("model", "name_or_path", "./no_model"),
     ("model.name_or_path: model folder {dir}/no_model not found",)),
    ("model-without-config", lambda c: c.model_copy(lambda m: (m / "config.json").unlink()),
     ("model.name_or_path: {dir}/model has no config.json",)),
    ("model-broken-config", lambda c: c.model_copy(lambda m: (m / "config.json").write_text("{not json")),
     ("model.name_or_path: cannot read the model config",)),
    ("pickle-weights-only", lambda c: c.model_copy(to_pickle), ("model.allow_pickle: {dir}/model has only pickle",)),
    ("hub-model-offline", lambda c: c.set("model", "name_or_path", "some-org/some-model"),
     ("model.name_or_path: 'some-org/some-model' is not a local folder and the Hub is offline",)),
    ("empty-dataset", lambda c: c.data(), ("data.train: {dir}/prefs.jsonl is empty",)),
    ("invalid-json-line", lambda c: c.data(row(), "{oops", row("Yo")),
     ("{dir}/prefs.jsonl:2: invalid JSON",)),
    ("not-utf8-line", lambda c: (c.dir / "prefs.jsonl").write_bytes(row().encode() + b"\n\xff\xfe\n"),
     ("{dir}/prefs.jsonl:2: not UTF-8 text",)),
    ("row-missing-rejected", lambda c: c.data(row(), json.dumps({"prompt": "Q", "chosen": " a"})),
     ("data.train: {dir}/prefs.jsonl:2: missing field 'rejected'",)),
    ("row-non-string-chosen", lambda c: c.data(row(chosen=5)), ("{dir}/prefs.jsonl:1: 'chosen' and 'rejected' must",)),
    ("row-non-string-prompt", lambda c: c.data(row(prompt=["x"])), ("{dir}/prefs.jsonl:1: field 'prompt' must be",)),
    ("row-not-object", lambda c: c.data(row(), "[1, 2]"), ("{dir}/prefs.jsonl:2: row must be a JSON object",)),
    ("chosen-equals-rejected", lambda c: c.data(row(), row("Q", " same", " same")),
     ("{dir}/prefs.jsonl:2: 'chosen' is identical to 'rejected'",)),
    ("empty-completion", lambda c: c.data(row(chosen="  ")), ("{dir}/prefs.jsonl:1: empty completion in 'chosen'",)),
    ("mixed-formats", lambda c: c.data(row(), row([{"role": "user", "content": "q"}],
                                                  [{"role": "assistant", "content": "a"}],
                                                  [{"role": "assistant", "content": "b"}])),
     ("mixes standard (string) and conversational",)),
    ("overlong-error", lambda c: (c.data(row("word " * 40)), c.spec["data"].update(max_length=16, overlong="error")),
     ("{dir}/prefs.jsonl:1: pair is", "over data.max_length=16")),
    ("prompt-fills-max-length", lambda c: (c.data(row("word " * 40 + "end")), c.set("data", "max_length", 16)),
     ("{dir}/prefs.jsonl:1: prompt alone is",)),
    ("tokenizer-no-pad", lambda c: c.set("model", "name_or_path", str(c.models["no_pad"])),
     ("model.name_or_path: the tokenizer has no pad_token",)),
    ("tokenizer-no-eos", lambda c: c.set("model", "name_or_path", str(c.models["no_eos"])),
     ("model.name_or_path: the tokenizer has no eos_token",)),
    ("conversational-no-template", lambda c: (c.set("model", "name_or_path", str(c.models["no_template"])),
                                              write_pairs_jsonl(c.dir / "prefs.jsonl", 4, conversational=True)),
     ("data: conversational (message list) rows need a chat template",)),
    ("output-holds-other-run", other_run,
     ("output.dir: {dir}/run already holds a different job's run (train.learning_rate: 0.5 -> 1e-06)",
      "pass --force")),
    ("output-is-a-file", lambda c: (c.dir / "run").write_text("x"), ("output.dir: {dir}/run is a file",)),
    ("token-in-spec", lambda c: c.set("hub", "repo_id", TOKEN),
     ("hub.repo_id: value looks like a Hugging Face token; do not put tokens in the job file; set the HF_TOKEN",)),
    ("token-key-in-spec", lambda c: c.set("hub", "token", "secret-abc-123"),
     ("hub.token: secrets are not allowed here", "set the HF_TOKEN environment variable")),
    ("eval-every-without-eval", lambda c: c.set("train", "eval_every", 2), ("train.eval_every (2) is set but data.eval",)),
]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("variants")
    return {"good": tiny_model_dir,
            "no_pad": build_tiny_llama(root / "no_pad", pad=False),
            "no_eos": build_tiny_llama(root / "no_eos", eos=False),
            "no_template": build_tiny_llama(root / "no_template", chat_template=False)}


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_at_least_30_cases() -> None:
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize(("setup", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line_exit_2_nothing_written(tmp_path: Path, models: dict[str, Path],
                                                            setup: Callable[[Ctx], Any],
                                                            expected: tuple[str, ...]) -> None:
    write_pairs_jsonl(tmp_path / "prefs.jsonl", 8)
    ctx = Ctx(tmp_path, {"model": {"name_or_path": str(models["good"])},
                         "data": {"train": "./prefs.jsonl", "max_length": 64}, "lora": {"r": 4},
                         "train": {"max_steps": 3, "batch_size": 4, "micro_batch_size": 2},
                         "output": {"dir": "./run"}}, models)
    setup(ctx)
    job = tmp_path / "job.yaml"
    if not job.exists():
        job.write_text(yaml.safe_dump(ctx.spec), encoding="utf-8")
    elif "name_or_path: M" in job.read_text():
        job.write_text(job.read_text().replace("name_or_path: M", f"name_or_path: {models['good']}"))
    before, model_before = snapshot(tmp_path), snapshot(models["good"])

    result = runner.invoke(app, ["validate", str(job)])

    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    for text in expected:
        assert text.format(dir=tmp_path) in result.output, result.output
    for secret in (TOKEN, "secret-abc-123"):
        assert secret not in result.output
    lines = result.output.splitlines()
    assert lines[0].endswith("problem:") or lines[0].endswith("problems:"), lines[0]
    assert all(ln.startswith("  ") and len(ln.strip()) > 20 for ln in lines[1:]), lines
    assert snapshot(tmp_path) == before and snapshot(models["good"]) == model_before


def test_job_file_not_found_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["validate", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and "job file not found" in result.output
    assert list(tmp_path.iterdir()) == []


# --- fuzzing the data loader: only HdpoError comes out -------------------------------------------------------

_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=12)),
    lambda kids: st.one_of(st.lists(kids, max_size=3), st.dictionaries(st.text(max_size=8), kids, max_size=4)),
    max_leaves=12)
_message = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", ""]),
                                  "content": st.text(max_size=10)})
_field = st.one_of(_json, st.text(max_size=15), st.lists(_message, max_size=3))
_rows = st.one_of(_json, st.dictionaries(st.sampled_from(["prompt", "chosen", "rejected", "x"]), _field, max_size=4))


@settings(max_examples=300, deadline=None)
@given(raw=_rows)
def test_fuzz_normalise_row(raw: Any) -> None:
    try:
        row = normalise_row("f.jsonl:1", raw)
    except HdpoError as exc:
        assert exc.message.startswith("f.jsonl:1: ")
        return
    assert row.chosen != row.rejected and row.format in ("standard", "conversational")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.one_of(_rows.map(json.dumps), st.binary(max_size=20).map(lambda b: b.decode("latin-1")),
                                st.text(max_size=20)), max_size=6),
       suffix=st.sampled_from([".jsonl", ".json"]), skip=st.booleans(), raw_bytes=st.binary(max_size=30))
def test_fuzz_load_preference_rows(tmp_path: Path, lines: list[str], suffix: str, skip: bool,
                                   raw_bytes: bytes) -> None:
    path = tmp_path / f"data{suffix}"
    if suffix == ".json":
        path.write_text("[" + ",".join(lines) + "]", encoding="utf-8")
    else:
        path.write_bytes("\n".join(lines).encode("utf-8") + b"\n" + raw_bytes)
    try:
        rows, problems = load_preference_rows(str(path), on_bad_row="skip" if skip else "error")
    except HdpoError as exc:
        assert exc.message
        return
    assert rows and all(r.source.startswith(str(path)) for r in rows)
    assert len(problems.messages) == problems.skipped.get("bad_row", 0)
