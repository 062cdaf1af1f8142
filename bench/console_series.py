"""Console metrics route on a large run: 100,000 ``metrics.jsonl`` rows, side by side with the simple path.

    python bench/console_series.py [--rows 100000] [--reps 5]

Writes a run folder whose ``metrics.jsonl`` has the trainer's keys (loss, rewards, entropies, alpha, lr,
grad norm, tokens/s, memory, ...), then times, median of ``--reps``:

* simple: every line through ``json.loads`` and every row sent (what a page without downsampling would fetch);
* console open: ``GET /console/api/jobs/RUN/metrics`` through the ``hdpo-tune ui`` app (one parse of the file,
  min/max-per-bucket downsampling to 1,000 points per curve, JSON response);
* console reopen: the same request again (the parsed columns are cached per file version);
* console live poll: the same route with ``after=`` the step before the last 10 (reads the file's tail only);
* with ``--browser``: the job page of that run in headless Chromium (Debian's, through Playwright), from
  navigation until every chart is drawn, first open and reload.

Prints a markdown table and writes ``bench/results/console_series.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_run(folder: Path, rows: int) -> Path:
    rng = random.Random(0)
    folder.mkdir(parents=True)
    (folder / "status.json").write_text(json.dumps({"stage": "train", "state": "running", "step": rows,
                                                     "total_steps": rows * 2}))
    with (folder / "metrics.jsonl").open("w") as fh:
        for i in range(1, rows + 1):
            t = i / rows
            rec = {"step": i, "loss": 0.69 * math.exp(-t) + 0.02 * rng.random(), "rewards/chosen": rng.gauss(0.1, 0.1),
                   "rewards/rejected": rng.gauss(-0.1, 0.1), "rewards/margins": rng.gauss(0.2, 0.1),
                   "rewards/accuracies": rng.random(), "logps/chosen": -20 * rng.random(),
                   "logps/rejected": -25 * rng.random(), "entropy": 1.2 - 0.4 * t + 0.01 * rng.random(),
                   "ref_entropy": 1.2, "alpha": 0.9, "learning_rate": 3e-5 * (1 - t), "grad_norm": rng.random() * 5,
                   "tokens": 4096, "tokens_per_s": 5000 + rng.random() * 300, "step_time_s": 0.8 + 0.1 * rng.random(),
                   "peak_memory_mb": 1234.5, "epoch": t * 3, "skipped": 0}
            fh.write(json.dumps(rec) + "\n")
    return folder


def browser_times(run: Path, job: str, curves: int) -> dict[str, dict[str, float]]:
    """Seconds from navigation to every chart drawn (canvas present), in a real browser: first open, reload."""
    import threading

    import uvicorn
    from playwright.sync_api import sync_playwright

    from service.serve.console.ui import create_ui_app
    from tests.serve._browser import CHROMIUM, FLAGS

    server = uvicorn.Server(uvicorn.Config(create_ui_app([run]), host="127.0.0.1", port=6091, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    out = {}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            for name in ("browser: job page, first open", "browser: job page, reload"):
                t0 = time.perf_counter()
                page.goto(f"http://127.0.0.1:6091/jobs/{job}")
                # the note is written right after the last chart is built (job.js drawCurves)
                page.wait_for_selector("#curve-note:has-text('points drawn')", timeout=120_000)
                assert page.locator("#curves .chart-card canvas").count() >= curves // 2
                out[name] = {"seconds": time.perf_counter() - t0, "bytes": 0}
            browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    return out


def median_s(fn, reps: int) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    times, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--browser", action="store_true", help="also time the page in headless Chromium")
    args = parser.parse_args()
    from fastapi.testclient import TestClient

    from service.serve.console import series
    from service.serve.console.ui import create_ui_app

    with tempfile.TemporaryDirectory() as tmp:
        run = write_run(Path(tmp) / "big-run", args.rows)
        size_mb = (run / "metrics.jsonl").stat().st_size / 2**20
        client = TestClient(create_ui_app([run]), base_url="http://127.0.0.1:6007")
        job = client.get("/console/api/jobs").json()["data"][0]["id"]

        def simple() -> bytes:
            rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            return json.dumps(rows).encode()

        def console_open() -> bytes:
            series._cache.clear()  # a first open: the file is read and parsed
            return client.get(f"/console/api/jobs/{job}/metrics").content

        def console_reopen() -> bytes:
            return client.get(f"/console/api/jobs/{job}/metrics").content

        def console_live() -> bytes:
            return client.get(f"/console/api/jobs/{job}/metrics?after={args.rows - 10}").content

        results = {}
        for name, fn in (("simple (parse every line, send every row)", simple), ("console open (downsampled)", console_open),
                         ("console reopen (parsed columns cached)", console_reopen),
                         ("console live poll (after=)", console_live)):
            seconds, body = median_s(fn, args.reps)
            results[name] = {"seconds": seconds, "bytes": len(body)}  # type: ignore[arg-type]
        opened = json.loads(console_open())
        if args.browser:
            series._cache.clear()
            results.update(browser_times(run, job, len(opened["curves"])))
    base = results["simple (parse every line, send every row)"]
    print(f"load average {os.getloadavg()[0]:.1f}; {args.rows:,} rows, metrics.jsonl {size_mb:.1f} MiB, {len(opened['curves'])} curves, "
          f"{max(len(c['x']) for c in opened['curves'].values())} points per curve at most; median of {args.reps}\n")
    print("| path | server time | response | vs simple |\n|---|---|---|---|")
    for name, r in results.items():
        if not r["bytes"]:  # a browser timing: navigation to every chart drawn
            print(f"| {name} | {r['seconds'] * 1000:.0f} ms (wall, in the browser) | | |")
            continue
        print(f"| {name} | {r['seconds'] * 1000:.0f} ms | {r['bytes'] / 1024:.0f} KiB | "
              f"{base['seconds'] / r['seconds']:.1f}x faster, {base['bytes'] / r['bytes']:.0f}x smaller |")
    out = ROOT / "bench" / "results" / "console_series.json"
    out.write_text(json.dumps({"rows": args.rows, "file_mib": size_mb, "reps": args.reps,
                               "load_average_1m": os.getloadavg()[0], "results": results}, indent=1))


if __name__ == "__main__":
    main()
