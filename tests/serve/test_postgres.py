"""The same service on a real PostgreSQL server (Debian's `postgresql` package), started here: a throwaway
cluster in a temp folder on a loopback port, owned by the `postgres` user. Skipped where PostgreSQL is not
installed (`apt-get install -y postgresql`).

The job runs for real but fails fast (a Hub model with the Hub offline), which exercises the claim, the
process start, the exit and the failure path against PostgreSQL without a minute of training; the training
path itself is the same code as on SQLite (tests/serve/test_api.py).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from ._server import Server, create_key, demo_rows, free_port, wait_for


def _pg_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    return Path(dirs[-1]) if dirs else None


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    pgbin = _pg_bin()
    if pgbin is None or not (pgbin / "pg_ctl").exists():
        pytest.skip("PostgreSQL is not installed (apt-get install -y postgresql)")
    try:
        pg = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no postgres user")
    root = Path(tempfile.mkdtemp(prefix="hdpo-pg-"))
    os.chown(root, pg.pw_uid, pg.pw_gid)
    port = free_port()

    def as_pg(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = list(args) if os.geteuid() == pg.pw_uid else ["runuser", "-u", "postgres", "--", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)

    init = as_pg(str(pgbin / "initdb"), "-D", str(root / "db"), "--auth=trust", "-U", "postgres", "-E", "UTF8")
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"initdb failed: {init.stderr[-300:]}")
    start = as_pg(str(pgbin / "pg_ctl"), "-D", str(root / "db"), "-l", str(root / "log"), "-w", "-o",
                  f"-h 127.0.0.1 -p {port} -k {root}", "start")
    if start.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"PostgreSQL did not start: {start.stderr[-300:]}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        as_pg(str(pgbin / "pg_ctl"), "-D", str(root / "db"), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


def test_service_on_postgresql(pg_url, tmp_path, model_root):
    pytest.importorskip("psycopg")
    data = tmp_path / "data"
    alice, bob = create_key(data, "alice", db=pg_url), create_key(data, "bob", db=pg_url)
    server = Server(data, model_root, extra=("--db", pg_url)).start()
    try:
        c = server.client(alice)
        f = c.files.create(file=("prefs.jsonl", demo_rows(8)), purpose="fine-tune")
        jobs = [c.fine_tuning.jobs.create(model="hdpo-test/not-downloaded", training_file=f.id,
                                          extra_body={"hdpo_tune": {"train": {"max_steps": 2}}}) for _ in range(3)]
        for queued in jobs[1:]:  # one worker: jobs[0] runs, the others wait
            assert c.fine_tuning.jobs.cancel(queued.id).status == "cancelled"
        failed = wait_for(c, jobs[0].id, timeout=300)
        assert failed.status == "failed" and failed.error.code in ("invalid_input", "job_failed")
        assert "hdpo-test/not-downloaded" in failed.error.message
        first = c.fine_tuning.jobs.list(limit=2)
        assert [j.id for j in first.data] == [jobs[2].id, jobs[1].id] and first.has_more
        assert [j.id for j in c.fine_tuning.jobs.list(limit=2, after=jobs[1].id).data] == [jobs[0].id]
        messages = [e.message for e in c.fine_tuning.jobs.list_events(jobs[0].id)]
        assert any(m.startswith("The job failed") for m in messages)
        with pytest.raises(openai.NotFoundError):
            server.client(bob).fine_tuning.jobs.retrieve(jobs[0].id)
    finally:
        server.stop()
    assert not (data / "serve.db").exists()  # the state went to PostgreSQL


def test_a_postgresql_database_of_the_release_before_alembic_is_upgraded(pg_url: str, tmp_path: Path) -> None:
    """The upgrade of tests/serve/test_migrations.py on PostgreSQL (its own database in the same cluster)."""
    pytest.importorskip("psycopg")
    import sqlalchemy as sa

    from .test_migrations import build_legacy, check_served_unchanged

    admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql("CREATE DATABASE legacy")
    admin.dispose()
    url = pg_url.rsplit("/", 1)[0] + "/legacy"
    build_legacy(url, "postgresql")
    check_served_unchanged(tmp_path / "data", url)
    check_served_unchanged(tmp_path / "data", url)  # a second start: already at the head
