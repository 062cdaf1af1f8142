"""The real image, through the container engine (issue 14): what `docker run hdpo-tune job.yaml` users get.

`make test-container` prepares podman, builds the CPU image and runs this file with HDPO_IMAGE set; without it
every test here is skipped. Each check goes through `podman run` of the built image: the help, a bad job, a
CI-sized quickstart (train, eval, merge, ONNX export, then onnxruntime generation), a stop during training and
its resume, unwritable job folders, and the token passed with `-e HF_TOKEN`.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import string
from pathlib import Path

import pytest
import yaml

from tests.container._engine import (
    ENGINE,
    GID,
    IMAGE,
    UID,
    demo_workdir,
    engine,
    files_holding,
    run_args,
    running,
    status,
    wait_for,
)

pytestmark = [
    pytest.mark.skipif(not IMAGE, reason="no image to test: `make test-container` builds one and sets HDPO_IMAGE"),
    pytest.mark.skipif(bool(IMAGE) and shutil.which(ENGINE) is None, reason=f"{ENGINE} is not installed"),
]


def _lines(proc: object) -> list[str]:
    out = f"{getattr(proc, 'stdout', '')}{getattr(proc, 'stderr', '')}"
    return [line for line in out.splitlines() if line.strip()]


def test_no_arguments_prints_the_help() -> None:
    out = engine("run", "--rm", "--network=none", IMAGE)
    assert out.returncode == 0, out.stderr
    assert "Usage" in out.stdout and " run " in out.stdout and " validate " in out.stdout


def test_a_bad_job_is_one_line_and_exit_2(tmp_path: Path) -> None:
    work = demo_workdir(tmp_path, steps=4, ship=False)
    spec = yaml.safe_load((work / "job.yaml").read_text(encoding="utf-8"))
    spec["train"]["max_stpes"] = spec["train"].pop("max_steps")
    (work / "job.yaml").write_text(yaml.safe_dump(spec), encoding="utf-8")
    out = engine(*run_args(work, extra=("--rm",)), "/work/job.yaml")
    assert out.returncode == 2, out.stdout + out.stderr
    lines = _lines(out)
    assert len(lines) == 1 and "max_stpes" in lines[0] and "Traceback" not in lines[0], lines
    assert not (work / "runs").exists()


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """The CI-sized quickstart run once in the image as UID with a fresh HF_TOKEN: (job folder, token, output)."""
    work = demo_workdir(tmp_path_factory.mktemp("shipped"), steps=8, ship=True)
    token = "hf_" + "".join(random.Random().choice(string.ascii_letters + string.digits) for _ in range(34))
    out = engine(*run_args(work, env={"HF_TOKEN": token}, extra=("--rm",)), "/work/job.yaml")
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    return work, token, out.stdout + out.stderr


def test_quickstart_trains_evaluates_merges_and_exports(shipped: tuple[Path, str, str]) -> None:
    work, _, output = shipped
    run = work / "runs" / "job"
    assert status(run)["state"] == "succeeded", status(run)
    assert len((run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()) == 8
    assert list((run / "final").glob("*.safetensors"))
    res = json.loads((run / "eval" / "results.json").read_text(encoding="utf-8"))
    for side in ("policy", "reference"):
        (at_t1,) = res["sampling"][side].values()  # one temperature, 1.0
        assert at_t1["temperature"] == 1.0 and 0.0 <= at_t1["accuracy"] <= 1.0, res["sampling"]
    assert (run / "eval" / "sampling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((run / "merged").glob("*.safetensors"))
    validation = json.loads((run / "onnx" / "validation.json").read_text(encoding="utf-8"))
    assert (run / "onnx" / "model.onnx").is_file() and validation["passed"], output[-2000:]


def test_the_run_folder_belongs_to_the_calling_user(shipped: tuple[Path, str, str]) -> None:
    work, _, _ = shipped
    wrong = [str(p) for p in [work / "runs", *(work / "runs").rglob("*")]
             if (p.lstat().st_uid, p.lstat().st_gid) != (UID, GID)]
    assert not wrong, f"not owned by {UID}:{GID}: {wrong[:10]}"


def test_the_token_passed_with_e_is_in_no_file(shipped: tuple[Path, str, str]) -> None:
    work, token, output = shipped
    assert token not in output
    assert files_holding([work, work.parent / "hf-cache"], token) == []


def test_the_onnx_export_generates_in_the_image(shipped: tuple[Path, str, str]) -> None:
    work, _, _ = shipped
    out = engine(*run_args(work, extra=("--rm",)), "generate", "--onnx", "/work/runs/job/onnx",
                 "--prompt", "Q: Tom has 3 apples and buys 4 more. How many apples?\nA:", "--max-new-tokens", "16")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip(), out.stderr[-2000:]


def test_stop_during_training_checkpoints_and_a_second_run_resumes(tmp_path: Path) -> None:
    steps = 100
    work = demo_workdir(tmp_path, steps=steps, ship=False)
    run = work / "runs" / "job"
    name = f"hdpo-stop-test-{os.getpid()}"
    engine("rm", "-f", name, timeout=120)
    try:
        started = engine(*run_args(work, name=name, extra=("-d",)), "/work/job.yaml", timeout=300)
        assert started.returncode == 0, started.stderr
        wait_for(lambda: status(run).get("stage") == "train" and (status(run).get("step") or 0) >= 2,
                 lambda: running(name), "training step 2")
        stopped = engine("stop", "-t", "600", name, timeout=900)
        assert stopped.returncode == 0, stopped.stderr
        code = engine("wait", name, timeout=300).stdout.strip()
        logs = engine("logs", name, timeout=120)
        st = status(run)
        assert code == "130", (code, (logs.stdout + logs.stderr)[-3000:])
        assert st["state"] == "interrupted" and st["stage"] == "train", st
        assert "stopped by signal 15 after step" in st["error"], st
        stopped_at = int(st["error"].split("after step ")[1].split(";")[0])
        assert 2 <= stopped_at < steps, st
        # exactly the stop's checkpoint (save_every is far beyond max_steps), complete
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [f"step-{stopped_at:08d}"]
        state = json.loads((run / "checkpoints" / f"step-{stopped_at:08d}" / "state.json").read_text(encoding="utf-8"))
        assert state["step"] == stopped_at
    finally:
        engine("rm", "-f", name, timeout=120)
    out = engine(*run_args(work, extra=("--rm",)), "/work/job.yaml")
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    assert status(run)["state"] == "succeeded", status(run)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["step"] for r in records] == list(range(1, steps + 1)), f"stopped at {stopped_at}"


@pytest.mark.parametrize("how", ["read-only mount", "folder without write permission"])
def test_an_unwritable_job_folder_is_one_clear_line(tmp_path: Path, how: str) -> None:
    work = demo_workdir(tmp_path, steps=4, ship=False)
    if how == "folder without write permission":
        work.chmod(0o555)
    try:
        out = engine(*run_args(work, ro=how == "read-only mount", extra=("--rm",)), "/work/job.yaml")
    finally:
        work.chmod(0o755)
    lines = _lines(out)
    assert out.returncode == 2, lines
    assert len(lines) == 1 and "/work/runs/job" in lines[0] and "Traceback" not in lines[0], lines
    assert not (work / "runs").exists()


def test_bubblewrap_sandboxes_inside_the_container_with_systempaths_unconfined() -> None:
    """The `code` verifier's sandbox needs a fresh /proc, which rootful podman allows only with
    `--security-opt systempaths=unconfined` (docs/deploy.md)."""
    out = engine("run", "--rm", "--network=none", "--user", f"{UID}:{GID}", "--security-opt",
                 "systempaths=unconfined", "--entrypoint", "bwrap", IMAGE, "--ro-bind", "/", "/", "--proc", "/proc",
                 "--dev", "/dev", "--unshare-all", "--die-with-parent", "python3", "-c", "print('sandboxed')")
    assert out.returncode == 0 and out.stdout.strip() == "sandboxed", out.stderr


# hdpo-tune serve: its container check goes here (start the image detached with `run_args(work, name=...,
# extra=("-d", "-p", "127.0.0.1:PORT:PORT"))`, poll it with `wait_for`, remove it in a `finally`).


def _serve_security_options() -> list[str]:
    """The ``--security-opt`` options of the container command docs/service.md gives for ``serve``."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "service.md").read_text(encoding="utf-8")
    block = doc.split("**Container**", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    command = block.replace("\\\n", " ").strip().splitlines()[0].split()
    return [b for a, b in zip(command, command[1:], strict=False) if a == "--security-opt"]


def test_the_documented_serve_command_lets_bubblewrap_start() -> None:
    """A served job's code verifier refuses to run without its sandbox (and a request cannot lift that), so
    the container command docs/service.md gives must let bubblewrap start: run it with those options."""
    options = _serve_security_options()
    assert options, "docs/service.md's serve command has no --security-opt"
    flags = [x for opt in options for x in ("--security-opt", opt)]
    out = engine("run", "--rm", "--network=none", "--user", f"{UID}:{GID}", *flags, "--entrypoint", "bwrap", IMAGE,
                 "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "--unshare-all", "--die-with-parent",
                 "python3", "-c", "print('sandboxed')")
    assert out.returncode == 0 and out.stdout.strip() == "sandboxed", out.stderr
