"""Run folder bookkeeping: atomic writes, status, versions, ownership check, path guard."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from hdpo_core.errors import InputError
from hdpo_core.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from service.runfolder.record import RunDir, git_commit, inside, training_fingerprint
from service.spec.job import load_spec, spec_to_dict

TOKEN = "hf_" + "Zz9" * 10


def _spec_dict(tmp_path: Path, **train: object) -> dict:
    job = tmp_path / "job.yaml"
    data = {"model": {"name_or_path": "./base"}, "data": {"train": "./p.jsonl"}, "output": {"dir": "./run"},
            "train": {"max_steps": 10, **train}}
    job.write_text(yaml.safe_dump(data))
    return spec_to_dict(load_spec(job))


def test_atomic_writes_replace_whole_files_and_leave_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_text(tmp_path / "t.txt", "héllo")
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert json.loads(target.read_text()) == {"a": 1}
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin", "f.json", "t.txt"]


def test_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "status.json"
    atomic_write_json(target, {"step": 1})

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        atomic_write_json(target, {"step": 2})
    assert json.loads(target.read_text()) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]  # the temp file was removed


def test_rundir_object_touches_nothing(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.check_compatible(_spec_dict(tmp_path))
    assert run.read_status() is None and run.read_resolved_spec() is None
    assert not (tmp_path / "run").exists()


def test_status_round_trip_and_redaction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "env-secret-abcdef")
    run = RunDir(tmp_path / "run")
    run.write_status("train", "running", step=3, total_steps=10, loss=0.5)
    status = run.read_status()
    assert status is not None
    assert {k: status[k] for k in ("stage", "state", "step", "total_steps", "error", "loss")} == {
        "stage": "train", "state": "running", "step": 3, "total_steps": 10, "error": None, "loss": 0.5}
    assert status["updated_at"].endswith("+00:00")
    run.write_status("push", "failed", error=f"401 for token {TOKEN} / env-secret-abcdef")
    text = (tmp_path / "run" / "status.json").read_text()
    assert TOKEN not in text and "env-secret-abcdef" not in text and "hf_***" in text
    with pytest.raises(ValueError, match="state must be one of"):
        run.write_status("train", "done")  # type: ignore[arg-type]


def test_resolved_spec_and_versions(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    spec = _spec_dict(tmp_path)
    run.write_resolved_spec(spec)
    assert run.read_resolved_spec() == spec
    versions = json.loads(run.write_versions().read_text())
    for key in ("python", "torch", "transformers", "peft", "accelerate", "hdpo-tune", "git"):
        assert key in versions
    assert versions["torch"].startswith("2.")


def test_git_commit_known_and_unknown(tmp_path: Path) -> None:
    assert git_commit(tmp_path) is None  # not a repository: no error
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True, env=env)
    subprocess.run(["git", "-C", str(tmp_path), "commit", "-q", "--allow-empty", "-m", "x"], check=True, env=env)
    info = git_commit(tmp_path)
    assert info is not None and len(info["commit"]) == 40 and info["dirty"] is False


def test_check_compatible_ignores_cadence_and_other_stages(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    spec = _spec_dict(tmp_path)
    run.write_resolved_spec(spec)
    same = _spec_dict(tmp_path, log_every=5, save_every=2, eval_every=None, keep_checkpoints=4)
    same["hub"] = {"repo_id": "me/x"}
    same["output"] = {"dir": "/elsewhere"}
    assert training_fingerprint(same) == training_fingerprint(spec)
    run.check_compatible(same)


def test_check_compatible_refuses_a_different_job(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.write_resolved_spec(_spec_dict(tmp_path))
    other = _spec_dict(tmp_path, learning_rate=2e-6, seed=3)
    with pytest.raises(InputError) as info:
        run.check_compatible(other)
    msg = info.value.message
    assert msg.startswith(f"output.dir: {tmp_path / 'run'} already holds a different job's run (")
    assert "train.learning_rate: 1e-06 -> 2e-06" in msg and "train.seed: 0 -> 3" in msg
    assert "pick a new output.dir, or pass --force" in msg
    run.check_compatible(other, force=True)


def test_inside_guards_against_traversal(tmp_path: Path) -> None:
    root = tmp_path / "run"
    root.mkdir()
    assert inside("ckpt/step-1", root) == root.resolve() / "ckpt" / "step-1"
    assert inside(root / "a", root) == root.resolve() / "a"
    for bad in ("../x", "a/../../x", "/etc/passwd"):
        with pytest.raises(InputError, match="escapes the run folder"):
            inside(bad, root)
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(InputError, match="escapes the run folder"):
        inside("link/x", root)
    with pytest.raises(InputError):
        RunDir(root).file("../../status.json")
