import datetime

from cbr.v1 import cloud_pb2 as _cloud_pb2
from cbr.v1 import common_pb2 as _common_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReplicationStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REPLICATION_STATUS_UNSPECIFIED: _ClassVar[ReplicationStatus]
    REPLICATION_STATUS_REPLICATING: _ClassVar[ReplicationStatus]
    REPLICATION_STATUS_SUCCESS: _ClassVar[ReplicationStatus]
    REPLICATION_STATUS_FAIL: _ClassVar[ReplicationStatus]
    REPLICATION_STATUS_SKIP: _ClassVar[ReplicationStatus]
    REPLICATION_STATUS_WAITING_REPLICATE: _ClassVar[ReplicationStatus]
REPLICATION_STATUS_UNSPECIFIED: ReplicationStatus
REPLICATION_STATUS_REPLICATING: ReplicationStatus
REPLICATION_STATUS_SUCCESS: ReplicationStatus
REPLICATION_STATUS_FAIL: ReplicationStatus
REPLICATION_STATUS_SKIP: ReplicationStatus
REPLICATION_STATUS_WAITING_REPLICATE: ReplicationStatus

class ReplicationRecord(_message.Message):
    __slots__ = ("id", "status", "source_region", "source_project_id", "source_backup_id", "source_checkpoint_id", "destination_region", "destination_project_id", "destination_vault_id", "destination_backup_id", "destination_checkpoint_id", "vault_id", "progress", "fail_code", "fail_reason", "auto_trigger", "created_at", "updated_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_REGION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_BACKUP_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_CHECKPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_REGION_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_VAULT_ID_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_BACKUP_ID_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_CHECKPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    VAULT_ID_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    FAIL_CODE_FIELD_NUMBER: _ClassVar[int]
    FAIL_REASON_FIELD_NUMBER: _ClassVar[int]
    AUTO_TRIGGER_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    status: ReplicationStatus
    source_region: str
    source_project_id: str
    source_backup_id: str
    source_checkpoint_id: str
    destination_region: str
    destination_project_id: str
    destination_vault_id: str
    destination_backup_id: str
    destination_checkpoint_id: str
    vault_id: str
    progress: int
    fail_code: str
    fail_reason: str
    auto_trigger: bool
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., status: _Optional[_Union[ReplicationStatus, str]] = ..., source_region: _Optional[str] = ..., source_project_id: _Optional[str] = ..., source_backup_id: _Optional[str] = ..., source_checkpoint_id: _Optional[str] = ..., destination_region: _Optional[str] = ..., destination_project_id: _Optional[str] = ..., destination_vault_id: _Optional[str] = ..., destination_backup_id: _Optional[str] = ..., destination_checkpoint_id: _Optional[str] = ..., vault_id: _Optional[str] = ..., progress: _Optional[int] = ..., fail_code: _Optional[str] = ..., fail_reason: _Optional[str] = ..., auto_trigger: _Optional[bool] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ReplicateBackupRequest(_message.Message):
    __slots__ = ("backup_id", "credential_id", "destination_region", "destination_project_id", "destination_vault_id", "name", "description")
    BACKUP_ID_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_ID_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_REGION_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_VAULT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    backup_id: str
    credential_id: str
    destination_region: str
    destination_project_id: str
    destination_vault_id: str
    name: str
    description: str
    def __init__(self, backup_id: _Optional[str] = ..., credential_id: _Optional[str] = ..., destination_region: _Optional[str] = ..., destination_project_id: _Optional[str] = ..., destination_vault_id: _Optional[str] = ..., name: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class ReplicateBackupResponse(_message.Message):
    __slots__ = ("task_id", "replication_record_id")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    REPLICATION_RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    replication_record_id: str
    def __init__(self, task_id: _Optional[str] = ..., replication_record_id: _Optional[str] = ...) -> None: ...

class ReplicateVaultRequest(_message.Message):
    __slots__ = ("vault_id", "credential_id", "destination_region", "destination_project_id", "destination_vault_id")
    VAULT_ID_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_ID_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_REGION_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_VAULT_ID_FIELD_NUMBER: _ClassVar[int]
    vault_id: str
    credential_id: str
    destination_region: str
    destination_project_id: str
    destination_vault_id: str
    def __init__(self, vault_id: _Optional[str] = ..., credential_id: _Optional[str] = ..., destination_region: _Optional[str] = ..., destination_project_id: _Optional[str] = ..., destination_vault_id: _Optional[str] = ...) -> None: ...

class ReplicateVaultResponse(_message.Message):
    __slots__ = ("task_ids",)
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    task_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, task_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetReplicationRecordRequest(_message.Message):
    __slots__ = ("replication_record_id",)
    REPLICATION_RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    replication_record_id: str
    def __init__(self, replication_record_id: _Optional[str] = ...) -> None: ...

class GetReplicationRecordResponse(_message.Message):
    __slots__ = ("replication_record",)
    REPLICATION_RECORD_FIELD_NUMBER: _ClassVar[int]
    replication_record: ReplicationRecord
    def __init__(self, replication_record: _Optional[_Union[ReplicationRecord, _Mapping]] = ...) -> None: ...

class ListReplicationRecordsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "vault_id", "source_backup_id", "destination_region", "status", "newest_first")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    VAULT_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_BACKUP_ID_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_REGION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    NEWEST_FIRST_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    vault_id: str
    source_backup_id: str
    destination_region: str
    status: ReplicationStatus
    newest_first: bool
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., vault_id: _Optional[str] = ..., source_backup_id: _Optional[str] = ..., destination_region: _Optional[str] = ..., status: _Optional[_Union[ReplicationStatus, str]] = ..., newest_first: _Optional[bool] = ...) -> None: ...

