"""Alembic's environment: runs the revisions on the connection ``init_schema`` hands over.

xianliao upgrades its schema itself at start-up (``xianliao.storage.db.init_schema``), inside a
transaction it owns, so there is no ``alembic.ini`` and no offline (``--sql``) mode. On SQLite the
revisions run in batch mode: SQLite's ALTER TABLE cannot change or drop columns, so batch mode
copies the table instead.
"""

from alembic import context

from xianliao.storage.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("xianliao's migrations run through xianliao.storage.db.init_schema")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
