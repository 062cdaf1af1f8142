"""A key holder is a stranger: what a request may not set, the administrator's limits, bad input of every
kind (never a 500), chunked bodies over the limit, a killed server's temporaries, and the status path's answers
equal to the ORM path's. One real server (``--workers 0``: jobs are accepted and never run, so nothing here
trains), driven over HTTP."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from ._server import Server, create_key, demo_rows

ADMIN = ("--workers", "0", "--max-upload-mb", "1", "--allow-unsandboxed-code", "--report-to", "mlflow",
         "--mlflow-tracking-uri", "http://127.0.0.1:9", "--limit", "max_steps=100", "--limit", "max_train_pairs=1000")
STALE = (".tmp-file-0123456789abcdef01234567.jsonl", ".tmp-file-0123456789abcdef01234567.trl.jsonl")
NOT_OURS = ("notes.txt", ".tmp-upload.jsonl")


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, model_root: Path) -> Iterator[dict[str, Any]]:
    data = tmp_path_factory.mktemp("hostile") / "data"
    key, other = create_key(data, "mallory"), create_key(data, "bob")
    files = data / "files"
    files.mkdir(parents=True, exist_ok=True)
    for name in (*STALE, *NOT_OURS):  # what a server killed during an upload leaves, and files not ours
        (files / name).write_text("{}\n")
    outside = data.parent / "outside.jsonl"
    outside.write_text("keep\n")
    (files / ".tmp-file-89abcdef0123456789abcdef.jsonl").symlink_to(outside)
    server = Server(data, model_root, extra=ADMIN).start()
    http = httpx.Client(base_url=server.url.removesuffix("/v1"), headers={"Authorization": f"Bearer {key}"},
                        timeout=60)
    up = http.post("/v1/files", files={"file": ("prefs.jsonl", demo_rows(40))}, data={"purpose": "fine-tune"})
    tasks = http.post("/v1/files", files={"file": ("tasks.jsonl", b'{"prompt": "1+1=", "answer": "2"}\n' * 10)},
                      data={"purpose": "user_data"})
    assert up.status_code == tasks.status_code == 200, (up.text, tasks.text)
    yield {"server": server, "http": http, "key": key, "other": other, "file": up.json()["id"],
           "tasks": tasks.json()["id"], "data": data, "outside": outside}
    http.close()
    server.stop()


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """``base`` with each section of ``patch`` laid over it (one level, as the spec's sections)."""
    return {**base, **{k: ({**base[k], **v} if isinstance(base.get(k), dict) and isinstance(v, dict) else v)
                       for k, v in patch.items()}}


def _create(srv: dict[str, Any], extension: dict[str, Any] | None = None, **fields: Any) -> httpx.Response:
    body = {"model": "demo", "training_file": srv["file"], **fields}
    if extension is not None:
        body["hdpo_tune"] = extension
    return srv["http"].post("/v1/fine_tuning/jobs", json=body)


def _native(srv: dict[str, Any], spec: dict[str, Any]) -> httpx.Response:
    base = {"model": {"name_or_path": "demo"}, "data": {"train": srv["file"]}, "train": {"max_steps": 2}}
    return srv["http"].post("/v1/hdpo/jobs", json={"spec": _merge(base, spec)})


def _error(r: httpx.Response, status: int = 400) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text[:300])
    err = r.json()["error"]
    assert err["message"] and err["type"], err
    return err


def test_stale_upload_temporaries_removed_at_start(srv: dict[str, Any]) -> None:
    files = srv["data"] / "files"
    assert not any((files / n).exists() for n in STALE)
    assert all((files / n).read_text() == "{}\n" for n in NOT_OURS)  # not ours by name: kept
    assert (files / ".tmp-file-89abcdef0123456789abcdef.jsonl").is_symlink()  # a link is not our temporary
    assert srv["outside"].read_text() == "keep\n"


