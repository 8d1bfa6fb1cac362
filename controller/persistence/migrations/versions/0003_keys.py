"""the key service's keys and shares; encrypted vaults; manifest digests of backups

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 08:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "keys",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("project_id", sa.String(36), nullable=False),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("description", sa.String(255), nullable=False),
        sa.Column("state", sa.String(24), nullable=False),
        sa.Column("origin", sa.String(16), nullable=False),
        sa.Column("material_sealed", sa.LargeBinary(), nullable=True),
        sa.Column("deletion_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["accounts.id"],
                                name=op.f("fk_keys_project_id_accounts"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_keys")),
        sa.UniqueConstraint("project_id", "alias", name=op.f("uq_keys_project_id")),
    )
    op.create_table(
        "key_shares",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("key_id", sa.String(36), nullable=False),
        sa.Column("account_id", sa.String(36), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"],
                                name=op.f("fk_key_shares_account_id_accounts"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["key_id"], ["keys.id"],
                                name=op.f("fk_key_shares_key_id_keys"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_key_shares")),
        sa.UniqueConstraint("key_id", "account_id", name=op.f("uq_key_shares_key_id")),
    )
    op.create_index(op.f("ix_key_shares_key_id"), "key_shares", ["key_id"])
    op.create_index(op.f("ix_key_shares_account_id"), "key_shares", ["account_id"])
    with op.batch_alter_table("vaults") as batch:
        batch.add_column(sa.Column("encrypted", sa.Boolean(), nullable=False,
                                   server_default=sa.false()))
        batch.add_column(sa.Column("kms_key_id", sa.String(36), nullable=False,
                                   server_default=""))
    with op.batch_alter_table("backups") as batch:
        batch.add_column(sa.Column("manifest_sha256", sa.String(64), nullable=False,
                                   server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("backups") as batch:
        batch.drop_column("manifest_sha256")
    with op.batch_alter_table("vaults") as batch:
        batch.drop_column("kms_key_id")
        batch.drop_column("encrypted")
    op.drop_index(op.f("ix_key_shares_account_id"), table_name="key_shares")
    op.drop_index(op.f("ix_key_shares_key_id"), table_name="key_shares")
    op.drop_table("key_shares")
    op.drop_table("keys")
