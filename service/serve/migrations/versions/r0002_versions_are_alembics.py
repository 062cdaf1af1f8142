"""From here the schema's version is Alembic's (``alembic_version``); ``meta.schema_version`` becomes "2".

The releases before Alembic refuse any database whose ``meta.schema_version`` is not "1", with their one-line
message: the bump keeps them from opening (and half-reading) a database a newer hdpo-tune has migrated.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: tuple[str, ...] | None = None
depends_on: tuple[str, ...] | None = None

META = sa.table("meta", sa.column("key", sa.String()), sa.column("value", sa.String()))


def upgrade() -> None:
    op.execute(META.update().where(META.c.key == "schema_version").values(value="2"))


def downgrade() -> None:
    op.execute(META.update().where(META.c.key == "schema_version").values(value="1"))
