"""Tables of the controller state. Times are UTC; ids are UUID strings.

Changing a model means writing an Alembic migration beside it
(``controller/persistence/migrations/versions``); a test compares the two.
A column that holds one of the service's words (a status, a type) says which
enum of ``controller.persistence.vocabulary`` names them; it stays a string.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    Unicode,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from controller.persistence.vocabulary import ImageType, KeyOrigin, ProtectStatus

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def new_id() -> str:
    return str(uuid.uuid4())


class UtcDateTime(TypeDecorator[dt.datetime]):
    """A timestamp stored as UTC and always read back timezone-aware.

    SQLite drops the offset; PostgreSQL keeps it. Either way the application
    sees aware UTC datetimes, so comparisons never mix naive and aware.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dt.datetime: UtcDateTime(), dict[str, Any]: JSON, list[Any]: JSON}


# -- IAM -----------------------------------------------------------------------


class Account(Base):
    __tablename__ = "accounts"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    administrator: Mapped[bool] = mapped_column(Boolean, default=False)
    # The total size (GB) auto_expand may grow the account's vaults to.
    vault_quota_gb: Mapped[int] = mapped_column(BigInteger, default=10240)
    created_at: Mapped[dt.datetime]


class User(Base):
    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("account_id", "name"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    # The console password as controller.services.passwords stores it; "" for none.
    password_hash: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[dt.datetime]
    account: Mapped[Account] = relationship()


class AccessKey(Base):
    """An AK/SK pair. The SK is stored sealed with the controller's master key
    (it must be recoverable to verify HMAC signatures), never in clear."""

    __tablename__ = "access_keys"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    secret_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime]
    last_used_at: Mapped[dt.datetime | None]
    user: Mapped[User] = relationship()


class UsedNonce(Base):
    """A signed call's nonce, kept while its signature could be replayed
    (controller.services.replay; PostgreSQL, where controllers share it)."""

    __tablename__ = "used_nonces"
    access_key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)


class ConsoleSession(Base):
    """A web console sign-in. The browser holds a random token; this row
    holds only its SHA-256, so the table read by someone else signs no one in."""

    __tablename__ = "console_sessions"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of the token
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"),
                                         index=True)
    # The key signed in with; "" for a name and password.
    access_key_id: Mapped[str] = mapped_column(String(32), default="")
    csrf_token: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[dt.datetime]
    last_seen_at: Mapped[dt.datetime]
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)


