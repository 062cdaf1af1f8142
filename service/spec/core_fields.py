"""Spec fields from the core's settings dataclasses, so a setting's name, type, default and description are
written once, in :mod:`hdpo_core.settings`.

* :func:`section_fields` turns every field of a dataclass into a pydantic field (``create_model`` form): its
  type, its default, its attribute docstring as the description, plus the bounds the spec adds (validation
  is the spec's job; the core's dataclasses stay plain). The ``hdpo:`` section is built this way entirely.
* :func:`core_defaults` gives the defaults the hand-written sections (``model``, ``lora``, ``train``) reuse
  for the fields they share with their core object, and :func:`shared_values` carries a validated section's
  values over to that object by name (no field-by-field copy to keep in step).

Attribute docstrings are read from the class source with :mod:`ast` (as litgpt's jsonargparse and pydantic's
``use_attribute_docstrings`` do); a dataclass without source gives empty descriptions, never an error.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing
from typing import Any

from pydantic import BaseModel, Field


def attribute_docs(cls: type) -> dict[str, str]:
    """``{field: docstring}`` for the string literal right after each annotated attribute of ``cls`` and its
    dataclass bases (a subclass's own docstring wins), whitespace folded into single spaces."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for stmt, after in zip(body, body[1:], strict=False):
            if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                    and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)):
                docs[stmt.target.id] = " ".join(after.value.value.split())
    return docs


def core_defaults(cls: type) -> dict[str, Any]:
    """``{field: default}`` of a dataclass (fields without a default are left out)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def section_fields(cls: type, bounds: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``{name: (type, Field(default, description=docstring, **bounds[name]))}`` for every field of ``cls``,
    in declaration order (the order of the schema, `hdpo-tune init` and job.resolved.yaml)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    docs, defaults = attribute_docs(cls), core_defaults(cls)
    unknown = set(bounds) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise TypeError(f"bounds for fields {sorted(unknown)} that {cls.__name__} does not have")
    return {f.name: (hints[f.name], Field(defaults.get(f.name, ...), description=docs.get(f.name),
                                          **bounds.get(f.name, {})))
            for f in dataclasses.fields(cls)}


def shared_values(section: BaseModel, cls: type) -> dict[str, Any]:
    """``{field: value}`` of ``section`` for every field of the dataclass ``cls`` the section also has."""
    names = type(section).model_fields
    return {f.name: getattr(section, f.name) for f in dataclasses.fields(cls) if f.init and f.name in names}
