"""The shape of the service (issue 16): no import cycle, the core never imports the service, one stage contract,
one Run opened the same way from a job file and from its run folder, one strictness for every spec section,
and ``python -m service.cli`` is the CLI."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from hdpo_core.errors import InputError
from service.runfolder.run import Run
from service.spec.job import load_spec, sections_of, spec_to_dict
from service.stages.registry import NAMES, STAGES

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("service", "hdpo_core")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str) -> set[str]:
    """Every project module ``path`` imports, at the top or inside a function (a lazy import is still an edge)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    return {name: {m for m in _imports(path, name) if m in files and m != name} for name, path in files.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_import_graph_has_no_cycle_and_the_core_never_imports_the_service() -> None:
    graph = import_graph()
    assert len(graph) > 40 and graph["service.stages.pipeline"]  # the walk really saw the project
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])
    upward = sorted(f"{a} -> {b}" for a, deps in graph.items() if a.startswith("hdpo_core") for b in deps
                    if b.startswith("service"))
    assert upward == []


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_python_m_service_cli_is_the_cli() -> None:
    proc = subprocess.run([sys.executable, "-m", "service.cli", "--version"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("hdpo-tune "), proc.stderr


def test_every_stage_follows_the_contract(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text("model: {name_or_path: ./m}\ndata: {train: d.jsonl}\noutput: {dir: run}\n"
                   "eval: {tasks: t.jsonl}\nmerge: {}\nexport: {onnx: {enabled: true}}\nhub: {repo_id: me/x}\n")
    spec = load_spec(job)
    assert NAMES == ("train", "eval", "merge", "export", "push")
    assert [s.enabled(spec) for s in STAGES] == [True] * 5
    bare = spec.model_copy(update={"eval": None, "merge": None, "export": None, "hub": None})
    assert [s.enabled(bare) for s in STAGES] == [True, False, False, False, False]
    assert all(callable(s.run) and isinstance(s.main_only, bool) for s in STAGES)


def test_run_from_its_folder_is_the_run_from_its_job(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text("model: {name_or_path: ./m}\ndata: {train: d.jsonl, max_length: 64}\n"
                   "hdpo: {alpha: 0.8}\ntrain: {max_steps: 3, batch_size: 4, micro_batch_size: 2}\n"
                   "output: {dir: run}\nmerge: {tolerance: 0.001}\n")
    from_job = Run.from_job(job)
    from_job.folder.write_resolved_spec(spec_to_dict(from_job.spec))
    from_folder = Run.from_folder(tmp_path / "run")
    assert from_folder.spec == from_job.spec and from_folder.path == tmp_path / "run"
    with pytest.raises(InputError, match="must be a run folder written by"):
        Run.from_folder(tmp_path)


@pytest.mark.parametrize(("section", "body", "field"), [
    ("eval", {"n_samples": "8"}, "eval.n_samples"),
    ("eval", {"compare_reference": "yes"}, "eval.compare_reference"),
    ("merge", {"tolerance": float("inf")}, "merge.tolerance"),
    ("export", {"onnx": {"atol": float("nan")}}, "export.onnx.atol"),
    ("hub", {"private": 1}, "hub.private"),
    ("distributed", {"num_processes": "2"}, "distributed.num_processes"),
    ("train", {"batch_size": "8"}, "train.batch_size"),
])
def test_every_section_is_equally_strict(section: str, body: dict[str, object], field: str) -> None:
    with pytest.raises(InputError) as err:
        sections_of({section: body}, (section,), source=Path("job.yaml"))
    assert f"job.yaml: {field}: " in err.value.message, err.value.message


def test_runs_without_deepspeed_do_not_import_it() -> None:
    """accelerate's unwrap imports deepspeed (and mlflow through it) whenever it is installed; the train stage
    defers that to runs that use it: "available" only once deepspeed is imported. Unwrapping still works."""
    code = ("import sys, torch\nfrom service.stages.runtime import import_deepspeed_only_when_used\n"
            "import_deepspeed_only_when_used(); import_deepspeed_only_when_used()\n"
            "from accelerate.utils import other\n"
            "m = torch.nn.Linear(2, 2)\nassert other.extract_model_from_parallel(m) is m\n"
            "print('deepspeed' in sys.modules, other.is_deepspeed_available())")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "False False"
