"""Bounded parsing (trust issue, point 5): a job file or a data row cannot make hdpo-tune use unbounded memory or
time. YAML alias bombs are refused before anything walks the expanded data; JSONL lines are read with a size
bound; JSON values Python refuses to convert are one line, not a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hdpo_core.data import iter_raw_rows
from hdpo_core.errors import InputError
from service.spec.yaml_io import MAX_EXPANDED_NODES, loads

HDPO_TUNE = Path(sys.executable).parent / "hdpo-tune"
REPO = Path(__file__).resolve().parents[2]


def laughs(levels: int = 9, width: int = 9, indent: str = "") -> str:
    """The "billion laughs" document: level k is a list of ``width`` aliases of level k-1 (width^levels values)."""
    lines = [f"{indent}l0: &l0 [{', '.join(['lol'] * width)}]"]
    for k in range(1, levels):
        lines.append(f"{indent}l{k}: &l{k} [{', '.join([f'*l{k - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


BOMBS = {
    "top-level": laughs(),
    "inside-train": "model: {name_or_path: ./m}\noutput: {dir: ./run}\ntrain:\n" + laughs(indent="  "),
    "inside-data-value": "model: {name_or_path: ./m}\noutput: {dir: ./run}\nbomb:\n" + laughs(indent="  ")
                         + "data: {train: *l8}\n",
    "recursive": "model: &m\n  name_or_path: ./m\n  again: *m\noutput: {dir: ./run}\n",
    "wide-mapping-keys": "k: &k {" + ", ".join(f"a{i}: 1" for i in range(400)) + "}\n"
                         + "v: &v [" + ", ".join(["*k"] * 400) + "]\n",
}


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    # the timeout only guards against a hang (before the fix: minutes and >1 GB); the refusal itself is
    # parse-time work, measured at about 0.04 s
    return subprocess.run([str(HDPO_TUNE), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_alias_bombs_are_refused_with_one_line_by_the_console_script(tmp_path: Path, name: str) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(BOMBS[name], encoding="utf-8")
    proc = _run(["run", str(job)], tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{job}:" in lines[0] and "refused:" in lines[0]
    assert ("recursive alias" if name == "recursive" else "alias bomb") in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.yaml"]  # nothing written


def test_alias_bomb_parses_in_bounded_memory(tmp_path: Path) -> None:
    """Under a 1 GiB address-space limit (the unbounded parse grew past that) the bomb is refused, in-process."""
    job = tmp_path / "job.yaml"
    job.write_text(laughs(levels=12), encoding="utf-8")  # 9^12 values if expanded
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
            "from pathlib import Path\nfrom service.spec.yaml_io import load_yaml\nfrom hdpo_core.errors import InputError\n"
            "try:\n    load_yaml(Path(sys.argv[1]))\nexcept InputError as e:\n    print(e)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(job)], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert "alias bomb" in proc.stdout


def test_ordinary_aliases_still_load() -> None:
    assert loads("a: &x [1, 2]\nb: *x\nc: {d: *x}\n") == {"a": [1, 2], "b": [1, 2], "c": {"d": [1, 2]}}
    # just under the limit: a shared list used many times is fine while the expansion stays bounded
    n = MAX_EXPANDED_NODES // 2 - 10
    doc = loads("x: &x [1]\ny: [" + ", ".join(["*x"] * (n // 2)) + "]\n")
    assert len(doc["y"]) == n // 2


def test_a_jsonl_line_over_the_row_limit_is_one_line(tmp_path: Path) -> None:
    """A file without newlines is read in bounded pieces (limit lowered here so the file stays small)."""
    f = tmp_path / "prefs.jsonl"
    ok = json.dumps({"prompt": "Q", "chosen": " a", "rejected": " b"})
    f.write_text(ok + "\n" + json.dumps({"prompt": "x" * 5000, "chosen": " a", "rejected": " b"}) + "\n")
    rows = iter_raw_rows(str(f), max_row_bytes=1000)
    assert next(rows)[0] == f"{f}:1"
    with pytest.raises(InputError, match=rf"{f}:2: row is longer than data.max_row_bytes \(1000 bytes\)"):
        next(rows)


@pytest.mark.parametrize("suffix,text,where", [
    (".jsonl", '{"prompt": "Q", "chosen": ' + "9" * 5000 + "}\n", ":1: invalid JSON value"),
    (".json", '[{"prompt": "Q", "chosen": ' + "9" * 5000 + "}]", ": invalid JSON value"),
    (".jsonl", "[" * 200_000 + "\n", ":1: JSON nested too deeply"),
    (".json", "[" * 200_000, ": JSON nested too deeply"),
])
def test_hostile_json_values_are_one_line(tmp_path: Path, suffix: str, text: str, where: str) -> None:
    f = tmp_path / f"prefs{suffix}"
    f.write_text(text, encoding="utf-8")
    with pytest.raises(InputError) as err:
        list(iter_raw_rows(str(f)))
    assert str(err.value).startswith(f"{f}{where}"), err.value
