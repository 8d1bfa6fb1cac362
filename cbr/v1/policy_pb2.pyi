import datetime

from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PolicyOperationType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POLICY_OPERATION_TYPE_UNSPECIFIED: _ClassVar[PolicyOperationType]
    POLICY_OPERATION_TYPE_BACKUP: _ClassVar[PolicyOperationType]
    POLICY_OPERATION_TYPE_REPLICATION: _ClassVar[PolicyOperationType]
    POLICY_OPERATION_TYPE_VERIFY: _ClassVar[PolicyOperationType]
    POLICY_OPERATION_TYPE_PRUNE: _ClassVar[PolicyOperationType]
POLICY_OPERATION_TYPE_UNSPECIFIED: PolicyOperationType
POLICY_OPERATION_TYPE_BACKUP: PolicyOperationType
POLICY_OPERATION_TYPE_REPLICATION: PolicyOperationType
POLICY_OPERATION_TYPE_VERIFY: PolicyOperationType
POLICY_OPERATION_TYPE_PRUNE: PolicyOperationType

class OperationDefinition(_message.Message):
    __slots__ = ("max_backups", "retention_duration_days", "day_backups", "week_backups", "month_backups", "year_backups", "timezone", "destination_region", "destination_project_id", "full_backup_interval", "credential_id", "include_manual_backups", "read_data", "read_data_subset")
    MAX_BACKUPS_FIELD_NUMBER: _ClassVar[int]
    RETENTION_DURATION_DAYS_FIELD_NUMBER: _ClassVar[int]
    DAY_BACKUPS_FIELD_NUMBER: _ClassVar[int]
    WEEK_BACKUPS_FIELD_NUMBER: _ClassVar[int]
    MONTH_BACKUPS_FIELD_NUMBER: _ClassVar[int]
    YEAR_BACKUPS_FIELD_NUMBER: _ClassVar[int]
    TIMEZONE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_REGION_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    FULL_BACKUP_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_MANUAL_BACKUPS_FIELD_NUMBER: _ClassVar[int]
    READ_DATA_FIELD_NUMBER: _ClassVar[int]
    READ_DATA_SUBSET_FIELD_NUMBER: _ClassVar[int]
    max_backups: int
    retention_duration_days: int
    day_backups: int
    week_backups: int
    month_backups: int
    year_backups: int
    timezone: str
    destination_region: str
    destination_project_id: str
    full_backup_interval: int
    credential_id: str
    include_manual_backups: bool
    read_data: bool
    read_data_subset: str
    def __init__(self, max_backups: _Optional[int] = ..., retention_duration_days: _Optional[int] = ..., day_backups: _Optional[int] = ..., week_backups: _Optional[int] = ..., month_backups: _Optional[int] = ..., year_backups: _Optional[int] = ..., timezone: _Optional[str] = ..., destination_region: _Optional[str] = ..., destination_project_id: _Optional[str] = ..., full_backup_interval: _Optional[int] = ..., credential_id: _Optional[str] = ..., include_manual_backups: _Optional[bool] = ..., read_data: _Optional[bool] = ..., read_data_subset: _Optional[str] = ...) -> None: ...

class Trigger(_message.Message):
    __slots__ = ("pattern",)
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    pattern: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, pattern: _Optional[_Iterable[str]] = ...) -> None: ...

class Policy(_message.Message):
    __slots__ = ("id", "name", "operation_type", "enabled", "operation_definition", "trigger", "vault_ids", "project_id", "created_at", "updated_at", "next_run_times", "start_window_minutes", "completion_window_minutes")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    OPERATION_TYPE_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    OPERATION_DEFINITION_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    VAULT_IDS_FIELD_NUMBER: _ClassVar[int]
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    NEXT_RUN_TIMES_FIELD_NUMBER: _ClassVar[int]
    START_WINDOW_MINUTES_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_WINDOW_MINUTES_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    operation_type: PolicyOperationType
    enabled: bool
    operation_definition: OperationDefinition
    trigger: Trigger
    vault_ids: _containers.RepeatedScalarFieldContainer[str]
    project_id: str
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    next_run_times: _containers.RepeatedCompositeFieldContainer[_timestamp_pb2.Timestamp]
    start_window_minutes: int
    completion_window_minutes: int
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., operation_type: _Optional[_Union[PolicyOperationType, str]] = ..., enabled: _Optional[bool] = ..., operation_definition: _Optional[_Union[OperationDefinition, _Mapping]] = ..., trigger: _Optional[_Union[Trigger, _Mapping]] = ..., vault_ids: _Optional[_Iterable[str]] = ..., project_id: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., next_run_times: _Optional[_Iterable[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]]] = ..., start_window_minutes: _Optional[int] = ..., completion_window_minutes: _Optional[int] = ...) -> None: ...

