"""The IAM action each API method needs, and the methods that are not signed.

A method missing from METHOD_ACTIONS and from UNSIGNED_METHODS is refused:
a new RPC cannot become reachable without a decision here
(tests/unit/test_actions.py checks every RPC in the protos has one).
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

# Authenticated otherwise: Enroll by its one-time token, Connect by the
# agent's client certificate on the TLS agent endpoint.
UNSIGNED_METHODS = frozenset(
    {
        "/cbr.v1.AgentService/Enroll",
        "/cbr.v1.AgentService/Connect",
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.health.v1.Health/List",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    }
)

# Actions that any authenticated caller holds.
ALWAYS_ALLOWED = frozenset({"iam:identity:get", "cbr:cloud:get"})

METHOD_ACTIONS: dict[str, str] = {
    "/cbr.v1.VaultService/CreateVault": "cbr:vaults:create",
    "/cbr.v1.VaultService/GetVault": "cbr:vaults:get",
    "/cbr.v1.VaultService/ListVaults": "cbr:vaults:list",
    "/cbr.v1.VaultService/UpdateVault": "cbr:vaults:update",
    "/cbr.v1.VaultService/DeleteVault": "cbr:vaults:delete",
    "/cbr.v1.VaultService/AddVaultResources": "cbr:vaults:addResources",
    "/cbr.v1.VaultService/RemoveVaultResources": "cbr:vaults:removeResources",
    "/cbr.v1.VaultService/AssociateVaultPolicy": "cbr:vaults:associatePolicy",
    "/cbr.v1.VaultService/DissociateVaultPolicy": "cbr:vaults:dissociatePolicy",
    "/cbr.v1.VaultService/VerifyVault": "cbr:vaults:verify",
    "/cbr.v1.VaultService/PruneVault": "cbr:vaults:prune",
    "/cbr.v1.VaultService/RepairVault": "cbr:vaults:repair",
    "/cbr.v1.VaultService/ImportVaultStorage": "cbr:vaults:import",
    "/cbr.v1.ProtectableService/ListProtectables": "cbr:protectables:list",
    "/cbr.v1.ProtectableService/GetProtectable": "cbr:protectables:get",
    "/cbr.v1.BackupService/CreateCheckpoint": "cbr:checkpoints:create",
    "/cbr.v1.BackupService/GetCheckpoint": "cbr:checkpoints:get",
    "/cbr.v1.BackupService/GetBackup": "cbr:backups:get",
    "/cbr.v1.BackupService/ListBackups": "cbr:backups:list",
    "/cbr.v1.BackupService/UpdateBackup": "cbr:backups:update",
    "/cbr.v1.BackupService/DeleteBackup": "cbr:backups:delete",
    "/cbr.v1.BackupService/RestoreBackup": "cbr:backups:restore",
    "/cbr.v1.BackupService/ListBackupFiles": "cbr:backups:get",
    "/cbr.v1.BackupService/DiffBackups": "cbr:backups:get",
    "/cbr.v1.BackupService/WalkBackupFiles": "cbr:backups:get",
    "/cbr.v1.BackupService/CreateImage": "cbr:images:create",
    "/cbr.v1.BackupService/GetImage": "cbr:images:get",
    "/cbr.v1.BackupService/ListImages": "cbr:images:list",
    "/cbr.v1.BackupService/DeleteImage": "cbr:images:delete",
    "/cbr.v1.PolicyService/CreatePolicy": "cbr:policies:create",
    "/cbr.v1.PolicyService/GetPolicy": "cbr:policies:get",
    "/cbr.v1.PolicyService/ListPolicies": "cbr:policies:list",
    "/cbr.v1.PolicyService/UpdatePolicy": "cbr:policies:update",
    "/cbr.v1.PolicyService/DeletePolicy": "cbr:policies:delete",
    "/cbr.v1.PolicyService/RunPolicyNow": "cbr:policies:run",
    "/cbr.v1.PolicyService/ListPolicyRuns": "cbr:policies:get",
    "/cbr.v1.CredentialService/CreateCredential": "cbr:credentials:create",
    "/cbr.v1.CredentialService/GetCredential": "cbr:credentials:get",
    "/cbr.v1.CredentialService/ListCredentials": "cbr:credentials:list",
    "/cbr.v1.CredentialService/UpdateCredential": "cbr:credentials:update",
    "/cbr.v1.CredentialService/DeleteCredential": "cbr:credentials:delete",
    "/cbr.v1.CredentialService/ListReplicationDestinations": "cbr:credentials:get",
    "/cbr.v1.ReplicationService/ReplicateBackup": "cbr:backups:replicate",
    "/cbr.v1.ReplicationService/ReplicateVault": "cbr:vaults:replicate",
    "/cbr.v1.ReplicationService/GetReplicationRecord": "cbr:replicationRecords:get",
    "/cbr.v1.ReplicationService/ListReplicationRecords": "cbr:replicationRecords:list",
    "/cbr.v1.ReplicationService/GetReplicationCapabilities": "cbr:cloud:get",
    # The target's side: each also requires every action of rule 11.
    "/cbr.v1.ReplicationService/CheckReplicationAccess": "cbr:vaults:get",
    "/cbr.v1.ReplicationService/PrepareImport": "cbr:backups:import",
    "/cbr.v1.ReplicationService/GetImport": "cbr::listThirdAuth",
    "/cbr.v1.ReplicationService/AbortImport": "cbr::updateSnapshotMetadata",
    "/cbr.v1.KeyService/CreateKey": "cbr:keys:create",
    "/cbr.v1.KeyService/GetKey": "cbr:keys:get",
    "/cbr.v1.KeyService/ListKeys": "cbr:keys:list",
    "/cbr.v1.KeyService/DisableKey": "cbr:keys:disable",
    "/cbr.v1.KeyService/EnableKey": "cbr:keys:enable",
    "/cbr.v1.KeyService/ScheduleKeyDeletion": "cbr:keys:scheduleDeletion",
    "/cbr.v1.KeyService/CancelKeyDeletion": "cbr:keys:cancelDeletion",
    "/cbr.v1.KeyService/ShareKey": "cbr:keys:share",
    "/cbr.v1.KeyService/UnshareKey": "cbr:keys:unshare",
    "/cbr.v1.NotificationService/CreateNotificationTarget": "cbr:notificationTargets:create",
    "/cbr.v1.NotificationService/GetNotificationTarget": "cbr:notificationTargets:get",
    "/cbr.v1.NotificationService/ListNotificationTargets": "cbr:notificationTargets:list",
    "/cbr.v1.NotificationService/UpdateNotificationTarget": "cbr:notificationTargets:update",
    "/cbr.v1.NotificationService/DeleteNotificationTarget": "cbr:notificationTargets:delete",
    "/cbr.v1.NotificationService/TestNotificationTarget": "cbr:notificationTargets:test",
    "/cbr.v1.NotificationService/ListNotificationDeliveries":
        "cbr:notificationDeliveries:list",
    "/cbr.v1.NotificationService/ListEvents": "cbr:events:list",
    "/cbr.v1.TaskService/GetTask": "cbr:tasks:get",
    "/cbr.v1.TaskService/ListTasks": "cbr:tasks:list",
    "/cbr.v1.TaskService/WatchTask": "cbr:tasks:get",
    "/cbr.v1.TaskService/CancelTask": "cbr:tasks:cancel",
    "/cbr.v1.AgentService/CreateEnrollmentToken": "cbr:agents:enroll",
    "/cbr.v1.AgentService/GetAgent": "cbr:agents:get",
    "/cbr.v1.AgentService/ListAgents": "cbr:agents:list",
    "/cbr.v1.AgentService/DeleteAgent": "cbr:agents:delete",
    "/cbr.v1.AgentService/SyncAgent": "cbr:agents:sync",
    "/cbr.v1.CloudService/GetCloud": "cbr:cloud:get",
    "/cbr.v1.IamService/GetCallerIdentity": "iam:identity:get",
    "/cbr.v1.IamService/CreateAccount": "iam:accounts:create",
    "/cbr.v1.IamService/GetAccount": "iam:accounts:get",
    "/cbr.v1.IamService/UpdateAccount": "iam:accounts:update",
    "/cbr.v1.IamService/ListAccounts": "iam:accounts:list",
    "/cbr.v1.IamService/CreateUser": "iam:users:create",
    "/cbr.v1.IamService/GetUser": "iam:users:get",
    "/cbr.v1.IamService/ListUsers": "iam:users:list",
    "/cbr.v1.IamService/DeleteUser": "iam:users:delete",
    "/cbr.v1.IamService/SetUserPassword": "iam:users:setPassword",
    "/cbr.v1.IamService/CreateAccessKey": "iam:accessKeys:create",
    "/cbr.v1.IamService/ListAccessKeys": "iam:accessKeys:list",
    "/cbr.v1.IamService/DeleteAccessKey": "iam:accessKeys:delete",
    "/cbr.v1.IamService/CreateGrant": "iam:grants:create",
    "/cbr.v1.IamService/ListGrants": "iam:grants:list",
    "/cbr.v1.IamService/DeleteGrant": "iam:grants:delete",
    "/cbr.v1.AuditService/ListAuditRecords": "cbr:audit:list",
}

# Methods that only read, by their verb: a new method that changes
# something is audited unless it is named as a read.
READ_VERBS = ("Get", "List", "Watch", "Walk", "Diff", "Check")


def changes_state(method: str) -> bool:
    """Whether a call of this ``cbr.v1`` method may change something (and so
    is always audited); reads are audited only when refused."""
    return not method.rpartition("/")[2].startswith(READ_VERBS)

# Actions the target checks for every import call (reference rule 11).
REPLICATION_TARGET_ACTIONS = (
    "cbr:vaults:get",
    "cbr:backups:get",
    "cbr:tasks:get",
    "cbr:backups:import",
    "cbr:backups:delete",
    "cbr::createSnapshotMetadata",
    "cbr::updateSnapshotMetadata",
    "cbr::createThirdAuth",
    "cbr::listThirdAuth",
)
LEGACY_ACTION_NAMES = {
    "cbr:snapshotMetadata:create": "cbr::createSnapshotMetadata",
    "cbr:snapshotMetadata:update": "cbr::updateSnapshotMetadata",
    "cbr:thirdAuth:create": "cbr::createThirdAuth",
    "cbr:thirdAuth:list": "cbr::listThirdAuth",
}


def known_actions() -> frozenset[str]:
    return frozenset(METHOD_ACTIONS.values()) | frozenset(REPLICATION_TARGET_ACTIONS)


@dataclass(frozen=True)
class Caller:
    """Who makes a call: an account's user, by one of its access keys, with
    the actions its grants give (managed policies expanded)."""

    account_id: str
    user_id: str
    access_key_id: str
    actions: frozenset[str]
    administrator: bool = False


def missing_action(method: str, caller: Caller) -> str | None:
    """The action ``caller`` lacks to call ``method`` (``/cbr.v1.Service/Method``),
    or None when it may: the API's check, which the console also uses to show
    a control disabled with the action it needs."""
    action = METHOD_ACTIONS.get(method)
    if action is None:
        return method  # not open to calls at all
    if action in ALWAYS_ALLOWED or action in caller.actions:
        return None
    return action


_current: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("caller", default=None)


def set_caller(caller: Caller | None) -> contextvars.Token[Caller | None]:
    """Set by the API's authentication for the call it admits."""
    return _current.set(caller)


def reset_caller(token: contextvars.Token[Caller | None]) -> None:
    _current.reset(token)


def caller_or_none() -> Caller | None:
    """Who made the API call this code runs in; None in the policy loop,
    replication and other work no caller asked for. Services read it only
    to record who started something (a task), never to decide access:
    that takes the caller as an argument."""
    return _current.get()
