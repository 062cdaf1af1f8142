"""Pieces of the service that need no server: the metrics reader, keys, the CLI wiring, the database URL
shown at start-up, and the one-server-per-data-folder lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from typer.testing import CliRunner

from service.cli import app
from service.serve.cli import describe_db
from service.serve.progress import MetricsReader, metric_event

from ._server import HDPO_TUNE, env


def test_metrics_reader_reads_appends_waits_for_torn_lines_and_rereads_a_rewrite(tmp_path):
    path = tmp_path / "metrics.jsonl"
    reader = MetricsReader(tmp_path)
    assert reader.new_records() == []
    path.write_text(json.dumps({"step": 1, "loss": 0.7}) + "\n" + '{"step": 2, "lo')
    assert [r["step"] for r in reader.new_records()] == [1]  # the torn line waits
    with path.open("a") as fh:
        fh.write('ss": 0.6}\n')
    assert [r["step"] for r in reader.new_records()] == [2]
    assert reader.new_records() == []
    tmp = tmp_path / "m.tmp"  # a resumed run rewrites the file (os.replace: a new inode)
    tmp.write_text(json.dumps({"step": 1, "loss": 0.7}) + "\n")
    os.replace(tmp, path)
    assert [r["step"] for r in reader.new_records()] == [1]


def test_metric_event_has_openai_and_trl_names():
    message, data = metric_event({"step": 3, "loss": 0.5, "eval/loss": 0.6, "entropy": 0.1, "tokens_per_s": 100.0,
                                  "rewards/accuracies": 0.75}, 10)
    assert message.startswith("Step 3/10: training loss=0.5000")
    assert data["train_loss"] == 0.5 and data["valid_loss"] == 0.6 and data["total_steps"] == 10
    assert data["entropy"] == 0.1 and data["rewards/accuracies"] == 0.75


def test_keys_are_stored_hashed_and_revocable(tmp_path):
    runner = CliRunner()
    data = str(tmp_path / "d")
    made = runner.invoke(app, ["serve", "keys", "create", "ci-bot", "--data", data])
    assert made.exit_code == 0, made.output
    key = made.stdout.strip().splitlines()[-1]
    assert key.startswith("hdpo-sk-") and len(key) > 40
    import hashlib
    import sqlite3

    stored = [p.read_bytes() for p in (tmp_path / "d").glob("serve.db*")]  # the database and its WAL
    assert not any(key.encode() in b for b in stored)
    with sqlite3.connect(tmp_path / "d" / "serve.db") as con:
        assert con.execute("select key_hash from api_keys").fetchall() == [(hashlib.sha256(key.encode()).hexdigest(),)]
    listed = runner.invoke(app, ["serve", "keys", "list", "--data", data])
    key_id, name, _, state = listed.stdout.strip().split("\t")
    assert name == "ci-bot" and state == "active" and key not in listed.stdout
    assert runner.invoke(app, ["serve", "keys", "revoke", key_id, "--data", data]).exit_code == 0
    assert runner.invoke(app, ["serve", "keys", "list", "--data", data]).stdout.strip().endswith("revoked")
    from service.serve.db import make_engine, session_factory
    from service.serve.store import find_key

    with session_factory(make_engine(f"sqlite:///{tmp_path / 'd' / 'serve.db'}"))() as s:
        assert find_key(s, key) is None
    bad = runner.invoke(app, ["serve", "keys", "revoke", "key-nope", "--data", data])
    assert bad.exit_code == 2


def test_other_commands_do_not_import_the_server_stack():
    code = ("import sys; import service.cli; "
            "print(sorted(m for m in ('fastapi', 'uvicorn', 'sqlalchemy', 'starlette') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], env=env(), capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_database_url_is_shown_without_password():
    shown = describe_db("postgresql+psycopg://hdpo:s3cret-pw@db.internal:5432/jobs")
    assert "s3cret-pw" not in shown and "db.internal:5432/jobs" in shown
    assert describe_db("sqlite:////data/serve.db") == "sqlite (/data/serve.db)"


def test_second_server_on_one_data_folder_is_refused(tmp_path):
    import fcntl

    data = tmp_path / "d"
    data.mkdir()
    fd = os.open(data / "server.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a running server holds it
    try:
        out = subprocess.run([HDPO_TUNE, "serve", "--data", str(data), "--port", "1"], env=env(),
                             capture_output=True, text=True, timeout=120)
    finally:
        os.close(fd)
    assert out.returncode == 2
    assert f"error: --data: another `hdpo-tune serve` is using {data}" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_database_of_an_unknown_schema_is_refused(tmp_path):
    """A newer hdpo-tune's revision, or a pre-Alembic version other than 1: one line, nothing touched."""
    import sqlite3

    import pytest

    from hdpo_core.errors import InputError
    from service.serve.db import make_engine

    url = f"sqlite:///{tmp_path / 'serve.db'}"
    make_engine(url).dispose()
    with sqlite3.connect(tmp_path / "serve.db") as con:
        con.execute("update alembic_version set version_num = '0999'")
    with pytest.raises(InputError, match=r"at schema revision 0999, which this hdpo-tune serve does not know"):
        make_engine(url)
    with sqlite3.connect(tmp_path / "serve.db") as con:
        assert con.execute("select version_num from alembic_version").fetchall() == [("0999",)]
        con.execute("drop table alembic_version")
        con.execute("update meta set value = '0' where key = 'schema_version'")
    with pytest.raises(InputError, match=r"at schema version 0 \(meta.schema_version\)"):
        make_engine(url)


