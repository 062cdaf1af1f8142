"""Memory of `hdpo-tune serve` while it stores and checks an upload (not a test): the server's peak RSS growth
for uploads of two sizes, each on a fresh server, so the peak (``VmHWM``) belongs to that upload alone.

    PYTHONPATH=. python bench/serve_upload_mem.py [--sizes-mb 16 64] [--out bench/results/serve_upload_mem.json]

Memory independent of the upload's size means the two growths are about equal; memory proportional to it
(rows loaded whole) means the second is ``size2/size1`` times the first.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.serve._server import Server, create_key, demo_rows  # noqa: E402


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def one(size_mb: int, tmp: Path) -> dict[str, float]:
    root = tmp / "models"
    root.mkdir(exist_ok=True)
    if not (root / "demo").exists():
        (root / "demo").symlink_to(Path(__file__).resolve().parents[1] / "examples/demo/model")
    data = tmp / f"data-{size_mb}"
    key = create_key(data, "bench")
    rows = demo_rows(200)
    body = rows * (size_mb * 1024 * 1024 // len(rows) + 1)
    body = body[: body.rfind(b"\n", 0, size_mb * 1024 * 1024) + 1]
    server = Server(data, root, extra=("--workers", "0", "--max-upload-mb", str(2 * size_mb))).start()
    try:
        assert server.proc is not None
        pid = server.proc.pid
        with httpx.Client(base_url=server.url.removesuffix("/v1"), headers={"Authorization": f"Bearer {key}"},
                          timeout=600) as c:
            c.get("/v1/files").raise_for_status()  # warm the routes, so the baseline includes them
            before, hwm_before = status_kib(pid, "VmRSS"), status_kib(pid, "VmHWM")
            t = time.perf_counter()
            r = c.post("/v1/files", files={"file": ("big.jsonl", body)}, data={"purpose": "fine-tune"})
            seconds = time.perf_counter() - t
            r.raise_for_status()
        peak = status_kib(pid, "VmHWM")
    finally:
        server.stop()
    return {"upload_mib": len(body) / 2**20, "rows": body.count(b"\n"),
            "seconds": seconds, "rss_before_mib": before / 1024, "peak_before_mib": hwm_before / 1024,
            "peak_mib": peak / 1024, "peak_growth_mib": (peak - max(before, hwm_before)) / 1024,
            "peak_over_rss_before_mib": (peak - before) / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes-mb", type=int, nargs=2, default=[16, 64])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = [one(s, Path(tmp)) for s in args.sizes_mb]
    small, big = runs
    result = {"uploads": runs,
              "size_ratio": big["upload_mib"] / small["upload_mib"],
              "peak_over_rss_before_ratio": big["peak_over_rss_before_mib"] / max(small["peak_over_rss_before_mib"], 1e-9),
              "mib_per_uploaded_mib_big": big["peak_over_rss_before_mib"] / big["upload_mib"],
              "machine": {"cpus": os.cpu_count(), "loadavg_1m": os.getloadavg()[0]}}
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
