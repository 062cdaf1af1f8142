"""An Ollama ``Modelfile`` for a GGUF export, with the chat template written as a Go template.

Ollama's ``TEMPLATE`` is Go ``text/template``, not the Jinja the tokenizer carries, and Jinja cannot be
translated in general. Nearly every chat template is a *per-role wrapper* though: each message is
``prefix(role) + content + suffix(role)``, plus a preamble before the first message and a generation prompt at
the end. Those pieces are read off by rendering the Jinja template on marker conversations; the pieces are then
re-assembled in Python and compared with the Jinja rendering of longer conversations, so a template that is
not of that kind (one that counts turns, or reformats content) is refused with one line instead of being
written wrong. What the runtime adds itself is left out: Ollama tokenizes the rendered prompt with llama.cpp,
which prepends the BOS when the GGUF says ``tokenizer.ggml.add_bos_token``, so a template that starts with
``{{ bos_token }}`` (every Llama 3 template) would otherwise give two. ``tests/export/test_gguf.py`` renders
the result with Go's own ``text/template`` when a Go toolchain is installed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from hdpo_core.errors import InputError

# render(messages, add_generation_prompt) -> text: the tokenizer's apply_chat_template, untokenised
Render = Callable[[list[dict[str, str]], bool], str]

_M = {"s": "\x02S\x02", "u1": "\x02U1\x02", "a1": "\x02A1\x02", "u2": "\x02U2\x02"}


@dataclass(frozen=True)
class ChatPieces:
    """``preamble`` is emitted before a first non-system message; ``system_head`` replaces it for a system one."""

    preamble: str
    user: tuple[str, str]
    assistant: tuple[str, str]
    system: tuple[str, str] | None
    generation: str

    def render(self, messages: list[dict[str, str]]) -> str:
        """The same text the Go template renders (used to check the pieces against Jinja)."""
        out = []
        for i, m in enumerate(messages):
            if m["role"] == "system":
                out.append(self.system[0] + m["content"] + self.system[1] if self.system else "")
                continue
            pre, post = self.user if m["role"] == "user" else self.assistant
            out.append((self.preamble if i == 0 else "") + pre + m["content"] + post)
        return "".join(out) + self.generation


def _split_once(text: str, marker: str, what: str) -> tuple[str, str]:
    if text.count(marker) != 1:
        raise InputError(f"chat template: {what} does not appear exactly once in its rendering; "
                         "it is not a per-role template Ollama's TEMPLATE can express (set export.gguf.modelfile: false)")
    head, tail = text.split(marker)
    return head, tail


def _strip(text: str, prefix: str = "", suffix: str = "") -> str:
    if not text.startswith(prefix) or not text.endswith(suffix) or len(prefix) + len(suffix) > len(text):
        raise InputError("chat template: renders differently per position; it is not a per-role template "
                         "Ollama's TEMPLATE can express (set export.gguf.modelfile: false)")
    return text[len(prefix): len(text) - len(suffix)]


def _without_prefix(render: Render, prefix: str) -> Render:
    if not prefix:
        return render

    def cut(messages: list[dict[str, str]], generation: bool) -> str:
        text = render(messages, generation)
        return text[len(prefix):] if text.startswith(prefix) else text

    return cut


def chat_pieces(render: Render, runtime_prefix: str = "") -> ChatPieces:
    """Derive the pieces from ``render`` (the tokenizer's ``apply_chat_template``) and check them.

    ``runtime_prefix`` (the BOS text when the runtime adds the BOS) is cut from the start of every rendering
    that begins with it, so the runtime's BOS plus the template gives the Jinja rendering's tokens once.
    """
    render = _without_prefix(render, runtime_prefix)
    u1, a1, u2 = ({"role": r, "content": _M[k]} for r, k in (("user", "u1"), ("assistant", "a1"), ("user", "u2")))
    r1 = render([u1], False)
    head_u, user_post = _split_once(r1, _M["u1"], "the user message")
    generation = _strip(render([u1], True), prefix=r1)
    r2 = render([u1, a1], False)
    between, asst_post = _split_once(r2, _M["a1"], "the assistant message")
    asst_pre = _strip(_split_once(between, _M["u1"], "the user message")[1], prefix=user_post)
    r3 = render([u1, a1, u2], False)
    user_pre = _strip(_split_once(r3, _M["u2"], "the second user message")[0], prefix=r2)
    preamble = _strip(head_u, suffix=user_pre)
    system = None
    try:
        r4 = render([{"role": "system", "content": _M["s"]}, u1], False)
    except Exception:  # noqa: BLE001 - a template may refuse system messages; Ollama then gets none
        r4 = None
    if r4 is not None and _M["s"] in r4:
        sys_head, rest = _split_once(r4, _M["s"], "the system message")
        sys_post = _strip(_split_once(rest, _M["u1"], "the user message")[0], suffix=user_pre)
        system = (sys_head, sys_post)
    pieces = ChatPieces(preamble, (user_pre, user_post), (asst_pre, asst_post), system, generation)
    checks = [[u1, a1, u2], [u1, a1, u2, {"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]]
    if system is not None:
        checks.append([{"role": "system", "content": "Be brief."}, u1, a1, u2])
    for msgs in checks:
        if pieces.render(msgs) != render(msgs, True):
            raise InputError("chat template: the per-role pieces do not reproduce a longer conversation; it is "
                             "not a template Ollama's TEMPLATE can express (set export.gguf.modelfile: false)")
    return pieces


def _lit(text: str) -> str:
    """A literal piece of Go template text; quoted as a string action when it holds template delimiters."""
    if not text:
        return ""
    if "{{" in text or "}}" in text or '"""' in text:
        return "{{ " + json.dumps(text, ensure_ascii=False) + " }}"
    return text


def go_template(p: ChatPieces) -> str:
    """Ollama TEMPLATE over ``.Messages`` (role + content), equal to :meth:`ChatPieces.render`."""
    sys_branch = (
        f'{{{{ if eq $m.Role "system" }}}}{_lit(p.system[0])}{{{{ $m.Content }}}}{_lit(p.system[1])}'
        if p.system is not None else '{{ if eq $m.Role "system" }}'
    )
    first = f"{{{{ if eq $i 0 }}}}{_lit(p.preamble)}{{{{ end }}}}" if p.preamble else ""
    return (
        "{{ range $i, $m := .Messages }}"
        + sys_branch
        + f'{{{{ else if eq $m.Role "user" }}}}{first}{_lit(p.user[0])}{{{{ $m.Content }}}}{_lit(p.user[1])}'
        + f"{{{{ else }}}}{first}{_lit(p.assistant[0])}{{{{ $m.Content }}}}{_lit(p.assistant[1])}"
        + "{{ end }}{{ end }}"
        + _lit(p.generation)
    )


def modelfile(gguf_name: str, template: str | None, stop: list[str]) -> str:
    """Modelfile text: ``FROM ./<gguf>``, ``TEMPLATE`` (when the model has a chat template), stop tokens."""
    lines = [
        "# Written by hdpo-tune. In this folder: ollama create <name> -f Modelfile && ollama run <name>",
        f"FROM ./{gguf_name}",
    ]
    if template is not None:
        lines.append(f'TEMPLATE """{template}"""')
    lines += [f"PARAMETER stop {json.dumps(s, ensure_ascii=False)}" for s in stop]
    return "\n".join(lines) + "\n"
