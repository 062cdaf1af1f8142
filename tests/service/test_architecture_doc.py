"""docs/architecture.md stays true (issue 29): every production module under ``hdpo_core/`` and ``service/`` is
named in it, every path and dotted name it mentions exists, and its import-rules table holds for the import
graph that tests/service/test_structure.py builds (lazy imports inside functions count). The server's rule
"no imports of stages or pipeline; jobs are processes" is also checked at run time: importing the server
loads no stage module and no torch."""

from __future__ import annotations

import ast
import fnmatch
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

from tests.service.test_structure import PACKAGES, ROOT, import_graph

DOC = ROOT / "docs" / "architecture.md"
TOP_FOLDERS = ("hdpo_core", "service", "tests", "bench", "deploy", "examples", "docs", "scripts")
PATH_RE = re.compile(rf"(?<![\w./-])((?:{'|'.join(TOP_FOLDERS)})/[\w.*/-]*)")
DOTTED_RE = re.compile(r"(?<![\w./-])((?:hdpo_core|service)(?:\.\w+)+)")
Rules = dict[str, set[str]]


@cache
def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def named_paths(text: str) -> set[str]:
    """Every repository path the page mentions (``service/serve/app.py``, ``deploy/accelerate/``, globs)."""
    return {m.rstrip(".") for m in PATH_RE.findall(text)}


def import_rules(text: str) -> Rules:
    """The table under "## Import rules": room (a dotted prefix) -> the rooms it may import."""
    section = text.split("\n## Import rules", 1)[1].split("\n## ", 1)[0]
    rules: Rules = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and (room := re.fullmatch(r"`([\w.]+)`", cells[0])):
            rules[room.group(1)] = set(re.findall(r"`([\w.]+)`", cells[1]))
    return rules


def room_of(module: str, rooms: set[str] | Rules) -> str | None:
    """The longest room prefix (whole dotted components) that ``module`` falls under."""
    parts = module.split(".")
    return next((p for i in range(len(parts), 0, -1) if (p := ".".join(parts[:i])) in rooms), None)


def rule_violations(graph: dict[str, set[str]], rules: Rules) -> list[str]:
    """Every import across rooms that the rules do not allow, and every module that is in no room."""
    problems = [f"{m}: in no room of the import rules table" for m in sorted(graph) if room_of(m, rules) is None]
    for module, deps in sorted(graph.items()):
        src = room_of(module, rules)
        for dep in sorted(deps):
            dst = room_of(dep, rules)
            if src and dst and dst != src and dst not in rules[src]:
                problems.append(f"{module} -> {dep}: room {src} may not import room {dst}")
    return problems


def _module_file(dotted: str) -> Path | None:
    base = ROOT.joinpath(*dotted.split("."))
    return next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()), None)


