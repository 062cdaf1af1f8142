"""Evaluation: sampling (KV-cache batched), verifiers + code sandbox, pass@k, diversity, entropy, preference
metrics, reports and run comparison (docs/eval.md)."""
