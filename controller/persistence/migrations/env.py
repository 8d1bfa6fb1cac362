"""Alembic environment: runs migrations on the connection the controller hands over."""

from __future__ import annotations

from alembic import context

from controller.persistence.models import Base

config = context.config
connection = config.attributes.get("connection")

if connection is None:
    from sqlalchemy import create_engine

    engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=Base.metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
