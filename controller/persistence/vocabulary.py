"""The words the controller stores in its string columns: one ``StrEnum`` per
vocabulary (statuses, states, types), named after the reference model
(``../shared/reference/cbr-model.md``) and the ``cbr.v1`` enums.

Why here: a state written as a bare string in one module and compared in
another drifts (a typo is a new state nobody sets); an enum member is checked
by mypy and found by a search. The persistence floor is the lowest one of the
controller, so the models, services, jobs, agents and servicers all import
from this module. Each value is exactly the string the database holds (a
member compares and hashes equal to it), so rows written before these enums
read back the same and no migration is needed; the columns stay ``String``.

Where the wire has an enum of the same words (``controller.api.convert`` maps
them by name), ``tests/unit/test_vocabulary.py`` checks that both sides name
the same values.
"""

from __future__ import annotations

import enum

# -- agents and protectables ---------------------------------------------------


class AgentRole(enum.StrEnum):
    """``Agent.role``, fixed at enrollment (wire: ``AgentRole``)."""

    HOST = "host"
    """Protects the servers, disks and file systems of its host; restores run there."""
    IMPORTER = "importer"
    """Receives replicas on a target cloud and writes them into its vault storage."""


class ObjectType(enum.StrEnum):
    """What a protectable is, and so what a vault holds and a backup is of:
    ``Protectable.object_type``, ``Vault.object_type``, ``Backup.resource_type``
    (a server backup's per-disk children are ``disk``). Wire: ``ObjectType``."""

    SERVER = "server"
    """An ECS-like server: one system disk plus data disks (``OS::Nova::Server``)."""
    DISK = "disk"
    """A single EVS-like disk (``OS::Cinder::Volume``)."""
    TURBO = "turbo"
    """An SFS Turbo-like file system, a directory tree (``OS::Sfs::Turbo``)."""


class ProtectableStatus(enum.StrEnum):
    """A protectable's status as the API shows it (wire: ``ProtectableStatus``).
    Not stored: derived from the row (``gone``, ``error``) and whether its
    agent is online."""

    AVAILABLE = "available"
    ERROR = "error"
    """The agent reported an error reading it."""
    UNREACHABLE = "unreachable"
    """Its agent is offline; what is shown is the last report."""
    GONE = "gone"
    """The agent no longer reports it."""


# -- vaults --------------------------------------------------------------------


class VaultStatus(enum.StrEnum):
    """``Vault.status`` (reference: vault status; wire: ``VaultStatus``).

    A vault is created ``available``. Its owner may set ``available``,
    ``lock`` or ``frozen`` (``controller.services.vaults.SETTABLE_STATUSES``);
    resource, policy and backup changes need ``available``. Deleting it makes
    it ``deleting`` until maintenance has erased its storage and its row goes;
    if erasing fails it becomes ``error``, from which it may be deleted again.
    """

    AVAILABLE = "available"
    LOCK = "lock"
    """Locked by its owner: no resource or policy changes, no new backups."""
    FROZEN = "frozen"
    """Read only (for example unpaid)."""
    DELETING = "deleting"
    ERROR = "error"


class ProtectType(enum.StrEnum):
    """``Vault.protect_type``, fixed at creation (wire: ``ProtectType``)."""

    BACKUP = "backup"
    """A normal vault holding backups of the resources associated with it."""
    REPLICATION = "replication"
    """A vault on a target cloud that receives replicas; it takes no resources."""


class ConsistentLevel(enum.StrEnum):
    """``Vault.consistent_level`` (wire: ``ConsistentLevel``)."""

    CRASH_CONSISTENT = "crash_consistent"
    APP_CONSISTENT = "app_consistent"
    """Server vaults only: hooks freeze applications around the snapshot."""


class ProtectStatus(enum.StrEnum):
    """``VaultResource.protect_status`` (reference: a resource in a vault;
    wire: ``ProtectStatus``).

    ``available`` when associated; ``protecting`` while a backup of it runs,
    then ``available`` or ``error`` by its end; ``restoring`` while a backup
    is restored onto it, then ``available`` or ``error``. ``removing`` is the
    reference's and the wire's; this controller never sets it (a removed
    resource's row goes at once).
    """

    AVAILABLE = "available"
    ERROR = "error"
    PROTECTING = "protecting"
    RESTORING = "restoring"
    REMOVING = "removing"


