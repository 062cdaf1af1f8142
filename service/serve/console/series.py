"""Metric curves for the console: ``metrics.jsonl`` read into columns, downsampled on the server.

A long run logs one line per optimizer step (100,000 lines is a plausible week of training), far more points
than a 1,000-pixel chart can show. Each curve is cut into equal buckets of consecutive points and each bucket
keeps its first point, its minimum and its maximum (and the curve its last point), so a loss spike or an
entropy collapse is never averaged away, and the chart draws at most ``points`` + 2 points per curve. A live
page then asks only for the steps after the last one it has (``after``).

A whole file is read by pyarrow's JSON-lines reader (C++, straight into columns; pyarrow is already a
dependency), about 5x faster than ``json.loads`` per line plus building the columns in Python, and the result
is kept for the file's (inode, size, mtime) so reopening a page costs nothing; a file pyarrow refuses (a bad
line in the middle) goes through the line-by-line reader, which skips bad lines. A live read
(``after``) reads the file backwards from its end only until it meets a step at or before ``after`` (steps only
grow in ``metrics.jsonl``: a resumed run rewrites the file without the lines past its checkpoint), so a poll
costs the new lines, not the whole run.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: the points each curve keeps at most (about the width of a chart in pixels)
DEFAULT_POINTS = 1000
BLOCK = 1 << 16
CACHE_SIZE = 4
_cache: OrderedDict[tuple[str, int, int, int], Columns] = OrderedDict()  # noqa: F821 (defined below)


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


def _first_step(chunk: bytes) -> int | None:
    """The step of the first complete line of ``chunk`` (which starts mid-line), or None."""
    for line in chunk.split(b"\n")[1:-1]:
        try:
            step = json.loads(line).get("step")
        except (ValueError, AttributeError):
            continue
        if isinstance(step, int):
            return step
    return None


def tail_since(path: Path, after: int) -> bytes:
    """The end of ``path`` from a line at or before step ``after`` on (the whole file when none is)."""
    with path.open("rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        start = size
        while start > 0:
            start = max(0, start - BLOCK)
            fh.seek(start)
            chunk = fh.read(size - start)
            step = _first_step(chunk) if start > 0 else None
            if step is not None and step <= after:
                return chunk[chunk.index(b"\n") + 1:]
        fh.seek(0)
        return fh.read(size)


def python_columns(raw: bytes, after: int | None = None) -> Columns:
    """The simple reader: ``json.loads`` per record, columns built in Python (also the fallback)."""
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


def arrow_columns(raw: bytes, after: int | None = None) -> Columns | None:
    """The fast reader (pyarrow); None when pyarrow refuses the text or it has no integer ``step``."""
    # pyarrow ships no type information (pyproject: ignore_missing_imports): its calls here are checked by the tests
    import pyarrow as pa
    import pyarrow.json as pj

    end = raw.rfind(b"\n") + 1  # a line still being written waits for the next read
    if end == 0:
        return python_columns(b"")
    try:
        table = pj.read_json(io.BytesIO(raw[:end]))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if "step" not in table.column_names or not pa.types.is_integer(table.schema.field("step").type):
        return None
    raw_steps = table["step"].to_numpy(zero_copy_only=False)
    present = ~np.isnan(raw_steps) if raw_steps.dtype.kind == "f" else np.ones(len(raw_steps), dtype=bool)
    steps = np.where(present, raw_steps, 0).astype(np.int64)
    valid = present & (steps > after) if after is not None else present
    # the last record of a step wins, steps ascending
    rev = np.nonzero(valid)[0][::-1]
    uniq, first_in_rev = np.unique(steps[rev], return_index=True)
    rows = rev[first_in_rev]
    values = {}
    for name in sorted(table.column_names):
        field = table.schema.field(name).type
        if name == "step" or not (pa.types.is_integer(field) or pa.types.is_floating(field)):
            continue
        col = table[name].cast(pa.float64()).to_numpy(zero_copy_only=False)[rows]
        if (~np.isnan(col)).any():
            values[name] = col
    return Columns(uniq.astype(np.int64), values, len(uniq))


def read_columns(path: Path, after: int | None = None) -> Columns:
    """The metrics of ``path`` (the last record of a step wins, steps ascending), only steps > ``after``."""
    try:
        st = path.stat()
        if after is not None:
            raw = tail_since(path, after)
            return arrow_columns(raw, after) or python_columns(raw, after)
        key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        raw = path.read_bytes()
    except OSError:
        return python_columns(b"")
    cols = arrow_columns(raw) or python_columns(raw)
    _cache[key] = cols
    while len(_cache) > CACHE_SIZE:
        _cache.popitem(last=False)
    return cols


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
