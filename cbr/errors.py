"""The one error hierarchy: a class per CBR error code, carrying its gRPC status.

Domain code raises these; the controller's error interceptor turns them into a
gRPC status with a ``google.rpc.ErrorInfo`` detail (reason = the CBR code) in
exactly one place, and ``cbr.client`` turns such a status back into the same
class, so callers see the same errors locally or over gRPC. A code never
changes meaning: retire a class rather than reuse its code.
"""

from __future__ import annotations

from typing import ClassVar

import grpc

ERROR_DOMAIN = "cbr.v1"


class CbrError(Exception):
    """Base of every error with a CBR code. The docstring of a subclass is
    the reference's message for its code."""

    code: ClassVar[str] = "BackupService.9900"
    status: ClassVar[grpc.StatusCode] = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, detail: str = "", **metadata: str) -> None:
        self.detail = detail
        self.metadata = {k: str(v) for k, v in metadata.items()}
        super().__init__(self.message)

    @property
    def summary(self) -> str:
        doc = (type(self).__doc__ or "").strip().splitlines()
        return doc[0] if doc else ""

    @property
    def message(self) -> str:
        return f"{self.summary} {self.detail}".strip() if self.detail else self.summary

    @classmethod
    def from_wire(cls, message: str, metadata: dict[str, str]) -> CbrError:
        """Rebuilds an error received in a status, keeping the message as sent."""
        summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        detail = message[len(summary):].strip() if message.startswith(summary) else message
        err = cls(detail)
        err.metadata = dict(metadata)
        return err


# -- codes from the reference -------------------------------------------------


class NoResourceAvailable(CbrError):
    """No resource is available for backup."""

    code = "BackupService.0001"
    status = grpc.StatusCode.FAILED_PRECONDITION


class ReplicationNotAllowedForType(CbrError):
    """Replication is not allowed for the current type of backups."""

    code = "BackupService.1002"
    status = grpc.StatusCode.FAILED_PRECONDITION


class NotEcsBackup(CbrError):
    """Replication is not allowed because the backup source is not an ECS."""

    code = "BackupService.1003"
    status = grpc.StatusCode.FAILED_PRECONDITION


class RegionNotSupported(CbrError):
    """The destination region does not support replication."""

    code = "BackupService.1005"
    status = grpc.StatusCode.FAILED_PRECONDITION


class AlreadyReplicated(CbrError):
    """The backup is being replicated or has been replicated to the destination region."""

    code = "BackupService.1009"
    status = grpc.StatusCode.ALREADY_EXISTS


class ProjectNotSupported(CbrError):
    """The destination project does not support replication."""

    code = "BackupService.1011"
    status = grpc.StatusCode.FAILED_PRECONDITION


class RestoreTargetTooSmall(CbrError):
    """The restore target is smaller than the backup."""

    code = "BackupService.2001"
    status = grpc.StatusCode.FAILED_PRECONDITION


class ResourceBeingBackedUp(CbrError):
    """The resource is being backed up or restored; try again when that task ends."""

    code = "BackupService.2002"
    status = grpc.StatusCode.FAILED_PRECONDITION


class BackupStatusIllegal(CbrError):
    """The backup status does not allow this operation."""

    code = "BackupService.2003"
    status = grpc.StatusCode.FAILED_PRECONDITION


class RestoreTargetNotAllowed(CbrError):
    """The target host does not allow a restore there."""

    code = "BackupService.2004"
    status = grpc.StatusCode.PERMISSION_DENIED


class UnsafeRestoreTarget(CbrError):
    """The restore would write outside its target, or over something it must not replace."""

    code = "BackupService.2005"
    status = grpc.StatusCode.FAILED_PRECONDITION


class PathNotInBackup(CbrError):
    """The path is not in the backup."""

    code = "BackupService.2006"
    status = grpc.StatusCode.NOT_FOUND


class ResourceTypeMismatch(CbrError):
    """Resource not match vault resource type."""

    code = "BackupService.6102"
    status = grpc.StatusCode.INVALID_ARGUMENT


class ResourceInOtherVault(CbrError):
    """Resource already in other vault."""

    code = "BackupService.6103"
    status = grpc.StatusCode.FAILED_PRECONDITION


class DuplicateResource(CbrError):
    """Duplicate resource."""

    code = "BackupService.6104"
    status = grpc.StatusCode.ALREADY_EXISTS


class VaultNotFound(CbrError):
    """Vault Not Found."""

    code = "BackupService.6105"
    status = grpc.StatusCode.NOT_FOUND


class DuplicateVault(CbrError):
    """Duplicate vault."""

    code = "BackupService.6106"
    status = grpc.StatusCode.ALREADY_EXISTS


class VaultStatusIllegal(CbrError):
    """Vault status is illegal."""

    code = "BackupService.6112"
    status = grpc.StatusCode.FAILED_PRECONDITION


class StorageNotAllowed(CbrError):
    """The controller's operator does not allow vault storage there."""

    code = "BackupService.6120"
    status = grpc.StatusCode.PERMISSION_DENIED


class VaultCapacityExceeded(CbrError):
    """The vault used capacity has exceeded the total capacity."""

    code = "BackupService.6114"
    status = grpc.StatusCode.RESOURCE_EXHAUSTED


class PermissionDenied(CbrError):
    """No API permission."""

    code = "BackupService.0403"
    status = grpc.StatusCode.PERMISSION_DENIED


class InvalidParameter(CbrError):
    """Invalid parameter."""

    code = "BackupService.9900"
    status = grpc.StatusCode.INVALID_ARGUMENT