# -- policies ------------------------------------------------------------------


class PolicyOperationType(enum.StrEnum):
    """``Policy.operation_type`` and ``VaultPolicy.operation_type``: a vault
    has at most one policy of each (wire: ``PolicyOperationType``)."""

    BACKUP = "backup"
    REPLICATION = "replication"
    # Maintenance on a schedule: a verify (optionally reading a part of the
    # data each run) or a prune of the vault's storage.
    VERIFY = "verify"
    PRUNE = "prune"


class PolicyRunStatus(enum.StrEnum):
    """``PolicyRun.status``, a string on the wire (``PolicyRun.status``).

    A run's row is inserted ``dispatched`` with its checkpoint; it becomes
    ``skipped`` when the vault refused the backup (the reason in ``detail``).
    A run that could not start within its policy's start window (the
    controller down, every agent offline) is recorded ``missed`` and never
    made late.
    """

    DISPATCHED = "dispatched"
    SKIPPED = "skipped"
    MISSED = "missed"


# -- key service ---------------------------------------------------------------


class KeyState(enum.StrEnum):
    """``Key.state`` (wire: ``KeyState``); the transitions are in
    ``controller.services.keys``: ``enabled`` and ``disabled`` go both ways,
    either goes to ``pending_deletion``, which ends ``deleted`` when its time
    has come or comes back ``disabled`` when cancelled."""

    ENABLED = "enabled"
    DISABLED = "disabled"
    PENDING_DELETION = "pending_deletion"
    """Unusable; destroyed at ``deletion_at`` unless the deletion is cancelled."""
    DELETED = "deleted"
    """Its material is gone; what it protected cannot be read any more."""


class KeyOrigin(enum.StrEnum):
    """``Key.origin``, a string on the wire: who made the key's material."""

    CBR = "cbr"
    """Generated by the controller."""
    EXTERNAL = "external"
    """Imported by its owner."""


# -- tasks, checkpoints, backups, images, replication records ------------------


class OperationType(enum.StrEnum):
    """``Task.operation_type`` (reference: operation log; wire:
    ``OperationType``); ``verify``, ``prune`` and ``repair`` are ours, and
    ``copy`` is the reference's, which no task here is yet."""

    BACKUP = "backup"
    COPY = "copy"
    REPLICATION = "replication"
    RESTORE = "restore"
    DELETE = "delete"
    SYNC = "sync"
    VAULT_DELETE = "vault_delete"
    REMOVE_RESOURCE = "remove_resource"
    VERIFY = "verify"
    PRUNE = "prune"
    REPAIR = "repair"


class TaskStatus(enum.StrEnum):
    """``Task.status`` (reference: operation log; wire: ``TaskStatus``).

    ``waiting`` -> ``running`` -> one final status (``success``, ``failed``,
    ``skipped``, ``timeout``, ``cancelled``:
    ``controller.services.tasks.FINAL_STATUSES``), which never changes again.
    A task may be created final (a skipped replication, a resource removal
    with nothing to delete). ``timeout`` is
    the reference's and the wire's; nothing here sets it yet.
    """

    WAITING = "waiting"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    SKIPPED = "skipped"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    """Stopped by CancelTask (ours): a waiting one at once, a running one when
    its agent stopped, or when it did not answer in time."""


class CheckpointStatus(enum.StrEnum):
    """``Checkpoint.status``, a string on the wire (``Checkpoint.status``).

    ``protecting`` while any of its backups is; then ``error`` when it has
    no backup or all of them failed, else ``available``, even with some failed
    or resources skipped (``controller.services.runs.update_checkpoint``). A
    checkpoint that could start no backup is ``error`` at once; an imported
    replica's is ``available``.
    """

    PROTECTING = "protecting"
    AVAILABLE = "available"
    ERROR = "error"


