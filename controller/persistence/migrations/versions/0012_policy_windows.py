"""policy start and completion windows, verify and prune runs, vault capacity

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 03:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("policies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("start_window_minutes", sa.Integer(), nullable=False,
                                      server_default="60"))
        batch_op.add_column(sa.Column("completion_window_minutes", sa.Integer(),
                                      nullable=False, server_default="10080"))
    with op.batch_alter_table("policy_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("task_id", sa.String(36), nullable=False,
                                      server_default=""))
        batch_op.add_column(sa.Column("settled", sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
        batch_op.create_index(batch_op.f("ix_policy_runs_settled"), ["settled"], unique=False)
    # Runs made before windows existed are judged already.
    op.execute(sa.text("UPDATE policy_runs SET settled = :yes").bindparams(yes=True))
    with op.batch_alter_table("vaults", schema=None) as batch_op:
        batch_op.add_column(sa.Column("threshold_exceeded", sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("vault_quota_gb", sa.BigInteger(), nullable=False,
                                      server_default="10240"))


def downgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_column("vault_quota_gb")
    with op.batch_alter_table("vaults", schema=None) as batch_op:
        batch_op.drop_column("threshold_exceeded")
    with op.batch_alter_table("policy_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_policy_runs_settled"))
        batch_op.drop_column("settled")
        batch_op.drop_column("task_id")
    with op.batch_alter_table("policies", schema=None) as batch_op:
        batch_op.drop_column("completion_window_minutes")
        batch_op.drop_column("start_window_minutes")
