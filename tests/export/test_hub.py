"""Hub push with an injected recording client (HF_HUB_OFFLINE=1 is set in conftest: no real call)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hdpo_core.artifact import write_manifest
from hdpo_core.errors import InputError, RunError
from service.cli import app
from service.stages.ship import merge_run, push_run
from tests.export.conftest import write_spec

TOKEN = "hf_PLANTEDtoken0123456789"


def _http_error(status: int):
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils import httpx

    request = httpx.Request("POST", "https://huggingface.co/api/models/me/tiny-hdpo/commit/main")
    return HfHubHTTPError(f"{status} Server Error", response=httpx.Response(status, request=request))


@dataclass
class FakeHub:
    """Records every call; ``fail`` maps a method name to errors raised (in order) before it succeeds."""

    private: bool = True
    fail: dict[str, list[Exception]] = field(default_factory=dict)
    calls: list[tuple[str, dict]] = field(default_factory=list)

    def _call(self, name: str, **kwargs):
        self.calls.append((name, kwargs))
        if self.fail.get(name):
            raise self.fail[name].pop(0)

    def create_repo(self, repo_id, *, private, repo_type, exist_ok):
        self._call("create_repo", repo_id=repo_id, private=private, repo_type=repo_type, exist_ok=exist_ok)

    def repo_info(self, repo_id, *, repo_type):
        self._call("repo_info", repo_id=repo_id)
        return type("Info", (), {"private": self.private})()

    def create_branch(self, repo_id, *, branch, repo_type, exist_ok):
        self._call("create_branch", repo_id=repo_id, branch=branch, exist_ok=exist_ok)

    def upload_folder(self, **kwargs):
        files = sorted(
            p.relative_to(kwargs["folder_path"]).as_posix()
            for p in Path(kwargs["folder_path"]).rglob("*")
            if p.is_file()
        )
        self._call("upload_folder", **kwargs, files=files)
        return type("CommitInfo", (), {"pr_revision": "refs/pr/7" if kwargs["create_pr"] else None})()

    def uploads(self):
        return [kw for name, kw in self.calls if name == "upload_folder"]


@pytest.fixture()
def shipped(llama_run, monkeypatch) -> Path:
    """A run with a real merged/ and a stand-in onnx/ folder."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    merge_run(llama_run, log=lambda _: None)
    onnx = llama_run / "onnx"
    onnx.mkdir()
    (onnx / "hdpo_onnx.json").write_text("{}")
    (onnx / "model.onnx").write_bytes(b"onnx")
    (onnx / "validation.json").write_text('{"passed": true}')
    write_manifest(onnx)  # as the export publishes it
    return llama_run


def test_push_uploads_merged_and_onnx_with_retry(shipped, capsys):
    hub = FakeHub(fail={"upload_folder": [_http_error(503)]})
    sleeps: list[float] = []
    push_run(shipped, api=hub, sleep=sleeps.append)
    names = [n for n, _ in hub.calls]
    assert names == ["create_repo", "repo_info", "upload_folder", "upload_folder", "upload_folder"]
    assert hub.calls[0][1] == {
        "repo_id": "me/tiny-hdpo",
        "private": True,
        "repo_type": "model",
        "exist_ok": True,
    }
    assert sleeps == [2.0]  # one 503, one backoff, then success
    root, _, onnx = hub.uploads()
    assert root["path_in_repo"] is None and onnx["path_in_repo"] == "onnx"
    assert {"model.safetensors", "config.json", "README.md", "provenance.json", "tokenizer.json"} <= set(
        root["files"]
    )
    assert onnx["files"] == ["checksums.json", "hdpo_onnx.json", "model.onnx", "validation.json"]
    assert root["commit_message"] == "hdpo-tune: upload run run" and root["revision"] is None
    out = capsys.readouterr()
    assert "retrying in 2s" in out.out and "HTTP 503" in out.out
    _assert_no_token(shipped, out.out + out.err)


@pytest.mark.parametrize("report", [None, '{"passed": false}', "{broken"])
def test_push_refuses_an_export_that_did_not_pass_validation(shipped, report):
    """A failed or unchecked ONNX export is neither uploaded nor silently left out: one line, nothing pushed."""
    marker = shipped / "onnx" / "validation.json"
    marker.unlink()
    if report is not None:
        marker.write_text(report)
    write_manifest(marker.parent)  # whole, but not validated
    hub = FakeHub()
    with pytest.raises(InputError, match=r"onnx holds an export that has not passed validation .*hdpo-tune export"):
        push_run(shipped, api=hub, log=lambda _: None)
    assert hub.calls == []


