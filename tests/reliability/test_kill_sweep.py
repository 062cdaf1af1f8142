"""Whole or absent (issue 23, point 1): the real console script is SIGKILLed right after the k-th file written,
renamed or removed by the artifact mechanism or an atomic write (``HDPO_KILL_AFTER``, see
``tests/reliability/faults/sitecustomize.py``), in every stage and in ``--force`` reruns.

After every kill: every artifact folder present (``final``, ``eval``, ``merged``, ``gguf``, ``onnx``, each
checkpoint) verifies against its manifest, the bookkeeping files parse, and what is left over has a name of
ours (``NAME.tmp``, ``NAME.old``). The next command reuses a whole artifact or rebuilds it (never "already done"
over a broken one), and ``push`` (to the stand-in Hub) refuses a missing or broken one and otherwise uploads
exactly the verified files.

The default chains pick, per stage, one kill point of each kind of operation (a file of the build fsynced, its
manifest, the rename aside, the rename into place, the removal of the old folder or a leftover) from the
operations one uninterrupted run performs (counted once, :func:`test_every_stage_performs_every_kind`); each
killed command is the next one's starting state. ``test_every_k`` (slow) kills every stage at every k.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from hdpo_core import artifact
from hdpo_core.checkpoint import list_checkpoints, verify_checkpoint
from service.runfolder.ownership import ARTIFACT_FOLDERS
from tests.reliability._jobs import status, write_job
from tests.reliability._proc import hdpo

pytestmark = pytest.mark.e2e  # every stage through the real console script, killed and rerun: `make test-e2e`

KINDS = ("write", "rename", "remove")
STAGE_FOLDERS = {"train": ("final", "checkpoints"), "eval": ("eval",), "merge": ("merged",), "export": ("gguf",)}
HUB_ENV = {"HF_TOKEN": "hf_test"}


def _job(folder: Path, model: Path, pairs: Path, *, onnx: bool = False) -> Path:
    tasks = folder / "tasks.jsonl"
    folder.mkdir(parents=True, exist_ok=True)
    tasks.write_text("".join(json.dumps({"prompt": f"Q: {a}+1=", "answer": f"#### {a + 1}"}) + "\n"
                             for a in range(2)))
    return write_job(folder, model, pairs, steps=2, save_every=1, extra={
        "eval": {"tasks": str(tasks), "n_samples": 1, "max_new_tokens": 2, "temperatures": [1.0],
                 "compare_reference": False},
        "merge": {"enabled": True},
        "export": {"onnx": {"enabled": onnx}, "gguf": {"enabled": True}},
        "hub": {"repo_id": "someone/tiny-hdpo"}})


def _ops(log: Path) -> list[tuple[str, str, str]]:
    """``(kind, path, stage)`` per operation; ``stage`` is the one the last status.json named."""
    out, stage = [], "start-up"
    for line in log.read_text(encoding="utf-8").splitlines() if log.exists() else []:
        _, kind, rest = line.split(" ", 2)
        path, _, recorded = rest.partition(" ")
        if recorded:
            stage = recorded.split(":")[0]
        out.append((kind, path, stage))
    return out


def check_whole(run: Path) -> None:
    """What a kill may leave: whole artifacts, parseable bookkeeping, and leftovers only under our names."""
    for name in ARTIFACT_FOLDERS:
        if name != "checkpoints" and os.path.lexists(run / name):
            assert artifact.verify(run / name) is None, (name, artifact.verify(run / name))
    for ckpt in list_checkpoints(run / "checkpoints"):
        assert verify_checkpoint(ckpt) is None, (ckpt, verify_checkpoint(ckpt))
    for name in ("status.json", ".hdpo-tune.json", "versions.json", "data_info.json"):
        if (run / name).exists():
            json.loads((run / name).read_text(encoding="utf-8"))
    yaml.safe_load((run / "job.resolved.yaml").read_text(encoding="utf-8"))
    ours = {n + s for n in ARTIFACT_FOLDERS for s in ("", artifact.TEMP_SUFFIX, artifact.ASIDE_SUFFIX)}
    assert {p.name for p in run.iterdir() if p.is_dir()} <= ours | {"tensorboard"}, sorted(run.iterdir())


def no_leftovers(run: Path) -> None:
    left = [p.name for p in run.iterdir() if p.name.endswith((artifact.TEMP_SUFFIX, artifact.ASIDE_SUFFIX))]
    left += [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".tmp-")] \
        if (run / "checkpoints").is_dir() else []
    assert left == [], left


def kill(tmp: Path, run: Path, point: str, *args: str, **env: str) -> list[tuple[str, str, str]]:
    """Run ``hdpo-tune ARGS`` killed at ``point`` (``K[:kind:match]``); check what it left; returns its ops."""
    log = tmp / f"ops-{len(list(tmp.glob('ops-*')))}.log"
    proc = hdpo(*args, HDPO_KILL_AFTER=point, HDPO_OP_LOG=str(log), **env)
    assert proc.returncode == -9, (point, args, proc.returncode, proc.stderr[-3000:])
    ops = _ops(log)
    _, kind, match = point.split(":", 2)
    assert ops and ops[-1][0] == kind and match in ops[-1][1], (point, ops[-3:])
    check_whole(run)
    return ops


def ok(*args: str, **env: str) -> str:
    proc = hdpo(*args, **env)
    assert proc.returncode == 0, (args, proc.stderr[-3000:])
    return proc.stderr + proc.stdout


def hub_matches(hub: Path, run: Path, subs: tuple[str, ...]) -> None:
    """The stand-in Hub holds exactly the verified files of ``merged/`` (root) and of each of ``subs``."""
    for sub, where in (("merged", hub), *((s, hub / s) for s in subs)):
        listed = artifact.read_manifest(run / sub)
        assert artifact.verify(run / sub) is None and listed
        for name, (size, digest) in listed.items():
            assert artifact.sha256_file(where / name) == digest and (where / name).stat().st_size == size, name


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, tiny_pairs: Path) -> Path:
    """One uninterrupted run of every stage (train, eval, merge, GGUF export, push) with its operations logged."""
    folder = tmp_path_factory.mktemp("kill-base")
    job = _job(folder, tiny_model_dir, tiny_pairs)
    ok("run", str(job), HDPO_OP_LOG=str(folder / "ops.log"), HDPO_FAKE_HUB=str(folder / "hub"), **HUB_ENV)
    check_whole(folder / "run")
    no_leftovers(folder / "run")
    return folder


def _copy(base: Path, tmp: Path) -> Path:
    shutil.copytree(base / "run", tmp / "run", symlinks=True)
    return tmp / "run"


def test_every_stage_performs_every_kind(base: Path) -> None:
    """The operations are counted once per stage: every stage builds with fsynced files, a manifest and a
    rename into place (the figures in docs/reliability.md)."""
    ops = _ops(base / "ops.log")
    for stage, folders in STAGE_FOLDERS.items():
        mine = [(k, p) for k, p, s in ops if s == stage]
        for folder in folders:
            assert any(k == "write" and f"/{folder}" in p for k, p in mine), (stage, folder)
            assert any(k == "write" and f"/{folder}" in p and p.endswith(artifact.MANIFEST) for k, p in mine)
            assert any(k == "rename" and f"/{folder}" in p for k, p in mine), (stage, folder)
    hub_matches(base / "hub", base / "run", ("gguf",))


def test_train_killed_everywhere_then_resumed_and_forced(tmp_path: Path, tiny_model_dir: Path,
                                                        tiny_pairs: Path) -> None:
    job = _job(tmp_path, tiny_model_dir, tiny_pairs)
    run, train = tmp_path / "run", ("run", str(job), "--only", "train")
    kill(tmp_path, run, "1:write:.tmp-step-00000001", *train)  # a checkpoint file fsynced, no manifest yet
    kill(tmp_path, run, "1:rename:checkpoints/step-00000001", *train)  # checkpoint 1 in place
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-00000001"]
    kill(tmp_path, run, "1:write:final.tmp/checksums.json", *train)  # final built, manifest written, not renamed
    assert not (run / "final").exists()
    kill(tmp_path, run, "1:rename:run/final", *train)  # final in place, the stage not yet recorded
    assert "train" not in status(run).get("stages_done", [])
    kill(tmp_path, run, "2:remove:final.old", *train)  # a rerun republishes final; killed removing the old one
    kill(tmp_path, run, "2:remove:checkpoints.old", *train, "--force")  # --force killed discarding checkpoints
    said = ok(*train)
    assert "resuming from" not in said  # the forced run's checkpoints were discarded whole: trained afresh
    assert artifact.verify(run / "final") is None and "train" in status(run)["stages_done"]
    no_leftovers(run)
    # recorded as done, but a file of final/ is damaged: never "already done" over it
    weights = run / "final" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])
    said = ok(*train)
    assert "recorded as done but final/ is not whole (adapter_model.safetensors is" in said, said
    assert artifact.verify(run / "final") is None


def test_eval_killed_then_rebuilt(tmp_path: Path, base: Path) -> None:
    run = _copy(base, tmp_path)
    job = base / "job.yaml"
    shutil.copy(job, tmp_path / "job.yaml")
    args = ("run", str(tmp_path / "job.yaml"), "--only", "eval")
    kill(tmp_path, run, "1:write:eval.tmp/results.json", *args, "--force")
    kill(tmp_path, run, "1:rename:eval.old", *args, "--force")  # the old report aside: no eval/ at all
    assert not (run / "eval").exists()
    ok(*args)
    assert artifact.verify(run / "eval") is None
    no_leftovers(run)
    ok("eval", str(run))  # `hdpo-tune eval RUN` replaces the run's eval/ the same way
    assert artifact.verify(run / "eval") is None
    no_leftovers(run)


def test_merge_killed_then_push_refuses_and_rebuild(tmp_path: Path, base: Path) -> None:
    run, hub = _copy(base, tmp_path), tmp_path / "hub"
    kill(tmp_path, run, "3:write:merged.tmp/", "merge", str(run), "--force")
    kill(tmp_path, run, "1:write:merged.tmp/checksums.json", "merge", str(run), "--force")
    kill(tmp_path, run, "1:rename:merged.old", "merge", str(run), "--force")  # between the two renames
    assert not (run / "merged").exists() and (run / "merged.old").is_dir()
    kill(tmp_path, run, "1:remove:merged.old", "merge", str(run))  # the next command killed cleaning leftovers
    proc = hdpo("push", str(run), HDPO_FAKE_HUB=str(hub), **HUB_ENV)
    assert proc.returncode == 2 and "has no model: run `hdpo-tune merge" in proc.stderr, proc.stderr[-2000:]
    assert not hub.exists()
    said = ok("merge", str(run))
    assert "already up to date" not in said and artifact.verify(run / "merged") is None
    no_leftovers(run)
    ok("push", str(run), HDPO_FAKE_HUB=str(hub), **HUB_ENV)
    hub_matches(hub, run, ("gguf",))


def test_export_killed_then_push_refuses_and_rebuild(tmp_path: Path, base: Path) -> None:
    run, hub = _copy(base, tmp_path), tmp_path / "hub"
    kill(tmp_path, run, "2:write:gguf.tmp/", "export", str(run), "--force")
    kill(tmp_path, run, "1:rename:gguf.old", "export", str(run), "--force")
    assert not (run / "gguf").exists()
    proc = hdpo("push", str(run), HDPO_FAKE_HUB=str(hub), **HUB_ENV)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"{run / 'gguf'} is missing but the job exports it: rerun `hdpo-tune export {run}`" in proc.stderr
    assert not hub.exists()
    said = ok("export", str(run))
    assert "already exported" not in said and artifact.verify(run / "gguf") is None
    # a torn report: push refuses in one line, the next export rebuilds (never a traceback)
    (run / "gguf" / "validation.json").write_text("{broken")
    proc = hdpo("push", str(run), HDPO_FAKE_HUB=str(hub), **HUB_ENV)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert f"{run / 'gguf'} is not whole (validation.json is" in proc.stderr and not hub.exists()
    kill(tmp_path, run, "1:remove:gguf.old", "export", str(run))  # rebuilt, killed removing the torn one
    ok("push", str(run), HDPO_FAKE_HUB=str(hub), **HUB_ENV)  # the new gguf/ is in place and whole
    hub_matches(hub, run, ("gguf",))
    no_leftovers(run)


STAGE_COMMANDS = {  # stage -> (command, its artifact folders); {run} and {job} are filled in
    "train": (("run", "{job}", "--only", "train", "--force"), ("final",)),
    "eval": (("run", "{job}", "--only", "eval", "--force"), ("eval",)),
    "merge": (("merge", "{run}", "--force"), ("merged",)),
    "export": (("export", "{run}", "--force"), ("onnx", "gguf")),
}


@pytest.mark.slow
@pytest.mark.parametrize("stage", sorted(STAGE_COMMANDS))
def test_every_k(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, tiny_pairs: Path,
                 stage: str) -> None:
    """Every k: the stage's ``--force`` rerun is counted once, then killed after each of its operations in turn;
    after each kill the plain command completes with whole artifacts and push uploads exactly them."""
    start = tmp_path_factory.mktemp(f"every-{stage}")
    job = _job(start, tiny_model_dir, tiny_pairs, onnx=True)
    ok("run", str(job), "--only", "train", "--only", "eval", "--only", "merge", "--only", "export")
    command, folders = STAGE_COMMANDS[stage]
    fill = {"{job}": str(job), "{run}": str(start / "run")}
    args = [fill.get(a, a) for a in command]
    ok(*args, HDPO_OP_LOG=str(start / "count.log"))
    total = len(_ops(start / "count.log"))
    for k in range(1, total + 1):
        shutil.rmtree(start / "work", ignore_errors=True)
        shutil.copytree(start / "run", start / "work" / "run", symlinks=True)
        run = start / "work" / "run"
        shutil.copy(job, start / "work" / "job.yaml")  # output.dir "run" is relative to the job file
        fill = {"{job}": str(start / "work" / "job.yaml"), "{run}": str(run)}
        here = [fill.get(a, a) for a in command]
        proc = hdpo(*here, HDPO_KILL_AFTER=str(k))
        assert proc.returncode == -9, (k, proc.stderr[-2000:])
        check_whole(run)
        ok(*[a for a in here if a != "--force"])
        for folder in folders:
            assert artifact.verify(run / folder) is None, (k, folder)
        no_leftovers(run)
        hub = start / "work" / "hub"
        ok("push", str(run), HDPO_FAKE_HUB=str(hub), **HUB_ENV)
        hub_matches(hub, run, ("onnx", "gguf"))
