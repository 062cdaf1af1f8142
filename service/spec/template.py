"""`hdpo-tune init`: an annotated example job file, generated from the spec models.

The comments are the fields' schema descriptions and the values are the schema defaults (plus a few example
paths), so the example cannot drift from the code (a drifting copied config is a known anti-pattern:
torchtune's "Llama2 7B" comment in a Llama 3.1 config). A test loads the output with ``load_spec``.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from hdpo_core.errors import InputError
from hdpo_core.io import atomic_write_text
from service.spec.job import JobSpec, model_of

#: Values that differ from the defaults in the example (required paths and a short run).
EXAMPLE_VALUES: dict[tuple[str, ...], Any] = {
    ("model", "name_or_path"): "./base",
    ("data", "train"): "./prefs.jsonl",
    ("train", "max_steps"): 100,
    ("train", "epochs"): None,
    ("output", "dir"): "./runs/exp1",
    ("tracking", "report_to"): ["mlflow"],
}
#: Optional sections written out (uncommented) in the example; the others are shown commented out.
ENABLED_SECTIONS = ("model", "lora", "data", "hdpo", "train", "output")

HEADER = """\
# hdpo-tune job spec: align a causal LM with H-DPO.
#   hdpo-tune validate job.yaml   # check spec, model and data; writes nothing
#   hdpo-tune run job.yaml        # train (and the other enabled stages); rerun to resume
# Values are the defaults unless the comment says "example". Relative paths are relative to this file.
# Full reference: docs/spec.md (or `hdpo-tune schema`). Tokens never go here: set HF_TOKEN in the environment.
"""


def _scalar(value: Any) -> str:
    text = yaml.safe_dump([value], default_flow_style=True, width=1000).strip()
    return text[1:-1]


def _comment(text: str, indent: str, commented: bool) -> list[str]:
    lead = f"{indent}# " if not commented else f"# {indent}# "
    return [lead + line for line in textwrap.wrap(text, 100 - len(lead))] or []


def _render_model(key: tuple[str, ...], model: type[BaseModel], depth: int, commented: bool) -> list[str]:
    indent, c = "  " * depth, "# " if commented else ""
    lines = [f"{c}{indent}{key[-1]}:"]
    for name, info in model.model_fields.items():
        path = (*key, name)
        desc = info.description or ""
        if info.is_required() and path not in EXAMPLE_VALUES:
            desc += " (required)"
        elif path in EXAMPLE_VALUES:
            desc += " (required; example)" if info.is_required() else " (example)"
        lines += _comment(desc, indent + "  ", commented)
        sub = model_of(info.annotation)
        if isinstance(sub, type) and issubclass(sub, BaseModel) and path not in EXAMPLE_VALUES:
            lines += _render_model(path, sub, depth + 1, commented)
            continue
        if path in EXAMPLE_VALUES:
            value = EXAMPLE_VALUES[path]
        elif info.default is not PydanticUndefined:
            value = info.default
        elif info.default_factory is not None:
            value = info.default_factory()  # type: ignore[call-arg]
        else:
            value = "CHANGE_ME"
        lines.append(f"{c}{indent}  {name}: {_scalar(value)}")
    return lines


def render_example_spec() -> str:
    """The annotated example job file as YAML text (loads with :func:`service.spec.job.load_spec`)."""
    lines = [HEADER.rstrip("\n")]
    for name, info in JobSpec.model_fields.items():
        lines.append("")
        model = model_of(info.annotation)
        commented = name not in ENABLED_SECTIONS
        if isinstance(model, type) and issubclass(model, BaseModel):
            lines += _comment(info.description or "", "", commented=False)
            lines += _render_model((name,), model, 0, commented)
        else:
            lines += _comment(f"{info.description} See docs/spec.md.", "", commented=False)
            lines.append(f"# {name}: {{}}")
    return "\n".join(lines) + "\n"


def write_example_spec(path: str | os.PathLike[str], *, force: bool = False) -> Path:
    """Write :func:`render_example_spec` to ``path``; refuses to overwrite an existing file unless ``force``."""
    dest = Path(path)
    if dest.exists() and not force:
        raise InputError(f"{dest}: file already exists; pass --force to overwrite it or choose another path")
    if dest.exists() and dest.is_dir():
        raise InputError(f"{dest}: is a folder; give a file path such as {dest / 'job.yaml'}")
    if not dest.parent.is_dir():
        raise InputError(f"{dest.parent}: folder does not exist; create it first")
    return atomic_write_text(dest, render_example_spec())
