"""hdpo_core: the H-DPO engine (loss, log-probs, data, model/reference, training loop, eval, export).

The core never sees the job spec: it takes flat arguments and its own frozen dataclasses.
"""

__version__ = "0.1.0"