FORBIDDEN = [  # (spec patch, the field the 400 names)
    ({"eval": {"allow_unsandboxed_code": True}}, "eval.allow_unsandboxed_code"),
    ({"tracking": {"report_to": ["mlflow"]}}, "tracking"),
    ({"tracking": {"report_to": ["mlflow"], "mlflow_tracking_uri": "sqlite:////etc/x.db"}}, "tracking"),
    ({"model": {"trust_remote_code": True}}, "model.trust_remote_code"),
    ({"model": {"allow_pickle": True}}, "model.allow_pickle"),
    ({"output": {"dir": "/tmp/x"}}, "output"),
    ({"hub": {"repo_id": "a/b"}}, "hub"),
    ({"train": {"ref_cache_dir": "/tmp", "precompute_ref_logps": True}}, "train.ref_cache_dir"),
    ({"distributed": {"accelerate_config": "/etc/passwd"}}, "distributed.accelerate_config"),
    ({"eval": {"tasks": "/etc/passwd"}}, "eval.tasks"),
]


@pytest.mark.parametrize(("patch", "field"), FORBIDDEN, ids=[f for _, f in FORBIDDEN])
def test_isolation_settings_are_the_administrators(srv: dict[str, Any], patch: dict[str, Any], field: str) -> None:
    for r in (_create(srv, patch), _native(srv, patch)):
        assert _error(r)["param"] == field


def test_administrator_settings_reach_every_job(srv: dict[str, Any]) -> None:
    r = _create(srv, {"train": {"max_steps": 2}, "eval": {"tasks": srv["tasks"], "n_samples": 1}})
    assert r.status_code == 200, r.text
    spec = yaml.safe_load((srv["data"] / "runs" / r.json()["id"] / "job.yaml").read_text())
    assert spec["eval"]["allow_unsandboxed_code"] is True
    assert spec["tracking"] == {"report_to": ["mlflow"], "project": "hdpo-tune-serve", "run_name": r.json()["id"],
                                "mlflow_tracking_uri": "http://127.0.0.1:9"}


LIMITS = [  # (OpenAI hyperparameters or None, spec patch, field named, limit named)
    ({"n_epochs": 1e9}, {}, "train.epochs", "max_steps"),
    ({"batch_size": 10**12}, {}, "train.batch_size", "max_batch_size"),
    (None, {"train": {"max_steps": 101}}, "train.max_steps", "max_steps"),  # this server: --limit max_steps=100
    (None, {"train": {"max_steps": 100, "batch_size": 16}}, "train.max_steps", "max_train_pairs"),  # 1600 > 1000
    (None, {"eval": {"memory_mb": 10**6}}, "eval.memory_mb", "max_sandbox_mb"),
    (None, {"eval": {"max_new_tokens": 10**7}}, "eval.max_new_tokens", "max_seq_len"),
    (None, {"data": {"max_length": 10**6}}, "data.max_length", "max_seq_len"),
    (None, {"train": {"row_tokens": 10**7}}, "train.row_tokens", "max_row_tokens"),
    (None, {"train": {"keep_checkpoints": 1000}}, "train.keep_checkpoints", "max_checkpoints"),
    (None, {"distributed": {"num_processes": 64}}, "distributed.num_processes", "max_processes"),
    (None, {"lora": {"r": 4096}}, "lora.r", "max_lora_rank"),
    (None, {"data": {"max_row_bytes": 1 << 30}}, "data.max_row_bytes", "max_row_bytes"),
    (None, {"eval": {"tasks": "TASKS", "n_samples": 1024}}, "eval.n_samples", "max_eval_samples"),
]


