"""The console's server side without a browser: the downsampling fast path against the simple one, live
``after=`` reads, sign-in cookies, cross-site refusal, headers, 404 for another key's job, and the read-only
``hdpo-tune ui`` app."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from service.serve.app import create_app  # noqa: E402
from service.serve.config import ServeConfig  # noqa: E402
from service.serve.console.series import keep_extremes, read_columns, series_payload  # noqa: E402
from service.serve.console.session import COOKIE  # noqa: E402
from service.serve.console.ui import create_ui_app  # noqa: E402
from service.serve.db import JobRow, new_id, now  # noqa: E402
from service.serve.store import create_key  # noqa: E402

H = {"X-HDPO-Console": "1"}


def bucket_extremes_kept(y: np.ndarray, points: int) -> None:
    """The simple path: for each bucket the fast path used, its min and max value are among the kept points."""
    kept = keep_extremes(y, points)
    assert list(kept) == sorted(set(kept.tolist()))
    if len(y) <= points:
        assert len(kept) == len(y)
        return
    size = math.ceil(len(y) / max(1, points // 3))
    kept_set = set(kept.tolist())
    for start in range(0, len(y), size):
        chunk = y[start:start + size]
        idx = [start + i for i in range(len(chunk))]
        assert any(y[i] == chunk.min() for i in idx if i in kept_set)
        assert any(y[i] == chunk.max() for i in idx if i in kept_set)
    assert 0 in kept_set and len(y) - 1 in kept_set
    assert len(kept) <= points + 2


@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=3000), st.integers(10, 400))
@settings(max_examples=60, deadline=None)
def test_downsampling_keeps_every_buckets_min_and_max(values: list[float], points: int) -> None:
    bucket_extremes_kept(np.array(values), points)


def test_a_spike_survives_100000_rows(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "metrics.jsonl"
    loss = 0.7 + 0.01 * rng.standard_normal(100_000)
    loss[77_777] = 9.5  # one spike a mean-per-bucket chart would flatten
    path.write_text("".join(json.dumps({"step": i + 1, "loss": float(v), "entropy": 1.0}) + "\n"
                            for i, v in enumerate(loss)))
    out = series_payload(path, points=1000)
    assert out["rows"] == 100_000 and out["downsampled"] and out["last_step"] == 100_000
    curve = out["curves"]["loss"]
    assert len(curve["x"]) <= 1002 and max(curve["y"]) == 9.5 and 77_778 in curve["x"]
    assert min(curve["y"]) == float(loss.min())
    later = series_payload(path, after=99_990)
    assert later["rows"] == 10 and later["curves"]["loss"]["x"] == list(range(99_991, 100_001))


def test_torn_last_line_and_bad_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 1, "loss": 1.0}\nnot json\n{"step": 2, "loss": 0.5, "flag": true}\n{"step": 3, "lo')
    cols = read_columns(path)
    assert cols.steps.tolist() == [1, 2] and list(cols.values) == ["loss"]


@pytest.fixture()
def served(tmp_path: Path):  # type: ignore[no-untyped-def]
    config = ServeConfig(data_dir=tmp_path / "data", model_roots=(), allow_hub=False)
    app = create_app(config)
    sessions = app.state.ctx.sessions
    with sessions() as db:
        (_alice, akey), (bob, _bkey) = create_key(db, "alice"), create_key(db, "bob")
        job = JobRow(id=new_id("ftjob"), owner=bob.id, status="running", model="demo", training_file="file-x",
                     seed=1, method={"type": "dpo"}, request={}, created_at=now(), result_files=[])
        db.add(job)
        db.commit()
        bob_job = job.id
    (config.runs_dir / bob_job).mkdir(parents=True)
    return TestClient(app, base_url="http://testserver"), akey, bob_job


def test_sign_in_sets_an_httponly_strict_cookie_and_never_echoes_the_key(served) -> None:  # type: ignore[no-untyped-def]
    client, key, _ = served
    assert client.get("/console/api/jobs").status_code == 401
    bad = client.post("/console/api/session", json={"key": "hdpo-sk-wrong"}, headers=H)
    assert bad.status_code == 401 and "hdpo-sk-wrong" not in bad.text
    ok = client.post("/console/api/session", json={"key": key}, headers=H)
    assert ok.status_code == 200 and key not in ok.text
    cookie = ok.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert key not in cookie
    assert client.get("/console/api/jobs").json()["data"] == []
    page = client.get("/")
    assert "script-src 'self'" in page.headers["content-security-policy"] and key not in page.text
    assert "<script>" not in page.text  # no inline script: only src= files
    client.delete("/console/api/session", headers=H)
    assert client.get("/console/api/jobs").status_code == 401


def test_cross_site_requests_are_refused(served) -> None:  # type: ignore[no-untyped-def]
    client, key, _ = served
    assert client.post("/console/api/session", json={"key": key}).status_code == 403
    foreign = client.post("/console/api/session", json={"key": key}, headers={**H, "Origin": "https://evil.example"})
    assert foreign.status_code == 403 and "set-cookie" not in foreign.headers
    client.post("/console/api/session", json={"key": key}, headers=H)
    assert client.post("/console/api/jobs/ftjob-x/cancel").status_code == 403


def test_another_keys_job_is_a_404(served) -> None:  # type: ignore[no-untyped-def]
    client, key, bob_job = served
    client.post("/console/api/session", json={"key": key}, headers=H)
    assert client.get(f"/jobs/{bob_job}").status_code == 404
    for path in ("", "/metrics", "/events", "/artifacts?part=final"):
        assert client.get(f"/console/api/jobs/{bob_job}{path}").status_code == 404
    assert client.post(f"/console/api/jobs/{bob_job}/cancel", headers=H).status_code == 404


def test_ui_is_read_only_and_answers_only_the_loopback(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "status.json").write_text(json.dumps({"stage": "train", "state": "succeeded", "step": 2, "total_steps": 2}))
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 0.7}\n{"step": 2, "loss": 0.6}\n')
    client = TestClient(create_ui_app([tmp_path]), base_url="http://127.0.0.1:6007")
    jobs = client.get("/console/api/jobs").json()["data"]
    assert [j["name"] for j in jobs] == ["run"] and str(tmp_path) not in json.dumps(jobs)
    assert client.get(f"/console/api/jobs/{jobs[0]['id']}/metrics").json()["curves"]["loss"]["y"] == [0.7, 0.6]
    assert client.post("/console/api/jobs", json={"spec": {}}, headers=H).status_code == 405
    rebound = TestClient(create_ui_app([tmp_path]), base_url="http://evil.example")
    assert rebound.get("/console/api/jobs").status_code == 400


@given(st.integers(0, 5000), st.integers(1, 4999))
@settings(max_examples=25, deadline=None)
def test_live_reads_from_the_tail_equal_a_full_read(tmp_path_factory: pytest.TempPathFactory, n: int,
                                                     after: int) -> None:
    """The fast path (reading backwards to ``after``) returns what filtering the whole file returns."""
    path = tmp_path_factory.mktemp("tail") / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": i, "loss": 1 / i, "pad": "x" * (i % 97)}) + "\n"
                            for i in range(1, n + 1)))
    fast, full = read_columns(path, after), read_columns(path)
    keep = full.steps > after
    assert fast.steps.tolist() == full.steps[keep].tolist()
    if fast.rows:
        assert fast.values["loss"].tolist() == full.values["loss"][keep].tolist()


RECORD = st.fixed_dictionaries({"step": st.integers(0, 60)}, optional={
    "loss": st.floats(-1e6, 1e6, allow_nan=False), "alpha": st.integers(-5, 5) | st.floats(0, 2),
    "eval/loss": st.floats(0, 10), "flag": st.booleans(), "note": st.text(max_size=5)})


@given(st.lists(RECORD, max_size=80), st.none() | st.integers(-1, 60))
@settings(max_examples=80, deadline=None)
def test_the_arrow_reader_equals_the_python_reader(records: list[dict], after: int | None) -> None:
    """The fast path (pyarrow into columns) returns exactly what json.loads per line returns."""
    from service.serve.console.series import arrow_columns, python_columns

    raw = "".join(json.dumps(r) + "\n" for r in records).encode()
    fast, simple = arrow_columns(raw, after), python_columns(raw, after)
    if fast is None:  # pyarrow refused (e.g. a column mixing numbers and text): the simple path answers
        return
    assert fast.steps.tolist() == simple.steps.tolist()
    assert sorted(fast.values) == sorted(simple.values)
    for key, col in simple.values.items():
        np.testing.assert_array_equal(fast.values[key], col)


def test_ui_on_a_folder_without_runs_is_one_line_and_exit_2(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from service.cli import app

    empty = tmp_path / "nothing"
    empty.mkdir()
    for args in (["ui", str(tmp_path / "missing")], ["ui", str(empty)]):
        out = CliRunner().invoke(app, args)
        assert out.exit_code == 2 and out.output.count("\n") == 1 and out.output.startswith("error: ui: ")


def test_a_revoked_key_ends_its_sessions(served) -> None:  # type: ignore[no-untyped-def]
    from service.serve.store import find_key, revoke_key

    client, key, _ = served
    client.post("/console/api/session", json={"key": key}, headers=H)
    assert client.get("/console/api/jobs").status_code == 200
    with client.app.state.ctx.sessions() as db:
        revoke_key(db, find_key(db, key).id)
    assert client.get("/console/api/jobs").status_code == 401


def test_the_pages_never_write_markup_from_data() -> None:
    """The console's scripts build the DOM with textContent/attributes only: no HTML sinks, no eval, no inline
    script or style in the page (the CSP would refuse them anyway)."""
    from service.serve.console.routes import STATIC

    for js in (STATIC / "js").glob("*.js"):
        text = js.read_text(encoding="utf-8")
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
            assert sink not in text, f"{js.name}: {sink}"
    page = (STATIC / "index.html").read_text(encoding="utf-8")
    assert "<style" not in page and " style=" not in page and re.search(r"\son[a-z]+\s*=", page) is None
    assert all('src="/console/static/' in line for line in page.splitlines() if "<script" in line)


def test_jobs_sharing_metadata_sweep_form_a_sweep_and_a_bad_metric_is_a_400(served) -> None:  # type: ignore[no-untyped-def]
    client, key, _ = served
    client.post("/console/api/session", json={"key": key}, headers=H)
    with client.app.state.ctx.sessions() as db:
        from service.serve.store import find_key

        owner = find_key(db, key).id
        ids = []
        for alpha in (0.8, 1.2):
            job = JobRow(id=new_id("ftjob"), owner=owner, status="succeeded", model="demo", training_file="file-x",
                         seed=1, method={"type": "dpo", "hdpo_tune": {"alpha": alpha}}, request={}, created_at=now(),
                         result_files=[], job_metadata={"sweep": "s1", "select": "accuracy@t1.0"})
            db.add(job)
            ids.append(job.id)
        db.commit()
    sweeps = client.get("/console/api/sweeps").json()["data"]
    assert sweeps == [{"id": "sweep:s1", "name": "s1", "select": "accuracy@t1.0", "winner": None,
                       "jobs": ids[::-1]}]
    cmp = client.get(f"/console/api/compare?ids={','.join(ids)}&select=accuracy@t1.0").json()
    assert [r["alpha_value"] for r in cmp["runs"]] == [0.8, 1.2] and cmp["best"] is None  # no eval results yet
    bad = client.get(f"/console/api/compare?ids={ids[0]}&select=<b>")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "select"
