"""Alembic environment: runs migrations on the connection `shared.migrate` hands it."""

from alembic import context

from shared.models import Base

target_metadata = Base.metadata
connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=target_metadata)
with context.begin_transaction():
    context.run_migrations()
