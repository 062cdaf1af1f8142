"""Task files for the sampling evaluation: JSONL, one task per line.

``prompt`` + ``answer`` (math, exact, regex), ``prompt`` + ``test`` + ``entry_point`` (code), ``prompt`` +
``options`` + ``answer`` (choice) or ``prompt`` + ``instruction_id_list`` + ``kwargs`` (ifeval). ``prompt`` is a
string (tokenised with the tokenizer's special tokens, as training's standard format does) or a list of
``{role, content}`` messages (rendered with the chat template and a generation prompt).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hdpo_core.errors import InputError
from hdpo_core.inputs import iter_jsonl

from .verifiers import Verifier

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

MAX_TASK_BYTES = 1 << 20  # one task line (prompt + test): kilobytes in every benchmark


def row_problem(row: Any, verifier: Verifier) -> str | None:
    """What makes ``row`` unusable for ``verifier`` (missing fields, then the verifier's own checks), with the fix."""
    missing = [f for f in verifier.fields if not isinstance(row, dict) or row.get(f) in (None, "")]
    if missing:
        return f"missing field(s) {missing}; the '{verifier.name}' verifier needs {list(verifier.fields)}"
    return verifier.row_problem(row) if verifier.row_problem else None


def load_tasks(path: str | Path, verifier: Verifier, problems: list[str] | None = None) -> list[dict[str, Any]]:
    """Read and check every task; raises :class:`InputError` naming ``file:line`` at the first bad row, or, given
    a ``problems`` list, appends one line per bad row there and goes on (``hdpo-tune validate``)."""
    p = Path(path)
    if not os.path.lexists(p):
        raise InputError(f"{p}: task file not found; pass a JSONL file with one task per line (--tasks / eval.tasks)")
    tasks: list[dict[str, Any]] = []
    for loc, row in iter_jsonl(p, "task file", max_row_bytes=MAX_TASK_BYTES):
        problem = row_problem(row, verifier)
        if problem:
            if problems is None:
                raise InputError(f"{loc}: {problem}")
            problems.append(f"{loc}: {problem}")
        else:
            tasks.append(row)
    if not tasks and not problems:
        raise InputError(f"{p}: task file is empty")
    return tasks


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: object) -> list[int]:
    """Token ids of a task prompt (string or message list)."""
    if isinstance(prompt, list):
        if not getattr(tokenizer, "chat_template", None):
            raise InputError("tasks: message-list prompts need a chat template, but the tokenizer has none")
        text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(str(prompt), add_special_tokens=True)["input_ids"])
