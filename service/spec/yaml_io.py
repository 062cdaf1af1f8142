"""Read a job file as YAML 1.2-style plain data, with ``file:line:col`` on every syntax problem.

PyYAML implements YAML 1.1, which bites configuration files twice:

* ``mixed_precision: no`` becomes ``False`` (1.1 reads yes/no/on/off as booleans). Here only
  ``true``/``false`` are booleans; ``no`` stays the string ``'no'``, and ``trust_remote_code: yes`` is a
  clear type error instead of a silent ``True``.
* ``learning_rate: 5e-7`` becomes the *string* ``'5e-7'`` (1.1 floats need a dot). Here it is a float.

Duplicate keys, which PyYAML silently resolves to the last value, are an error naming the line.

Parsing is bounded: the file is at most :data:`MAX_JOB_BYTES`, and before anything is built from the parsed
node graph its size *with every alias expanded* is counted (shared subtrees counted once per use, memoised, so
the count itself is linear in the file). An alias bomb ("billion laughs": nine anchors of nine aliases each
expand to 9^9 values) or a recursive alias is refused with one line in well under a second, before pydantic,
the secret scan or any other walk over the data could spend exponential time and memory on it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from hdpo_core.errors import InputError
from hdpo_core.inputs import read_file

MAX_JOB_BYTES = 1 << 20
MAX_EXPANDED_NODES = 100_000  # a real job spec has a few hundred values; aliases may not blow it up past this
_BOOL = "tag:yaml.org,2002:bool"
_FLOAT = "tag:yaml.org,2002:float"


class _JobLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans and floats, and duplicate keys refused."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # unhashable key; the base class reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (each key may appear once per section)", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)

    def construct_document(self, node: yaml.Node) -> Any:
        expanded = _expanded_size(node)
        if expanded > MAX_EXPANDED_NODES:
            raise _AliasBomb(f"aliases expand the document to more than {MAX_EXPANDED_NODES} values (an alias "
                             "bomb?); write the values out or use fewer nested aliases", node.start_mark)
        return super().construct_document(node)


class _AliasBomb(yaml.constructor.ConstructorError):
    def __init__(self, problem: str, mark: yaml.Mark) -> None:
        super().__init__(None, None, problem, mark)


def _expanded_size(root: yaml.Node) -> int:
    """Number of nodes in the document with every alias expanded (stops counting past the limit).

    Iterative (no recursion limit), memoised per node, so a DAG of shared anchors costs one visit per node;
    a node reached again while its own children are being counted is a recursive alias, refused.
    """
    size: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    open_: set[int] = set()
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in size:
            continue
        kids: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            kids = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            kids = [part for pair in node.value for part in pair]
        if children_done:
            open_.discard(key)
            size[key] = min(1 + sum(size[id(k)] for k in kids), MAX_EXPANDED_NODES + 1)
            continue
        if key in open_:
            raise _AliasBomb("a recursive alias (an anchor used inside itself); remove it", node.start_mark)
        open_.add(key)
        stack.append((node, True))
        for kid in kids:
            if id(kid) in open_:
                raise _AliasBomb("a recursive alias (an anchor used inside itself); remove it", kid.start_mark)
            if id(kid) not in size:
                stack.append((kid, False))
    return size[id(root)]


_JobLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_BOOL, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_JobLoader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_JobLoader.add_implicit_resolver(
    _FLOAT,
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?"
               r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)


def loads(text: str) -> Any:
    """Parse YAML text with the job file rules (YAML 1.2 booleans and floats, no duplicate keys)."""
    return yaml.load(text, Loader=_JobLoader)  # noqa: S506 - a SafeLoader subclass


def load_yaml(path: Path) -> Any:
    """Parse ``path``; raise :class:`InputError` with ``file:line:col`` for syntax errors."""
    raw = read_file(path, "job file", max_bytes=MAX_JOB_BYTES, fix="a job spec is a few dozen lines",
                    missing="check the path or create one with `hdpo-tune init`")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: job file is not UTF-8 text (byte offset {exc.start}); save it as UTF-8") from None
    try:
        data = loads(text)
    except _AliasBomb as exc:
        mark = exc.problem_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise InputError(f"{where}: refused: {exc.problem}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        what = exc.problem or exc.context or "syntax error"
        raise InputError(f"{where}: invalid YAML ({what}); fix the syntax (indent with spaces, "
                         "'key: value' pairs)") from None
    except yaml.YAMLError as exc:
        position = getattr(exc, "position", None)
        where = f"{path} (character {position})" if position is not None else str(path)
        reason = getattr(exc, "reason", None) or type(exc).__name__
        raise InputError(f"{where}: invalid YAML ({reason}); fix the file") from None
    except RecursionError:
        raise InputError(f"{path}: YAML nesting is too deep; a job spec has two levels") from None
    _refuse_bad_strings(path, data)
    return data


def _refuse_bad_strings(path: Path, data: Any) -> None:
    """A NUL byte (``"\\0"``) cuts a path short in every system call, and a lone surrogate (``"\\ud800"``) is no
    text any file system or tokenizer accepts: both are refused here, naming the field, before any value is
    used. Runs after the alias check, so the walk is bounded."""
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        where, node = stack.pop()
        if isinstance(node, dict):
            stack.extend((f"{where}.{k}" if where else str(k), v) for k, v in node.items())
            stack.extend((where or "<top level>", k) for k in node if isinstance(k, str))
        elif isinstance(node, list):
            stack.extend((f"{where}[{i}]", v) for i, v in enumerate(node))
        elif isinstance(node, str):
            if "\0" in node:
                raise InputError(f"{path}: {where}: the value holds a NUL byte (\\0), which no path or name may "
                                 "contain; remove it")
            try:
                node.encode("utf-8")
            except UnicodeEncodeError:
                raise InputError(f"{path}: {where}: the value holds a lone surrogate (an unpaired \\ud800-\\udfff "
                                 "escape), which is not valid Unicode; remove it") from None
