"""Progress for the training loop: a tqdm bar on a terminal, plain periodic lines in logs, and the stop flag
that SIGTERM/SIGINT set (the loop checkpoints at the next step boundary)."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from accelerate import Accelerator


class StopFlag:
    """SIGTERM/SIGINT set a flag; the loop checkpoints at the next step boundary and exits cleanly."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signal = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def progress_printer(accelerator: Accelerator, start: int, total: int) -> Callable[[dict[str, Any]], None]:
    """A tqdm bar (loss, accuracy, tokens/s, ETA) on a terminal; in a log (stderr not a TTY: CI, Kubernetes,
    ``docker logs``) one plain line every 30 s and at the end instead of carriage-return redraws."""
    if not accelerator.is_main_process:
        return lambda m: None
    if not sys.stderr.isatty():
        return _LogLines(start, total)
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True, leave=True)

    def update(m: dict[str, Any]) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{m['loss']:.4f}", acc=f"{m['rewards/accuracies']:.2f}",
                        tok_s=f"{m['tokens_per_s']:.0f}", refresh=False)
        if m["step"] >= total:
            bar.close()

    return update


class _LogLines:
    """Progress for logs: ``train step 40/120 (33%) loss 0.6512 acc 0.62 tok/s 4,410 elapsed 1m20s eta 2m40s``."""

    def __init__(self, start: int, total: int, every_s: float = 30.0) -> None:
        self.start, self.total, self.every_s = start, total, every_s
        self.t0 = self.last = time.monotonic()

    def __call__(self, m: dict[str, Any]) -> None:
        now = time.monotonic()
        step = int(m["step"])
        if now - self.last < self.every_s and step < self.total and step != self.start + 1:
            return
        self.last = now
        elapsed = now - self.t0
        done = step - self.start
        eta = elapsed / done * (self.total - step) if done else float("nan")
        print(f"train step {step}/{self.total} ({100 * step / self.total:.0f}%) loss {m['loss']:.4f} "
              f"acc {m['rewards/accuracies']:.2f} tok/s {m['tokens_per_s']:,.0f} elapsed {_hms(elapsed)} "
              f"eta {_hms(eta)}", file=sys.stderr, flush=True)


def _hms(seconds: float) -> str:
    if seconds != seconds:  # NaN
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
