"""Running the built image with podman (or docker) from the container tests: one place for the engine's
command line, the demo job copies, and polling a run folder from the host.

The image comes from ``HDPO_IMAGE`` (``make test-container`` builds it and sets it), the engine from
``HDPO_ENGINE`` (default podman). Jobs run as a non-root uid: the calling user's, or 4321 when the caller is
root (CI), so "the run folder belongs to the caller" is checked for a uid other than the image's 0 and 1000.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "demo"
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
IMAGE = os.environ.get("HDPO_IMAGE", "")
ENGINE = os.environ.get("HDPO_ENGINE", "podman")
RUN_TIMEOUT_S = 1800  # one container run on 2 busy cores; generous, never a pass/fail criterion
UID = os.getuid() or 4321
GID = os.getgid() or 4321


def engine(*args: str, timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """``podman ARGS`` (or docker), output captured as text."""
    return subprocess.run([ENGINE, *args], capture_output=True, text=True, timeout=timeout)


def run_args(work: Path, *, name: str | None = None, env: dict[str, str] | None = None, ro: bool = False,
             user: bool = True, extra: tuple[str, ...] = ()) -> list[str]:
    """The documented `run` flags: the caller's uid, HOME=/tmp (that uid has no home in the image), the job
    folder at /work and a host folder as the Hugging Face cache (a named volume belongs to uid 1000)."""
    cache = work.parent / "hf-cache"
    cache.mkdir(exist_ok=True)
    os.chown(cache, UID, GID)
    args = ["run", "--network=none", "-v", f"{work}:/work{':ro' if ro else ''}", "-v", f"{cache}:/cache/huggingface",
            "-e", "HF_HUB_OFFLINE=1"]
    if user:
        args += ["--user", f"{UID}:{GID}", "-e", "HOME=/tmp"]
    for key, value in (env or {}).items():
        args += ["-e", f"{key}={value}"]
    if name:
        args += ["--name", name]
    return [*args, *extra, IMAGE]


def demo_workdir(root: Path, *, steps: int, ship: bool) -> Path:
    """A job folder with a copy of the demo model and data and a CI-sized copy of examples/quickstart.yaml
    (``steps`` optimizer steps; eval on 32 tasks, merge and ONNX export when ``ship``), owned by UID."""
    work = root / "work"
    (work / "demo").mkdir(parents=True)
    shutil.copytree(DEMO / "model", work / "demo" / "model")
    (work / "demo" / "data").mkdir()
    for name, rows in (("train.jsonl", None), ("eval.jsonl", 32), ("tasks_eval.jsonl", 32)):
        lines = (DEMO / "data" / name).read_text(encoding="utf-8").splitlines(keepends=True)
        (work / "demo" / "data" / name).write_text("".join(lines[:rows]), encoding="utf-8")
    spec = yaml.safe_load(QUICKSTART.read_text(encoding="utf-8"))
    spec["train"].update(max_steps=steps, save_every=max(steps // 2, 1), eval_every=max(steps // 2, 1),
                         warmup_steps=min(spec["train"]["warmup_steps"], steps // 2))
    spec["output"]["dir"] = "runs/job"
    if ship:
        spec["eval"].update(n_samples=2, temperatures=[1.0], max_new_tokens=32, max_eval_pairs=32)
    else:  # training only, small batches (the stop test wants many short steps); only a stop checkpoints
        spec["train"].update(batch_size=4, micro_batch_size=4, save_every=10 * steps)
        spec["train"].pop("eval_every")
        spec["data"].pop("eval")
        for section in ("eval", "merge", "export"):
            spec.pop(section)
    (work / "job.yaml").write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    for path in [work, *work.rglob("*")]:
        os.chown(path, UID, GID)
    return work


def status(run: Path) -> dict[str, Any]:
    """status.json (written atomically, so never half a file), or {} before the run writes it."""
    try:
        return dict(json.loads((run / "status.json").read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return {}


def wait_for(ready: Callable[[], bool], alive: Callable[[], bool], what: str, timeout: float = RUN_TIMEOUT_S) -> None:
    """Poll ``ready()`` (a file read) five times a second and ``alive()`` (an engine call) every 5 s; fail at
    once when the container ended first."""
    deadline = time.monotonic() + timeout
    polls = 0
    while time.monotonic() < deadline:
        if ready():
            return
        polls += 1
        if polls % 25 == 0 and not alive():
            if ready():
                return
            raise AssertionError(f"the container ended before {what}")
        time.sleep(0.2)
    raise AssertionError(f"no {what} within {timeout:.0f}s")


def running(name: str) -> bool:
    """Whether container ``name`` still runs."""
    out = engine("inspect", "--format", "{{.State.Running}}", name, timeout=120)
    return out.returncode == 0 and out.stdout.strip() == "true"


def files_holding(roots: list[Path], secret: str) -> list[str]:
    """Every file under ``roots`` whose bytes contain ``secret``."""
    needle = secret.encode()
    return sorted(str(p) for root in roots for p in root.rglob("*")
                  if p.is_file() and not p.is_symlink() and needle in p.read_bytes())
