"""Security (issue 7): a planted HF_TOKEN appears in no file a run writes and in no output; a token in the
spec is refused without being echoed; remote code and pickle weights are off unless the spec says so; the
run folder never escapes output.dir and a run writes nothing outside it."""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import string
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from tests.reliability._jobs import changed_outside, run_cli, snapshot, status, write_job

HDPO_TUNE = Path(sys.executable).parent / "hdpo-tune"


def _token() -> str:
    rng = random.Random()  # a fresh token each run: nothing can have it hard-coded
    return "hf_" + "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(34))


def _files_holding(root: Path, secret: str) -> list[str]:
    needle = secret.encode()
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and needle in p.read_bytes())


def test_full_run_with_merge_and_failed_push_leaks_no_token_and_stays_in_its_folder(
        tmp_path: Path, tiny_model_dir: Path, tiny_pairs: Path) -> None:
    token = _token()
    # output.dir with '..' segments, relative to the job's folder: must become tmp_path/run, nothing else
    job = write_job(tmp_path / "jobs", tiny_model_dir, tiny_pairs, steps=2, save_every=1, eval_every=1,
                    out="../elsewhere/../run", extra={"data": {"eval": str(tiny_pairs)}, "merge": {"enabled": True},
                                                      "hub": {"repo_id": "someone/tiny-hdpo"}})
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    before = snapshot(tmp_path)
    env = {**os.environ, "HF_TOKEN": token, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([str(HDPO_TUNE), "run", str(job)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    # train, eval and merge succeed; the push stage cannot reach the Hub (offline) and fails with one line
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "error: Hub create_repo failed" in proc.stderr, proc.stderr[-3000:]
    run = tmp_path / "run"
    st = status(run)
    assert st["stage"] == "push" and st["state"] == "failed" and {"train", "merge"} <= set(st["stages_done"]), st
    # the CLI commands a user runs next on the same folder, with the token in the environment
    dry = run_cli("push", str(run), "--dry-run", env={"HF_TOKEN": token})
    assert dry.exit_code == 0 and "HF_TOKEN is set" in dry.output, dry.output
    push = run_cli("push", str(run), env={"HF_TOKEN": token})  # offline: fails at once, with a clear line
    assert push.exit_code == 1 and "error: Hub create_repo failed" in push.stderr, push.output
    merge = run_cli("merge", str(run), env={"HF_TOKEN": token})
    assert merge.exit_code == 0, merge.output

    written = {p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()}
    for expected in ("metrics.jsonl", "job.resolved.yaml", "status.json", "versions.json", "data_info.json",
                     "final/adapter_model.safetensors", "merged/README.md", "merged/model.safetensors",
                     "checkpoints/step-00000002/state.json", "checkpoints/step-00000002/trainable.safetensors"):
        assert expected in written, sorted(written)
    assert any(w.startswith("tensorboard/events.out.tfevents") for w in written)
    assert _files_holding(tmp_path, token) == []
    for text in (proc.stdout, proc.stderr, dry.output, push.output, merge.output, str(push.exception or "")):
        assert token not in text

    resolved = yaml.safe_load((run / "job.resolved.yaml").read_text())
    assert resolved["output"]["dir"] == str(run) and ".." not in resolved["output"]["dir"]
    assert resolved["model"]["trust_remote_code"] is False and resolved["model"]["allow_pickle"] is False
    assert changed_outside(before, snapshot(tmp_path), "run") == []  # not even tmp_path/elsewhere
    assert list(cwd.iterdir()) == []


@pytest.mark.parametrize("where", ["hub.token", "model.revision", "api_key"])
def test_token_in_the_spec_is_refused_without_echoing_it(tmp_path: Path, tiny_model_dir: Path, tiny_pairs: Path,
                                                         where: str) -> None:
    token = _token()
    section, _, key = where.rpartition(".")
    extra: dict[str, Any] = {section: {key: token}} if section else {}
    job = write_job(tmp_path, tiny_model_dir, tiny_pairs, steps=1, extra=extra)
    if not section:
        job.write_text(job.read_text() + f"{key}: {token}\n")
    before = snapshot(tmp_path)
    result = run_cli("run", str(job))
    assert result.exit_code == 2, result.output
    assert "HF_TOKEN environment variable" in result.stderr and where in result.stderr, result.stderr
    assert token not in result.output
    debug = run_cli("--debug", "run", str(job))  # with --debug the exception itself comes out
    assert debug.exception is not None and token not in str(debug.exception) and token not in repr(debug.exception)
    assert snapshot(tmp_path) == before  # refused before anything was written


def test_remote_code_is_not_run_by_default(tmp_path: Path, tiny_model_dir: Path,
                                                          tiny_pairs: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    marker = tmp_path / "REMOTE_CODE_RAN"
    config = json.loads((model / "config.json").read_text())
    config.update(model_type="customllama", architectures=["CustomModel"],
                  auto_map={"AutoConfig": "custom_code.CustomConfig", "AutoModelForCausalLM": "custom_code.CustomModel"})
    (model / "config.json").write_text(json.dumps(config))
    (model / "custom_code.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "class CustomConfig(LlamaConfig):\n    model_type = 'customllama'\n"
        "class CustomModel(LlamaForCausalLM):\n    config_class = CustomConfig\n")
    job = write_job(tmp_path, model, tiny_pairs, steps=1)
    result = run_cli("run", str(job))
    assert result.exit_code == 2, result.output
    assert "model.name_or_path" in result.stderr and "custom code" in result.stderr, result.stderr
    assert "Traceback" not in result.output
    assert not marker.exists()
    assert status(tmp_path / "run")["state"] == "failed"


class _Payload:
    """Unpickling this writes a file: what a malicious ``pytorch_model.bin`` could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.write_text, (self.marker, "pickle ran"))


def test_pickle_weights_are_refused_unless_allowed(tmp_path: Path, tiny_model_dir: Path, tiny_pairs: Path) -> None:
    from safetensors.torch import load_file

    marker = tmp_path / "PICKLE_RAN"
    evil = tmp_path / "evil_model"
    shutil.copytree(tiny_model_dir, evil)
    (evil / "model.safetensors").unlink()
    (evil / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
    result = run_cli("run", str(write_job(tmp_path / "a", evil, tiny_pairs, steps=1)))
    assert result.exit_code == 2, result.output
    assert "model.allow_pickle: true" in result.stderr and "safetensors" in result.stderr, result.stderr
    assert not marker.exists()

    # genuine pickle weights load once the spec allows them explicitly
    ok = tmp_path / "pickle_model"
    shutil.copytree(tiny_model_dir, ok)
    torch.save(load_file(str(ok / "model.safetensors")), ok / "pytorch_model.bin")
    (ok / "model.safetensors").unlink()
    refused = run_cli("run", str(write_job(tmp_path / "b", ok, tiny_pairs, steps=1)))
    assert refused.exit_code == 2 and "model.allow_pickle" in refused.stderr, refused.output
    allowed = run_cli("run", str(write_job(tmp_path / "c", ok, tiny_pairs, steps=1,
                                           extra={"model": {"allow_pickle": True}})))
    assert allowed.exit_code == 0, allowed.output
    assert (tmp_path / "c" / "run" / "final" / "adapter_model.safetensors").exists()
