import datetime

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
    __slots__ = ("page_size", "page_token", "vault_id", "source_backup_id", "destination_region", "status")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    VAULT_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_BACKUP_ID_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_REGION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    vault_id: str
    source_backup_id: str
    destination_region: str
    status: ReplicationStatus
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., vault_id: _Optional[str] = ..., source_backup_id: _Optional[str] = ..., destination_region: _Optional[str] = ..., status: _Optional[_Union[ReplicationStatus, str]] = ...) -> None: ...

class ListReplicationRecordsResponse(_message.Message):
    __slots__ = ("replication_records", "next_page_token", "total_count")
    REPLICATION_RECORDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_COUNT_FIELD_NUMBER: _ClassVar[int]
    replication_records: _containers.RepeatedCompositeFieldContainer[ReplicationRecord]
    next_page_token: str
    total_count: int
    def __init__(self, replication_records: _Optional[_Iterable[_Union[ReplicationRecord, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., total_count: _Optional[int] = ...) -> None: ...