def _top_level_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def dotted_problem(dotted: str) -> str | None:
    """None when ``dotted`` is a module, or a module followed by a name defined at its top level."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        path = _module_file(".".join(parts[:i]))
        if path is None:
            continue
        rest = parts[i:]
        if not rest:
            return None
        if rest[0] in _top_level_names(path):  # attributes of that name (a method, a field) are not followed
            return None
        return f"{dotted}: {'.'.join(parts[:i])} defines no {rest[0]}"
    return f"{dotted}: no such module"


@cache
def graph() -> dict[str, set[str]]:
    """The import graph, built once for the tests below."""
    return import_graph()


def is_named(rel: str, named: set[str]) -> bool:
    """``rel`` (a module's path) is on the page: itself, its package folder for an ``__init__.py``, or a glob
    over the files of its own folder."""
    folder, _, name = rel.rpartition("/")
    if rel in named or name == "__init__.py" and f"{folder}/" in named:
        return True
    return any(g.rpartition("/")[0] == folder and fnmatch.fnmatchcase(name, g.rpartition("/")[2])
               for g in named if "*" in g)


def production_modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def test_every_production_module_is_named() -> None:
    """By its path; a package's ``__init__.py`` may be named by its folder (``service/spec/``), and a folder of
    modules that are all alike (migration revisions) by one glob (``service/serve/migrations/versions/*.py``)."""
    named = named_paths(doc_text())
    missing = [rel for p in production_modules() if not is_named(rel := p.relative_to(ROOT).as_posix(), named)]
    assert len(production_modules()) > 100  # the walk really saw the project
    assert missing == [], ("add one line (what it owns, why it is there) for each to its room's table in "
                           f"docs/architecture.md: {missing}")


def test_every_path_and_dotted_name_on_the_page_exists() -> None:
    text = doc_text()
    paths = named_paths(text)
    assert len(paths) > 100
    absent = sorted(p for p in paths if not (any(ROOT.glob(p)) if "*" in p else (ROOT / p).exists()))
    assert absent == [], f"docs/architecture.md names paths that do not exist: {absent}"
    names = set(DOTTED_RE.findall(text))
    assert len(names) > 40
    problems = sorted(filter(None, map(dotted_problem, names)))
    assert problems == [], f"docs/architecture.md names what does not exist: {problems}"


def test_the_import_rules_table_holds() -> None:
    rules = import_rules(doc_text())
    assert {"hdpo_core", "hdpo_core.eval", "service.spec", "service.serve", "service.cli"} <= set(rules)
    unknown = sorted(r for r in {*rules, *(d for ds in rules.values() for d in ds)} if _module_file(r) is None)
    assert unknown == [], f"the import rules table names rooms that are not modules: {unknown}"
    violations = rule_violations(graph(), rules)
    assert violations == [], "imports the rules in docs/architecture.md forbid:\n" + "\n".join(violations)


def test_the_rules_the_page_states_in_words_are_in_the_table() -> None:
    """The table must not quietly allow what the page promises never happens."""
    rules = import_rules(doc_text())
    service_rooms = {r for r in rules if r.startswith("service")}
    assert rules["hdpo_core"] == set()
    assert rules["hdpo_core.export"] == {"hdpo_core"}
    assert not rules["service.spec"] & service_rooms  # the spec imports no other room of the service
    for room in ("service.serve", "service.serve.console", "service.launch"):
        assert "service.stages" not in rules[room], room
    assert not any("service.cli" in allowed for allowed in rules.values())  # the CLI is the top of the graph
    eval_to_export = {d for m, ds in graph().items() if m.startswith("hdpo_core.eval") for d in ds
                      if d.startswith("hdpo_core.export")}
    assert eval_to_export <= {"hdpo_core.export", "hdpo_core.export.ort_generate"}, eval_to_export


def test_a_module_is_named_by_its_path_its_package_folder_or_a_glob_of_its_folder() -> None:
    named = {"a/b.py", "a/c/", "a/m/*.py"}
    assert is_named("a/b.py", named) and is_named("a/c/__init__.py", named) and is_named("a/m/v1.py", named)
    assert not is_named("a/c/d.py", named) and not is_named("a/m/n/v2.py", named) and not is_named("a/x.py", named)


def test_rule_checker_finds_a_forbidden_import() -> None:
    rules: Rules = {"a": set(), "a.b": {"a"}, "c": {"a"}}
    graph = {"a.x": set(), "a.b.y": {"a.x"}, "c.z": {"a.b.y", "a.x"}, "d": set()}
    assert rule_violations(graph, rules) == ["d: in no room of the import rules table",
                                             "c.z -> a.b.y: room c may not import room a.b"]


def test_the_server_loads_no_stage_and_no_torch() -> None:
    """Jobs are processes: the server (API, scheduler, console, ``hdpo-tune ui``) never imports a stage or the
    pipeline, even through a lazy import the graph above would also count, and never pays for torch."""
    code = ("import sys\n"
            "import service.serve.app, service.serve.cli, service.serve.scheduler, service.serve.jobs_api\n"
            "import service.serve.native_api, service.serve.files_api\n"
            "import service.serve.console.routes, service.serve.console.ui\n"
            "print(sorted(m for m in sys.modules if m.startswith('service.stages') or m.split('.')[0] == 'torch'))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]", proc.stdout
