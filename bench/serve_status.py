"""Benchmark of `hdpo-tune serve`'s status path (not a test): what a job read and a job list cost next to a
trivial route (``/healthz``) on the same server, side by side, and training speed with and without pollers.

    PYTHONPATH=. python bench/serve_status.py [--requests 400] [--clients 20] [--seconds 8] [--train-steps 0]
                                              [--out bench/results/serve_status_cpu.json]

1. sequential: one client, the three routes interleaved in blocks of 50 (so a change in the machine's load hits
   all three alike); server CPU per request from the server's ``/proc`` CPU time (independent of the load);
2. concurrent: ``--clients`` clients on one route at a time, back to back, for ``--seconds``, the routes in
   turn for ``--rounds`` rounds: throughput, p50, p99 and server CPU per request;
3. with ``--train-steps N``: a job of N steps alone, then again while ``--clients`` clients poll retrieve/list/
   events every ``--interval`` s (``bench/serve_load.py``'s dashboard, in this process, so on a small machine
   the pollers' own CPU counts against training too), ``--train-rounds`` times alternated: tokens/s both ways.

The ratios are what to read: the absolute figures depend on the machine and its load.
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

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.serve_load import cpu_s, demo_model_root, pct, train  # noqa: E402
from tests.serve._server import Server, create_key, demo_rows  # noqa: E402

JOB = {"lora": {"r": 4, "alpha": 8}, "data": {"max_length": 128}, "train": {"max_steps": 4}}


def routes(job_id: str) -> dict[str, str]:
    return {"healthz": "/healthz", "retrieve": f"/v1/fine_tuning/jobs/{job_id}", "list": "/v1/fine_tuning/jobs"}


def sequential(base: str, key: str, job_id: str, n: int, pid: int) -> dict[str, dict[str, float]]:
    cpu = dict.fromkeys(routes(job_id), 0.0)
    lat: dict[str, list[float]] = {name: [] for name in cpu}
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30) as c:
        for path in routes(job_id).values():  # warm-up
            for _ in range(20):
                c.get(path).raise_for_status()
        for _ in range(max(1, n // 50)):
            for name, path in routes(job_id).items():
                c0 = cpu_s(pid)
                for _ in range(50):
                    t = time.perf_counter()
                    c.get(path).raise_for_status()
                    lat[name].append(time.perf_counter() - t)
                cpu[name] += cpu_s(pid) - c0
    return {name: {"requests": len(lat[name]), "server_cpu_ms_per_request": 1000 * cpu[name] / len(lat[name]),
                   "p50_ms": 1000 * pct(lat[name], 0.5), "p99_ms": 1000 * pct(lat[name], 0.99)} for name in cpu}


async def concurrent(base: str, key: str, path: str, clients: int, seconds: float, pid: int,
                     lat: list[float], totals: dict[str, float]) -> None:
    """One round on one route; appends latencies to ``lat`` and adds wall, CPU and errors to ``totals``."""
    errors = 0
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30,
                                 limits=limits) as c:
        stop = time.monotonic() + seconds

        async def one() -> None:
            nonlocal errors
            while time.monotonic() < stop:
                t = time.perf_counter()
                r = await c.get(path)
                if r.status_code == 200:
                    lat.append(time.perf_counter() - t)
                else:
                    errors += 1

        t0, c0 = time.monotonic(), cpu_s(pid)
        await asyncio.gather(*(one() for _ in range(clients)))
        totals["wall"] += time.monotonic() - t0
        totals["cpu"] += cpu_s(pid) - c0
        totals["errors"] += errors


def concurrent_rounds(base: str, key: str, job_id: str, clients: int, seconds: float, rounds: int,
                      pid: int) -> dict[str, dict[str, float]]:
    """``rounds`` rounds over the three routes in turn, so a change in the machine's load hits all alike."""
    lat: dict[str, list[float]] = {name: [] for name in routes(job_id)}
    totals = {name: {"wall": 0.0, "cpu": 0.0, "errors": 0.0} for name in lat}
    for _ in range(rounds):
        for name, path in routes(job_id).items():
            asyncio.run(concurrent(base, key, path, clients, seconds, pid, lat[name], totals[name]))
    return {name: {"requests": len(lat[name]), "errors": totals[name]["errors"],
                   "throughput_rps": len(lat[name]) / totals[name]["wall"], "p50_ms": 1000 * pct(lat[name], 0.5),
                   "p99_ms": 1000 * pct(lat[name], 0.99),
                   "server_cpu_ms_per_request": 1000 * totals[name]["cpu"] / max(1, len(lat[name]))}
            for name in lat}


