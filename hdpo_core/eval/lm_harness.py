"""EleutherAI's lm-evaluation-harness on a model folder: the numbers the open leaderboards report, stored next
to hdpo-tune's own. lm-eval is used as a library (``simple_evaluate``), never reimplemented.

Backends: lm-eval's ``hf`` (transformers; a peft adapter is passed as ``peft=`` on its base) or ``vllm`` when
vLLM is installed and a GPU is present (``backend: auto``). Task names are checked against lm-eval's task index
(plus ``include_path``, a folder of custom task YAMLs) before any model loads, and each task's data is loaded
before the model: a name lm-eval does not know, or data that cannot be reached (offline, no cache), is one line
naming the task.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from hdpo_core.errors import InputError

EXTRA = "eval"


@dataclass(frozen=True)
class HarnessSettings:
    """What ``eval.lm_eval`` says (see ``LmEvalSpec`` for each field)."""

    tasks: tuple[str, ...]
    num_fewshot: int | None = None
    limit: float | None = None
    batch_size: int = 8
    include_path: str | None = None
    backend: str = "auto"
    apply_chat_template: bool = False


def _lm_eval() -> Any:
    try:
        import lm_eval
    except ImportError:
        raise InputError(f"eval.lm_eval needs lm-evaluation-harness; install the extra: pip install "
                         f"'hdpo-tune[{EXTRA}]'") from None
    return lm_eval


@lru_cache(maxsize=4)
def task_manager(s: HarnessSettings) -> Any:
    """lm-eval's task index. Only the custom folder when every name is in it (indexing lm-eval's ~10k built-in
    task files takes a while), else the built-in tasks too."""
    _lm_eval()
    from lm_eval.tasks import TaskManager

    if s.include_path:
        if not Path(s.include_path).is_dir():
            raise InputError(f"eval.lm_eval.include_path: {s.include_path} is not a folder; give the folder that "
                             "holds your task YAML files")
        custom = TaskManager(include_path=s.include_path, include_defaults=False)
        if all(t in custom.all_tasks for t in s.tasks):
            return custom
    return TaskManager(include_path=s.include_path)


def unknown_tasks(s: HarnessSettings, manager: Any) -> list[str]:
    """One line per task name lm-eval does not know."""
    where = f" or in {s.include_path}" if s.include_path else " (custom tasks: eval.lm_eval.include_path)"
    return [f"eval.lm_eval.tasks: '{t}' is not an lm-evaluation-harness task{where}; list them with "
            "`lm-eval ls tasks`" for t in s.tasks if t not in manager.all_tasks]


def load_task_data(s: HarnessSettings, manager: Any) -> dict[str, Any]:
    """Build each task (lm-eval loads its data set here), one at a time so a failure names its task."""
    from lm_eval.tasks import get_task_dict

    built: dict[str, Any] = {}
    for name in s.tasks:
        try:
            built.update(get_task_dict([name], manager))
        except Exception as exc:  # datasets / hub / fsspec raise many types; the message is what matters
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise InputError(f"eval.lm_eval.tasks: '{name}': its data cannot be loaded ({type(exc).__name__}: "
                             f"{first}); offline, run it once with network (the datasets cache then serves it) "
                             "or point the task at a local file") from None
    return built


def _backend(s: HarnessSettings, device: str) -> str:
    if s.backend != "auto":
        return s.backend
    import importlib.util

    return "vllm" if device == "cuda" and importlib.util.find_spec("vllm") is not None else "hf"


def model_args(model_dir: Path, kind: str, backend: str, device: str) -> dict[str, Any]:
    """lm-eval's ``model_args`` for a full model folder or a peft adapter (on its base)."""
    if kind == "onnx":
        raise InputError("eval.lm_eval: lm-evaluation-harness needs a transformers model; evaluate the run folder "
                         "or its merged/ model, not the ONNX export")
    dtype = "bfloat16" if device == "cuda" else "float32"
    if kind == "peft":
        if backend == "vllm":
            raise InputError("eval.lm_eval.backend: vllm needs a merged model; merge first (hdpo-tune merge RUN) "
                             "or use backend: hf for an adapter")
        import json

        base = json.loads((model_dir / "adapter_config.json").read_text(encoding="utf-8"))["base_model_name_or_path"]
        return {"pretrained": base, "peft": str(model_dir), "dtype": dtype}
    return {"pretrained": str(model_dir), "dtype": dtype}


def _numbers(task_results: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in task_results.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and k != "sample_len"}


def run_harness(model_dir: Path, kind: str, s: HarnessSettings, *, device: str) -> dict[str, Any]:
    """Run lm-eval; returns ``{"backend", "lm_eval_version", "settings", "tasks": {task: {metric: value}},
    "n_samples": {task: n}}`` with lm-eval's own metric keys (``acc,none``, ``exact_match,strict-match``)."""
    lm_eval = _lm_eval()
    manager = task_manager(s)
    problems = unknown_tasks(s, manager)
    if problems:
        raise InputError(problems[0])
    backend = _backend(s, device)
    args = model_args(model_dir, kind, backend, device)
    tasks = load_task_data(s, manager)
    unsafe = [name for name, task in tasks.items() if getattr(task, "UNSAFE_CODE", False)]
    if unsafe:  # lm-eval would exec model-written code unsandboxed; hdpo-tune's code verifier sandboxes it
        raise InputError(f"eval.lm_eval.tasks: '{unsafe[0]}' runs model-written code outside any sandbox; use "
                         "hdpo-tune's verifier: code (bubblewrap) for code tasks instead")
    out = lm_eval.simple_evaluate(model=backend, model_args=args, tasks=list(tasks.values()),
                                  num_fewshot=s.num_fewshot, limit=s.limit, batch_size=s.batch_size,
                                  device=device, task_manager=manager, log_samples=False,
                                  apply_chat_template=s.apply_chat_template)
    results = out["results"] if out else {}
    better = (out or {}).get("higher_is_better", {})
    return {"backend": backend, "lm_eval_version": getattr(lm_eval, "__version__", None),
            "settings": {**s.__dict__, "tasks": list(s.tasks)},
            "tasks": {name: _numbers(r) for name, r in results.items()},
            "n_samples": {name: int(r["sample_len"]) for name, r in results.items() if "sample_len" in r},
            "higher_is_better": {name: {m: bool(v) for m, v in better.get(name, {}).items() if v is not None}
                                 for name in results}}


def headline_key(task: str, metric_key: str) -> str:
    """``gsm8k/exact_match/strict-match`` for lm-eval's ``exact_match,strict-match``; ``task/acc`` for
    ``acc,none``: names every tracker accepts (MLflow refuses commas)."""
    metric, _, flt = metric_key.partition(",")
    return f"{task}/{metric}" + (f"/{flt}" if flt and flt != "none" else "")


def headline_numbers(harness: dict[str, Any]) -> dict[str, float]:
    """``{headline_key: value}`` without standard errors: the lm-eval numbers the pipeline prints, the model
    card, ``compare`` and the sweep's ``lm_eval:`` selection use."""
    return {headline_key(task, metric): v for task, metrics in harness.get("tasks", {}).items()
            for metric, v in metrics.items() if "_stderr" not in metric}
