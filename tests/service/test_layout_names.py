"""The run folder has one owner (issue 29): every name of a file or folder in a run folder is written once, in
``hdpo_core/layout.py``, and every other module of ``hdpo_core/`` and ``service/`` asks it.

The check reads the production code's syntax trees (docstrings and prose messages are not code: they may name
a file for a reader). A name that is a file name (it has a dot: ``status.json``) or a name prefix
(``step-``) may not appear as a string or a path component anywhere else. A name that is also an ordinary
word (``eval`` is a stage and a spec section, ``onnx`` an export format) may not be used as a path: an
operand of ``/``, an argument of ``joinpath``/``os.path.join``/``Path``/``glob``, or a member of a literal
tuple, list or set made of run-folder names only.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from hdpo_core import layout
from hdpo_core.layout import RunLayout

ROOT = Path(__file__).resolve().parents[2]
OWNER = ROOT / "hdpo_core" / "layout.py"
PACKAGES = ("hdpo_core", "service")

#: Where a run-folder name's text is genuinely something else. (file, name): why.
ALLOWED: dict[tuple[str, str], str] = {
    ("service/cli.py", layout.JOB_FILE): "the default path of `hdpo-tune init`'s job spec, not a run folder's",
    ("service/spec/template.py", layout.JOB_FILE): "the job spec file name suggested in an error message",
    ("hdpo_core/export/modelcard.py", layout.ONNX): "a Hub model tag (the card's `tags`), not a folder",
}

#: Constants of the layout that are not names (counts, suffixes shared with every atomic write's temp file).
NOT_NAMES = {"CHECKPOINT_DIGITS", "TEMP_SUFFIX", "ASIDE_SUFFIX", "CHECKPOINT_TEMP"}
PREFIXES = {layout.CHECKPOINT_PREFIX, layout.SWEEP_RUN_PREFIX, layout.SWEEP_JOB_PREFIX}


def _names() -> set[str]:
    """Every name the layout owns: its upper-case string constants and the members of its name tuples."""
    found: set[str] = set()
    for key, value in vars(layout).items():
        if key.isupper() and key not in NOT_NAMES:
            if isinstance(value, str):
                found.add(value)
            elif isinstance(value, tuple):
                found.update(v for v in value if isinstance(v, str))
    return found - PREFIXES


NAMES = _names()
FILE_NAMES = {n for n in NAMES if "." in n or "-" in n}  # unmistakable: job.log, .hdpo-tune.lock, ref-cache
WORDS = NAMES - FILE_NAMES  # also ordinary words: eval, final, onnx, checkpoints, tensorboard ...
PATH_CALLS = {"joinpath", "join", "Path", "glob", "rglob", "PurePosixPath"}


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def _components(text: str) -> list[str]:
    """The path components of a string that could be a path (prose, with spaces, is never one)."""
    return [] if any(c.isspace() for c in text) else text.split("/")


def _file_name_in(text: str) -> str | None:
    for part in _components(text):
        if part in FILE_NAMES:
            return part
        for prefix in PREFIXES:
            if part.startswith(prefix):
                return prefix
    return None


def _word(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in WORDS:
        return node.value
    return None


def _call_name(node: ast.Call) -> str:
    f = node.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""


def _word_as_path(node: ast.AST) -> Iterator[str]:
    """Words of the layout used as a path in ``node``."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        yield from (w for w in (_word(node.left), _word(node.right)) if w)
    elif isinstance(node, ast.Call) and _call_name(node) in PATH_CALLS:
        yield from (w for w in map(_word, node.args) if w)
    elif isinstance(node, ast.Tuple | ast.List | ast.Set) and node.elts:
        texts = [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
        if len(texts) == len(node.elts) and set(texts) <= NAMES and set(texts) & WORDS:
            yield from (t for t in texts if t in WORDS)


def literals(path: Path) -> Iterator[tuple[int, str]]:
    """(line, name) of every run-folder name written as a literal in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            name = _file_name_in(node.value)
            if name:
                yield node.lineno, name
        for word in _word_as_path(node):
            yield getattr(node, "lineno", 0), word


def production_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if p != OWNER)


def test_the_check_sees_the_names_and_finds_a_literal(tmp_path: Path) -> None:
    """The check is not vacuous: it knows the names, and it finds each kind of use in a sample module."""
    assert {"status.json", "metrics.jsonl", "checkpoints", "job.log", ".hdpo-tune.lock", "checksums.json",
            "eval", "merged", "onnx", "final"} <= NAMES
    sample = tmp_path / "sample.py"
    sample.write_text('"""Reads ``status.json``: a docstring may name it."""\n'
                      'a = run / "metrics.jsonl"\n'
                      'b = run / "eval"\n'
                      'c = ("final", "merged")\n'
                      'd = root.glob("step-*")\n'
                      'e = f"{run}/checkpoints/{n}/state.json"\n'
                      'f = ("train", "eval", "merge")\n'
                      'g = {"eval/loss": 1.0}\n'
                      'h = "cannot write status.json here"\n', encoding="utf-8")
    assert sorted(literals(sample)) == [(2, "metrics.jsonl"), (3, "eval"), (4, "final"), (4, "merged"),
                                        (5, "step-"), (6, "state.json")]


@pytest.mark.parametrize("package", PACKAGES)
def test_run_folder_names_appear_only_in_the_layout_module(package: str) -> None:
    found = []
    for path in production_files():
        rel = path.relative_to(ROOT).as_posix()
        if not rel.startswith(f"{package}/"):
            continue
        found += [f"{rel}:{line}: {name!r}" for line, name in literals(path) if (rel, name) not in ALLOWED]
    assert found == [], ("run-folder names written outside hdpo_core/layout.py (use its constants):\n"
                         + "\n".join(found))


def test_every_allowance_is_still_needed() -> None:
    """An allowance whose literal is gone is removed too, so the list stays short and true."""
    stale = [key for key in ALLOWED if not any(name == key[1] for _, name in literals(ROOT / key[0]))]
    assert stale == []


def test_the_one_checkpoint_listing_takes_complete_real_checkpoints_only(tmp_path: Path) -> None:
    """What the trainer resumes from, the jobs API and the console show: real ``step-NNNNNNNN`` folders with a
    regular ``state.json``, oldest first; never a temporary folder, a link, or a folder still being written."""
    root = RunLayout(tmp_path).checkpoints
    for step in (10, 2, 11, 14):
        RunLayout(tmp_path).checkpoint(step).mkdir(parents=True)
    for step in (10, 2):
        (RunLayout(tmp_path).checkpoint(step) / layout.CHECKPOINT_STATE).write_text("{}")
    (root / layout.checkpoint_name(14) / layout.CHECKPOINT_STATE).symlink_to(root / "step-00000010" / "state.json")
    for name in (f"{layout.CHECKPOINT_TEMP}step-00000012-99", "step-5"):
        (root / name).mkdir()
        (root / name / layout.CHECKPOINT_STATE).write_text("{}")
    (root / "step-00000013").symlink_to(root / "step-00000010")
    listed = layout.list_checkpoints(root)
    assert [p.name for p in listed] == ["step-00000002", "step-00000010"]
    assert [layout.step_of(p) for p in listed] == [2, 10]
    assert RunLayout(tmp_path).list_checkpoints() == listed
    (tmp_path / "elsewhere").symlink_to(root)
    assert layout.list_checkpoints(tmp_path / "elsewhere") == []  # a link is never followed
    assert layout.list_checkpoints(tmp_path / "absent") == []
    with pytest.raises(ValueError):
        layout.step_of(root / "step-5")
