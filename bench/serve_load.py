"""Load benchmark of `hdpo-tune serve` (not a test): status reads under load, and training speed with and
without that load, side by side in one run.

    PYTHONPATH=. python bench/serve_load.py [--clients 64] [--steps 12] [--out bench/results/serve_load.json]

1. capacity: no job running, ``--burst`` clients call ``jobs.retrieve`` back to back for ``--seconds``;
2. a training job on the demo model alone (tokens/s from its metrics.jsonl);
3. the same job again while ``--clients`` clients poll as a dashboard would (retrieve, list, events; each
   client once per ``--interval`` s): latency of every read, and the job's tokens/s.

Clients are the official ``openai`` SDK (async), against a server started here on 127.0.0.1. Everything runs
on this machine, so on a small CPU box the clients and the server share the cores with training: the
tokens/s comparison is then an upper bound on the harm (on a GPU node training does not use those cores).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.serve._server import Server, create_key, demo_rows, wait_for  # noqa: E402

JOB = {"lora": {"r": 8, "alpha": 16}, "data": {"max_length": 160}, "hdpo": {"alpha": 0.9, "beta": 1.0},
       "train": {"micro_batch_size": 4, "save_every": 1000, "log_every": 1}, "merge": None}


def demo_model_root(tmp: Path) -> Path:
    """A model root under ``tmp`` serving the shipped demo model as ``demo`` (a link; nothing copied)."""
    root = tmp / "models"
    root.mkdir()
    (root / "demo").symlink_to(Path(__file__).resolve().parents[1] / "examples/demo/model")
    return root


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc): what the server takes from training, whatever
    else runs on the machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))] if s else float("nan")


def summary(lat: list[float], seconds: float, errors: int) -> dict[str, float]:
    return {"requests": len(lat), "errors": errors, "throughput_rps": len(lat) / seconds,
            "p50_ms": 1000 * pct(lat, 0.5), "p99_ms": 1000 * pct(lat, 0.99), "max_ms": 1000 * max(lat, default=0)}


async def burst(url: str, key: str, job_id: str, clients: int, seconds: float, server_pid: int) -> dict[str, float]:
    c = openai.AsyncOpenAI(api_key=key, base_url=url, max_retries=0, timeout=30)
    lat: list[float] = []
    errors = 0
    stop = time.monotonic() + seconds

    async def one() -> None:
        nonlocal errors
        while time.monotonic() < stop:
            t = time.perf_counter()
            try:
                await c.fine_tuning.jobs.retrieve(job_id)
                lat.append(time.perf_counter() - t)
            except openai.APIError:
                errors += 1

    t0, cpu0 = time.monotonic(), cpu_s(server_pid)
    await asyncio.gather(*(one() for _ in range(clients)))
    await c.close()
    out = summary(lat, time.monotonic() - t0, errors)
    out["server_cpu_ms_per_request"] = 1000 * (cpu_s(server_pid) - cpu0) / max(1, len(lat) + errors)
    return out


async def dashboard(url: str, key: str, job_id: str, clients: int, interval: float, done: asyncio.Event,
                    server_pid: int) -> dict[str, float]:
    c = openai.AsyncOpenAI(api_key=key, base_url=url, max_retries=0, timeout=30)
    lat: list[float] = []
    errors = 0

    async def one(i: int) -> None:
        nonlocal errors
        calls = (lambda: c.fine_tuning.jobs.retrieve(job_id), lambda: c.fine_tuning.jobs.list(limit=20),
                 lambda: c.fine_tuning.jobs.list_events(job_id, limit=20))
        await asyncio.sleep(interval * i / clients)  # spread the clients over the interval
        n = 0
        while not done.is_set():
            t = time.perf_counter()
            try:
                await calls[(i + n) % 3]()
                lat.append(time.perf_counter() - t)
            except openai.APIError:
                errors += 1
            n += 1
            await asyncio.sleep(max(0.0, interval - (time.perf_counter() - t)))

    t0, cpu0 = time.monotonic(), cpu_s(server_pid)
    tasks = [asyncio.create_task(one(i)) for i in range(clients)]
    await done.wait()
    await asyncio.gather(*tasks)
    await c.close()
    wall, cpu = time.monotonic() - t0, cpu_s(server_pid) - cpu0
    out = summary(lat, wall, errors)
    out["server_cpu_ms_per_request"] = 1000 * cpu / max(1, len(lat) + errors)
    out["server_cpu_share_of_one_core"] = cpu / wall  # the most the API can have taken from training
    return out


def tokens_per_s(run_dir: Path) -> float:
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    recs = recs[1:] if len(recs) > 1 else recs  # step 1 includes warm-up
    return sum(r["tokens"] for r in recs) / sum(r["step_time_s"] for r in recs)


def train(server: Server, key: str, file_id: str, steps: int, load: tuple[int, float] | None) -> dict[str, object]:
    c = server.client(key)
    spec = {**JOB, "train": {**JOB["train"], "max_steps": steps}}
    job = c.fine_tuning.jobs.create(model="demo", training_file=file_id, seed=1,
                                    method={"type": "dpo", "dpo": {"hyperparameters": {"batch_size": 8}}},
                                    extra_body={"hdpo_tune": spec})
    reads: dict[str, float] = {}
    if load is not None:
        async def with_load() -> dict[str, float]:
            done = asyncio.Event()
            poll = asyncio.create_task(dashboard(server.url, key, job.id, load[0], load[1], done, server.proc.pid))
            while (await asyncio.to_thread(c.fine_tuning.jobs.retrieve, job.id)).status not in (
                    "succeeded", "failed", "cancelled"):
                await asyncio.sleep(1)
            done.set()
            return await poll
        reads = asyncio.run(with_load())
    final = wait_for(c, job.id)
    assert final.status == "succeeded", final.error
    return {"job": job.id, "tokens_per_s": tokens_per_s(server.data / "runs" / job.id), "reads": reads}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between one client's reads")
    ap.add_argument("--burst", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        root, data = demo_model_root(Path(tmp)), Path(tmp) / "data"
        key = create_key(data, "bench")
        server = Server(data, root).start()
        try:
            c = server.client(key)
            f = c.files.create(file=("prefs.jsonl", demo_rows(256)), purpose="fine-tune")
            probe = c.fine_tuning.jobs.create(model="demo", training_file=f.id, extra_body={"hdpo_tune": JOB})
            c.fine_tuning.jobs.cancel(probe.id)  # cancelled while queued: a job row to read, nothing running
            capacity = asyncio.run(burst(server.url, key, probe.id, args.burst, args.seconds, server.proc.pid))
            alone = train(server, key, f.id, args.steps, None)
            loaded = train(server, key, f.id, args.steps, (args.clients, args.interval))
        finally:
            server.stop()
    ratio = loaded["tokens_per_s"] / alone["tokens_per_s"]  # type: ignore[operator]
    result = {
        "machine": {"cpus": os.cpu_count(), "loadavg_1m_before": load_before[0],
                    "loadavg_1m_after": os.getloadavg()[0]},
        "capacity_no_job": {"clients": args.burst, **capacity},
        "training_alone": {"tokens_per_s": alone["tokens_per_s"]},
        "training_with_load": {"clients": args.clients, "interval_s": args.interval,
                               "tokens_per_s": loaded["tokens_per_s"], **loaded["reads"]},  # type: ignore[dict-item]
        "training_speed_ratio_loaded_vs_alone": ratio,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
