"""The run folder is not a path to follow (issue 23, section 2).

A finished run's folder is copied and one entry where hdpo-tune keeps its own file or folder is replaced by a
link to a folder or file *outside* the run (or by a FIFO). Every command that opens the folder (``run`` to
resume, ``run --force``, ``merge``, ``export``, ``push``, ``eval RUN``) must stop with exit 2 and one line naming
the entry, and nothing outside the run folder may change: the outside tree is snapshotted (sizes, mtimes,
contents) before and compared after. The real console script runs the seen cases; the rest go through the
same CLI in-process.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest

from service.runfolder import ownership
from tests.reliability._jobs import run_cli, snapshot, write_job
from tests.reliability._proc import hdpo


@pytest.fixture(scope="module")
def done_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, tiny_pairs: Path) -> Path:
    """A finished 2-step run with a checkpoint per step (job file next to it)."""
    folder = tmp_path_factory.mktemp("links-base")
    job = write_job(folder, tiny_model_dir, tiny_pairs, steps=2, save_every=1, keep_checkpoints=1)
    result = run_cli("run", str(job))
    assert result.exit_code == 0, result.output
    return folder


def _outside(tmp: Path) -> Path:
    """A folder outside the run holding what a link will point to: a user's own checkpoints and files."""
    out = tmp / "outside"
    for rel in ("ckpts/step-00000001/state.json", "ckpts/step-00000002/state.json", "model/config.json",
                "dir/keep.txt"):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(f"user data {rel}\n")
    (out / "file.txt").write_text("a user's file, never truncated\n")
    return out


def _prepared(done_run: Path, tmp: Path, entry: str, target: str | None) -> tuple[Path, Path, Path]:
    """Copy the finished run into ``tmp`` and make ``entry`` a link to ``outside/target`` (None: a FIFO)."""
    shutil.copytree(done_run, tmp / "work", symlinks=True)
    run, outside = tmp / "work" / "run", _outside(tmp)
    path = run / entry
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    if target is None:
        os.mkfifo(path)
    else:
        path.symlink_to(outside / target)
    return tmp / "work" / "job.yaml", run, outside


SEEN = [  # (entry in the run folder, what it links to outside)
    ("checkpoints", "ckpts"),  # a resume wrote into it and deleted the checkpoints there
    (".hdpo-tune.lock", "file.txt"),  # the target was truncated and overwritten with a pid
    ("final", "model"),  # a traceback
    ("metrics.jsonl", "file.txt"),
    ("status.json", "file.txt"),
]
MORE = [
    ("merged", "model"),
    ("checkpoints/step-00000002", "ckpts/step-00000002"),  # a link inside a folder hdpo-tune owns
    ("final/adapter_config.json", "file.txt"),
    (".hdpo-tune.json", "file.txt"),
    ("job.resolved.yaml", "file.txt"),
    ("tensorboard", "dir"),
    ("metrics.jsonl", None),  # a FIFO: opening it would hang
]


def _assert_refused(proc_err: str, code: int, run: Path, entry: str) -> None:
    assert code == 2, proc_err[-3000:]
    lines = [line for line in proc_err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in proc_err, proc_err[-3000:]
    assert str(run / entry) in lines[0] and ("symbolic link" in lines[0] or "FIFO" in lines[0]), lines[0]


@pytest.mark.parametrize(("entry", "target"), SEEN, ids=[e for e, _ in SEEN])
def test_seen_links_are_refused_by_the_console_script(done_run: Path, tmp_path: Path, entry: str,
                                                      target: str) -> None:
    job, run, outside = _prepared(done_run, tmp_path, entry, target)
    before = {p: p.read_bytes() for p in outside.rglob("*") if p.is_file()}
    stamps = snapshot(outside)
    proc = hdpo("run", str(job))  # a resume
    _assert_refused(proc.stderr, proc.returncode, run, entry)
    assert snapshot(outside) == stamps
    assert {p: p.read_bytes() for p in outside.rglob("*") if p.is_file()} == before
    assert (run / entry).is_symlink()  # not even the link was removed


@pytest.mark.parametrize(("entry", "target"), SEEN + MORE, ids=[f"{e}-{t}" for e, t in SEEN + MORE])
def test_every_command_refuses_a_link_and_changes_nothing_outside(done_run: Path, tmp_path: Path, entry: str,
                                                                  target: str | None) -> None:
    job, run, outside = _prepared(done_run, tmp_path, entry, target)
    before = {p: p.read_bytes() for p in outside.rglob("*") if p.is_file()}
    stamps = snapshot(outside)
    commands = [("run", str(job)), ("run", str(job), "--force"), ("merge", str(run)), ("export", str(run)),
                ("push", str(run)), ("push", str(run), "--dry-run"), ("eval", str(run))]
    for args in commands:
        result = run_cli(*args)
        _assert_refused(result.stderr, result.exit_code, run, entry)
    assert snapshot(outside) == stamps
    assert {p: p.read_bytes() for p in outside.rglob("*") if p.is_file()} == before


def test_the_run_folder_itself_may_be_given_through_a_link(done_run: Path, tmp_path: Path, tiny_model_dir: Path,
                                                           tiny_pairs: Path) -> None:
    """A link the user gives as output.dir is resolved once at start: the user's choice, not a link inside."""
    shutil.copytree(done_run, tmp_path / "work", symlinks=True)
    (tmp_path / "alias").symlink_to(tmp_path / "work" / "run")
    job = write_job(tmp_path, tiny_model_dir, tiny_pairs, steps=2, save_every=1, keep_checkpoints=1,
                    out=str(tmp_path / "alias"))
    result = run_cli("run", str(job))
    assert result.exit_code == 0 and "train: already done" in result.stderr, result.stderr


def test_removal_never_follows_a_link(tmp_path: Path) -> None:
    outside = _outside(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoints").symlink_to(outside / "ckpts")
    (run / "final").symlink_to(outside / "model")
    stamps = snapshot(outside)
    with pytest.raises(OSError) as err:  # a folder on the way that is a link: refused, not followed
        ownership.remove(run, "checkpoints/step-00000001")
    assert err.value.errno in (errno.ELOOP, errno.ENOTDIR)
    assert ownership.remove(run, "final") is True  # the link itself goes, never what it points to
    assert not (run / "final").exists() and snapshot(outside) == stamps
    (run / "merged.tmp").symlink_to(outside / "dir")
    from service.stages.pipeline import remove_temporaries

    remove_temporaries(run)  # a link with one of hdpo-tune's names is not hdpo-tune's: left alone, target too
    assert (run / "merged.tmp").is_symlink() and snapshot(outside) == stamps  # (run/merge refuse it: one line)


def test_a_folder_that_is_not_a_run_is_left_untouched(tmp_path: Path) -> None:
    """``merge|export|push RUN`` on someone else's folder: one line, and not even a lock file is created."""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    for cmd in ("merge", "export", "push"):
        result = run_cli(cmd, str(tmp_path / "mine"))
        assert result.exit_code == 2 and "must be a run folder" in result.stderr, result.stderr
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]
