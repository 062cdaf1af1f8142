"""The database's schema, brought to this version's at every start: Alembic migrations, run in code.

Four cases, told apart by what the database holds:

* nothing (a new data folder or an empty PostgreSQL database): every revision runs, creating the tables;
* the tables of a release before Alembic (``meta.schema_version`` "1", no ``alembic_version``): stamped at
  the baseline ``0001`` (the same schema), then upgraded;
* a known revision: upgraded to the head (nothing to do when it is the head);
* a revision this version does not know (a newer hdpo-tune migrated it), or a pre-Alembic version other than
  "1": refused with one line, nothing touched.

On PostgreSQL the whole upgrade is one transaction under an advisory lock, so replicas starting together
migrate once and a failed step leaves the database as it was. SQLite has one server per data folder (its
``server.lock``). The scripts ship inside the package (``migrations/``): no ``alembic.ini`` to install.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection, Engine, inspect, text

from hdpo_core.errors import InputError

log = logging.getLogger("hdpo_tune.serve")
SCRIPTS = Path(__file__).parent / "migrations"
BASELINE = "0001"
#: the pre-Alembic schema version the baseline is
LEGACY_VERSION = "1"
#: any constant: the key of the PostgreSQL advisory lock held while migrating
LOCK_KEY = 0x6864706F


def _config(conn: Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPTS))
    cfg.attributes["connection"] = conn
    return cfg


def script() -> ScriptDirectory:
    return ScriptDirectory(str(SCRIPTS))


def head() -> str:
    rev = script().get_current_head()
    if rev is None:
        raise RuntimeError(f"no migration scripts in {SCRIPTS}")
    return rev


def _refuse(found: str) -> InputError:
    return InputError(f"--db: the database is at schema {found}, which this hdpo-tune serve does not know (it "
                      f"upgrades up to revision {head()}); a newer hdpo-tune created or migrated it: use that "
                      "version, or a new data folder / database")


def _legacy_version(conn: Connection) -> str | None:
    """``meta.schema_version`` of a database made before Alembic; None when there is no ``meta`` table."""
    if not inspect(conn).has_table("meta"):
        return None
    value = conn.execute(text("SELECT value FROM meta WHERE key = 'schema_version'")).scalar()
    return str(value) if value is not None else ""


def current(conn: Connection) -> str | None:
    """The revision the database is at: Alembic's, the baseline for a pre-Alembic database, None when empty."""
    revs = MigrationContext.configure(conn).get_current_heads()
    if len(revs) > 1:
        raise _refuse("revisions " + ", ".join(revs))
    if revs:
        try:
            script().get_revision(revs[0])
        except CommandError:
            raise _refuse(f"revision {revs[0]}") from None
        return revs[0]
    legacy = _legacy_version(conn)
    if legacy is None:
        return None
    if legacy != LEGACY_VERSION:
        raise _refuse(f"version {legacy or 'unknown'} (meta.schema_version)")
    return BASELINE


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Bring the database to the head revision; returns (revision before, revision now)."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
        before = current(conn)
        cfg = _config(conn)
        if before == BASELINE and not MigrationContext.configure(conn).get_current_heads():
            command.stamp(cfg, BASELINE)  # a pre-Alembic database: its tables are the baseline's
        if before != head():
            command.upgrade(cfg, "head")
            log.info("database schema upgraded from %s to %s", before or "empty", head())
    return before, head()