class CreatePolicyRequest(_message.Message):
    __slots__ = ("name", "operation_type", "enabled", "operation_definition", "trigger", "start_window_minutes", "completion_window_minutes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OPERATION_TYPE_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    OPERATION_DEFINITION_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    START_WINDOW_MINUTES_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_WINDOW_MINUTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    operation_type: PolicyOperationType
    enabled: bool
    operation_definition: OperationDefinition
    trigger: Trigger
    start_window_minutes: int
    completion_window_minutes: int
    def __init__(self, name: _Optional[str] = ..., operation_type: _Optional[_Union[PolicyOperationType, str]] = ..., enabled: _Optional[bool] = ..., operation_definition: _Optional[_Union[OperationDefinition, _Mapping]] = ..., trigger: _Optional[_Union[Trigger, _Mapping]] = ..., start_window_minutes: _Optional[int] = ..., completion_window_minutes: _Optional[int] = ...) -> None: ...

class CreatePolicyResponse(_message.Message):
    __slots__ = ("policy",)
    POLICY_FIELD_NUMBER: _ClassVar[int]
    policy: Policy
    def __init__(self, policy: _Optional[_Union[Policy, _Mapping]] = ...) -> None: ...

class GetPolicyRequest(_message.Message):
    __slots__ = ("policy_id",)
    POLICY_ID_FIELD_NUMBER: _ClassVar[int]
    policy_id: str
    def __init__(self, policy_id: _Optional[str] = ...) -> None: ...

class GetPolicyResponse(_message.Message):
    __slots__ = ("policy",)
    POLICY_FIELD_NUMBER: _ClassVar[int]
    policy: Policy
    def __init__(self, policy: _Optional[_Union[Policy, _Mapping]] = ...) -> None: ...

class ListPoliciesRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "operation_type", "vault_id")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    OPERATION_TYPE_FIELD_NUMBER: _ClassVar[int]
    VAULT_ID_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    operation_type: PolicyOperationType
    vault_id: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., operation_type: _Optional[_Union[PolicyOperationType, str]] = ..., vault_id: _Optional[str] = ...) -> None: ...

class ListPoliciesResponse(_message.Message):
    __slots__ = ("policies", "next_page_token", "total_count")
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_COUNT_FIELD_NUMBER: _ClassVar[int]
    policies: _containers.RepeatedCompositeFieldContainer[Policy]
    next_page_token: str
    total_count: int
    def __init__(self, policies: _Optional[_Iterable[_Union[Policy, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., total_count: _Optional[int] = ...) -> None: ...

class UpdatePolicyRequest(_message.Message):
    __slots__ = ("policy_id", "policy", "update_mask")
    POLICY_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    policy_id: str
    policy: Policy
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, policy_id: _Optional[str] = ..., policy: _Optional[_Union[Policy, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class UpdatePolicyResponse(_message.Message):
    __slots__ = ("policy",)
    POLICY_FIELD_NUMBER: _ClassVar[int]
    policy: Policy
    def __init__(self, policy: _Optional[_Union[Policy, _Mapping]] = ...) -> None: ...

class DeletePolicyRequest(_message.Message):
    __slots__ = ("policy_id",)
    POLICY_ID_FIELD_NUMBER: _ClassVar[int]
    policy_id: str
    def __init__(self, policy_id: _Optional[str] = ...) -> None: ...

class DeletePolicyResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RunPolicyNowRequest(_message.Message):
    __slots__ = ("policy_id",)
    POLICY_ID_FIELD_NUMBER: _ClassVar[int]
    policy_id: str
    def __init__(self, policy_id: _Optional[str] = ...) -> None: ...

class RunPolicyNowResponse(_message.Message):
    __slots__ = ("checkpoint_ids", "task_ids")
    CHECKPOINT_IDS_FIELD_NUMBER: _ClassVar[int]
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    checkpoint_ids: _containers.RepeatedScalarFieldContainer[str]
    task_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, checkpoint_ids: _Optional[_Iterable[str]] = ..., task_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class PolicyRun(_message.Message):
    __slots__ = ("policy_id", "vault_id", "scheduled_at", "status", "manual", "full", "checkpoint_id", "detail", "task_id")
    POLICY_ID_FIELD_NUMBER: _ClassVar[int]
    VAULT_ID_FIELD_NUMBER: _ClassVar[int]
    SCHEDULED_AT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MANUAL_FIELD_NUMBER: _ClassVar[int]
    FULL_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    policy_id: str
    vault_id: str
    scheduled_at: _timestamp_pb2.Timestamp
    status: str
    manual: bool
    full: bool
    checkpoint_id: str
    detail: str
    task_id: str
    def __init__(self, policy_id: _Optional[str] = ..., vault_id: _Optional[str] = ..., scheduled_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., status: _Optional[str] = ..., manual: _Optional[bool] = ..., full: _Optional[bool] = ..., checkpoint_id: _Optional[str] = ..., detail: _Optional[str] = ..., task_id: _Optional[str] = ...) -> None: ...

class ListPolicyRunsRequest(_message.Message):
    __slots__ = ("policy_id", "page_size", "page_token", "newest_first")
    POLICY_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    NEWEST_FIRST_FIELD_NUMBER: _ClassVar[int]
    policy_id: str
    page_size: int
    page_token: str
    newest_first: bool
    def __init__(self, policy_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., newest_first: _Optional[bool] = ...) -> None: ...

class ListPolicyRunsResponse(_message.Message):
    __slots__ = ("runs", "next_page_token")
    RUNS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[PolicyRun]
    next_page_token: str
    def __init__(self, runs: _Optional[_Iterable[_Union[PolicyRun, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
