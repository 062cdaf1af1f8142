"""The database's schema across versions: a database made by the release before Alembic (its exact DDL, with
rows in it) is opened by the server, upgraded, and its rows are served unchanged, byte for byte as that release
answered; the models and the migrations describe the same schema; a database from a newer hdpo-tune is refused
with one line. SQLite here; ``test_postgres.py`` runs the same upgrade on PostgreSQL."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from fastapi.testclient import TestClient

from service.serve.app import create_app
from service.serve.config import ServeConfig
from service.serve.db import Base, make_engine
from service.serve.keys import hash_key
from service.serve.migrate import head

from ._server import HDPO_TUNE, env

FIXTURES = Path(__file__).parent / "fixtures"
KEY = "hdpo-sk-legacy-key-0123456789"
METHOD = {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1, "batch_size": 2, "learning_rate_multiplier": 1.0,
                                                     "n_epochs": "auto"}},
          "hdpo_tune": {"alpha": 0.8, "max_steps": 4, "learning_rate": 1e-05, "lora": True, "quantization": None}}
JOB = {"id": "ftjob-legacy0001", "owner": "key-legacy", "status": "succeeded", "model": "demo",
       "training_file": "file-legacy0001", "validation_file": None, "seed": 7, "suffix": "old",
       "job_metadata": {"case": "legacy"}, "method": METHOD, "request": {"model": "demo"}, "created_at": 1700000000,
       "started_at": 1700000010, "finished_at": 1700000100, "fine_tuned_model": "ft:demo:hdpo-tune:old:legacy00",
       "result_files": ["file-legacyres1"], "trained_tokens": 1234, "error": None, "cancel_requested": False,
       "attempts": 1, "host": None, "pid": None, "lease_until": None, "slot": 0, "last_metrics_step": 4,
       "last_stage": "done:done", "stages_reported": ["train", "merge"]}
FAILED = {**JOB, "id": "ftjob-legacy0002", "status": "failed", "suffix": None, "job_metadata": None,
          "fine_tuned_model": None, "result_files": [], "trained_tokens": None, "last_stage": "train:failed",
          "error": {"code": "job_failed", "message": "the job process exited with code 1", "param": None}}
EVENT = {"id": "ftevent-legacy0001", "job_id": JOB["id"], "created_at": 1700000050, "level": "info",
         "message": "Step 4/4: training loss=0.6931", "type": "metrics",
         "data": {"step": 4, "total_steps": 4, "train_loss": 0.6931471805599453, "learning_rate": 1e-05}}
FILE = {"id": "file-legacy0001", "owner": "key-legacy", "filename": "prefs.jsonl", "purpose": "fine-tune",
        "bytes": 2048, "created_at": 1699999999, "rows": 16, "data_format": "trl"}


def _table(name: str, row: dict[str, Any]) -> sa.TableClause:
    json_cols = {"job_metadata", "method", "request", "result_files", "error", "stages_reported", "data"}
    return sa.table(name, *(sa.column(c, sa.JSON() if c in json_cols else None) for c in row))


def build_legacy(url: str, dialect: str) -> None:
    """A database as the release before Alembic left it: its DDL (create_all's, kept in fixtures/) and rows."""
    engine = sa.create_engine(url)
    lines = (FIXTURES / f"serve_schema_v1.{dialect}.sql").read_text(encoding="utf-8").splitlines()
    ddl = "\n".join(line for line in lines if not line.startswith("--"))
    with engine.begin() as conn:
        for statement in filter(str.strip, ddl.split(";\n")):
            conn.exec_driver_sql(statement.rstrip(";"))
        conn.execute(sa.insert(_table("api_keys", {"id": 0, "name": 0, "key_hash": 0, "created_at": 0, "revoked": 0})),
                     [{"id": "key-legacy", "name": "old", "key_hash": hash_key(KEY), "created_at": 1, "revoked": False}])
        conn.execute(sa.insert(_table("files", FILE)), [FILE])
        for job in (JOB, FAILED):  # one by one: seq (the list order) follows the inserts
            conn.execute(sa.insert(_table("jobs", job)), [job])
        conn.execute(sa.insert(_table("events", EVENT)), [EVENT])
    engine.dispose()


def expected_job(row: dict[str, Any]) -> dict[str, Any]:
    """The job object exactly as the release before Alembic rendered it (its hand-built dict, in its order)."""
    hp = row["method"]["dpo"]["hyperparameters"]
    return {"id": row["id"], "object": "fine_tuning.job", "created_at": row["created_at"], "error": row["error"],
            "fine_tuned_model": row["fine_tuned_model"], "finished_at": row["finished_at"],
            "hyperparameters": {k: hp[k] for k in ("batch_size", "learning_rate_multiplier", "n_epochs")},
            "model": row["model"], "organization_id": row["owner"], "result_files": row["result_files"],
            "seed": row["seed"], "status": row["status"], "trained_tokens": row["trained_tokens"],
            "training_file": row["training_file"], "validation_file": row["validation_file"],
            "estimated_finish": None, "integrations": [], "metadata": row["job_metadata"], "method": row["method"],
            "user_provided_suffix": row["suffix"],
            "hdpo_tune": {"stage": row["last_stage"] or None, "step": row["last_metrics_step"],
                          "attempts": row["attempts"], "cancel_requested": row["cancel_requested"],
                          "started_at": row["started_at"]}}


def _bytes(value: Any) -> bytes:
    """What Starlette's JSONResponse sent for a hand-built dict."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode()


def check_served_unchanged(data_dir: Path, url: str) -> None:
    """Open the legacy database with the server (``create_app`` upgrades it) and read every row back."""
    app = create_app(ServeConfig(data_dir=data_dir, db_url=url, workers=0))
    auth = {"Authorization": f"Bearer {KEY}"}
    with TestClient(app, base_url="http://testserver") as client:
        one = client.get(f"/v1/fine_tuning/jobs/{JOB['id']}", headers=auth)
        assert one.status_code == 200 and one.content == _bytes(expected_job(JOB))
        listed = client.get("/v1/fine_tuning/jobs", headers=auth)
        assert listed.content == _bytes({"object": "list", "data": [expected_job(FAILED), expected_job(JOB)],
                                         "has_more": False, "first_id": FAILED["id"], "last_id": JOB["id"]})
        events = client.get(f"/v1/fine_tuning/jobs/{JOB['id']}/events", headers=auth)
        event = {"id": EVENT["id"], "object": "fine_tuning.job.event", "created_at": EVENT["created_at"],
                 "level": "info", "message": EVENT["message"], "data": EVENT["data"], "type": "metrics"}
        assert events.content == _bytes({"object": "list", "data": [event], "has_more": False,
                                          "first_id": EVENT["id"], "last_id": EVENT["id"]})
        file = {"id": FILE["id"], "object": "file", "bytes": FILE["bytes"], "created_at": FILE["created_at"],
                "filename": FILE["filename"], "purpose": "fine-tune", "status": "processed", "status_details": None,
                "expires_at": None}
        assert client.get(f"/v1/files/{FILE['id']}", headers=auth).content == _bytes(file)
        cancelled = client.post(f"/v1/fine_tuning/jobs/{FAILED['id']}/cancel", headers=auth)
        assert cancelled.status_code == 400  # the upgraded database takes writes as before: a finished job
        new_file = client.post("/v1/files", headers=auth, files={"file": ("p.jsonl", b'{"prompt": "a", "chosen": '
                                                                           b'"b", "rejected": "c"}\n')},
                               data={"purpose": "fine-tune"})
        assert new_file.status_code == 200, new_file.text
        ids = [f["id"] for f in client.get("/v1/files", headers=auth).json()["data"]]
        assert ids[0] == new_file.json()["id"] and ids[-1] == FILE["id"]  # newest first, the old row last
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == head()
        # the releases before Alembic refuse any schema_version but "1": they never open an upgraded database
        assert conn.execute(sa.text("SELECT value FROM meta WHERE key = 'schema_version'")).scalar() == "2"
        assert compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata) == []
    engine.dispose()


@pytest.fixture
def legacy(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    data = tmp_path / "data"
    data.mkdir()
    url = f"sqlite:///{data / 'serve.db'}"
    build_legacy(url, "sqlite")
    yield data, url


def test_a_database_of_the_release_before_alembic_is_upgraded_and_served_unchanged(
        legacy: tuple[Path, str]) -> None:
    data, url = legacy
    with sqlite3.connect(data / "serve.db") as con:
        assert "alembic_version" not in {r[0] for r in con.execute("select name from sqlite_master")}
    check_served_unchanged(data, url)
    check_served_unchanged(data, url)  # a second start finds the head: nothing to do, nothing changed


def test_a_new_database_is_the_models_schema(tmp_path: Path) -> None:
    """Every revision from empty gives the schema the models declare (and the legacy upgrade above the same)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'new.db'}")
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata) == []
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == head()
    engine.dispose()


def test_a_newer_database_is_refused_with_one_line(legacy: tuple[Path, str]) -> None:
    data, url = legacy
    make_engine(url).dispose()
    with sqlite3.connect(data / "serve.db") as con:
        con.execute("update alembic_version set version_num = '0999'")
    out = subprocess.run([HDPO_TUNE, "serve", "keys", "list", "--data", str(data)], env=env(), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "schema revision 0999" in lines[0] and "Traceback" not in out.stderr, out.stderr