class ListReplicationRecordsResponse(_message.Message):
    __slots__ = ("replication_records", "next_page_token", "total_count")
    REPLICATION_RECORDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_COUNT_FIELD_NUMBER: _ClassVar[int]
    replication_records: _containers.RepeatedCompositeFieldContainer[ReplicationRecord]
    next_page_token: str
    total_count: int
    def __init__(self, replication_records: _Optional[_Iterable[_Union[ReplicationRecord, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., total_count: _Optional[int] = ...) -> None: ...

class CheckReplicationAccessRequest(_message.Message):
    __slots__ = ("destination_region",)
    DESTINATION_REGION_FIELD_NUMBER: _ClassVar[int]
    destination_region: str
    def __init__(self, destination_region: _Optional[str] = ...) -> None: ...

class CheckReplicationAccessResponse(_message.Message):
    __slots__ = ("cloud", "account_id", "user_id", "region_supported", "regions", "vaults")
    CLOUD_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    REGION_SUPPORTED_FIELD_NUMBER: _ClassVar[int]
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    VAULTS_FIELD_NUMBER: _ClassVar[int]
    cloud: str
    account_id: str
    user_id: str
    region_supported: bool
    regions: _containers.RepeatedCompositeFieldContainer[_cloud_pb2.Region]
    vaults: _containers.RepeatedCompositeFieldContainer[DestinationVault]
    def __init__(self, cloud: _Optional[str] = ..., account_id: _Optional[str] = ..., user_id: _Optional[str] = ..., region_supported: _Optional[bool] = ..., regions: _Optional[_Iterable[_Union[_cloud_pb2.Region, _Mapping]]] = ..., vaults: _Optional[_Iterable[_Union[DestinationVault, _Mapping]]] = ...) -> None: ...

class DestinationVault(_message.Message):
    __slots__ = ("id", "name", "object_type", "size_gb", "used_bytes")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    OBJECT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SIZE_GB_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    object_type: _common_pb2.ObjectType
    size_gb: int
    used_bytes: int
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., object_type: _Optional[_Union[_common_pb2.ObjectType, str]] = ..., size_gb: _Optional[int] = ..., used_bytes: _Optional[int] = ...) -> None: ...

class ImportedBackup(_message.Message):
    __slots__ = ("source_backup_id", "name", "description", "resource_id", "resource_name", "resource_type", "resource_size_bytes", "system_disk", "incremental", "protected_at", "children")
    SOURCE_BACKUP_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_NAME_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_DISK_FIELD_NUMBER: _ClassVar[int]
    INCREMENTAL_FIELD_NUMBER: _ClassVar[int]
    PROTECTED_AT_FIELD_NUMBER: _ClassVar[int]
    CHILDREN_FIELD_NUMBER: _ClassVar[int]
    source_backup_id: str
    name: str
    description: str
    resource_id: str
    resource_name: str
    resource_type: str
    resource_size_bytes: int
    system_disk: bool
    incremental: bool
    protected_at: _timestamp_pb2.Timestamp
    children: _containers.RepeatedCompositeFieldContainer[ImportedBackup]
    def __init__(self, source_backup_id: _Optional[str] = ..., name: _Optional[str] = ..., description: _Optional[str] = ..., resource_id: _Optional[str] = ..., resource_name: _Optional[str] = ..., resource_type: _Optional[str] = ..., resource_size_bytes: _Optional[int] = ..., system_disk: _Optional[bool] = ..., incremental: _Optional[bool] = ..., protected_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., children: _Optional[_Iterable[_Union[ImportedBackup, _Mapping]]] = ...) -> None: ...

class PrepareImportRequest(_message.Message):
    __slots__ = ("source_record_id", "source_cloud", "source_region", "source_project_id", "source_vault_id", "source_checkpoint_id", "destination_region", "destination_vault_id", "backup", "encrypted", "auto_trigger", "chunk_keys")
    SOURCE_RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_CLOUD_FIELD_NUMBER: _ClassVar[int]
    SOURCE_REGION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_VAULT_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_CHECKPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_REGION_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_VAULT_ID_FIELD_NUMBER: _ClassVar[int]
    BACKUP_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTED_FIELD_NUMBER: _ClassVar[int]
    AUTO_TRIGGER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_KEYS_FIELD_NUMBER: _ClassVar[int]
    source_record_id: str
    source_cloud: str
    source_region: str
    source_project_id: str
    source_vault_id: str
    source_checkpoint_id: str
    destination_region: str
    destination_vault_id: str
    backup: ImportedBackup
    encrypted: bool
    auto_trigger: bool
    chunk_keys: _containers.RepeatedCompositeFieldContainer[ChunkIdKey]
    def __init__(self, source_record_id: _Optional[str] = ..., source_cloud: _Optional[str] = ..., source_region: _Optional[str] = ..., source_project_id: _Optional[str] = ..., source_vault_id: _Optional[str] = ..., source_checkpoint_id: _Optional[str] = ..., destination_region: _Optional[str] = ..., destination_vault_id: _Optional[str] = ..., backup: _Optional[_Union[ImportedBackup, _Mapping]] = ..., encrypted: _Optional[bool] = ..., auto_trigger: _Optional[bool] = ..., chunk_keys: _Optional[_Iterable[_Union[ChunkIdKey, _Mapping]]] = ...) -> None: ...

class ChunkIdKey(_message.Message):
    __slots__ = ("key_id", "key")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    key_id: bytes
    key: bytes
    def __init__(self, key_id: _Optional[bytes] = ..., key: _Optional[bytes] = ...) -> None: ...

class PrepareImportResponse(_message.Message):
    __slots__ = ("import_id", "task_id", "destination_checkpoint_id", "replica_ids", "importer_endpoint", "importer_server_name", "ca_certificate_pem", "import_token", "expires_at", "destination_project_id")
    class ReplicaIdsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    IMPORT_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_CHECKPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    REPLICA_IDS_FIELD_NUMBER: _ClassVar[int]
    IMPORTER_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    IMPORTER_SERVER_NAME_FIELD_NUMBER: _ClassVar[int]
    CA_CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    IMPORT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    import_id: str
    task_id: str
    destination_checkpoint_id: str
    replica_ids: _containers.ScalarMap[str, str]
    importer_endpoint: str
    importer_server_name: str
    ca_certificate_pem: str
    import_token: str
    expires_at: _timestamp_pb2.Timestamp
    destination_project_id: str
    def __init__(self, import_id: _Optional[str] = ..., task_id: _Optional[str] = ..., destination_checkpoint_id: _Optional[str] = ..., replica_ids: _Optional[_Mapping[str, str]] = ..., importer_endpoint: _Optional[str] = ..., importer_server_name: _Optional[str] = ..., ca_certificate_pem: _Optional[str] = ..., import_token: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., destination_project_id: _Optional[str] = ...) -> None: ...

class GetImportRequest(_message.Message):
    __slots__ = ("import_id",)
    IMPORT_ID_FIELD_NUMBER: _ClassVar[int]
    import_id: str
    def __init__(self, import_id: _Optional[str] = ...) -> None: ...

class GetImportResponse(_message.Message):
    __slots__ = ("replication_record",)
    REPLICATION_RECORD_FIELD_NUMBER: _ClassVar[int]
    replication_record: ReplicationRecord
    def __init__(self, replication_record: _Optional[_Union[ReplicationRecord, _Mapping]] = ...) -> None: ...

class AbortImportRequest(_message.Message):
    __slots__ = ("import_id", "reason")
    IMPORT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    import_id: str
    reason: str
    def __init__(self, import_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class AbortImportResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetReplicationCapabilitiesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetReplicationCapabilitiesResponse(_message.Message):
    __slots__ = ("cloud", "regions")
    CLOUD_FIELD_NUMBER: _ClassVar[int]
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    cloud: str
    regions: _containers.RepeatedCompositeFieldContainer[_cloud_pb2.Region]
    def __init__(self, cloud: _Optional[str] = ..., regions: _Optional[_Iterable[_Union[_cloud_pb2.Region, _Mapping]]] = ...) -> None: ...
