"""The artifact mechanism in one process (the real kills are in tests/reliability/test_kill_sweep.py): a build is
published whole with its manifest last, verification catches every kind of damage, and removal never follows a
link out of the folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hdpo_core import artifact


def _build(dest: Path, files: dict[str, bytes]) -> Path:
    with artifact.building(dest, required=tuple(files)) as tmp:
        for name, data in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
    return dest


def test_publish_writes_the_manifest_last_and_replaces_the_old_folder(tmp_path: Path) -> None:
    dest = _build(tmp_path / "out", {"a.bin": b"old", "sub/b.txt": b"x"})
    assert artifact.verify(dest) is None
    _build(dest, {"a.bin": b"new"})
    manifest = json.loads((dest / artifact.MANIFEST).read_text())
    assert set(manifest["files"]) == {"a.bin"} and manifest["files"]["a.bin"]["size"] == 3
    assert (dest / "a.bin").read_bytes() == b"new" and not (dest / "sub").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no .tmp, no .old
    newest = max(dest.iterdir(), key=lambda p: p.stat().st_mtime_ns)
    assert newest.name == artifact.MANIFEST


def test_a_failed_build_leaves_the_old_folder_and_no_temporary(tmp_path: Path) -> None:
    dest = _build(tmp_path / "out", {"a.bin": b"old"})
    with pytest.raises(ValueError), artifact.building(dest) as tmp:
        (tmp / "a.bin").write_bytes(b"half")
        raise ValueError("boom")
    assert (dest / "a.bin").read_bytes() == b"old" and artifact.verify(dest) is None
    assert not artifact.temp_path(dest).exists()
    tmp = artifact.begin(dest)
    (tmp / "other").write_bytes(b"1")
    with pytest.raises(RuntimeError, match=r"incomplete \(need.bin is missing or empty\)"):
        artifact.publish(tmp, dest, required=("need.bin",))
    assert (dest / "a.bin").read_bytes() == b"old"


DAMAGE = {
    "truncated": (lambda d: (d / "a.bin").write_bytes(b"ol"), "a.bin is 2 bytes, 3 were written"),
    "changed": (lambda d: (d / "a.bin").write_bytes(b"OLD"), "a.bin does not match its checksum"),
    "missing": (lambda d: (d / "a.bin").unlink(), "a.bin is missing"),
    "extra": (lambda d: (d / "stray").write_bytes(b""), "stray is not in checksums.json"),
    "no-manifest": (lambda d: (d / artifact.MANIFEST).unlink(), "checksums.json is missing"),
    "torn-manifest": (lambda d: (d / artifact.MANIFEST).write_text("{"), "checksums.json is unreadable"),
    "file-is-a-link": (lambda d: ((d / "a.bin").unlink(), (d / "a.bin").symlink_to(d.parent / "elsewhere")),
                       "a.bin is missing"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_verify_names_each_kind_of_damage(tmp_path: Path, damage: str) -> None:
    (tmp_path / "elsewhere").write_bytes(b"old")
    dest = _build(tmp_path / "out", {"a.bin": b"old"})
    make, words = DAMAGE[damage]
    make(dest)
    problem = artifact.verify(dest)
    assert problem is not None and problem.startswith(words), problem


def test_a_link_is_never_an_artifact_and_never_followed_when_removing(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_bytes(b"precious")
    real = _build(tmp_path / "out", {"a.bin": b"1"})
    link = tmp_path / "link"
    link.symlink_to(real)
    assert artifact.verify(link) == "not a folder (a file or a link)"
    leftover = artifact.temp_path(tmp_path / "out")
    leftover.mkdir()
    (leftover / "to-outside").symlink_to(outside)
    (leftover / "file-link").symlink_to(outside / "keep")
    artifact.remove_leftovers(tmp_path / "out")
    assert not leftover.exists() and (outside / "keep").read_bytes() == b"precious"
    fake = artifact.aside_path(tmp_path / "out")
    fake.symlink_to(outside)  # a link with one of our names is not ours: left alone
    assert artifact.remove_leftovers(tmp_path / "out") == [] and fake.is_symlink()
    assert (outside / "keep").exists()


def test_replace_files_is_a_no_op_when_equal_and_hard_links_the_rest(tmp_path: Path) -> None:
    dest = _build(tmp_path / "out", {"w.bin": b"weights", "README.md": b"card"})
    inode = (dest / "w.bin").stat().st_ino
    assert artifact.replace_files(dest, {"README.md": b"card"}) is False
    assert artifact.replace_files(dest, {"README.md": b"card 2"}) is True
    assert (dest / "README.md").read_bytes() == b"card 2" and artifact.verify(dest) is None
    assert (dest / "w.bin").stat().st_ino == inode  # the weights were not copied


def test_discard_renames_aside_then_removes(tmp_path: Path) -> None:
    dest = _build(tmp_path / "out", {"a": b"1"})
    seen: list[tuple[str, str]] = []
    import hdpo_core.io as hio

    real = hio._after_op
    hio._after_op = lambda kind, path: seen.append((kind, os.fspath(path)))
    try:
        artifact.discard(dest)
    finally:
        hio._after_op = real
    assert not dest.exists() and not artifact.aside_path(dest).exists()
    assert seen[0] == ("rename", str(artifact.aside_path(dest)))  # first the one-step rename, then removal
    assert {k for k, _ in seen[1:]} == {"remove"}
