"""The evaluation itself, on flat arguments: sampling metrics per temperature, preference metrics, entropy,
for the policy and (optionally) the reference. :mod:`service.stages.eval` turns the job spec into this call.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hdpo_core.tokenize import TokenizedPair

from .diversity import diversity_metrics
from .passk import pass_at_k_curve
from .preference import chosen_entropy, preference_metrics, score_pairs
from .sampling import Samples, sample_batched
from .targets import EvalSide
from .tasks import encode_prompt
from .verifiers import Verifier, judge_many, sum_tallies

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class SamplingSettings:
    """How tasks are sampled and checked (see ``EvalSpec`` for the meaning of each field)."""

    n: int = 8
    temperatures: tuple[float, ...] = (0.25, 0.5, 1.0)
    top_p: float | None = None
    max_new_tokens: int = 64
    seed: int = 0
    max_batch_size: int = 64
    timeout_s: float = 5.0
    memory_mb: int = 512
    workers: int = 2
    allow_unsandboxed_code: bool = False


def _draw(side: EvalSide, prompts: list[list[int]], tokenizer: PreTrainedTokenizerBase, s: SamplingSettings,
          t: float) -> Samples:
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    if side.sampler is not None:
        return side.sampler.sample(prompts, n=s.n, temperature=t, top_p=s.top_p, max_new_tokens=s.max_new_tokens,
                                   seed=s.seed, eos_token_id=eos, pad_token_id=pad, max_batch_size=s.max_batch_size)
    if side.model is None:
        raise ValueError(f"{side.name}: an EvalSide needs a torch model or a sampler")
    return sample_batched(side.model, prompts, n=s.n, temperature=t, top_p=s.top_p, max_new_tokens=s.max_new_tokens,
                          seed=s.seed, eos_token_id=eos, pad_token_id=pad, max_batch_size=s.max_batch_size)


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def sample_and_score(side: EvalSide, tokenizer: PreTrainedTokenizerBase, tasks: Sequence[dict[str, Any]],
                     verifier: Verifier, s: SamplingSettings) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Per-temperature metrics for one side, and the samples (for samples.jsonl)."""
    prompts = [encode_prompt(tokenizer, t["prompt"]) for t in tasks]
    per_temp: dict[str, Any] = {}
    records: list[dict[str, Any]] = []
    for temp in s.temperatures:
        start = time.perf_counter()
        with side.active():
            samples = _draw(side, prompts, tokenizer, s, temp)
        seconds = time.perf_counter() - start
        texts = [str(tokenizer.decode(t, skip_special_tokens=True)) for t in samples.tokens]
        items = [(tasks[r // s.n], texts[r]) for r in range(len(texts))]
        judged = judge_many(verifier, items, workers=s.workers, timeout_s=s.timeout_s, memory_mb=s.memory_mb,
                            allow_unsandboxed=s.allow_unsandboxed_code)
        ok = [j.correct for j in judged]
        counts, div = [], []
        for i in range(len(tasks)):
            rows = range(i * s.n, (i + 1) * s.n)
            counts.append(sum(ok[r] for r in rows))
            div.append(diversity_metrics([texts[r] for r in rows], [verifier.answer(texts[r]) for r in rows]))
        ent_tokens = sum(samples.entropy_count)
        curve = pass_at_k_curve(counts, s.n)
        per_temp[f"{temp:g}"] = {
            "temperature": temp,
            "accuracy": _mean([float(x) for x in ok]),
            "pass_at_k": curve,
            "coverage": _mean([float(c > 0) for c in counts]),
            "entropy_sampled": sum(samples.entropy_sum) / ent_tokens if ent_tokens else float("nan"),
            "mean_new_tokens": _mean([float(len(t)) for t in samples.tokens]),
            "finished_fraction": _mean([float(f) for f in samples.finished]),
            "diversity": {k: _mean([d[k] for d in div]) for k in div[0]},
            "samples_per_s": len(texts) / seconds if seconds > 0 else float("nan"),
        }
        if any(j.tally for j in judged):  # e.g. IFEval's four accuracies, choice's extraction failures
            per_temp[f"{temp:g}"]["verifier_metrics"] = sum_tallies([j.tally for j in judged])
        records.extend({"model": side.name, "temperature": temp, "task": r // s.n, "sample": r % s.n,
                        "completion": texts[r], "correct": ok[r]} for r in range(len(texts)))
    return per_temp, records


def _entropy_temperature(temps: Sequence[float]) -> float:
    """The temperature whose samples give the headline sampled entropy: 1.0, else the closest one."""
    return min(temps, key=lambda t: abs(t - 1.0))


def run_evaluation(policy: EvalSide, reference: EvalSide | None, tokenizer: PreTrainedTokenizerBase, *,
                   tasks: Sequence[dict[str, Any]] | None, verifier: Verifier, settings: SamplingSettings,
                   pairs: Sequence[TokenizedPair] | None, alpha: float, beta: float,
                   sample_reference: bool = True) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Evaluate; returns ``(results, samples)``. ``results`` is what results.json holds (see docs/eval.md)."""
    sides = [policy] + ([reference] if reference is not None else [])
    results: dict[str, Any] = {"alpha": alpha, "beta": beta, "verifier": verifier.name,
                               "settings": {**settings.__dict__, "temperatures": list(settings.temperatures)}}
    all_samples: list[dict[str, Any]] = []
    scores = {}
    if pairs:
        for side in sides:
            if side.model is not None:
                with side.active():
                    scores[side.name] = score_pairs(side.model, pairs, pad_token_id=tokenizer.pad_token_id)
        if "policy" in scores:
            results["preference"] = preference_metrics(scores["policy"], scores.get("reference"),
                                                       alpha=alpha, beta=beta)
    if tasks:
        results["num_tasks"] = len(tasks)
        if verifier.chance is not None:  # what a random guess scores: the floor the accuracy is read against
            results["chance_accuracy"] = _mean([verifier.chance(t) for t in tasks])
        results["sampling"] = {}
        for side in sides:
            if side.name == "reference" and not sample_reference:
                continue
            results["sampling"][side.name], recs = sample_and_score(side, tokenizer, tasks, verifier, settings)
            all_samples.extend(recs)
    results["headline"] = headline(results, scores)
    return results, all_samples


def headline(results: dict[str, Any], scores: dict[str, Any]) -> dict[str, Any]:
    """The few numbers the pipeline prints: accuracy per temperature, entropy before (reference) / after."""
    out: dict[str, Any] = {"accuracy": {}, "pass_at_n": {}, "entropy_chosen": {}, "entropy_sampled": {}}
    for name, sc in scores.items():
        out["entropy_chosen"][name] = chosen_entropy(sc)
    for name, per_temp in results.get("sampling", {}).items():
        out["accuracy"][name] = {k: v["accuracy"] for k, v in per_temp.items()}
        out["pass_at_n"][name] = {k: v["pass_at_k"][-1] for k, v in per_temp.items()}
        t = _entropy_temperature([v["temperature"] for v in per_temp.values()])
        out["entropy_sampled"][name] = per_temp[f"{t:g}"]["entropy_sampled"]
        out["entropy_sampled_temperature"] = t
    if "chance_accuracy" in results:
        out["chance_accuracy"] = results["chance_accuracy"]
    if "preference" in results:
        pref = results["preference"]
        out["reward_accuracy"] = pref.get("rewards/accuracies")
        out["loss"] = pref.get("loss")
    return {k: v for k, v in out.items() if v not in ({}, None) and not (isinstance(v, float) and math.isnan(v))}