class _FakeProcess:
    def __init__(self) -> None:
        self.pid = 4242
        self.code: int | None = None
        self.error: str | None = None

    def notes(self) -> list[tuple[str, str]]:
        return []

    def poll(self) -> int | None:
        return self.code

    def terminate(self) -> None:
        self.code = 130


class _FakeExecutor:
    """Holds run folders as a dead server's job processes would (``held``); records what it starts."""

    keeps_jobs = False

    def __init__(self) -> None:
        self.held: set[str] = set()
        self.started: list[str] = []

    def busy(self, run_dir) -> bool:  # type: ignore[no-untyped-def]
        return run_dir.name in self.held

    def start(self, job_id, run_dir, *, attempt, slot):  # type: ignore[no-untyped-def]
        from service.serve.executor import Busy

        if run_dir.name in self.held:
            raise Busy(str(run_dir))
        self.started.append(job_id)
        return _FakeProcess()


def test_an_interrupted_job_keeps_its_slot_until_its_folder_is_free(tmp_path):
    """After a crash the old job process may still be writing its checkpoint: the queued job must not take
    the slot meanwhile, and the job resumes (attempt 2) as soon as the folder is free."""
    from service.serve.config import ServeConfig
    from service.serve.db import ApiKey, JobRow, make_engine, session_factory
    from service.serve.scheduler import Scheduler
    from service.serve.store import job_by_id

    config = ServeConfig(data_dir=tmp_path, workers=1, host_id="here")
    sessions = session_factory(make_engine(config.database_url))
    common = {"owner": "k", "model": "demo", "training_file": "file-x", "seed": 0, "method": {}, "request": {},
              "created_at": 1, "result_files": [], "last_metrics_step": 0, "last_stage": "", "stages_reported": [],
              "cancel_requested": False}
    with sessions() as db:
        db.add(ApiKey(id="k", name="k", key_hash="h", created_at=1, revoked=False))
        db.add(JobRow(id="ftjob-crashed", status="running", host="here", attempts=1, **common))
        db.add(JobRow(id="ftjob-queued", status="queued", attempts=0, **common))
        db.commit()
    for job_id in ("ftjob-crashed", "ftjob-queued"):
        (config.runs_dir / job_id).mkdir(parents=True)
    executor = _FakeExecutor()
    executor.held.add("ftjob-crashed")
    scheduler = Scheduler(config, sessions, executor)
    scheduler.tick()
    assert executor.started == []  # the slot waits for the crashed job
    executor.held.clear()
    scheduler.tick()
    assert executor.started == ["ftjob-crashed"]
    with sessions() as db:
        assert job_by_id(db, "ftjob-crashed").attempts == 2
        assert job_by_id(db, "ftjob-queued").status == "queued"