# -- codes of ours, in the same numbering space -------------------------------


class RequestTooLarge(CbrError):
    """The request is larger than the controller accepts."""

    code = "BackupService.9901"
    status = grpc.StatusCode.RESOURCE_EXHAUSTED


class TooManyStreams(CbrError):
    """Too many streams are open to the controller."""

    code = "BackupService.9902"
    status = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unauthenticated(CbrError):
    """The request is not authenticated."""

    code = "BackupService.0401"
    status = grpc.StatusCode.UNAUTHENTICATED


class ResourceNotFound(CbrError):
    """The resource does not exist."""

    code = "BackupService.0404"
    status = grpc.StatusCode.NOT_FOUND


class AlreadyExists(CbrError):
    """The resource already exists."""

    code = "BackupService.0409"
    status = grpc.StatusCode.ALREADY_EXISTS


class Conflict(CbrError):
    """The resource is in a state that does not allow this."""

    code = "BackupService.0412"
    status = grpc.StatusCode.FAILED_PRECONDITION


class NotImplementedYet(CbrError):
    """This operation is not available in this version."""

    code = "BackupService.0501"
    status = grpc.StatusCode.UNIMPLEMENTED


class AgentUnavailable(CbrError):
    """The agent is offline."""

    code = "BackupService.0503"
    status = grpc.StatusCode.UNAVAILABLE


class StorageUnavailable(CbrError):
    """The vault storage cannot be reached or written."""

    code = "BackupService.0504"
    status = grpc.StatusCode.UNAVAILABLE


class DataIntegrityError(CbrError):
    """Vault data is damaged or missing."""

    code = "BackupService.0505"
    status = grpc.StatusCode.DATA_LOSS


class InternalError(CbrError):
    """Internal error; the controller log has the details."""

    code = "BackupService.0500"
    status = grpc.StatusCode.INTERNAL


class PolicyWindowClosed(CbrError):
    """A policy run's start or completion window closed before its task did."""

    code = "BackupService.9920"
    status = grpc.StatusCode.DEADLINE_EXCEEDED


class VaultQuotaReached(CbrError):
    """auto_expand cannot grow the vault: the account's vault quota is reached."""

    code = "BackupService.9921"
    status = grpc.StatusCode.RESOURCE_EXHAUSTED


# -- keys and encryption (our codes) -------------------------------------------


class KeyNotFound(CbrError):
    """The key does not exist."""

    code = "BackupService.7001"
    status = grpc.StatusCode.NOT_FOUND


class KeyNotUsable(CbrError):
    """The key cannot be used for this vault: it is not enabled, or not the one protecting it.

    (Disabled, scheduled for deletion, or a key whose material cannot unwrap
    the vault's own keys.)"""

    code = "BackupService.7002"
    status = grpc.StatusCode.FAILED_PRECONDITION


class KeyStateIllegal(CbrError):
    """The key state does not allow this operation."""

    code = "BackupService.7003"
    status = grpc.StatusCode.FAILED_PRECONDITION


class VaultEncryptionImmutable(CbrError):
    """The encryption of a vault cannot change after it is created."""

    code = "BackupService.7004"
    status = grpc.StatusCode.INVALID_ARGUMENT


class SharedKeyNotAllowed(CbrError):
    """A key shared from another account cannot encrypt a replication vault."""

    code = "BackupService.7005"
    status = grpc.StatusCode.FAILED_PRECONDITION


class EncryptedRestoreTarget(CbrError):
    """Encrypted backups can only create encrypted servers or file systems."""

    code = "BackupService.7006"
    status = grpc.StatusCode.FAILED_PRECONDITION


class ReplicaEncryptionMismatch(CbrError):
    """The replication vault's encryption does not match the backup's other replicas."""

    code = "BackupService.7007"
    status = grpc.StatusCode.FAILED_PRECONDITION


# -- cross-cloud (our codes) ----------------------------------------------------


class TargetCloudUnavailable(CbrError):
    """The target cloud cannot be reached."""

    code = "BackupService.8001"
    status = grpc.StatusCode.UNAVAILABLE


class NoImporter(CbrError):
    """No importer agent of the target cloud is online to receive replicas."""

    code = "BackupService.8002"
    status = grpc.StatusCode.UNAVAILABLE


# -- task control (our codes) -------------------------------------------------


class TaskAlreadyFinished(CbrError):
    """The task has already ended; only a waiting or running task can be cancelled."""

    code = "BackupService.4001"
    status = grpc.StatusCode.FAILED_PRECONDITION


class TaskNotCancellable(CbrError):
    """This kind of task cannot be cancelled."""

    code = "BackupService.4002"
    status = grpc.StatusCode.FAILED_PRECONDITION


class TaskCancelled(CbrError):
    """The task was cancelled."""

    code = "BackupService.4003"
    status = grpc.StatusCode.CANCELLED


def _all_subclasses(cls: type[CbrError]) -> list[type[CbrError]]:
    out: list[type[CbrError]] = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


def error_class_for(code: str) -> type[CbrError]:
    """The class of a CBR code, for turning a received status back into an error."""
    for cls in _all_subclasses(CbrError):
        if cls.code == code:
            return cls
    return CbrError


def all_codes() -> dict[str, type[CbrError]]:
    codes: dict[str, type[CbrError]] = {}
    for cls in _all_subclasses(CbrError):
        if cls.code in codes:
            raise RuntimeError(f"CBR code {cls.code} is used twice")
        codes[cls.code] = cls
    return codes
