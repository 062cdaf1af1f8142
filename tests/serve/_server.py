"""A real `hdpo-tune serve` process on 127.0.0.1 (a free port) for the tests, and the SDK client for it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import openai

REPO = Path(__file__).resolve().parents[2]
HDPO_TUNE = str(Path(sys.executable).parent / "hdpo-tune")
FAKE_HF_TOKEN = "hf_FAKEtokenFORtestsONLY0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
             HF_TOKEN=FAKE_HF_TOKEN)  # a secret in the environment must reach no response, log or file
    return e


def create_key(data: Path, name: str, db: str | None = None) -> str:
    args = [HDPO_TUNE, "serve", "keys", "create", name, "--data", str(data)] + (["--db", db] if db else [])
    out = subprocess.run(args, env=env(), capture_output=True, text=True, timeout=120, check=True)
    return out.stdout.strip()


class Server:
    """``hdpo-tune serve`` as a child process; ``kill()`` is SIGKILL (a crash), ``stop()`` SIGTERM."""

    def __init__(self, data: Path, model_root: Path, *, extra: tuple[str, ...] = (),
                 extra_env: dict[str, str] | None = None) -> None:
        self.data, self.model_root, self.extra = data, model_root, extra
        self.extra_env = extra_env or {}
        self.port = free_port()
        self.log = data.parent / f"server-{data.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 120) -> Server:
        self.port = free_port()
        args = [HDPO_TUNE, "serve", "--data", str(self.data), "--port", str(self.port), "--model-root",
                str(self.model_root), *self.extra]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(args, env={**env(), **self.extra_env}, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=self.data.parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2):
                    return self
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("server did not come up")

    def client(self, key: str) -> openai.OpenAI:
        return openai.OpenAI(api_key=key, base_url=self.url, max_retries=0, timeout=60)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=150)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_for(client: openai.OpenAI, job_id: str, done: tuple[str, ...] = ("succeeded", "failed", "cancelled"),
             timeout: float = 600, until=None):  # type: ignore[no-untyped-def]
    """Poll the job until its status is in ``done`` (or ``until(job)`` holds); returns the job."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in done or (until is not None and until(job)):
            return job
        time.sleep(1.0)
    raise AssertionError(f"{job_id} still {job.status} after {timeout}s")


def demo_rows(n: int) -> bytes:
    lines = (REPO / "examples/demo/data/train.jsonl").read_text(encoding="utf-8").splitlines()[:n]
    return ("\n".join(lines) + "\n").encode()


#: a few steps on the demo model: finishes in well under a minute of training on 2 busy cores
TINY = {"lora": {"r": 4, "alpha": 8}, "data": {"max_length": 128}, "hdpo": {"alpha": 0.8},
        "train": {"max_steps": 4, "micro_batch_size": 2, "save_every": 1, "log_every": 1}}
