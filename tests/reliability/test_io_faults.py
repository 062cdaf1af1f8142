"""Every I/O fault is one line (issue 13, point 4): disk full, quota, read-only, permission denied at start-up,
in a checkpoint, in the final model, in the eval report, the merge, the export and the push. The real console script runs with a
fault injected at the writer (``tests/reliability/faults``; safetensors' error type is not an ``OSError``, as on
a real full disk). Each: one line naming the path, exit 1 (2 when the user's folder is the cause),
``status.json`` failed with the same line, earlier checkpoints intact, no temporary leftovers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.reliability._jobs import checkpoint_dirs, status, write_job
from tests.reliability._proc import hdpo, one_error

pytestmark = pytest.mark.e2e  # about 20 real console-script runs with faults injected: `make test-e2e`


def _no_temporaries(run: Path) -> None:
    left = [p.relative_to(run).as_posix() for p in run.rglob("*")
            if p.name.endswith(".tmp") or p.name.startswith(".tmp-") or ".tmp." in p.name]
    assert left == [], left


def _failed_with(run: Path, line: str, stage: str) -> None:
    st = status(run)
    assert st["state"] == "failed" and st["stage"] == stage, st
    assert line == f"error: {st['error']}", (line, st["error"])


@pytest.mark.parametrize(("code", "exit_code", "words"), [("ENOSPC", 1, "No space left on device"),
                                                          ("EACCES", 2, "Permission denied")])
def test_start_up(tmp_path: Path, tiny_model_dir: Path, tiny_pairs: Path, code: str, exit_code: int,
                  words: str) -> None:
    job = write_job(tmp_path, tiny_model_dir, tiny_pairs, steps=2)
    run = tmp_path / "run"
    proc = hdpo("run", str(job), fault=f"open:1:{code}:job.resolved.yaml")
    assert proc.returncode == exit_code, proc.stderr[-3000:]
    line = one_error(proc)
    assert line.startswith("error: start-up: cannot write ") and str(run) in line and words in line, line
    _failed_with(run, line, "start-up")
    _no_temporaries(run)
    assert not (run / "job.resolved.yaml").exists()


def test_checkpoint_disk_full_then_resume(tmp_path: Path, tiny_model_dir: Path, tiny_pairs: Path) -> None:
    job = write_job(tmp_path, tiny_model_dir, tiny_pairs, steps=3, save_every=1)
    run = tmp_path / "run"
    proc = hdpo("run", str(job), fault="safetensors:2:ENOSPC")
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = one_error(proc)
    assert line.startswith("error: train: cannot write ") and str(run) in line, line
    assert "No space left on device" in line and "free disk space" in line, line
    _failed_with(run, line, "train")
    assert checkpoint_dirs(run) == ["step-00000001"]
    _no_temporaries(run)
    again = hdpo("run", str(job))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from step-00000001" in again.stderr + again.stdout


def test_final_model_quota(tmp_path: Path, tiny_model_dir: Path, tiny_pairs: Path) -> None:
    job = write_job(tmp_path, tiny_model_dir, tiny_pairs, steps=3, save_every=1)
    run = tmp_path / "run"
    proc = hdpo("run", str(job), fault="safetensors:3:EDQUOT")  # saves: step 1, step 2, final
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = one_error(proc)
    assert "cannot write the final model to" in line and str(run / "final") in line and "quota" in line, line
    _failed_with(run, line, "train")
    assert checkpoint_dirs(run) == ["step-00000001", "step-00000002"]
    assert not (run / "final").exists()
    _no_temporaries(run)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, tiny_pairs: Path) -> Path:
    folder = tmp_path_factory.mktemp("trained")
    job = write_job(folder, tiny_model_dir, tiny_pairs, steps=2, save_every=1)
    proc = hdpo("run", str(job))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder / "run"


def _copy(trained: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    return run


def test_eval_report_disk_full(tmp_path: Path, trained: Path, tiny_model_dir: Path, tiny_pairs: Path) -> None:
    run = _copy(trained, tmp_path)
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"prompt": f"Q: {a}+1=", "answer": f"#### {a + 1}"}) + "\n" for a in range(2)))
    job = write_job(tmp_path, tiny_model_dir, tiny_pairs, steps=2, save_every=1,
                    extra={"eval": {"tasks": str(tasks), "n_samples": 1, "max_new_tokens": 2, "temperatures": [1.0],
                                    "compare_reference": False}})
    before = (run / "final" / "adapter_model.safetensors").read_bytes()
    proc = hdpo("run", str(job), fault="open:1:ENOSPC:eval.tmp")
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = one_error(proc)
    assert line.startswith("error: eval: cannot write ") and "eval.tmp" in line and "No space" in line, line
    _failed_with(run, line, "eval")
    assert "train" in status(run)["stages_done"] and not (run / "eval").exists()
    assert (run / "final" / "adapter_model.safetensors").read_bytes() == before
    _no_temporaries(run)


def test_merge_disk_full(tmp_path: Path, trained: Path) -> None:
    run = _copy(trained, tmp_path)
    proc = hdpo("merge", str(run), fault="safetensors:1:ENOSPC")
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = one_error(proc)
    assert line.startswith("error: merge: cannot write ") and str(run) in line and "No space" in line, line
    _failed_with(run, line, "merge")
    assert not (run / "merged").exists()
    _no_temporaries(run)
    ok = hdpo("merge", str(run))
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert (run / "merged" / "config.json").is_file() and status(run)["state"] == "succeeded"


@pytest.mark.parametrize("match", ["model.onnx", "validation.json"])
def test_export_disk_full(tmp_path: Path, trained: Path, match: str) -> None:
    """The ONNX writer (torch's exporter) and the validation report: no half-written or unchecked ``onnx/`` is
    left to be pushed; the retry exports and validates."""
    run = _copy(trained, tmp_path)
    proc = hdpo("export", str(run), fault=f"open:1:ENOSPC:{match}")
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = one_error(proc)
    assert line.startswith(f"error: export: cannot write {run / 'onnx'}") and match in line, line
    assert "No space left on device" in line and "free disk space" in line, line
    _failed_with(run, line, "export")
    assert not (run / "onnx").exists() and (run / "merged" / "model.safetensors").is_file()
    _no_temporaries(run)
    ok = hdpo("export", str(run))
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert json.loads((run / "onnx" / "validation.json").read_text())["passed"] is True


@pytest.fixture(scope="module")
def pushed(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, tiny_pairs: Path) -> Path:
    """A whole job (train, merge, push) through the console script, pushed to a stand-in Hub folder."""
    folder = tmp_path_factory.mktemp("pushed")
    job = write_job(folder, tiny_model_dir, tiny_pairs, steps=2,
                    extra={"merge": {"enabled": True}, "hub": {"repo_id": "someone/tiny-hdpo"}})
    proc = hdpo("run", str(job), HF_TOKEN="hf_test", HDPO_FAKE_HUB=str(folder / "hub"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert set(status(folder / "run")["stages_done"]) == {"train", "merge", "push"}
    return folder


def _outputs(run: Path) -> dict[Path, int]:
    """Every file of the run but its bookkeeping (status, lock): path -> mtime."""
    return {p: p.stat().st_mtime_ns for p in run.rglob("*")
            if p.is_file() and p.name not in ("status.json", ".hdpo-tune.lock", ".hdpo-tune.json")}


def test_push_read_fault(tmp_path: Path, pushed: Path) -> None:
    """An I/O error reading a file being uploaded is one line naming that file (not a Hub error, not retried);
    the push writes nothing into the run folder but its status; the retry uploads the same files."""
    run = _copy(pushed / "run", tmp_path)
    weights = run / "merged" / "model.safetensors"
    hub = tmp_path / "hub"
    before = _outputs(run)
    proc = hdpo("push", str(run), fault="read:1:EIO:merged/model.safetensors", HF_TOKEN="hf_test",
                HDPO_FAKE_HUB=str(hub))
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = one_error(proc)
    assert line == (f"error: push: cannot read {weights} (Input/output error); check that file and its disk, "
                    "then rerun the same command"), line
    _failed_with(run, line, "push")
    assert _outputs(run) == before
    ok = hdpo("push", str(run), HF_TOKEN="hf_test", HDPO_FAKE_HUB=str(hub))
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert (hub / "model.safetensors").read_bytes() == weights.read_bytes()
    assert (hub / "model.safetensors").read_bytes() == (pushed / "hub" / "model.safetensors").read_bytes()
    assert status(run)["state"] == "succeeded"
