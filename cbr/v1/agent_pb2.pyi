import datetime

from cbr.v1 import common_pb2 as _common_pb2
from cbr.v1 import key_pb2 as _key_pb2
from cbr.v1 import protectable_pb2 as _protectable_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AgentRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGENT_ROLE_UNSPECIFIED: _ClassVar[AgentRole]
    AGENT_ROLE_HOST: _ClassVar[AgentRole]
    AGENT_ROLE_IMPORTER: _ClassVar[AgentRole]

class AgentStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGENT_STATUS_UNSPECIFIED: _ClassVar[AgentStatus]
    AGENT_STATUS_ONLINE: _ClassVar[AgentStatus]
    AGENT_STATUS_OFFLINE: _ClassVar[AgentStatus]
AGENT_ROLE_UNSPECIFIED: AgentRole
AGENT_ROLE_HOST: AgentRole
AGENT_ROLE_IMPORTER: AgentRole
AGENT_STATUS_UNSPECIFIED: AgentStatus
AGENT_STATUS_ONLINE: AgentStatus
AGENT_STATUS_OFFLINE: AgentStatus

class Agent(_message.Message):
    __slots__ = ("id", "name", "hostname", "role", "status", "version", "project_id", "certificate_fingerprint", "protectable_count", "enrolled_at", "last_seen_at", "connected_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    PROTECTABLE_COUNT_FIELD_NUMBER: _ClassVar[int]
    ENROLLED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_AT_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    hostname: str
    role: AgentRole
    status: AgentStatus
    version: str
    project_id: str
    certificate_fingerprint: str
    protectable_count: int
    enrolled_at: _timestamp_pb2.Timestamp
    last_seen_at: _timestamp_pb2.Timestamp
    connected_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., hostname: _Optional[str] = ..., role: _Optional[_Union[AgentRole, str]] = ..., status: _Optional[_Union[AgentStatus, str]] = ..., version: _Optional[str] = ..., project_id: _Optional[str] = ..., certificate_fingerprint: _Optional[str] = ..., protectable_count: _Optional[int] = ..., enrolled_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_seen_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., connected_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class EnrollRequest(_message.Message):
    __slots__ = ("token", "csr_pem", "name", "hostname", "role", "version")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    token: str
    csr_pem: str
    name: str
    hostname: str
    role: AgentRole
    version: str
    def __init__(self, token: _Optional[str] = ..., csr_pem: _Optional[str] = ..., name: _Optional[str] = ..., hostname: _Optional[str] = ..., role: _Optional[_Union[AgentRole, str]] = ..., version: _Optional[str] = ...) -> None: ...

class EnrollResponse(_message.Message):
    __slots__ = ("agent_id", "certificate_pem", "ca_certificate_pem", "agent_endpoint", "server_name")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    AGENT_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    SERVER_NAME_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    certificate_pem: str
    ca_certificate_pem: str
    agent_endpoint: str
    server_name: str
    def __init__(self, agent_id: _Optional[str] = ..., certificate_pem: _Optional[str] = ..., ca_certificate_pem: _Optional[str] = ..., agent_endpoint: _Optional[str] = ..., server_name: _Optional[str] = ...) -> None: ...

class CreateEnrollmentTokenRequest(_message.Message):
    __slots__ = ("ttl_seconds", "description")
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ttl_seconds: int
    description: str
    def __init__(self, ttl_seconds: _Optional[int] = ..., description: _Optional[str] = ...) -> None: ...

class CreateEnrollmentTokenResponse(_message.Message):
    __slots__ = ("token", "expires_at", "agent_endpoint")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    AGENT_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    token: str
    expires_at: _timestamp_pb2.Timestamp
    agent_endpoint: str
    def __init__(self, token: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., agent_endpoint: _Optional[str] = ...) -> None: ...

class GetAgentRequest(_message.Message):
    __slots__ = ("agent_id",)
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    def __init__(self, agent_id: _Optional[str] = ...) -> None: ...

class GetAgentResponse(_message.Message):
    __slots__ = ("agent",)
    AGENT_FIELD_NUMBER: _ClassVar[int]
    agent: Agent
    def __init__(self, agent: _Optional[_Union[Agent, _Mapping]] = ...) -> None: ...

class ListAgentsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "status", "role")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    status: AgentStatus
    role: AgentRole
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., status: _Optional[_Union[AgentStatus, str]] = ..., role: _Optional[_Union[AgentRole, str]] = ...) -> None: ...