@pytest.mark.parametrize("damage", ["truncate", "remove", "add", "no-manifest"])
def test_push_refuses_an_artifact_that_is_not_whole(shipped, damage):
    """A folder that does not match its manifest (a killed build, a damaged disk) is never uploaded: one line
    naming the folder, what is wrong and the command that rebuilds it."""
    onnx = shipped / "onnx"
    {"truncate": lambda: (onnx / "model.onnx").write_bytes(b"on"),
     "remove": lambda: (onnx / "hdpo_onnx.json").unlink(),
     "add": lambda: (onnx / "stray.bin").write_bytes(b"x"),
     "no-manifest": lambda: (onnx / "checksums.json").unlink()}[damage]()
    hub = FakeHub()
    with pytest.raises(InputError, match=rf"{onnx} is not whole \(.+\): rerun `hdpo-tune export {shipped}`"):
        push_run(shipped, api=hub, log=lambda _: None)
    assert hub.calls == []


def test_push_to_branch_and_pr(shipped):
    write_spec(
        shipped,
        hub={
            "repo_id": "me/tiny-hdpo",
            "revision": "run-42",
            "create_pr": True,
            "commit_message": "H-DPO run 42",
        },
    )
    hub = FakeHub()
    summary = push_run(shipped, api=hub, log=lambda _: None)
    assert summary["pr_revision"] == "refs/pr/7" and summary["uploaded"] == [".", "onnx"]
    assert ("create_branch", {"repo_id": "me/tiny-hdpo", "branch": "run-42", "exist_ok": True}) in hub.calls
    first, second = hub.uploads()
    assert (first["revision"], first["create_pr"]) == ("run-42", True)
    assert (second["revision"], second["create_pr"]) == ("refs/pr/7", False)  # same PR for onnx/
    assert first["commit_message"] == second["commit_message"] == "H-DPO run 42"


def test_privacy_mismatch_is_refused(shipped):
    hub = FakeHub(private=False)
    with pytest.raises(
        InputError, match=r"hub\.private: .*private repo but me/tiny-hdpo already exists and is public"
    ):
        push_run(shipped, api=hub, log=lambda _: None)
    assert not hub.uploads()


def test_persistent_5xx_gives_clear_error_and_4xx_is_not_retried(shipped):
    hub = FakeHub(fail={"create_repo": [_http_error(502)] * 4})
    sleeps: list[float] = []
    with pytest.raises(RunError, match=r"create_repo failed after 4 attempts: .*HTTP 502"):
        push_run(shipped, api=hub, sleep=sleeps.append, log=lambda _: None)
    assert sleeps == [2.0, 4.0, 8.0]
    hub = FakeHub(fail={"upload_folder": [_http_error(403)]})
    with pytest.raises(RunError, match=r"upload_folder merged failed: .*HTTP 403"):
        push_run(shipped, api=hub, sleep=sleeps.append, log=lambda _: None)
    assert len(hub.uploads()) == 1


def test_missing_token_is_one_clear_error(shipped, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    result = CliRunner().invoke(app, ["push", str(shipped)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: HF_TOKEN is not set: export a Hugging Face write token as HF_TOKEN to push (never in the spec)"
    ]


def test_dry_run_lists_files_and_calls_nothing(shipped):
    result = CliRunner().invoke(app, ["push", str(shipped), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "would push to me/tiny-hdpo@main, private" in result.output
    assert "  model.safetensors" in result.output and "  onnx/model.onnx" in result.output
    _assert_no_token(shipped, result.output)


def test_real_client_is_blocked_offline(shipped):
    """Without an injected client the real HfApi is used; HF_HUB_OFFLINE=1 stops it before any network."""
    with pytest.raises(RunError, match=r"Hub create_repo failed: OfflineModeIsEnabled"):
        push_run(shipped, sleep=lambda _: None, log=lambda _: None)


def _assert_no_token(run: Path, output: str) -> None:
    assert TOKEN not in output
    for f in run.rglob("*"):
        if f.is_file():
            assert TOKEN.encode() not in f.read_bytes(), f
    assert json.loads((run / "merged" / "provenance.json").read_text())["run"] == "run"