class Grant(Base):
    __tablename__ = "grants"
    __table_args__ = (UniqueConstraint("user_id", "action"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    action: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime]


# -- agents and protectables ---------------------------------------------------


class EnrollmentToken(Base):
    """A one-time enrollment token; only the SHA-256 of its secret is kept."""

    __tablename__ = "enrollment_tokens"
    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    secret_sha256: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[dt.datetime]
    expires_at: Mapped[dt.datetime]
    used_at: Mapped[dt.datetime | None]
    used_by_agent_id: Mapped[str | None] = mapped_column(String(36))


class Agent(Base):
    __tablename__ = "agents"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    hostname: Mapped[str] = mapped_column(String(255), default="")
    role: Mapped[str] = mapped_column(String(16))  # AgentRole
    # Importers: host:port of their ImporterService, as they last said.
    endpoint: Mapped[str] = mapped_column(String(255), default="")
    # Directories the host allows restores to new places under (its Hello).
    restore_roots: Mapped[list[Any]] = mapped_column(JSON, default=list)
    version: Mapped[str] = mapped_column(String(32), default="")
    certificate_fingerprint: Mapped[str] = mapped_column(String(64), index=True)
    enrolled_at: Mapped[dt.datetime]
    last_seen_at: Mapped[dt.datetime | None]
    connected_at: Mapped[dt.datetime | None]
    # True while a Connect stream is open on this controller.
    connected: Mapped[bool] = mapped_column(Boolean, default=False)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    # When its last silence was reported (agent.offline); a later last_seen_at opens a new one.
    offline_reported_at: Mapped[dt.datetime | None]


class Protectable(Base):
    """A server, disk or file system an agent reported."""

    __tablename__ = "protectables"
    __table_args__ = (UniqueConstraint("agent_id", "local_id"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.id", ondelete="CASCADE"), index=True)
    local_id: Mapped[str] = mapped_column(String(255))
    name: Mapped[str] = mapped_column(String(255))
    object_type: Mapped[str] = mapped_column(String(16))  # ObjectType
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    path: Mapped[str] = mapped_column(Text, default="")
    # [{id, name, path, size_bytes, system_disk, device_type}]
    disks: Mapped[list[Any]] = mapped_column(JSON, default=list)
    tags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    error: Mapped[str] = mapped_column(Text, default="")
    gone: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime]
    updated_at: Mapped[dt.datetime]
    agent: Mapped[Agent] = relationship()


# -- vaults --------------------------------------------------------------------


class Vault(Base):
    __tablename__ = "vaults"
    __table_args__ = (UniqueConstraint("project_id", "name"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(String(255), default="")
    object_type: Mapped[str] = mapped_column(String(16))  # ObjectType
    protect_type: Mapped[str] = mapped_column(String(16))  # ProtectType
    consistent_level: Mapped[str] = mapped_column(String(32))  # ConsistentLevel
    status: Mapped[str] = mapped_column(String(16))  # VaultStatus
    size_gb: Mapped[int] = mapped_column(BigInteger)
    used_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    auto_expand: Mapped[bool] = mapped_column(Boolean, default=False)
    threshold: Mapped[int] = mapped_column(Integer, default=80)
    # Usage is past threshold: the event was raised for this crossing and is
    # raised again only after usage fell below it.
    threshold_exceeded: Mapped[bool] = mapped_column(Boolean, default=False)
    backup_name_prefix: Mapped[str] = mapped_column(String(32), default="")
    tags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    auto_bind: Mapped[bool] = mapped_column(Boolean, default=False)
    bind_rules: Mapped[list[Any]] = mapped_column(JSON, default=list)
    region: Mapped[str] = mapped_column(String(64))
    # Where the vault's data is (a storage URL without credentials); fixed at
    # creation so a later change of the controller's storage_url orphans nothing.
    storage_url: Mapped[str] = mapped_column(Text, default="")
    # Fixed at creation: the vault's data keys are wrapped by key kms_key_id.
    encrypted: Mapped[bool] = mapped_column(Boolean, default=False)
    kms_key_id: Mapped[str] = mapped_column(String(36), default="")
    created_at: Mapped[dt.datetime]
    updated_at: Mapped[dt.datetime]
    # The API reads vaults through controller.services.vaults.vault_views (a few
    # set-based queries per page); these relationships serve the domain rules.
    resources: Mapped[list[VaultResource]] = relationship(
        back_populates="vault", cascade="all, delete-orphan", order_by="VaultResource.added_at"
    )
    policy_bindings: Mapped[list[VaultPolicy]] = relationship(
        back_populates="vault", cascade="all, delete-orphan"
    )


class VaultResource(Base):
    """A protectable in a vault. The unique protectable_id enforces 'a
    resource in at most one vault' in the database, not only in code."""

    __tablename__ = "vault_resources"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    vault_id: Mapped[str] = mapped_column(ForeignKey("vaults.id", ondelete="CASCADE"), index=True)
    protectable_id: Mapped[str] = mapped_column(
        ForeignKey("protectables.id", ondelete="CASCADE"), unique=True
    )
    protect_status: Mapped[str] = mapped_column(String(16), default=ProtectStatus.AVAILABLE)
    backup_size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    backup_count: Mapped[int] = mapped_column(Integer, default=0)
    exclude_volumes: Mapped[list[Any]] = mapped_column(JSON, default=list)
    include_volumes: Mapped[list[Any]] = mapped_column(JSON, default=list)
    added_at: Mapped[dt.datetime]
    vault: Mapped[Vault] = relationship(back_populates="resources")
    protectable: Mapped[Protectable] = relationship()


class Policy(Base):
    __tablename__ = "policies"
    __table_args__ = (UniqueConstraint("project_id", "name"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    operation_type: Mapped[str] = mapped_column(String(16))  # PolicyOperationType
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    operation_definition: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    trigger_patterns: Mapped[list[Any]] = mapped_column(JSON, default=list)
    # A scheduled run that has not started this long after its time is
    # missed; one still running this long after it is stopped (AWS Backup's
    # StartWindowMinutes and CompletionWindowMinutes).
    start_window_minutes: Mapped[int] = mapped_column(Integer, default=60)
    completion_window_minutes: Mapped[int] = mapped_column(Integer, default=10080)
    created_at: Mapped[dt.datetime]
    updated_at: Mapped[dt.datetime]


class VaultPolicy(Base):
    """A vault's association with a policy; one backup and one replication
    policy per vault at most (unique on vault and operation type)."""

    __tablename__ = "vault_policies"
    __table_args__ = (UniqueConstraint("vault_id", "operation_type"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    vault_id: Mapped[str] = mapped_column(ForeignKey("vaults.id", ondelete="CASCADE"))
    policy_id: Mapped[str] = mapped_column(
        ForeignKey("policies.id", ondelete="CASCADE"), index=True
    )
    operation_type: Mapped[str] = mapped_column(String(16))  # PolicyOperationType
    destination_vault_id: Mapped[str] = mapped_column(String(36), default="")
    created_at: Mapped[dt.datetime]
    vault: Mapped[Vault] = relationship(back_populates="policy_bindings")
    policy: Mapped[Policy] = relationship()


class PolicyRun(Base):
    """One scheduled (or run-now) run of a policy on one vault.

    Unique on (policy, vault, scheduled time) and inserted in the same
    transaction as the run's checkpoint: a second controller, a retried job
    or a restart that fires the same run again finds the row and does
    nothing, so each run happens at most once. Runs missed beyond the grace
    time are recorded here too (status ``missed``), never run late."""

    __tablename__ = "policy_runs"
    __table_args__ = (UniqueConstraint("policy_id", "vault_id", "scheduled_at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    policy_id: Mapped[str] = mapped_column(ForeignKey("policies.id", ondelete="CASCADE"))
    vault_id: Mapped[str] = mapped_column(ForeignKey("vaults.id", ondelete="CASCADE"),
                                          index=True)
    scheduled_at: Mapped[dt.datetime]
    status: Mapped[str] = mapped_column(String(16))  # PolicyRunStatus; why skipped: detail
    manual: Mapped[bool] = mapped_column(Boolean, default=False)
    full: Mapped[bool] = mapped_column(Boolean, default=False)
    checkpoint_id: Mapped[str] = mapped_column(String(36), default="")
    # A verify or prune run's task.
    task_id: Mapped[str] = mapped_column(String(36), default="")
    detail: Mapped[str] = mapped_column(Text, default="")
    # Its windows are over and judged (missed, retried, stopped): the
    # window sweep no longer reads it.
    settled: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    created_at: Mapped[dt.datetime]


class SchedulerLease(Base):
    """Who runs the policy loop: one row, taken and renewed with conditional
    updates, so among controllers sharing a database one leads at a time."""

    __tablename__ = "scheduler_leases"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    holder: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[dt.datetime]


class PolicyJob(Base):
    """APScheduler's job store table (``SQLAlchemyJobStore``), declared so the
    migrations create it and the schema check knows it."""

    __tablename__ = "policy_jobs"
    id: Mapped[str] = mapped_column(Unicode(191), primary_key=True)
    next_run_time: Mapped[float | None] = mapped_column(Float(25), index=True)
    job_state: Mapped[bytes] = mapped_column(LargeBinary)


class Credential(Base):
    __tablename__ = "credentials"
    __table_args__ = (UniqueConstraint("project_id", "name"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(String(255), default="")
    target_cloud: Mapped[str] = mapped_column(String(64))
    target_endpoint: Mapped[str] = mapped_column(String(255), default="")
    # PEM of the target controller's CA: every call to the target verifies it.
    target_ca_pem: Mapped[str] = mapped_column(Text, default="")
    target_account_id: Mapped[str] = mapped_column(String(64))
    access_key_id: Mapped[str] = mapped_column(String(64))
    secret_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime]
    updated_at: Mapped[dt.datetime]


# -- key service ---------------------------------------------------------------


class Key(Base):
    """A customer master key. Its material is stored sealed by the root key
    (bound to the key id), and dropped when the key is destroyed."""

    __tablename__ = "keys"
    __table_args__ = (UniqueConstraint("project_id", "alias"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    alias: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(String(255), default="")
    state: Mapped[str] = mapped_column(String(24))  # KeyState
    origin: Mapped[str] = mapped_column(String(16), default=KeyOrigin.CBR)
    material_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    deletion_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime]
    updated_at: Mapped[dt.datetime]


class KeyShare(Base):
    """Another account allowed to use (not manage) a key."""

    __tablename__ = "key_shares"
    __table_args__ = (UniqueConstraint("key_id", "account_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key_id: Mapped[str] = mapped_column(ForeignKey("keys.id", ondelete="CASCADE"), index=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"),
                                            index=True)
    created_at: Mapped[dt.datetime]


# -- tasks, checkpoints, backups, replication records --------------------------


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (Index("ix_tasks_project_created", "project_id", "created_at"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    operation_type: Mapped[str] = mapped_column(String(32))  # OperationType
    status: Mapped[str] = mapped_column(String(16), index=True)  # TaskStatus
    progress: Mapped[int] = mapped_column(Integer, default=0)
    checkpoint_id: Mapped[str] = mapped_column(String(36), default="")
    policy_id: Mapped[str] = mapped_column(String(36), default="")
    vault_id: Mapped[str] = mapped_column(String(36), default="", index=True)
    vault_name: Mapped[str] = mapped_column(String(64), default="")
    resource_id: Mapped[str] = mapped_column(String(36), default="")
    resource_name: Mapped[str] = mapped_column(String(255), default="")
    agent_id: Mapped[str] = mapped_column(String(36), default="", index=True)
    # The command the agent runs, kept until it is done so it can be resent.
    command: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error_code: Mapped[str] = mapped_column(String(32), default="")
    error_message: Mapped[str] = mapped_column(Text, default="")
    extra_info: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Who asked for it: the API caller's user and access key; both empty
    # for the policy loop's own work (policy_id then says which policy).
    started_by_user_id: Mapped[str] = mapped_column(String(36), default="")
    started_by_access_key_id: Mapped[str] = mapped_column(String(32), default="")
    created_at: Mapped[dt.datetime]
    started_at: Mapped[dt.datetime | None]
    ended_at: Mapped[dt.datetime | None]
    updated_at: Mapped[dt.datetime]


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    vault_id: Mapped[str] = mapped_column(ForeignKey("vaults.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(String(255), default="")
    status: Mapped[str] = mapped_column(String(16))  # CheckpointStatus
    auto_trigger: Mapped[bool] = mapped_column(Boolean, default=False)
    policy_id: Mapped[str] = mapped_column(String(36), default="")
    skipped_resources: Mapped[list[Any]] = mapped_column(JSON, default=list)
    created_at: Mapped[dt.datetime]


class Backup(Base):
    __tablename__ = "backups"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    vault_id: Mapped[str] = mapped_column(ForeignKey("vaults.id", ondelete="CASCADE"), index=True)
    checkpoint_id: Mapped[str] = mapped_column(String(36), default="", index=True)
    parent_id: Mapped[str | None] = mapped_column(
        ForeignKey("backups.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(String(255), default="")
    resource_id: Mapped[str] = mapped_column(String(36), index=True)
    resource_name: Mapped[str] = mapped_column(String(255), default="")
    resource_type: Mapped[str] = mapped_column(String(16))  # ObjectType
    resource_size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    status: Mapped[str] = mapped_column(String(24))  # BackupStatus
    image_type: Mapped[str] = mapped_column(String(16), default=ImageType.BACKUP)
    incremental: Mapped[bool] = mapped_column(Boolean, default=False)
    stored_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    # SHA-256 (hex) of the manifest object the agent wrote; restore and verify
    # refuse a manifest in storage that differs (replaced or replayed).
    manifest_sha256: Mapped[str] = mapped_column(String(64), default="")
    extend_info: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    protected_at: Mapped[dt.datetime | None]
    expired_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime]
    updated_at: Mapped[dt.datetime]


class Image(Base):
    """A server's system disk written to an image file from a backup."""

    __tablename__ = "images"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(String(255), default="")
    status: Mapped[str] = mapped_column(String(16))  # ImageStatus
    backup_id: Mapped[str] = mapped_column(String(36), index=True)
    disk_backup_id: Mapped[str] = mapped_column(String(36))
    agent_id: Mapped[str] = mapped_column(String(36))
    path: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    task_id: Mapped[str] = mapped_column(String(36), index=True)
    source_backup_id: Mapped[str] = mapped_column(String(36), default="")
    source_cloud: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[dt.datetime]
    updated_at: Mapped[dt.datetime]


class ReplicationRecord(Base):
    __tablename__ = "replication_records"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(24))  # ReplicationStatus
    vault_id: Mapped[str] = mapped_column(String(36), default="", index=True)
    source_region: Mapped[str] = mapped_column(String(64), default="")
    source_project_id: Mapped[str] = mapped_column(String(64), default="")
    source_backup_id: Mapped[str] = mapped_column(String(36), default="", index=True)
    source_checkpoint_id: Mapped[str] = mapped_column(String(36), default="")
    destination_region: Mapped[str] = mapped_column(String(64), default="")
    destination_project_id: Mapped[str] = mapped_column(String(64), default="")
    destination_vault_id: Mapped[str] = mapped_column(String(36), default="")
    destination_backup_id: Mapped[str] = mapped_column(String(36), default="")
    destination_checkpoint_id: Mapped[str] = mapped_column(String(36), default="")
    extra_info: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime]
    updated_at: Mapped[dt.datetime]


# The operations tables live in their own module; imported here so that
# loading the models registers every table, and re-exported.
from controller.persistence.operations import (  # noqa: E402
    AuditRecord as AuditRecord,
)
from controller.persistence.operations import (  # noqa: E402
    Event as Event,
)
from controller.persistence.operations import (  # noqa: E402
    NotificationDelivery as NotificationDelivery,
)
from controller.persistence.operations import (  # noqa: E402
    NotificationTarget as NotificationTarget,
)
