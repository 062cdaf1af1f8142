"""Alembic's environment: migrate the connection :func:`service.serve.migrate.upgrade` passes in.

Run by Alembic (``command.upgrade``/``command.stamp``) inside that connection's transaction, so an upgrade on
PostgreSQL is all or nothing. No ``alembic.ini``: the server configures Alembic in code.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError("hdpo-tune's migrations run from service.serve.migrate.upgrade (the server does it at start)")
context.configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
