"""Alembic migrations of the service's database, run by :func:`service.serve.migrate.upgrade` at every start.

``env.py`` is Alembic's entry point (it is loaded by Alembic, never imported); ``versions/`` holds one file per
revision: ``0001`` is the schema of the releases before Alembic, each later one changes it by one step.
"""
