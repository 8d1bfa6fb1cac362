"""policy runs (exactly once), the scheduler lease, APScheduler's job store

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "policy_runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("policy_id", sa.String(36), nullable=False),
        sa.Column("vault_id", sa.String(36), nullable=False),
        sa.Column("scheduled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("manual", sa.Boolean(), nullable=False),
        sa.Column("full", sa.Boolean(), nullable=False),
        sa.Column("checkpoint_id", sa.String(36), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["policy_id"], ["policies.id"],
                                name=op.f("fk_policy_runs_policy_id_policies"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["vault_id"], ["vaults.id"],
                                name=op.f("fk_policy_runs_vault_id_vaults"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_policy_runs")),
        sa.UniqueConstraint("policy_id", "vault_id", "scheduled_at",
                            name=op.f("uq_policy_runs_policy_id")),
    )
    op.create_index(op.f("ix_policy_runs_vault_id"), "policy_runs", ["vault_id"])
    op.create_table(
        "scheduler_leases",
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("holder", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_scheduler_leases")),
    )
    op.create_table(
        "policy_jobs",
        sa.Column("id", sa.Unicode(191), nullable=False),
        sa.Column("next_run_time", sa.Float(25), nullable=True),
        sa.Column("job_state", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_policy_jobs")),
    )
    op.create_index(op.f("ix_policy_jobs_next_run_time"), "policy_jobs", ["next_run_time"])


def downgrade() -> None:
    op.drop_index(op.f("ix_policy_jobs_next_run_time"), table_name="policy_jobs")
    op.drop_table("policy_jobs")
    op.drop_table("scheduler_leases")
    op.drop_index(op.f("ix_policy_runs_vault_id"), table_name="policy_runs")
    op.drop_table("policy_runs")
