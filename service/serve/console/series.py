"""Metric curves for the console: ``metrics.jsonl`` read into columns, downsampled on the server.

A long run logs one line per optimizer step (100,000 lines is a plausible week of training), far more points
than a 1,000-pixel chart can show. Each curve is cut into equal buckets of consecutive points and each bucket
keeps its first point, its minimum and its maximum (and the curve its last point), so a loss spike or an
entropy collapse is never averaged away, and the chart draws at most ``points`` + 2 points per curve. A live
page then asks only for the steps after the last one it has (``after``).

Reading is one ``json.loads`` over the whole file (lines joined into one JSON array), which is several times
faster than a call per line; a file with a torn or bad line falls back to the line-by-line reader.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: the points each curve keeps at most (about the width of a chart in pixels)
DEFAULT_POINTS = 1000


@dataclass(frozen=True)
class Columns:
    """Every numeric metric of a run as aligned columns: ``steps[i]`` and ``values[key][i]`` (NaN = absent)."""

    steps: np.ndarray
    values: dict[str, np.ndarray]
    rows: int


def _records(raw: bytes) -> list[dict[str, object]]:
    lines = [ln for ln in raw.split(b"\n") if ln.strip()]
    if raw and not raw.endswith(b"\n") and lines:
        lines.pop()  # a line still being written waits for the next read
    try:
        recs = json.loads(b"[" + b",".join(lines) + b"]")
    except ValueError:
        recs = []
        for ln in lines:
            try:
                recs.append(json.loads(ln))
            except ValueError:
                continue
    return [r for r in recs if isinstance(r, dict) and isinstance(r.get("step"), int)]


def read_columns(path: Path, after: int | None = None) -> Columns:
    """The metrics of ``path`` (the last record of a step wins, steps ascending), only steps > ``after``."""
    try:
        raw = path.read_bytes()
    except OSError:
        raw = b""
    by_step: dict[int, dict[str, object]] = {}
    for rec in _records(raw):
        step = rec["step"]
        if after is None or step > after:  # type: ignore[operator]
            by_step[step] = rec  # type: ignore[index]
    steps = sorted(by_step)
    keys = sorted({k for r in by_step.values() for k, v in r.items()
                   if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)})
    values = {}
    for key in keys:
        col = [by_step[s].get(key) for s in steps]
        values[key] = np.array([float(v) if isinstance(v, int | float) and not isinstance(v, bool) else math.nan
                                for v in col], dtype=np.float64)
    return Columns(np.array(steps, dtype=np.int64), values, len(steps))


def keep_extremes(y: np.ndarray, points: int) -> np.ndarray:
    """Indices of ``y`` (finite values, in order) to draw: per bucket of consecutive points its first, min and
    max, plus the last point. All indices when there are at most ``points``."""
    n = len(y)
    if n <= points:
        return np.arange(n)
    size = math.ceil(n / max(1, points // 3))
    buckets = math.ceil(n / size)
    padded = np.full(buckets * size, np.nan)
    padded[:n] = y
    grid = padded.reshape(buckets, size)
    base = np.arange(buckets) * size
    lo = base + np.nanargmin(grid, axis=1)
    hi = base + np.nanargmax(grid, axis=1)
    return np.unique(np.concatenate([base, lo, hi, [n - 1]]))


def curves(columns: Columns, points: int = DEFAULT_POINTS) -> dict[str, dict[str, list[float]]]:
    """``{metric: {"x": steps, "y": values}}`` with each curve reduced by :func:`keep_extremes`."""
    out = {}
    for key, y in columns.values.items():
        finite = np.isfinite(y)
        xs, ys = columns.steps[finite], y[finite]
        if not len(ys):
            continue
        idx = keep_extremes(ys, points)
        out[key] = {"x": xs[idx].tolist(), "y": ys[idx].tolist()}
    return out


def series_payload(path: Path, after: int | None = None, points: int = DEFAULT_POINTS) -> dict[str, object]:
    """The console's metrics response: curves, the number of rows read and the last step (the next ``after``)."""
    cols = read_columns(path, after)
    last = int(cols.steps[-1]) if cols.rows else after
    return {"rows": cols.rows, "last_step": last, "downsampled": cols.rows > points, "curves": curves(cols, points)}