@pytest.mark.parametrize(("hp", "patch", "field", "limit"), LIMITS, ids=[f"{f}-{m}" for _, _, f, m in LIMITS])
def test_limits_are_the_administrators(srv: dict[str, Any], hp: dict[str, Any] | None, patch: dict[str, Any],
                                       field: str, limit: str) -> None:
    patch = json.loads(json.dumps(patch).replace('"TASKS"', json.dumps(srv["tasks"])))
    before = set((srv["data"] / "runs").iterdir())
    if hp is not None:
        r = _create(srv, {"train": {}}, method={"type": "dpo", "dpo": {"hyperparameters": hp}})
    else:
        r = _create(srv, _merge({"train": {"max_steps": 2}}, patch))
    err = _error(r)
    assert err["param"] == field and err["code"] == "over_limit" and f"--limit {limit}=" in err["message"], err
    if hp is None:
        assert _error(_native(srv, patch))["param"] == field
    assert set((srv["data"] / "runs").iterdir()) == before  # refused before a run folder is left behind


def _nest(depth: int) -> dict[str, Any]:
    d: dict[str, Any] = {}
    for _ in range(depth):
        d = {"a": d}
    return d


def _bad_requests(srv: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(method, path, httpx arguments): bad input for every route."""
    job = _create(srv, {"train": {"max_steps": 2}}).json()["id"]
    fid = srv["file"]
    for body in ({"n_epochs": "abc"}, {"learning_rate_multiplier": "x"}, {"batch_size": 2.5}, {"beta": -1},
                 {"batch_size": True}, {"n_epochs": [1]}, {"beta": {"a": 1}}, {"unknown": 1}):
        yield "POST", "/v1/fine_tuning/jobs", {"json": {"model": "demo", "training_file": fid,
                                                        "method": {"type": "dpo", "dpo": {"hyperparameters": body}}}}
    for extra in ({"hdpo_tune": _nest(500)}, {"hdpo_tune": {"train": _nest(40)}}, {"method": _nest(100)},
                  {"method": {"type": "dpo", "dpo": "x"}}, {"method": {"type": "dpo", "dpo": {"hyperparameters": 5}}},
                  {"method": {"type": ["dpo"]}}, {"hyperparameters": "x"}, {"seed": -1}, {"seed": 10**30},
                  {"seed": "x"}, {"suffix": "x" * 10_000}, {"suffix": "../.."}, {"metadata": {"a": 1}},
                  {"metadata": {str(i): "v" for i in range(100)}}, {"integrations": [{"type": "wandb"}]},
                  {"hdpo_tune": {"train": 5}}, {"hdpo_tune": {"train": {"epochs": "Infinity"}}},
                  {"hdpo_tune": {"train": {"max_steps": 10**40}}}, {"hdpo_tune": {"nope": {}}},
                  {"hdpo_tune": {"model": {"name_or_path": "/etc"}}}, {"hdpo_tune": {"data": {"train": "/etc/x"}}},
                  {"hdpo_tune": {"eval": {"temperatures": [1e308] * 1000}}}, {"hdpo_tune": []}, {"model": "../../etc"},
                  {"model": "x" * 5000}, {"training_file": "file-" + "0" * 24}, {"training_file": "/etc/passwd"},
                  {"validation_file": 5}, {"model": None}, {"model": "demo\x00"}):
        yield "POST", "/v1/fine_tuning/jobs", {"json": {"model": "demo", "training_file": fid, **extra}}
    for raw in (b"", b"{", b"[]", b'"x"', b"null", b"1e999", b'{"model": "demo", "training_file": NaN}',
                b"[" * 100_000, b"\xff\xfe"):
        for path in ("/v1/fine_tuning/jobs", "/v1/hdpo/jobs"):
            yield "POST", path, {"content": raw, "headers": {"content-type": "application/json"}}
    for spec in (_nest(600), {"model": "demo"}, {"model": {"name_or_path": 5}, "data": {"train": fid}},
                 {"model": {"name_or_path": "demo"}, "data": {"train": [fid]}}, {"spec": []}, []):
        yield "POST", "/v1/hdpo/jobs", {"json": {"spec": spec}}
    for q in ("limit=-1", "limit=0", "limit=abc", f"limit={10**30}", "limit=1e3", "after=zzz", "after=" + "x" * 5000,
              "order=sideways"):
        for path in ("/v1/fine_tuning/jobs", f"/v1/fine_tuning/jobs/{job}/events",
                     f"/v1/fine_tuning/jobs/{job}/checkpoints", "/v1/files"):
            if "order" in q and "files" not in path:
                continue
            yield "GET", f"{path}?{q}", {}
    for bad_id in ("x" * 3000, "..%2F..%2Fetc", "ftjob-%00", "%ff%fe", "ftjob-" + "0" * 24):
        for path in (f"/v1/fine_tuning/jobs/{bad_id}", f"/v1/fine_tuning/jobs/{bad_id}/events",
                     f"/v1/fine_tuning/jobs/{bad_id}/checkpoints", f"/v1/hdpo/jobs/{bad_id}/artifacts",
                     f"/v1/files/{bad_id}", f"/v1/files/{bad_id}/content"):
            yield "GET", path, {}
        yield "POST", f"/v1/fine_tuning/jobs/{bad_id}/cancel", {}
        yield "DELETE", f"/v1/files/{bad_id}", {}
    yield "GET", f"/v1/hdpo/jobs/{job}/artifacts?parts=../../etc", {}
    yield "GET", f"/v1/hdpo/jobs/{job}/artifacts?parts=" + ",".join(["merged"] * 1000), {}
    for files, data in ((None, {"purpose": "fine-tune"}), ({"file": ("a.jsonl", b"{}")}, {"purpose": "x" * 5000}),
                        ({"file": ("a.jsonl", b"{}")}, None), ({"file": ("../../a.jsonl", b"\xff\n")}, {"purpose": "fine-tune"}),
                        ({"file": ("a.jsonl", b"[" * 100_000 + b"\n")}, {"purpose": "fine-tune"}),
                        ({"file": ("a.jsonl", b"[" * 100_000 + b"\n")}, {"purpose": "user_data"}),
                        ({"file": ("a.jsonl", b'{"chosen": "a", "rejected": "b"}\n' + b"1" * 5000 + b"\n")},
                         {"purpose": "fine-tune"}),
                        ({"file": ("a.jsonl", b"1" * 5000 + b"\n")}, {"purpose": "user_data"}),
                        ({"file": ("a.jsonl", b'{"input": 1' + b"1" * 5000 + b"}\n")}, {"purpose": "fine-tune"})):
        yield "POST", "/v1/files", {"files": files, "data": data}
    yield "POST", "/v1/files", {"content": b"--x\r\nbroken", "headers": {"content-type": "multipart/form-data; boundary=x"}}
    yield "POST", "/v1/files", {"json": {"file": "x", "purpose": "fine-tune"}}


def test_bad_input_is_never_a_500(srv: dict[str, Any]) -> None:
    seen = 0
    for method, path, kwargs in _bad_requests(srv):
        r = srv["http"].request(method, path, **kwargs)
        assert 400 <= r.status_code < 500, (method, path[:120], str(kwargs)[:200], r.status_code, r.text[:300])
        err = r.json()["error"]
        assert err["message"] and str(srv["data"]) not in err["message"], err
        seen += 1
    assert seen > 120
    assert _error(_create(srv, method={"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": "abc"}}}))["param"] \
        == "method.dpo.hyperparameters.n_epochs"
    assert srv["server"].proc is not None and srv["server"].proc.poll() is None


def test_chunked_body_over_limit_is_413_before_it_ends(srv: dict[str, Any]) -> None:
    """A chunked upload (no Content-Length) is answered 413 once 1 MiB (this server's limit) is crossed: the
    answer comes although the body never ends."""
    server = srv["server"]
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(b"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + srv["key"].encode() +
                  b"\r\nContent-Type: multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n")
        part = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n'
                b"Content-Type: application/octet-stream\r\n\r\n")
        try:
            for chunk in [part] + [b'{"chosen": "a", "rejected": "b"}\n' * 2000] * 24:  # ~1.6 MiB, never ended
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server stopped reading once it had answered
        answer = b""
        try:
            while chunk := s.recv(65536):  # the server closes the connection after its answer
                answer += chunk
        except ConnectionResetError:
            pass  # closed with our unread bytes in its buffer: the answer came before the reset
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"connection: close" in answer.lower() and b"request_too_large" in answer


def test_status_path_equals_the_orm_path(srv: dict[str, Any]) -> None:
    """The status routes (Core rows) answer exactly what the ORM path renders, in every job state."""
    from sqlalchemy import select, update

    from service.serve.db import ApiKey, JobRow, make_engine, session_factory
    from service.serve.jobs_api import job_object
    from service.serve.keys import hash_key
    from service.serve.store import _page

    http = srv["http"]
    ids = [_create(srv, {"train": {"max_steps": 2}}, suffix=f"s{i}", metadata={"i": str(i)}).json()["id"]
           for i in range(4)]
    http.post(f"/v1/fine_tuning/jobs/{ids[1]}/cancel")
    engine = make_engine(f"sqlite:///{srv['data'] / 'serve.db'}")
    sessions = session_factory(engine)
    with sessions() as db:  # the states a job process would leave, written as the scheduler writes them
        db.execute(update(JobRow).where(JobRow.id == ids[2]).values(
            status="succeeded", fine_tuned_model="ft:demo:hdpo-tune:s2:abc", result_files=["file-x"],
            trained_tokens=1234, finished_at=5, last_stage="done:done", last_metrics_step=2, attempts=1))
        db.execute(update(JobRow).where(JobRow.id == ids[3]).values(
            status="failed", error={"code": "job_failed", "message": "m", "param": None}, attempts=2))
        db.commit()
        owner = db.scalar(select(ApiKey.id).where(ApiKey.key_hash == hash_key(srv["key"])))
        for job_id in ids:
            assert http.get(f"/v1/fine_tuning/jobs/{job_id}").json() == job_object(
                db.scalar(select(JobRow).where(JobRow.id == job_id))).model_dump(mode="json")
        after = None
        for _ in range(20):
            q = {"limit": 3, **({"after": after} if after else {})}
            fast = http.get("/v1/fine_tuning/jobs", params=q).json()
            rows, more = _page(db, JobRow, select(JobRow).where(JobRow.owner == owner), after=after, limit=3,
                               order="desc", max_limit=100)
            slow = {"object": "list", "data": [job_object(r).model_dump(mode="json") for r in rows],
                    "has_more": more, "first_id": rows[0].id if rows else None, "last_id": rows[-1].id if rows else None}
            assert fast == slow
            if not fast["has_more"]:
                break
            after = fast["last_id"]
    engine.dispose()
    other = {"Authorization": f"Bearer {srv['other']}"}
    assert http.get(f"/v1/fine_tuning/jobs/{ids[0]}", headers=other).status_code == 404
    assert http.get("/v1/fine_tuning/jobs", headers=other).json()["data"] == []
    assert http.get(f"/v1/fine_tuning/jobs/{ids[0]}", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert http.get("/v1/fine_tuning/jobs", headers={"Authorization": ""}).status_code == 401


def test_errors_and_events_show_no_server_path(tmp_path: Path) -> None:
    from service.serve.config import ServeConfig

    cfg = ServeConfig(data_dir=tmp_path / "d", model_roots=(tmp_path / "m",))
    text = f"{tmp_path}/d/runs/ftjob-1/job.yaml: bad; {tmp_path}/m/demo/config.json missing"
    assert cfg.public(text) == "DATA/runs/ftjob-1/job.yaml: bad; MODELS/demo/config.json missing"