def ratios(results: dict[str, dict[str, float]], field: str) -> dict[str, float]:
    base = results["healthz"][field]
    return {name: round(r[field] / base, 3) for name, r in results.items() if name != "healthz"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=400, help="sequential requests per route")
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=4.0, help="seconds per route and round (concurrent phase)")
    ap.add_argument("--rounds", type=int, default=3, help="concurrent rounds over the three routes")
    ap.add_argument("--train-rounds", type=int, default=2, help="alone / with pollers pairs (training phase)")
    ap.add_argument("--interval", type=float, default=0.5, help="seconds between one poller's reads (phase 3)")
    ap.add_argument("--train-steps", type=int, default=0, help="0: skip the training phase")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    load_before = os.getloadavg()
    result: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root, data = demo_model_root(Path(tmp)), Path(tmp) / "data"
        key = create_key(data, "bench")
        server = Server(data, root, extra=("--workers", "0")).start()  # no job process takes the CPU
        try:
            assert server.proc is not None
            c = server.client(key)
            f = c.files.create(file=("prefs.jsonl", demo_rows(64)), purpose="fine-tune")
            jobs = [c.fine_tuning.jobs.create(model="demo", training_file=f.id, extra_body={"hdpo_tune": JOB})
                    for _ in range(3)]
            for job in jobs:
                c.fine_tuning.jobs.cancel(job.id)  # rows to read, nothing running
            base = server.url.removesuffix("/v1")
            seq = sequential(base, key, jobs[0].id, args.requests, server.proc.pid)
            conc = concurrent_rounds(base, key, jobs[0].id, args.clients, args.seconds, args.rounds, server.proc.pid)
            result = {"sequential": seq, "sequential_cpu_ratio_vs_healthz": ratios(seq, "server_cpu_ms_per_request"),
                      "concurrent": {"clients": args.clients, **conc},
                      "concurrent_cpu_ratio_vs_healthz": ratios(conc, "server_cpu_ms_per_request"),
                      "concurrent_throughput_ratio_vs_healthz": ratios(conc, "throughput_rps")}
            if args.train_steps:
                server.stop()
                server = Server(data, root).start()
                assert server.proc is not None
                alone, loaded = [], []
                for _ in range(args.train_rounds):  # alternated, so drift in the machine's load hits both
                    alone.append(train(server, key, f.id, args.train_steps, None))
                    loaded.append(train(server, key, f.id, args.train_steps, (args.clients, args.interval)))
                a = [float(r["tokens_per_s"]) for r in alone]  # type: ignore[arg-type]
                b = [float(r["tokens_per_s"]) for r in loaded]  # type: ignore[arg-type]
                result["training"] = {"tokens_per_s_alone": a, "tokens_per_s_with_pollers": b,
                                      "pollers": args.clients, "interval_s": args.interval,
                                      "poll_reads": [r["reads"] for r in loaded],
                                      "ratio_with_vs_alone_of_means": (sum(b) / len(b)) / (sum(a) / len(a))}
        finally:
            server.stop()
    result["machine"] = {"cpus": os.cpu_count(), "loadavg_1m_before": load_before[0],
                         "loadavg_1m_after": os.getloadavg()[0]}
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
