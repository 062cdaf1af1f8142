"""Messages of the job spec loader: secrets found and redacted, pydantic errors turned into one line each.

Every line reads ``field.path: what is wrong (got X); how to fix``. Secret values are replaced before any
message is built, so no message can echo a token.
"""

from __future__ import annotations

import difflib
import os
import re
from typing import Any

from pydantic import BaseModel, ValidationError

# --- secrets ---------------------------------------------------------------------------------------------

TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{20,}")
_SECRET_KEY = re.compile(r"^(hf_|hub_|api_|access_|auth_|bearer_)?(token|api_?key|secret|password|passwd)$",
                         re.IGNORECASE)


def redact_secrets(text: str) -> str:
    """Replace anything that looks like a Hugging Face token, and the value of HF_TOKEN, with ``***``."""
    text = TOKEN_PATTERN.sub("hf_***", text)
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        value = os.environ.get(var)
        if value and len(value) >= 8:
            text = text.replace(value, "***")
    return text


def find_secrets(node: Any, path: str, issues: list[str], depth: int = 0) -> Any:
    """Collect secret findings; return ``node`` with secret values replaced so later messages cannot echo them."""
    if depth > 50:
        return node
    hint = "do not put tokens in the job file; set the HF_TOKEN environment variable (value not shown)"
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            sub = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and TOKEN_PATTERN.search(key):
                issues.append(f"{path or '<top level>'}: a key looks like a Hugging Face token; {hint}")
                continue
            if isinstance(key, str) and _SECRET_KEY.match(key) and value not in (None, ""):
                issues.append(f"{sub}: secrets are not allowed here; {hint}")
                continue
            out[key] = find_secrets(value, sub, issues, depth + 1)
        return out
    if isinstance(node, list):
        return [find_secrets(v, f"{path}[{i}]", issues, depth + 1) for i, v in enumerate(node)]
    if isinstance(node, str) and TOKEN_PATTERN.search(node):
        issues.append(f"{path}: value looks like a Hugging Face token; {hint}")
        return "***"
    return node


# --- pydantic errors -> one line each ---------------------------------------------------------------------

def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fields_at(loc: tuple[Any, ...], root: type[BaseModel]) -> tuple[list[str], list[str | int]]:
    """Valid field names of the model at ``loc`` (for suggestions) and ``loc`` without pydantic's type tags."""
    model: Any = root
    clean: list[str | int] = []
    for part in loc:
        if isinstance(part, int):
            clean.append(part)
            continue
        fields = getattr(model, "model_fields", None) if isinstance(model, type) else None
        if fields is not None and part in fields:
            clean.append(part)
            model = model_of(fields[part].annotation)
        elif fields is None and model is dict:
            clean.append(part)
            model = None
        elif fields is not None:
            clean.append(part)  # unknown key: keep it for the message
            model = None
        # else: a union/type tag like 'str' or 'list[str]': drop it
    fields = getattr(model, "model_fields", None) if isinstance(model, type) else None
    return (list(fields) if fields else []), clean


def model_of(annotation: Any) -> Any:
    """The BaseModel class (or ``dict``) inside ``X | None``; None when the field is a plain value."""
    args = getattr(annotation, "__args__", None)
    candidates = [annotation, *(args or [])]
    for c in candidates:
        if isinstance(c, type) and issubclass(c, BaseModel):
            return c
    for c in candidates:
        if c is dict or getattr(c, "__origin__", None) is dict:
            return dict
    return None


def _dotted(parts: list[str | int]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<top level>"


_TYPE_WORDS = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number", "bool_type": "true or false",
    "bool_parsing": "true or false", "string_type": "a string", "list_type": "a list",
    "model_type": "a mapping of fields", "model_attributes_type": "a mapping of fields",
    "dict_type": "a mapping", "finite_number": "a finite number",
}


def format_validation_error(exc: ValidationError, root: type[BaseModel]) -> list[str]:
    """One ``field.path: what is wrong (got X); how to fix`` line per problem, union branches merged per field."""
    by_path: dict[str, list[dict[str, Any]]] = {}
    for err in exc.errors(include_url=False):
        by_path.setdefault(_dotted(_fields_at(tuple(err["loc"]), root)[1]), []).append(err)
    lines: list[str] = []
    for path, errs in by_path.items():
        if len(errs) > 1 and all(e["type"] in _TYPE_WORDS for e in errs):
            wanted = " or ".join(dict.fromkeys(_TYPE_WORDS[e["type"]] for e in errs))
            lines.append(f"{path}: wrong type (got {_short(errs[0]['input'])}); use {wanted}")
            continue
        lines.extend(_one_line(path, e, root) for e in errs)
    return [ln for chunk in lines for ln in chunk.split("\n")]


def _one_line(path: str, err: dict[str, Any], root: type[BaseModel]) -> str:
    kind, got, ctx = err["type"], _short(err.get("input")), err.get("ctx") or {}
    loc = tuple(err["loc"])
    if kind == "extra_forbidden":
        valid, _ = _fields_at(loc[:-1], root)
        key = str(loc[-1])
        close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
        fix = f"did you mean '{close[0]}'?" if close else f"valid fields here: {', '.join(valid)}"
        return f"{path}: unknown field; {fix}"
    if kind == "missing":
        return f"{path}: required field is missing; add it (see `hdpo-tune init` for an example)"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"])).removeprefix("Value error, ")
    if kind in _TYPE_WORDS:
        return f"{path}: wrong type (got {got}); use {_TYPE_WORDS[kind]}"
    if kind == "literal_error":
        return f"{path}: invalid choice (got {got}); use one of {ctx.get('expected')}"
    bounds = {"greater_than": ("greater than", "gt"), "greater_than_equal": ("at least", "ge"),
              "less_than": ("less than", "lt"), "less_than_equal": ("at most", "le")}
    if kind in bounds:
        words, key = bounds[kind]
        return f"{path}: must be {words} {ctx.get(key)} (got {got}); change the value"
    if kind in ("string_too_short", "too_short"):
        return f"{path}: must not be empty (got {got}); fill it in"
    msg = err["msg"][:1].lower() + err["msg"][1:]
    return f"{path}: {msg} (got {got})"