class ListAgentsResponse(_message.Message):
    __slots__ = ("agents", "next_page_token", "total_count")
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_COUNT_FIELD_NUMBER: _ClassVar[int]
    agents: _containers.RepeatedCompositeFieldContainer[Agent]
    next_page_token: str
    total_count: int
    def __init__(self, agents: _Optional[_Iterable[_Union[Agent, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., total_count: _Optional[int] = ...) -> None: ...

class DeleteAgentRequest(_message.Message):
    __slots__ = ("agent_id",)
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    def __init__(self, agent_id: _Optional[str] = ...) -> None: ...

class DeleteAgentResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SyncAgentRequest(_message.Message):
    __slots__ = ("agent_id",)
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    def __init__(self, agent_id: _Optional[str] = ...) -> None: ...

class SyncAgentResponse(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class ReportedProtectable(_message.Message):
    __slots__ = ("local_id", "name", "type", "size_bytes", "disks", "path", "tags", "error")
    LOCAL_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISKS_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    local_id: str
    name: str
    type: _common_pb2.ObjectType
    size_bytes: int
    disks: _containers.RepeatedCompositeFieldContainer[_protectable_pb2.ProtectableDisk]
    path: str
    tags: _containers.RepeatedCompositeFieldContainer[_common_pb2.Tag]
    error: str
    def __init__(self, local_id: _Optional[str] = ..., name: _Optional[str] = ..., type: _Optional[_Union[_common_pb2.ObjectType, str]] = ..., size_bytes: _Optional[int] = ..., disks: _Optional[_Iterable[_Union[_protectable_pb2.ProtectableDisk, _Mapping]]] = ..., path: _Optional[str] = ..., tags: _Optional[_Iterable[_Union[_common_pb2.Tag, _Mapping]]] = ..., error: _Optional[str] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("agent_id", "version", "hostname", "finished_task_ids", "running_task_ids", "importer_endpoint", "restore_roots")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    FINISHED_TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    IMPORTER_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    RESTORE_ROOTS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    version: str
    hostname: str
    finished_task_ids: _containers.RepeatedScalarFieldContainer[str]
    running_task_ids: _containers.RepeatedScalarFieldContainer[str]
    importer_endpoint: str
    restore_roots: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, agent_id: _Optional[str] = ..., version: _Optional[str] = ..., hostname: _Optional[str] = ..., finished_task_ids: _Optional[_Iterable[str]] = ..., running_task_ids: _Optional[_Iterable[str]] = ..., importer_endpoint: _Optional[str] = ..., restore_roots: _Optional[_Iterable[str]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("sent_at",)
    SENT_AT_FIELD_NUMBER: _ClassVar[int]
    sent_at: _timestamp_pb2.Timestamp
    def __init__(self, sent_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Inventory(_message.Message):
    __slots__ = ("protectables",)
    PROTECTABLES_FIELD_NUMBER: _ClassVar[int]
    protectables: _containers.RepeatedCompositeFieldContainer[ReportedProtectable]
    def __init__(self, protectables: _Optional[_Iterable[_Union[ReportedProtectable, _Mapping]]] = ...) -> None: ...

class CommandProgress(_message.Message):
    __slots__ = ("task_id", "progress", "message", "counters")
    class CountersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    progress: int
    message: str
    counters: _containers.ScalarMap[str, int]
    def __init__(self, task_id: _Optional[str] = ..., progress: _Optional[int] = ..., message: _Optional[str] = ..., counters: _Optional[_Mapping[str, int]] = ...) -> None: ...

class SyncResult(_message.Message):
    __slots__ = ("protectable_count",)
    PROTECTABLE_COUNT_FIELD_NUMBER: _ClassVar[int]
    protectable_count: int
    def __init__(self, protectable_count: _Optional[int] = ...) -> None: ...

class BackedUp(_message.Message):
    __slots__ = ("backup_id", "stored_bytes", "bytes_scanned", "warnings", "protected_at", "manifest_sha256", "snapshot", "change_detection", "app_consistent", "freeze_ms")
    BACKUP_ID_FIELD_NUMBER: _ClassVar[int]
    STORED_BYTES_FIELD_NUMBER: _ClassVar[int]
    BYTES_SCANNED_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    PROTECTED_AT_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_SHA256_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    CHANGE_DETECTION_FIELD_NUMBER: _ClassVar[int]
    APP_CONSISTENT_FIELD_NUMBER: _ClassVar[int]
    FREEZE_MS_FIELD_NUMBER: _ClassVar[int]
    backup_id: str
    stored_bytes: int
    bytes_scanned: int
    warnings: _containers.RepeatedScalarFieldContainer[str]
    protected_at: _timestamp_pb2.Timestamp
    manifest_sha256: str
    snapshot: str
    change_detection: str
    app_consistent: bool
    freeze_ms: int
    def __init__(self, backup_id: _Optional[str] = ..., stored_bytes: _Optional[int] = ..., bytes_scanned: _Optional[int] = ..., warnings: _Optional[_Iterable[str]] = ..., protected_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., manifest_sha256: _Optional[str] = ..., snapshot: _Optional[str] = ..., change_detection: _Optional[str] = ..., app_consistent: _Optional[bool] = ..., freeze_ms: _Optional[int] = ...) -> None: ...

class BackupResult(_message.Message):
    __slots__ = ("backups", "bytes_scanned", "bytes_sent", "bytes_new")
    BACKUPS_FIELD_NUMBER: _ClassVar[int]
    BYTES_SCANNED_FIELD_NUMBER: _ClassVar[int]
    BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    BYTES_NEW_FIELD_NUMBER: _ClassVar[int]
    backups: _containers.RepeatedCompositeFieldContainer[BackedUp]
    bytes_scanned: int
    bytes_sent: int
    bytes_new: int
    def __init__(self, backups: _Optional[_Iterable[_Union[BackedUp, _Mapping]]] = ..., bytes_scanned: _Optional[int] = ..., bytes_sent: _Optional[int] = ..., bytes_new: _Optional[int] = ...) -> None: ...

class RestoreResult(_message.Message):
    __slots__ = ("bytes_restored", "bytes_read", "warnings")
    BYTES_RESTORED_FIELD_NUMBER: _ClassVar[int]
    BYTES_READ_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    bytes_restored: int
    bytes_read: int
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, bytes_restored: _Optional[int] = ..., bytes_read: _Optional[int] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class ReplicateResult(_message.Message):
    __slots__ = ("bytes_total", "wire_bytes", "chunks_sent", "chunks_walked", "raw_bytes_sent", "bytes_stored", "attempts", "bytes_new")
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    WIRE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_SENT_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_WALKED_FIELD_NUMBER: _ClassVar[int]
    RAW_BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    BYTES_STORED_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    BYTES_NEW_FIELD_NUMBER: _ClassVar[int]
    bytes_total: int
    wire_bytes: int
    chunks_sent: int
    chunks_walked: int
    raw_bytes_sent: int
    bytes_stored: int
    attempts: int
    bytes_new: int
    def __init__(self, bytes_total: _Optional[int] = ..., wire_bytes: _Optional[int] = ..., chunks_sent: _Optional[int] = ..., chunks_walked: _Optional[int] = ..., raw_bytes_sent: _Optional[int] = ..., bytes_stored: _Optional[int] = ..., attempts: _Optional[int] = ..., bytes_new: _Optional[int] = ...) -> None: ...

class ImportResult(_message.Message):
    __slots__ = ("manifest_sha256", "bytes_stored", "chunks_received")
    class ManifestSha256Entry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MANIFEST_SHA256_FIELD_NUMBER: _ClassVar[int]
    BYTES_STORED_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    manifest_sha256: _containers.ScalarMap[str, str]
    bytes_stored: int
    chunks_received: int
    def __init__(self, manifest_sha256: _Optional[_Mapping[str, str]] = ..., bytes_stored: _Optional[int] = ..., chunks_received: _Optional[int] = ...) -> None: ...

class CommandResult(_message.Message):
    __slots__ = ("task_id", "success", "error_code", "error_message", "sync", "backup", "restore", "replicate")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SYNC_FIELD_NUMBER: _ClassVar[int]
    BACKUP_FIELD_NUMBER: _ClassVar[int]
    RESTORE_FIELD_NUMBER: _ClassVar[int]
    IMPORT_FIELD_NUMBER: _ClassVar[int]
    REPLICATE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    success: bool
    error_code: str
    error_message: str
    sync: SyncResult
    backup: BackupResult
    restore: RestoreResult
    replicate: ReplicateResult
    def __init__(self, task_id: _Optional[str] = ..., success: _Optional[bool] = ..., error_code: _Optional[str] = ..., error_message: _Optional[str] = ..., sync: _Optional[_Union[SyncResult, _Mapping]] = ..., backup: _Optional[_Union[BackupResult, _Mapping]] = ..., restore: _Optional[_Union[RestoreResult, _Mapping]] = ..., replicate: _Optional[_Union[ReplicateResult, _Mapping]] = ..., **kwargs) -> None: ...

class ConnectRequest(_message.Message):
    __slots__ = ("hello", "heartbeat", "inventory", "progress", "result")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    INVENTORY_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    heartbeat: Heartbeat
    inventory: Inventory
    progress: CommandProgress
    result: CommandResult
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., inventory: _Optional[_Union[Inventory, _Mapping]] = ..., progress: _Optional[_Union[CommandProgress, _Mapping]] = ..., result: _Optional[_Union[CommandResult, _Mapping]] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("heartbeat_interval_ms",)
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    heartbeat_interval_ms: int
    def __init__(self, heartbeat_interval_ms: _Optional[int] = ...) -> None: ...

class SyncCommand(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StorageAccess(_message.Message):
    __slots__ = ("url", "access_key", "secret_key", "encrypted", "keys")
    URL_FIELD_NUMBER: _ClassVar[int]
    ACCESS_KEY_FIELD_NUMBER: _ClassVar[int]
    SECRET_KEY_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTED_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    url: str
    access_key: str
    secret_key: str
    encrypted: bool
    keys: _containers.RepeatedCompositeFieldContainer[_key_pb2.TaskKey]
    def __init__(self, url: _Optional[str] = ..., access_key: _Optional[str] = ..., secret_key: _Optional[str] = ..., encrypted: _Optional[bool] = ..., keys: _Optional[_Iterable[_Union[_key_pb2.TaskKey, _Mapping]]] = ...) -> None: ...

class DiskBackupSpec(_message.Message):
    __slots__ = ("backup_id", "disk_local_id", "name", "system_disk", "parent_backup_id", "size_bytes", "parent_manifest_sha256")
    BACKUP_ID_FIELD_NUMBER: _ClassVar[int]
    DISK_LOCAL_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_DISK_FIELD_NUMBER: _ClassVar[int]
    PARENT_BACKUP_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PARENT_MANIFEST_SHA256_FIELD_NUMBER: _ClassVar[int]
    backup_id: str
    disk_local_id: str
    name: str
    system_disk: bool
    parent_backup_id: str
    size_bytes: int
    parent_manifest_sha256: str
    def __init__(self, backup_id: _Optional[str] = ..., disk_local_id: _Optional[str] = ..., name: _Optional[str] = ..., system_disk: _Optional[bool] = ..., parent_backup_id: _Optional[str] = ..., size_bytes: _Optional[int] = ..., parent_manifest_sha256: _Optional[str] = ...) -> None: ...

class BackupCommand(_message.Message):
    __slots__ = ("storage", "vault_id", "checkpoint_id", "backup_id", "name", "description", "resource_id", "resource_local_id", "resource_name", "resource_type", "resource_size_bytes", "parent_backup_id", "disks", "auto_trigger", "created_at", "parent_manifest_sha256")
    STORAGE_FIELD_NUMBER: _ClassVar[int]
    VAULT_ID_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    BACKUP_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_LOCAL_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_NAME_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PARENT_BACKUP_ID_FIELD_NUMBER: _ClassVar[int]
    DISKS_FIELD_NUMBER: _ClassVar[int]
    AUTO_TRIGGER_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    PARENT_MANIFEST_SHA256_FIELD_NUMBER: _ClassVar[int]
    storage: StorageAccess
    vault_id: str
    checkpoint_id: str
    backup_id: str
    name: str
    description: str
    resource_id: str
    resource_local_id: str
    resource_name: str
    resource_type: _common_pb2.ObjectType
    resource_size_bytes: int
    parent_backup_id: str
    disks: _containers.RepeatedCompositeFieldContainer[DiskBackupSpec]
    auto_trigger: bool
    created_at: _timestamp_pb2.Timestamp
    parent_manifest_sha256: str
    def __init__(self, storage: _Optional[_Union[StorageAccess, _Mapping]] = ..., vault_id: _Optional[str] = ..., checkpoint_id: _Optional[str] = ..., backup_id: _Optional[str] = ..., name: _Optional[str] = ..., description: _Optional[str] = ..., resource_id: _Optional[str] = ..., resource_local_id: _Optional[str] = ..., resource_name: _Optional[str] = ..., resource_type: _Optional[_Union[_common_pb2.ObjectType, str]] = ..., resource_size_bytes: _Optional[int] = ..., parent_backup_id: _Optional[str] = ..., disks: _Optional[_Iterable[_Union[DiskBackupSpec, _Mapping]]] = ..., auto_trigger: _Optional[bool] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., parent_manifest_sha256: _Optional[str] = ...) -> None: ...

class RestoreCommand(_message.Message):
    __slots__ = ("storage", "backup_id", "resource_type", "target_path", "source_path", "disk_targets", "manifest_sha256")
    class DiskTargetsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class ManifestSha256Entry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    STORAGE_FIELD_NUMBER: _ClassVar[int]
    BACKUP_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    TARGET_PATH_FIELD_NUMBER: _ClassVar[int]
    SOURCE_PATH_FIELD_NUMBER: _ClassVar[int]
    DISK_TARGETS_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_SHA256_FIELD_NUMBER: _ClassVar[int]
    storage: StorageAccess
    backup_id: str
    resource_type: _common_pb2.ObjectType
    target_path: str
    source_path: str
    disk_targets: _containers.ScalarMap[str, str]
    manifest_sha256: _containers.ScalarMap[str, str]
    def __init__(self, storage: _Optional[_Union[StorageAccess, _Mapping]] = ..., backup_id: _Optional[str] = ..., resource_type: _Optional[_Union[_common_pb2.ObjectType, str]] = ..., target_path: _Optional[str] = ..., source_path: _Optional[str] = ..., disk_targets: _Optional[_Mapping[str, str]] = ..., manifest_sha256: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ImportCommand(_message.Message):
    __slots__ = ("storage", "import_id", "vault_id", "token_sha256", "replica_ids", "expires_at")
    STORAGE_FIELD_NUMBER: _ClassVar[int]
    IMPORT_ID_FIELD_NUMBER: _ClassVar[int]
    VAULT_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_SHA256_FIELD_NUMBER: _ClassVar[int]
    REPLICA_IDS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    storage: StorageAccess
    import_id: str
    vault_id: str
    token_sha256: bytes
    replica_ids: _containers.RepeatedScalarFieldContainer[str]
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, storage: _Optional[_Union[StorageAccess, _Mapping]] = ..., import_id: _Optional[str] = ..., vault_id: _Optional[str] = ..., token_sha256: _Optional[bytes] = ..., replica_ids: _Optional[_Iterable[str]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ReplicateCommand(_message.Message):
    __slots__ = ("storage", "backup_id", "manifest_sha256", "replica_ids", "destination_vault_id", "destination_checkpoint_id", "importer_endpoint", "importer_server_name", "ca_certificate_pem", "import_token", "source_cloud", "source_region", "source_project_id", "expires_at", "replication_record_id", "retry_seconds")
    class ManifestSha256Entry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class ReplicaIdsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    STORAGE_FIELD_NUMBER: _ClassVar[int]
    BACKUP_ID_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_SHA256_FIELD_NUMBER: _ClassVar[int]
    REPLICA_IDS_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_VAULT_ID_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_CHECKPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    IMPORTER_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    IMPORTER_SERVER_NAME_FIELD_NUMBER: _ClassVar[int]
    CA_CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    IMPORT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    SOURCE_CLOUD_FIELD_NUMBER: _ClassVar[int]
    SOURCE_REGION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    REPLICATION_RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    RETRY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    storage: StorageAccess
    backup_id: str
    manifest_sha256: _containers.ScalarMap[str, str]
    replica_ids: _containers.ScalarMap[str, str]
    destination_vault_id: str
    destination_checkpoint_id: str
    importer_endpoint: str
    importer_server_name: str
    ca_certificate_pem: str
    import_token: str
    source_cloud: str
    source_region: str
    source_project_id: str
    expires_at: _timestamp_pb2.Timestamp
    replication_record_id: str
    retry_seconds: float
    def __init__(self, storage: _Optional[_Union[StorageAccess, _Mapping]] = ..., backup_id: _Optional[str] = ..., manifest_sha256: _Optional[_Mapping[str, str]] = ..., replica_ids: _Optional[_Mapping[str, str]] = ..., destination_vault_id: _Optional[str] = ..., destination_checkpoint_id: _Optional[str] = ..., importer_endpoint: _Optional[str] = ..., importer_server_name: _Optional[str] = ..., ca_certificate_pem: _Optional[str] = ..., import_token: _Optional[str] = ..., source_cloud: _Optional[str] = ..., source_region: _Optional[str] = ..., source_project_id: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., replication_record_id: _Optional[str] = ..., retry_seconds: _Optional[float] = ...) -> None: ...

class Command(_message.Message):
    __slots__ = ("task_id", "sync", "backup", "restore", "replicate")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    SYNC_FIELD_NUMBER: _ClassVar[int]
    BACKUP_FIELD_NUMBER: _ClassVar[int]
    RESTORE_FIELD_NUMBER: _ClassVar[int]
    IMPORT_FIELD_NUMBER: _ClassVar[int]
    REPLICATE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    sync: SyncCommand
    backup: BackupCommand
    restore: RestoreCommand
    replicate: ReplicateCommand
    def __init__(self, task_id: _Optional[str] = ..., sync: _Optional[_Union[SyncCommand, _Mapping]] = ..., backup: _Optional[_Union[BackupCommand, _Mapping]] = ..., restore: _Optional[_Union[RestoreCommand, _Mapping]] = ..., replicate: _Optional[_Union[ReplicateCommand, _Mapping]] = ..., **kwargs) -> None: ...

class AbortImport(_message.Message):
    __slots__ = ("import_id",)
    IMPORT_ID_FIELD_NUMBER: _ClassVar[int]
    import_id: str
    def __init__(self, import_id: _Optional[str] = ...) -> None: ...

class CancelCommand(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class ConnectResponse(_message.Message):
    __slots__ = ("welcome", "command", "abort_import", "cancel")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ABORT_IMPORT_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    command: Command
    abort_import: AbortImport
    cancel: CancelCommand
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., command: _Optional[_Union[Command, _Mapping]] = ..., abort_import: _Optional[_Union[AbortImport, _Mapping]] = ..., cancel: _Optional[_Union[CancelCommand, _Mapping]] = ...) -> None: ...
