"""The source controller's conversation with target clouds.

``Replicator`` asks a target (signed with a credential's key) to allow an
import, then records the replication and hands the transfer to a source host
agent in one transaction. Calls to another cloud never run inside a database
transaction. A background thread finishes what the agents leave: a committed
transfer is confirmed with the target (the record turns ``success`` when the
replica is in the target's catalog), a failed one is aborted there so no
grant lingers. It works from the records alone, so a controller restarted at
any point picks up where it was.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import json_format
from sqlalchemy import select

from cbr import errors, tls
from cbr.client import Client, error_from_rpc
from cbr.v1 import backup_pb2, replication_pb2
from controller.app import App
from controller.persistence.models import Backup, Credential, Policy, ReplicationRecord, Vault
from controller.persistence.vocabulary import (
    BackupStatus,
    ObjectType,
    OperationType,
    ReplicationStatus,
    TaskStatus,
)
from controller.services import (
    agent_status,
    backups,
    credentials,
    destinations,
    keys,
    policy_runs,
    replication,
    tasks,
    vaults,
)

log = logging.getLogger("cbr.controller.replication")

# Each call to another cloud is small; a target that needs longer is treated
# as unreachable (a transfer's own stream has its own retry, replication_retry).
TARGET_TIMEOUT_S = 10.0
# A credential check is one small call; a target that does not answer in
# this long is reported unreachable rather than holding the caller.
CHECK_TIMEOUT_S = 5.0
CONFIRM_EVERY_S = 2.0


def check_endpoint(app: App, endpoint: str) -> str:
    """Refuses a target endpoint this controller must not dial.

    Creating a credential makes the controller dial what a tenant typed, so
    anything but HOST:PORT (a unix socket, another URI scheme) is refused, and
    so are loopback, link-local and unspecified addresses (this host's own
    services, a cloud's metadata service) unless the operator allows them
    (``target_allow_local``, as on a development machine)."""
    host, _, port = credentials.endpoint(endpoint).rpartition(":")
    if app.config.target_allow_local:
        return endpoint
    try:
        destinations.pinned(host, int(port), allow_local=False, what="target_endpoint")
    except errors.InvalidParameter as exc:
        raise errors.InvalidParameter(exc.detail, field="target_endpoint") from None
    return endpoint


def target_client(app: App, cred: Credential) -> Client:
    if not cred.target_ca_pem:
        raise errors.InvalidParameter(
            f"Credential {cred.name!r} pins no CA of its target, so calls to it cannot be "
            "verified; update it with the target's target_ca_sha256 (`cbr cloud show` on the "
            "target prints it).", field="target_ca_sha256")
    secret = app.keyring.unseal(cred.secret_sealed, cred.id.encode()).decode()
    return Client(check_endpoint(app, cred.target_endpoint), cred.access_key_id, secret,
                  root_certificates=cred.target_ca_pem.encode())


def pin_target_ca(app: App, endpoint: str, certificate: str, sha256: str) -> str:
    """The target CA a credential keeps: the PEM given (checked against the
    fingerprint when both are), or the one in the target's TLS chain whose
    fingerprint is ``sha256``. Nothing but the handshake happens before it
    matches, so the key is never sent to an impostor."""
    want = sha256.strip().lower().replace(":", "")
    if certificate:
        try:
            got = tls.fingerprint(certificate)
        except ValueError:
            raise errors.InvalidParameter("target_ca_certificate is not a PEM certificate.",
                                          field="target_ca_certificate") from None
        if want and got != want:
            raise errors.InvalidParameter(
                f"target_ca_certificate has SHA-256 {got}, not {want}.",
                field="target_ca_sha256")
        return certificate
    if not re.fullmatch(r"[0-9a-f]{64}", want):
        raise errors.InvalidParameter(
            "target_ca_sha256 is required (64 hex digits): the CA fingerprint `cbr cloud show` "
            "prints on the target; every call to the target verifies its TLS against it. "
            "Or give target_ca_certificate.", field="target_ca_sha256")
    try:
        return tls.fetch_ca(check_endpoint(app, endpoint), want,
                            timeout=CHECK_TIMEOUT_S).decode()
    except tls.TlsError as exc:
        log.info("pinning the CA of %s failed: %s", endpoint, exc)
        raise errors.TargetCloudUnavailable(
            f"{endpoint}: unreachable." if exc.unreachable else
            f"{endpoint}: TLS failed (it presented no CA with SHA-256 {want}).") from None


def _reason(exc: grpc.RpcError) -> str:
    """A short reason for a failed call to another cloud. The transport's own
    words (which port refused, which socket error) stay in this log: told to
    the caller they would make credentials a network probe."""
    code = exc.code() if isinstance(exc, grpc.Call) else None
    details = (exc.details() if isinstance(exc, grpc.Call) else str(exc)) or ""
    log.info("call to another cloud failed: %s %s", code, details[:300])
    if code == grpc.StatusCode.UNAVAILABLE:
        words = details.lower()
        if any(w in words for w in ("handshake", "ssl", "tls", "certificate")):
            return "TLS failed (the target's certificate is not the one pinned)"
        return "unreachable"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "unreachable (no answer in time)"
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return "refused the credential's key"
    return "not a CBR controller"


@contextmanager
def calling_target(cred_name: str, endpoint: str) -> Iterator[None]:
    """A target's refusal comes back as the same error class it raised;
    a target that cannot be reached is TargetCloudUnavailable."""
    try:
        yield
    except grpc.RpcError as exc:
        err = error_from_rpc(exc)
        if isinstance(err, errors.PermissionDenied):
            # The target judged the user behind the credential, not our caller.
            action = err.metadata.get("action", "")
            raise errors.PermissionDenied(
                (f"On the target cloud, the user behind credential {cred_name!r} lacks the "
                 f"action {action}; grant it there (CBRFullAccess covers every action "
                 "replication needs)." if action else
                 f"The target cloud refused the user behind credential {cred_name!r}: "
                 f"{err.detail}"), **err.metadata) from None
        if err is not None:
            raise err from None
        reason = _reason(exc)
        if reason.startswith("refused"):
            raise errors.Unauthenticated(
                f"The target cloud at {endpoint} {reason} (credential {cred_name!r}).") \
                from None
        raise errors.TargetCloudUnavailable(
            f"{endpoint} (credential {cred_name!r}): {reason}.") from None


@dataclass(frozen=True)
class Started:
    task_id: str
    record_id: str


@dataclass(frozen=True)
class VaultReplication:
    """What replicating a vault started: its tasks, or one skipped task and why."""

    task_ids: list[str]
    skipped: str = ""


class Replicator:
    def __init__(self, app: App) -> None:
        self.app = app
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Vaults whose automatic backup just finished and whose replication
        # policy should send it now: (project, vault, policy).
        self._follow: queue.SimpleQueue[tuple[str, str, str]] = queue.SimpleQueue()

    # -- checking a credential ----------------------------------------------------------

    def check_access(self, *, name: str, endpoint: str, ca_pem: str, access_key_id: str,
                     secret: str, target_account_id: str, target_cloud: str
                     ) -> replication_pb2.CheckReplicationAccessResponse:
        """Asks the target who a key is and whether it may receive replicas
        (rule 11 is checked there); refuses a key whose account or cloud is
        not the one the credential names."""
        client = Client(check_endpoint(self.app, endpoint), access_key_id, secret,
                        root_certificates=ca_pem.encode())
        try:
            with calling_target(name, endpoint):
                answer: replication_pb2.CheckReplicationAccessResponse = \
                    client.replication.CheckReplicationAccess(
                        replication_pb2.CheckReplicationAccessRequest(), timeout=CHECK_TIMEOUT_S)
        finally:
            client.close()
        if answer.account_id != target_account_id:
            raise errors.InvalidParameter(
                f"The key belongs to account {answer.account_id} of the target cloud, not "
                f"{target_account_id}.", field="target_account_id")
        if answer.cloud != target_cloud:
            raise errors.InvalidParameter(
                f"The endpoint {endpoint} is cloud {answer.cloud!r}, not {target_cloud!r}.",
                field="target_cloud")
        return answer

    # -- starting -------------------------------------------------------------------------

    def replicate_backup(self, project_id: str, backup_id: str, credential_id: str,
                         region: str, destination_vault_id: str, destination_project_id: str,
                         *, auto_trigger: bool = False, via: str = "backup",
                         policy_id: str = "") -> Started:
        if not region:
            raise errors.InvalidParameter("destination_region is required.",
                                          field="destination_region")
        if not destination_vault_id:
            raise errors.InvalidParameter("destination_vault_id is required: a replication "
                                          "vault of the target account.",
                                          field="destination_vault_id")
        record_id = str(uuid.uuid4())
        with self.app.db.begin() as s:
            backup = backups.get_backup(s, project_id, backup_id)
            cred = credentials.get_credential(s, project_id, credential_id)
            if destination_project_id and destination_project_id != cred.target_account_id:
                raise errors.ProjectNotSupported(
                    f"Credential {cred.name!r} is for account {cred.target_account_id}, not "
                    f"{destination_project_id}.")
            replication.check_replicable(s, backup, cred, region)
            agent_id = replication.pick_source_agent(
                s, backup, agent_status.online_agent_ids(self.app, s))
            request = replication_pb2.PrepareImportRequest(
                source_record_id=record_id, source_cloud=self.app.config.cloud_name,
                source_region=self.app.config.region, source_project_id=project_id,
                source_vault_id=backup.vault_id, source_checkpoint_id=backup.checkpoint_id,
                destination_region=region, destination_vault_id=destination_vault_id,
                encrypted=bool(backup.extend_info.get("encrypted")), auto_trigger=auto_trigger)
            json_format.ParseDict(replication.imported_backup(s, backup), request.backup)
            vault = s.get(Vault, backup.vault_id)
            assert vault is not None
            cmk = keys.vault_key(s, self.app.root_key, vault, self.app.clock.now())
            url, manifest_sha256 = vault.storage_url, backup.manifest_sha256
            cred_id, cred_name, endpoint = cred.id, cred.name, cred.target_endpoint
            client = target_client(self.app, cred)
        try:
            for key_id, material in self.app.storage.chunk_keys(url, backup_id, cmk,
                                                                manifest_sha256).items():
                request.chunk_keys.add(key_id=key_id, key=material)
            with calling_target(cred_name, endpoint):
                answer = client.replication.PrepareImport(request, timeout=TARGET_TIMEOUT_S)
        finally:
            client.close()
        plan = replication.Plan(
            import_id=answer.import_id, target_task_id=answer.task_id,
            destination_checkpoint_id=answer.destination_checkpoint_id,
            destination_project_id=answer.destination_project_id,
            replica_ids=dict(answer.replica_ids), importer_endpoint=answer.importer_endpoint,
            importer_server_name=answer.importer_server_name,
            ca_certificate_pem=answer.ca_certificate_pem, import_token=answer.import_token,
            expires_at=json_format.MessageToDict(answer)["expiresAt"]
            if answer.HasField("expires_at") else "")
        now = self.app.clock.now()
        try:
            with self.app.db.begin() as s:
                backup = backups.get_backup(s, project_id, backup_id)
                vault = s.get(Vault, backup.vault_id)
                cred = credentials.get_credential(s, project_id, cred_id)
                assert vault is not None
                record, task = replication.start(
                    s, self.app.keyring, record_id=record_id, backup=backup, vault=vault,
                    credential=cred, region=region, source_region=self.app.config.region,
                    destination_vault_id=destination_vault_id, agent_id=agent_id, plan=plan,
                    auto_trigger=auto_trigger, via=via, now=now, policy_id=policy_id,
                    source_cloud=self.app.config.cloud_name,
                    retry_seconds=self.app.config.replication_retry)
                started = Started(task.id, record.id)
        except errors.CbrError as exc:
            self._abort_target(cred_id, project_id, plan.import_id, exc.message)
            raise
        if self.app.hub is not None:
            self.app.hub.dispatch(agent_id, started.task_id)
        log.info("replicating backup %s to %s (record %s, task %s, import %s)", backup_id,
                 region, started.record_id, started.task_id, plan.import_id)
        return started

    def replicate_vault(self, project_id: str, vault_id: str, credential_id: str, region: str,
                        destination_vault_id: str, destination_project_id: str, *,
                        auto_trigger: bool = False, policy_id: str = "") -> VaultReplication:
        """Every backup of the vault not yet sent to ``region``; a backup a
        rule keeps back gets a ``skip`` record naming the rule. When no
        replication starts (an empty vault, nothing new, every backup kept
        back) a ``skipped`` task says why (reference rule 3)."""
        with self.app.db.begin() as s:
            vault = vaults.get_vault(s, project_id, vault_id)
            if vault.object_type == ObjectType.DISK:
                raise errors.ReplicationNotAllowedForType(
                    "Disk vaults cannot replicate; only server and file-system vaults.")
            cred = credentials.get_credential(s, project_id, credential_id)
            every = replication.vault_backups(s, vault)
            candidates = [(b.id, b.status) for b in every
                          if not replication.vault_replicated_before(s, b, region)]
            target_account = cred.target_account_id
        task_ids: list[str] = []
        refused: list[str] = []
        for backup_id, status in candidates:
            if status != BackupStatus.AVAILABLE:
                continue
            try:
                started = self.replicate_backup(
                    project_id, backup_id, credential_id, region, destination_vault_id,
                    destination_project_id, auto_trigger=auto_trigger, via="vault",
                    policy_id=policy_id)
            except (errors.TargetCloudUnavailable, errors.Unauthenticated, errors.NoImporter,
                    errors.AgentUnavailable):
                raise
            except errors.CbrError as exc:
                now = self.app.clock.now()
                with self.app.db.begin() as s:
                    skipped = s.get(Backup, backup_id)
                    home = s.get(Vault, vault_id)
                    if skipped is not None and home is not None:
                        replication.skip_record(
                            s, backup=skipped, vault=home, region=region,
                            destination_vault_id=destination_vault_id,
                            destination_project_id=target_account,
                            source_region=self.app.config.region, code=exc.code,
                            reason=exc.message, auto_trigger=auto_trigger, now=now)
                log.info("vault %s: backup %s skipped: %s", vault_id, backup_id, exc.message)
                refused.append(f"backup {backup_id}: {exc.code} {exc.message}")
                continue
            task_ids.append(started.task_id)
        if task_ids:
            return VaultReplication(task_ids)
        if not every:
            reason = "the vault has no backups to replicate"
        elif refused:
            reason = (f"every backup not yet in {region} was refused ({len(refused)}; the "
                      f"replication records say why): {refused[0]}")
        elif candidates:
            reason = f"no backup of the vault is available to replicate to {region} now"
        else:
            reason = f"every backup of the vault has gone to {region} already (rule 6)"
        with self.app.db.begin() as s:
            vault = vaults.get_vault(s, project_id, vault_id)
            task = tasks.create_task(
                s, project_id=project_id, operation_type=OperationType.REPLICATION,
                status=TaskStatus.SKIPPED,
                vault_id=vault.id, vault_name=vault.name, now=self.app.clock.now(),
                policy_id=policy_id,
                extra_info={"destination_region": region, "reason": reason,
                            "backups_refused": len(refused)})
            return VaultReplication([task.id], skipped=reason)

    # -- finishing ------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="replicator", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def wake(self) -> None:
        self._wake.set()

    def follow_backup(self, project_id: str, vault_id: str, policy_id: str) -> None:
        """A replication policy runs after the vault's backups: the vault's
        new backups go now, not only at the policy's next scheduled time."""
        self._follow.put((project_id, vault_id, policy_id))
        self._wake.set()

    def _replicate_followed(self) -> None:
        while True:
            try:
                project_id, vault_id, policy_id = self._follow.get_nowait()
            except queue.Empty:
                return
            with self.app.db.begin() as s:
                policy = s.get(Policy, policy_id)
                if policy is None or not policy.enabled:
                    continue
                where = policy_runs.replication_target(s, policy, vault_id)
            try:
                started = self.replicate_vault(
                    project_id, vault_id, where["credential_id"], where["region"],
                    where["destination_vault_id"], where["destination_project_id"],
                    auto_trigger=True, policy_id=policy_id)
                log.info("replication policy %s after a backup of vault %s: %s", policy_id,
                         vault_id, started.skipped or f"{len(started.task_ids)} started")
            except errors.CbrError as exc:
                log.warning("replication policy %s after a backup of vault %s: %s", policy_id,
                            vault_id, exc.message)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._replicate_followed()
            except Exception:
                log.exception("replicator: replicating after a backup failed")
            try:
                self.settle()
            except Exception:
                log.exception("replicator: settling records failed; retrying")
            self._wake.wait(CONFIRM_EVERY_S)
            self._wake.clear()

    def settle(self) -> int:
        """Confirms committed transfers and aborts failed ones on their
        targets; returns how many records it settled."""
        with self.app.db.read() as conn:
            rows = conn.execute(select(ReplicationRecord.id, ReplicationRecord.project_id,
                                       ReplicationRecord.extra_info).where(
                ReplicationRecord.status.in_((ReplicationStatus.REPLICATING,
                                              ReplicationStatus.FAIL)))).all()
        settled = 0
        for record_id, project_id, extra in rows:
            stage = (extra or {}).get("stage")
            if stage not in ("committed", "aborting") or extra.get("side") != "source":
                continue
            cred_id = str(extra.get("credential_id", ""))
            import_id = str(extra.get("import_id", ""))
            if stage == "aborting":
                self._abort_target(cred_id, project_id, import_id,
                                   str(extra.get("fail_reason", "")))
                with self.app.db.begin() as s:
                    replication.aborted(s, record_id, self.app.clock.now())
                settled += 1
                continue
            answer = self._target_record(cred_id, project_id, import_id)
            if answer is None:
                continue
            with self.app.db.begin() as s:
                replication.confirmed(s, record_id, answer, self.app.clock.now())
            settled += 1
            if answer.get("status") == ReplicationStatus.SUCCESS and extra.get("policy_id"):
                try:
                    self._replica_retention(record_id, str(extra["policy_id"]))
                except Exception:
                    log.exception("retention of replicas after record %s failed", record_id)
        return settled

    def _replica_retention(self, record_id: str, policy_id: str) -> int:
        """The replication policy's retention on the target, after one of its
        replicas arrived; deletes go through the credential (rule 11 grants
        ``cbr:backups:delete``). Returns how many replicas it deleted."""
        now = self.app.clock.now()
        with self.app.db.begin() as s:
            record = s.get(ReplicationRecord, record_id)
            policy = s.get(Policy, policy_id)
            if record is None or policy is None:
                return 0
            doomed = replication.expired_replicas(s, record, dict(policy.operation_definition
                                                                  or {}), now)
            cred = s.get(Credential, str(record.extra_info.get("credential_id", "")))
            if not doomed or cred is None:
                return 0
            client = target_client(self.app, cred)
        deleted = 0
        try:
            for doomed_record, replica_id, rule in doomed:
                try:
                    client.backups.DeleteBackup(backup_pb2.DeleteBackupRequest(
                        backup_id=replica_id), timeout=TARGET_TIMEOUT_S)
                except grpc.RpcError as exc:
                    err = error_from_rpc(exc)
                    if err is None or not isinstance(err, errors.ResourceNotFound):
                        log.warning("could not delete replica %s (%s): %s", replica_id, rule,
                                    err.message if err is not None else exc)
                        continue
                with self.app.db.begin() as s:
                    replication.replica_deleted(s, doomed_record, rule, now)
                deleted += 1
                log.info("replica %s deleted on the target by retention (%s)", replica_id,
                         rule)
        finally:
            client.close()
        return deleted

    def _target_record(self, cred_id: str, project_id: str, import_id: str
                       ) -> dict[str, Any] | None:
        with self.app.db.begin() as s:
            cred = s.get(Credential, cred_id)
            if cred is None or cred.project_id != project_id:
                return {"status": ReplicationStatus.FAIL, "fail_code": errors.ResourceNotFound.code,
                        "fail_reason": "the credential was deleted before the target "
                                       "confirmed the replica"}
            client = target_client(self.app, cred)
        try:
            answer = client.replication.GetImport(
                replication_pb2.GetImportRequest(import_id=import_id),
                timeout=TARGET_TIMEOUT_S)
        except grpc.RpcError as exc:
            log.info("target not reachable to confirm import %s (%s); retrying", import_id,
                     exc.code() if isinstance(exc, grpc.Call) else exc)
            return None
        finally:
            client.close()
        r = answer.replication_record
        status = replication_pb2.ReplicationStatus.Name(r.status)
        return {"status": status.removeprefix("REPLICATION_STATUS_").lower(),
                "destination_backup_id": r.destination_backup_id,
                "destination_checkpoint_id": r.destination_checkpoint_id,
                "fail_code": r.fail_code, "fail_reason": r.fail_reason}

    def _abort_target(self, cred_id: str, project_id: str, import_id: str,
                      reason: str) -> None:
        with self.app.db.begin() as s:
            cred = s.get(Credential, cred_id)
            if cred is None or cred.project_id != project_id or not import_id:
                return
            client = target_client(self.app, cred)
        try:
            client.replication.AbortImport(
                replication_pb2.AbortImportRequest(import_id=import_id, reason=reason[:500]),
                timeout=TARGET_TIMEOUT_S)
        except grpc.RpcError as exc:
            log.warning("could not abort import %s on the target: %s", import_id,
                        exc.details() if isinstance(exc, grpc.Call) else exc)
        finally:
            client.close()