class BackupStatus(enum.StrEnum):
    """``Backup.status`` (reference: backup status; wire: ``BackupStatus``).

    A run makes a backup ``protecting``; it becomes ``available`` only once
    the agent reports its manifest stored, ``error`` if its task fails.
    ``available`` -> ``restoring`` -> ``available`` around a restore;
    ``available`` or ``error`` -> ``deleting`` until maintenance removes it.
    Repair marks a damaged backup ``error`` and a whole-again one
    ``available``. Replicas are imported ``available``. The ``waiting_*``
    states are the reference's and the wire's; this controller never sets them.
    """

    AVAILABLE = "available"
    PROTECTING = "protecting"
    DELETING = "deleting"
    RESTORING = "restoring"
    ERROR = "error"
    WAITING_PROTECT = "waiting_protect"
    WAITING_DELETE = "waiting_delete"
    WAITING_RESTORE = "waiting_restore"


class ImageType(enum.StrEnum):
    """``Backup.image_type`` (wire: ``ImageType``)."""

    BACKUP = "backup"
    """Made by a backup run here."""
    REPLICATION = "replication"
    """A replica, made by replication from another cloud."""


class ImageStatus(enum.StrEnum):
    """``Image.status`` (wire: ``ImageStatus``): ``creating`` while its task
    runs, then ``available`` or ``error``."""

    CREATING = "creating"
    AVAILABLE = "available"
    ERROR = "error"


class ReplicationStatus(enum.StrEnum):
    """``ReplicationRecord.status`` (reference: replication record status;
    wire: ``ReplicationStatus``).

    A record is made ``replicating`` (on the source and on the target) and
    ends ``success`` or ``fail``; a backup a vault replication passes over is
    recorded ``skip``. ``waiting_replicate`` is the reference's and the
    wire's; this controller never sets it.
    """

    REPLICATING = "replicating"
    SUCCESS = "success"
    FAIL = "fail"
    SKIP = "skip"
    WAITING_REPLICATE = "waiting_replicate"


# -- operations: events and the audit trail --------------------------------------


class EventType(enum.StrEnum):
    """What happened that an operator may want to hear about
    (``controller.services.events``); notification targets subscribe to these."""

    BACKUP_SUCCEEDED = "backup.succeeded"
    BACKUP_FAILED = "backup.failed"
    RESTORE_SUCCEEDED = "restore.succeeded"
    RESTORE_FAILED = "restore.failed"
    REPLICATION_SUCCEEDED = "replication.succeeded"
    REPLICATION_FAILED = "replication.failed"
    # A policy's scheduled run that did not start within its window.
    POLICY_RUN_MISSED = "policy.run_missed"
    # An agent not connected for longer than the account's limit.
    AGENT_OFFLINE = "agent.offline"
    # A vault's used capacity went past its ``threshold`` percent.
    VAULT_THRESHOLD_EXCEEDED = "vault.threshold_exceeded"
    VERIFY_PROBLEMS_FOUND = "verify.problems_found"
    # A key scheduled for deletion still encrypts vaults.
    KEY_DELETION_IN_USE = "key.deletion_in_use"
    # Asked for by TestNotificationTarget: delivered to that one target only.
    NOTIFICATION_TEST = "notification.test"


class EventSeverity(enum.StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class NotificationKind(enum.StrEnum):
    """How a notification target is reached (``controller.services.notifications``)."""

    WEBHOOK = "webhook"
    SMTP = "smtp"


class SmtpSecurity(enum.StrEnum):
    """How an SMTP target's connection is protected: upgraded with STARTTLS,
    TLS from the start (``ssl``, port 465), or ``none`` (loopback hosts only)."""

    STARTTLS = "starttls"
    SSL = "ssl"
    NONE = "none"


class DeliveryStatus(enum.StrEnum):
    """One event's delivery to one target: ``pending`` until it is sent or
    given up on (``failed``: refused for good, or out of attempts)."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class AuditResult(enum.StrEnum):
    """How an audited call ended: done, or refused (by authentication,
    authorization or a rule) or failed; the gRPC status code says which."""

    SUCCESS = "success"
    REFUSED = "refused"
    FAILED = "failed"
