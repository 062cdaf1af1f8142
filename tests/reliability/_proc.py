"""Run the real ``hdpo-tune`` console script as a subprocess (optionally with a fault injected, see
``tests/reliability/faults/sitecustomize.py``) and read what it said."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

HDPO_TUNE = Path(sys.executable).parent / "hdpo-tune"
ROOT = Path(__file__).resolve().parents[2]
FAULTS = Path(__file__).resolve().parent / "faults"
HOOKS = {"HDPO_FAKE_HUB", "HDPO_KILL_AFTER", "HDPO_OP_LOG"}  # the test hooks of faults/sitecustomize.py


def env(fault: str | None = None, **extra: str) -> dict[str, str]:
    """The child's environment: offline, one thread, this tree first on PYTHONPATH (and the fault hook, also
    for the stand-in Hub of ``HDPO_FAKE_HUB``)."""
    paths = [str(FAULTS)] if fault or set(extra) & HOOKS else []
    paths += [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    out = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(paths),
           **extra}
    if fault:
        out["HDPO_FAULT"] = fault
    else:
        out.pop("HDPO_FAULT", None)
    return out


def hdpo(*args: str, fault: str | None = None, cwd: Path | None = None, timeout: float = 600,
         **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(HDPO_TUNE), *args], env=env(fault, **extra), cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def one_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The single ``error: ...`` line of a failed command (and no traceback)."""
    lines = re.findall(r"^error: .*$", proc.stderr, re.M)
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]
