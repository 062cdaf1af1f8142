"""Tokenise preference rows at the prompt/completion boundary, TRL's way, but never silently misaligned.

* standard: ``completion = ids(prompt + chosen)[len(ids(prompt)):] + [eos]``; EOS is added only when the
  completion does not already end with it (TRL appends the EOS text only when it is missing).
* standard with an implicit prompt: TRL's rule. The prompt text is the common character prefix less a
  trailing space (:func:`hdpo_core.data.split_implicit_prompt`); it is tokenised, and the boundary is where
  its ids stop agreeing with the ids of either full text. That prefix can end inside a token (``" 146"`` vs
  ``" 148"`` share ``" 14"``, a token of neither with GPT-2's pre-tokenizer), so the cut keeps only the
  prompt tokens both full sequences contain: the prompt never ends inside a token, and the ids are TRL's on
  every tokenizer (with Llama 3's or Qwen2's pre-tokenizer a digit is split from its space, so the lone
  ``" "`` of ``"1, 2, 3"`` / ``"1, 2, 4"`` goes to both completions, as in TRL).
* conversational: the prompt is rendered with the chat template and ``add_generation_prompt=True``; the
  completion is the rest of ``render(prompt + chosen)``; no extra EOS (the template closes the turn). Tool
  schemas of the row (OpenAI's ``input.tools``) are passed to the template, as TRL passes a ``tools`` column.

TRL only *warns* when ``ids(prompt)`` is not a prefix of ``ids(prompt + chosen)`` (its issues #5213,
#6105, #4481) and trains on misaligned labels. Here it is a row error naming ``file:row``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from .data import PreferenceRow, RowProblems
from .errors import InputError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

OverlongPolicy = Literal["truncate", "drop", "error"]


@dataclass(frozen=True)
class TokenizedPair:
    """Token ids of one pair: the shared prompt and the two completions (completion tokens only)."""

    prompt_ids: tuple[int, ...]
    chosen_ids: tuple[int, ...]
    rejected_ids: tuple[int, ...]
    source: str

    @property
    def num_tokens(self) -> int:
        """Tokens of the two full sequences (prompt counted twice), as trainers report throughput."""
        return 2 * len(self.prompt_ids) + len(self.chosen_ids) + len(self.rejected_ids)


def check_tokenizer(tokenizer: PreTrainedTokenizerBase, fmt: str) -> None:
    """Raise :class:`InputError` when the tokenizer cannot serve this data format."""
    if tokenizer.eos_token_id is None:
        raise InputError("model.name_or_path: the tokenizer has no eos_token; set one in tokenizer_config.json "
                         "(completions must end with EOS)")
    if tokenizer.pad_token_id is None:
        raise InputError("model.name_or_path: the tokenizer has no pad_token; set pad_token in "
                         "tokenizer_config.json (for example to the eos token)")
    if fmt == "conversational" and not getattr(tokenizer, "chat_template", None):
        raise InputError("data: conversational (message list) rows need a chat template, but the tokenizer has "
                         "none; add chat_template.jinja to the model folder or use standard string rows")


def _ids(tokenizer: PreTrainedTokenizerBase, text: str, add_special_tokens: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]], generation_prompt: bool,
            tools: list[dict[str, Any]] | None) -> str:
    return str(tokenizer.apply_chat_template(messages, tools=None if tools is None else list(tools), tokenize=False,
                                             add_generation_prompt=generation_prompt))


def _common_prefix_len(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _with_eos(completion: list[int], eos_id: int | None) -> list[int]:
    """Append EOS unless there is none to add (chat template) or the completion already ends with it."""
    return completion if eos_id is None or completion[-1:] == [eos_id] else completion + [eos_id]


def _check_template_renders(tokenizer: PreTrainedTokenizerBase, row: PreferenceRow) -> None:
    """Tools or tool calls that the chat template never mentions would be dropped from the text silently."""
    template = str(getattr(tokenizer, "chat_template", "") or "")
    calls = any(m.get("tool_calls") for part in (row.prompt, row.chosen, row.rejected) for m in part)
    for used, name in ((bool(row.tools), "tools"), (calls, "tool_calls")):
        if used and name not in template:
            raise InputError(f"{row.source}: the row has {name} but the model's chat template does not render "
                             f"'{name}', so they would be left out of the training text; use a model whose chat "
                             "template supports tools, or remove them from the row")


def _encode_row(tokenizer: PreTrainedTokenizerBase, row: PreferenceRow) -> tuple[list[int], list[int], list[int]]:
    eos_id = tokenizer.eos_token_id
    if row.format == "standard":
        full = [_ids(tokenizer, row.prompt + c, True) for c in (row.chosen, row.rejected)]
        prompt_ids = _ids(tokenizer, row.prompt, True)
        if row.implicit_prompt:  # the prompt text is a prefix of both texts: only the token boundary can move
            prompt_ids = prompt_ids[:min(_common_prefix_len(prompt_ids, ids) for ids in full)]
    else:
        _check_template_renders(tokenizer, row)
        prompt_ids = _ids(tokenizer, _render(tokenizer, row.prompt, True, row.tools), False)
        full = [_ids(tokenizer, _render(tokenizer, row.prompt + c, False, row.tools), False)
                for c in (row.chosen, row.rejected)]
        eos_id = None  # the template closes the turn
    n = len(prompt_ids)
    for name, ids in zip(("chosen", "rejected"), full, strict=True):
        if ids[:n] != prompt_ids:
            at = next((i for i in range(min(n, len(ids))) if ids[i] != prompt_ids[i]), min(n, len(ids)))
            raise InputError(
                f"{row.source}: the prompt's tokens are not a prefix of prompt+{name}'s tokens (they differ at "
                f"token {at}); the boundary would be misaligned. Usually the prompt ends mid-word or with a "
                "space that belongs to the completion: end the prompt on a token boundary (e.g. move a trailing "
                "space to the start of the completion)"
            )
    chosen, rejected = (_with_eos(ids[n:], eos_id) for ids in full)
    if not chosen or not rejected:
        raise InputError(f"{row.source}: a completion has no tokens after the prompt; fill it in or remove the row")
    if chosen == rejected:
        raise InputError(f"{row.source}: chosen and rejected tokenize identically; remove the row")
    return prompt_ids, chosen, rejected


def tokenize_rows(
    rows: list[PreferenceRow],
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_length: int,
    overlong: OverlongPolicy = "truncate",
    on_bad_row: Literal["error", "skip"] = "error",
    problems: RowProblems | None = None,
) -> tuple[list[TokenizedPair], RowProblems]:
    """Tokenise rows into :class:`TokenizedPair` objects.

    ``max_length`` bounds each of the two sequences (prompt + completion). Over-long pairs follow
    ``overlong``: ``truncate`` keeps the whole prompt and cuts the completions (a prompt that leaves no room
    is dropped or an error, per ``on_bad_row``), ``drop`` drops the pair and counts it, ``error`` stops.
    """
    problems = problems if problems is not None else RowProblems()
    if rows:
        check_tokenizer(tokenizer, rows[0].format)
    out: list[TokenizedPair] = []
    for row in rows:
        try:
            prompt, chosen, rejected = _encode_row(tokenizer, row)
            longest = len(prompt) + max(len(chosen), len(rejected))
            if longest > max_length:
                if overlong == "error":
                    raise InputError(f"{row.source}: pair is {longest} tokens, over data.max_length={max_length}; "
                                     "raise max_length or set data.overlong: truncate or drop")
                if overlong == "drop":
                    problems.add("overlong", f"{row.source}: {longest} tokens > max_length {max_length}")
                    continue
                room = max_length - len(prompt)
                if room < 1:
                    raise InputError(f"{row.source}: prompt alone is {len(prompt)} tokens, leaving no room for the "
                                     f"completion within data.max_length={max_length}; raise max_length or "
                                     "shorten the prompt")
                chosen, rejected = chosen[:room], rejected[:room]
                problems.skipped["truncated"] = problems.skipped.get("truncated", 0) + 1
                if chosen == rejected:
                    raise InputError(f"{row.source}: chosen and rejected are identical after truncation to "
                                     f"max_length={max_length}; raise max_length or remove the row")
        except InputError as exc:
            if on_bad_row == "error":
                raise
            problems.add("bad_row", exc.message)
            continue
        out.append(TokenizedPair(tuple(prompt), tuple(chosen), tuple(rejected), row.source))
    if not out:
        first = f" (first problem: {problems.messages[0]})" if problems.messages else ""
        raise InputError(f"data: no usable preference pairs after tokenization{first}")
    return out, problems


def largest_token(pairs: Iterable[TokenizedPair]) -> tuple[int, str] | None:
    """The largest token id in ``pairs`` and the ``file:row`` of the first pair holding it (None: no ids)."""
    best: tuple[int, str] | None = None
    for p in pairs:
        top = max((max(ids, default=-1) for ids in (p.prompt_ids, p.chosen_ids, p.rejected_ids)), default=-1)
        if top >= 0 and (best is None or top > best[0]):
            best = (top, p.source)
    return best


def token_id_problems(embedding_rows: int, *, eos_token_id: int | None, pad_token_id: int | None,
                      largest: tuple[int, str] | None) -> list[str]:
    """Every id a run feeds the model (eos, pad, the data's largest, from :func:`largest_token`) needs an
    embedding row: a tokenizer from another model otherwise fails deep in the forward pass with an IndexError.
    The one rule and message of ``hdpo-tune validate`` and the train stage; one line per offending id."""
    named = [(f"the tokenizer's {name} token id {value}", value)
             for name, value in (("eos", eos_token_id), ("pad", pad_token_id)) if isinstance(value, int)]
    if largest is not None:
        named.append((f"{largest[1]}: token id {largest[0]}", largest[0]))
    return [f"model.name_or_path: {what} is beyond the model's embedding ({embedding_rows} rows); the tokenizer "
            "does not belong to this model: use the model's own tokenizer or resize its embeddings"
            for what, value in named if value >= embedding_rows]
