"""vaults remember where their storage is

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 05:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("vaults") as batch:
        batch.add_column(sa.Column("storage_url", sa.Text(), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("vaults") as batch:
        batch.drop_column("storage_url")
