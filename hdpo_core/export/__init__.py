"""Shipping a trained model: LoRA merge, model card and provenance, ONNX export + validation, Hub push.

Submodules are imported on demand: ``ort_generate`` must stay importable without torch or transformers
(a serving container needs only onnxruntime, tokenizers and numpy), so this package imports nothing.
"""
