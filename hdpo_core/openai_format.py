"""OpenAI's preference fine-tuning rows (the JSONL their DPO fine-tuning API takes), as conversational rows.

A row of that format::

    {"input": {"messages": [{"role": "user", "content": "..."}], "tools": [...], "parallel_tool_calls": true},
     "preferred_output": [{"role": "assistant", "content": "..."}],
     "non_preferred_output": [{"role": "assistant", "content": "..."}]}

becomes prompt = ``input.messages``, chosen = ``preferred_output``, rejected = ``non_preferred_output``, and the
tool schemas ``input.tools`` go to the chat template (``apply_chat_template(tools=...)``, as TRL passes a
``tools`` column). Every mapping choice keeps the text the open model's chat template renders as close as
possible to what the row means, so a file prepared for that service trains here unchanged:

* role ``developer`` (OpenAI's newer name for the system message) becomes ``system``: open models' chat
  templates know ``system`` and reject or drop unknown roles;
* ``content`` given as a list of parts becomes the text parts joined; a non-text part (image, audio, file)
  is a row error, since a text model cannot be trained on it;
* an assistant message's ``tool_calls`` keep their OpenAI shape, but each ``function.arguments`` (a JSON
  *string* there) is parsed into an object, the shape Hugging Face chat templates render (a string would be
  JSON-encoded twice);
* ``parallel_tool_calls`` and any other key that does not change the rendered text is ignored.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import InputError

OPENAI_KEYS = ("input", "preferred_output", "non_preferred_output")
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
_HINT = ("OpenAI's preference format is {\"input\": {\"messages\": [...]}, \"preferred_output\": [{\"role\": "
         "\"assistant\", \"content\": ...}], \"non_preferred_output\": [...]}")

Messages = list[dict[str, Any]]


def is_openai_row(row: dict[str, Any]) -> bool:
    """A row is in OpenAI's format when it has one of its keys and none of TRL's (``chosen``/``rejected``)."""
    return "chosen" not in row and "rejected" not in row and any(k in row for k in OPENAI_KEYS)


def openai_to_conversational(location: str, row: dict[str, Any]) -> tuple[Messages, Messages, Messages,
                                                                           list[dict[str, Any]] | None]:
    """``(prompt, chosen, rejected, tools)`` of one OpenAI row; raises :class:`InputError` naming ``location``."""
    missing = [k for k in OPENAI_KEYS if k not in row]
    if missing:
        raise InputError(f"{location}: missing field '{missing[0]}'; {_HINT}")
    inp = row["input"]
    if not isinstance(inp, dict) or not isinstance(inp.get("messages"), list):
        raise InputError(f"{location}: 'input' must be an object with a 'messages' list; {_HINT}")
    prompt = _messages(location, "input.messages", inp["messages"])
    if not prompt:
        raise InputError(f"{location}: 'input.messages' is empty; it needs the conversation before the answer")
    chosen = _output(location, "preferred_output", row["preferred_output"])
    rejected = _output(location, "non_preferred_output", row["non_preferred_output"])
    return prompt, chosen, rejected, _tools(location, inp.get("tools"))


def _output(location: str, name: str, value: object) -> Messages:
    if not isinstance(value, list) or not value:
        raise InputError(f"{location}: '{name}' must be a non-empty list of assistant messages; {_HINT}")
    messages = _messages(location, name, value)
    wrong = next((i for i, m in enumerate(messages) if m["role"] != "assistant"), None)
    if wrong is not None:
        raise InputError(f"{location}: {name}[{wrong}] has role '{messages[wrong]['role']}'; the preferred and "
                         "non-preferred outputs are the assistant's answer (role 'assistant')")
    return messages


def _messages(location: str, name: str, value: list[Any]) -> Messages:
    out: Messages = []
    for i, m in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise InputError(f"{location}: {where} must be an object with a 'role' and 'content'")
        role = _ROLES.get(m["role"])
        if role is None:
            raise InputError(f"{location}: {where} has role '{m['role']}'; use one of "
                             f"{', '.join(sorted(_ROLES))}")
        msg: dict[str, Any] = {"role": role, "content": _content(location, where, m.get("content"))}
        if m.get("tool_calls"):
            msg["tool_calls"] = _tool_calls(location, where, m["tool_calls"])
        for key in ("tool_call_id", "name"):
            if isinstance(m.get(key), str):
                msg[key] = m[key]
        out.append(msg)
    return out


def _content(location: str, where: str, content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            if kind != "text" or not isinstance(part.get("text"), str):
                raise InputError(f"{location}: {where}.content has a part of type '{kind}'; only text parts "
                                 "({\"type\": \"text\", \"text\": ...}) can train a text model")
            texts.append(part["text"])
        return "".join(texts)
    raise InputError(f"{location}: {where}.content must be a string or a list of text parts, "
                     f"got {type(content).__name__}")


def _tool_calls(location: str, where: str, calls: object) -> list[dict[str, Any]]:
    if not isinstance(calls, list):
        raise InputError(f"{location}: {where}.tool_calls must be a list")
    out = []
    for j, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise InputError(f"{location}: {where}.tool_calls[{j}] needs a 'function' with a 'name'")
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError as exc:
                raise InputError(f"{location}: {where}.tool_calls[{j}].function.arguments is not valid JSON "
                                 f"({exc.msg}); it must be a JSON object as a string") from None
        if not isinstance(args, dict):
            raise InputError(f"{location}: {where}.tool_calls[{j}].function.arguments must be a JSON object")
        out.append({**{k: v for k, v in call.items() if k != "function"},
                    "type": "function", "function": {"name": fn["name"], "arguments": args}})
    return out


def _tools(location: str, tools: Any) -> list[dict[str, Any]] | None:
    if tools is None or tools == []:
        return None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise InputError(f"{location}: 'input.tools' must be a list of tool objects "
                         "({\"type\": \"function\", \"function\": {...}})")
    return tools
