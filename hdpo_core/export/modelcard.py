"""Model card (``README.md``) and ``provenance.json`` for the merged folder.

The card is generated from the resolved spec and the eval results (never typed by hand), so the pushed
repo says how it was trained and how to load it. Secrets are stripped before anything is written.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
from pathlib import Path
from typing import Any

from hdpo_core.io import read_json

SECRET_KEY = re.compile(r"(token|secret|password|passwd|api[_-]?key|credential)", re.IGNORECASE)
PACKAGES = (
    "hdpo-tune",
    "torch",
    "transformers",
    "peft",
    "tokenizers",
    "huggingface-hub",
    "onnx",
    "onnxruntime",
    "onnxscript",
)


def scrub(value: Any) -> Any:
    """Drop secret-looking keys and any string equal to / containing the live HF_TOKEN, recursively."""
    token = os.environ.get("HF_TOKEN") or None
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items() if not SECRET_KEY.search(str(k))}
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    if isinstance(value, str) and token and token in value:
        return value.replace(token, "***")
    return value


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def git_commit() -> str | None:
    """HEAD of the hdpo-tune checkout this code runs from, if it is a git checkout."""
    try:
        res = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() or None if res.returncode == 0 else None


def fingerprints_in(obj: object, path: str = "") -> dict[str, Any]:
    """Every ``*fingerprint*`` / ``*sha256*`` entry found in ``obj`` (nested dicts), keyed by its dotted path."""
    found: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            where = f"{path}.{k}" if path else str(k)
            if re.search(r"fingerprint|sha256", str(k), re.IGNORECASE):
                found[where] = v
            else:
                found.update(fingerprints_in(v, where))
    return found


def provenance(spec: dict[str, Any], *, run_dir: Path, merge_info: dict[str, Any], extra: dict[str, Any] | None = None
               ) -> dict[str, Any]:
    """The provenance record: scrubbed spec, versions, git commit, data fingerprints, merge info."""
    sources = {"spec": spec, **(extra or {})}
    record: dict[str, Any] = scrub(
        {
            "run": run_dir.name,
            "spec": spec,
            "packages": package_versions(),
            "git_commit": git_commit(),
            "data_fingerprints": fingerprints_in(sources),
            "merge": merge_info,
        }
    )
    return record


def _flat(section: object, prefix: str) -> dict[str, Any]:
    if not isinstance(section, dict):
        return {}
    out: dict[str, Any] = {}
    for k, v in section.items():
        key = f"{prefix}.{k}"
        out.update(_flat(v, key) if isinstance(v, dict) else {key: v})
    return out


def dataset_names(data: object) -> list[str]:
    """Dataset ids/paths named in the spec's ``data`` section (``data.train``, ``data.eval``, or any string under
    a key mentioning path/dataset/name/id)."""
    flat = _flat(data, "data")
    return sorted(
        {str(v) for k, v in flat.items()
         if isinstance(v, str) and re.search(r"path|dataset|name|id$|^data\.(train|eval)$", k)}
    )


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def hub_model_id(name: str | None) -> str | None:
    """``name`` when it can be a Hub model id, else None. A local path in the card's ``base_model`` metadata
    makes the Hub refuse the push (its YAML validation: peft #2124, transformers #33922)."""
    if not name or Path(name).expanduser().exists() or not _HUB_ID.fullmatch(name):
        return None
    return name


def build_card(
    spec: dict[str, Any], *, base_model: str | None, eval_results: dict[str, Any] | None, repo_id: str | None, onnx: bool
) -> str:
    """Render the card text with ``huggingface_hub.ModelCard`` (YAML metadata + markdown body). ``base_model``
    goes into the metadata only when it is a Hub id; a local folder is named in the text only."""
    from huggingface_hub import ModelCard, ModelCardData

    section = spec.get("hdpo")
    hdpo = section if isinstance(section, dict) else {}
    alpha, beta = hdpo.get("alpha"), hdpo.get("beta")
    datasets = dataset_names(spec.get("data"))
    name = repo_id or "hdpo-tune-model"
    data = ModelCardData(
        base_model=hub_model_id(base_model),
        datasets=[d for d in datasets if "/" in d and not d.startswith((".", "/"))] or None,
        tags=["hdpo", "dpo", "h-dpo", "alignment", *(["onnx"] if onnx else [])],
        library_name="transformers",
        pipeline_tag="text-generation",
        model_name=name,
    )
    settings = {
        **_flat(spec.get("hdpo"), "hdpo"),
        **_flat(spec.get("train"), "train"),
        **_flat(spec.get("lora"), "lora"),
        **_flat(spec.get("quantization"), "quantization"),
    }
    rows = "\n".join(f"| `{k}` | `{v}` |" for k, v in scrub(settings).items()) or "| (none recorded) | |"
    evals = "\n".join(f"| {k} | {v} |" for k, v in _flat(eval_results or {}, "eval").items())
    body = f"""
# {name}

Aligned from {_base_text(base_model)} with **H-DPO** (entropy-controllable DPO,
loss `-log sigmoid(alpha*beta*(logp(y_w)-logp(y_l)) - beta*(logp_ref(y_w)-logp_ref(y_l)))`)
by [hdpo-tune](https://github.com/hdpo-tune). alpha = **{alpha}**, beta = **{beta}**
(alpha < 1 sharpens the distribution, lowering entropy; alpha = 1 is plain DPO).{_quant_text(spec)}

Datasets: {", ".join(f"`{d}`" for d in datasets) or "not recorded"}.

## Training settings

| setting | value |
|---|---|
{rows}

## Evaluation

{("| metric | value |" + chr(10) + "|---|---|" + chr(10) + evals) if evals else "No evaluation results were recorded for this run."}
{_lm_eval_section(eval_results)}

## How to load

With transformers:

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained("{name}")
model = AutoModelForCausalLM.from_pretrained("{name}", dtype="auto")
inputs = tok("Hello", return_tensors="pt")
print(tok.decode(model.generate(**inputs, max_new_tokens=32)[0], skip_special_tokens=True))
```

With onnxruntime (no torch; needs `onnxruntime`, `tokenizers`, `numpy`{"" if onnx else "; this repo has no ONNX export"}):

```bash
hf download {name} --include "onnx/*" --local-dir model
hdpo-tune generate --onnx model/onnx --prompt "Hello" --max-new-tokens 32
```

The ONNX graph is one decoder with KV cache (`past_key_values.*` in, `present.*` out, `attention_mask`,
`position_ids`); `onnx/hdpo_onnx.json` gives the names and cache shapes and `onnx/validation.json` the
measured parity with PyTorch. Provenance (spec, package versions, git commit): `provenance.json`.
"""
    return str(ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n" + body))


def _lm_eval_section(eval_results: dict[str, Any] | None) -> str:
    """lm-evaluation-harness's numbers (``eval.lm_eval``) as the leaderboards name them: task, metric, value."""
    head = (eval_results or {}).get("headline", {}).get("lm_eval") or {}
    if not head:
        return ""
    rows = "\n".join(f"| {k.partition('/')[0]} | {k.partition('/')[2]} | {v:.4f} |" for k, v in head.items())
    return f"\n### lm-evaluation-harness\n\n| task | metric | value |\n|---|---|---|\n{rows}\n"


def _quant_text(spec: dict[str, Any]) -> str:
    """QLoRA: the adapter was trained on a k-bit base; these weights are the dequantized base plus the adapter."""
    q = spec.get("quantization")
    if not isinstance(q, dict):
        return ""
    kind = f"4-bit {q.get('quant_type', 'nf4')}" if q.get("bits", 4) == 4 else "8-bit"
    return (f"\nThe LoRA adapter was trained on a **{kind}** (bitsandbytes) base (QLoRA); these weights are "
            "the dequantized base plus the adapter.")


def load_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``; None when absent, torn or not an object (never a traceback)."""
    data = read_json(path)
    return data if isinstance(data, dict) else None


def _base_text(base_model: str | None) -> str:
    if not base_model:
        return "an unrecorded base model"
    if hub_model_id(base_model):
        return f"[`{base_model}`](https://huggingface.co/{base_model})"
    return f"a local model (`{Path(base_model).name}`)"
