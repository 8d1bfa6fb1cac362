import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OperationType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OPERATION_TYPE_UNSPECIFIED: _ClassVar[OperationType]
    OPERATION_TYPE_BACKUP: _ClassVar[OperationType]
    OPERATION_TYPE_COPY: _ClassVar[OperationType]
    OPERATION_TYPE_REPLICATION: _ClassVar[OperationType]
    OPERATION_TYPE_RESTORE: _ClassVar[OperationType]
    OPERATION_TYPE_DELETE: _ClassVar[OperationType]
    OPERATION_TYPE_SYNC: _ClassVar[OperationType]
    OPERATION_TYPE_VAULT_DELETE: _ClassVar[OperationType]
    OPERATION_TYPE_REMOVE_RESOURCE: _ClassVar[OperationType]
    OPERATION_TYPE_VERIFY: _ClassVar[OperationType]
    OPERATION_TYPE_PRUNE: _ClassVar[OperationType]
    OPERATION_TYPE_REPAIR: _ClassVar[OperationType]

class TaskStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_STATUS_UNSPECIFIED: _ClassVar[TaskStatus]
    TASK_STATUS_WAITING: _ClassVar[TaskStatus]
    TASK_STATUS_RUNNING: _ClassVar[TaskStatus]
    TASK_STATUS_SUCCESS: _ClassVar[TaskStatus]
    TASK_STATUS_FAILED: _ClassVar[TaskStatus]
    TASK_STATUS_SKIPPED: _ClassVar[TaskStatus]
    TASK_STATUS_TIMEOUT: _ClassVar[TaskStatus]
    TASK_STATUS_CANCELLED: _ClassVar[TaskStatus]
OPERATION_TYPE_UNSPECIFIED: OperationType
OPERATION_TYPE_BACKUP: OperationType
OPERATION_TYPE_COPY: OperationType
OPERATION_TYPE_REPLICATION: OperationType
OPERATION_TYPE_RESTORE: OperationType
OPERATION_TYPE_DELETE: OperationType
OPERATION_TYPE_SYNC: OperationType
OPERATION_TYPE_VAULT_DELETE: OperationType
OPERATION_TYPE_REMOVE_RESOURCE: OperationType
OPERATION_TYPE_VERIFY: OperationType
OPERATION_TYPE_PRUNE: OperationType
OPERATION_TYPE_REPAIR: OperationType
TASK_STATUS_UNSPECIFIED: TaskStatus
TASK_STATUS_WAITING: TaskStatus
TASK_STATUS_RUNNING: TaskStatus
TASK_STATUS_SUCCESS: TaskStatus
TASK_STATUS_FAILED: TaskStatus
TASK_STATUS_SKIPPED: TaskStatus
TASK_STATUS_TIMEOUT: TaskStatus
TASK_STATUS_CANCELLED: TaskStatus

class TaskError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("id", "operation_type", "status", "progress", "checkpoint_id", "policy_id", "vault_id", "vault_name", "resource_id", "resource_name", "agent_id", "error_info", "extra_info", "project_id", "created_at", "started_at", "ended_at", "updated_at", "started_by_user_id", "started_by_access_key_id")
    class ExtraInfoEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    OPERATION_TYPE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_ID_FIELD_NUMBER: _ClassVar[int]
    VAULT_ID_FIELD_NUMBER: _ClassVar[int]
    VAULT_NAME_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_NAME_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_INFO_FIELD_NUMBER: _ClassVar[int]
    EXTRA_INFO_FIELD_NUMBER: _ClassVar[int]
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_BY_USER_ID_FIELD_NUMBER: _ClassVar[int]
    STARTED_BY_ACCESS_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    operation_type: OperationType
    status: TaskStatus
    progress: int
    checkpoint_id: str
    policy_id: str
    vault_id: str
    vault_name: str
    resource_id: str
    resource_name: str
    agent_id: str
    error_info: TaskError
    extra_info: _containers.ScalarMap[str, str]
    project_id: str
    created_at: _timestamp_pb2.Timestamp
    started_at: _timestamp_pb2.Timestamp
    ended_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    started_by_user_id: str
    started_by_access_key_id: str
    def __init__(self, id: _Optional[str] = ..., operation_type: _Optional[_Union[OperationType, str]] = ..., status: _Optional[_Union[TaskStatus, str]] = ..., progress: _Optional[int] = ..., checkpoint_id: _Optional[str] = ..., policy_id: _Optional[str] = ..., vault_id: _Optional[str] = ..., vault_name: _Optional[str] = ..., resource_id: _Optional[str] = ..., resource_name: _Optional[str] = ..., agent_id: _Optional[str] = ..., error_info: _Optional[_Union[TaskError, _Mapping]] = ..., extra_info: _Optional[_Mapping[str, str]] = ..., project_id: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ended_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_by_user_id: _Optional[str] = ..., started_by_access_key_id: _Optional[str] = ...) -> None: ...

class GetTaskRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class GetTaskResponse(_message.Message):
    __slots__ = ("task",)
    TASK_FIELD_NUMBER: _ClassVar[int]
    task: Task
    def __init__(self, task: _Optional[_Union[Task, _Mapping]] = ...) -> None: ...

class ListTasksRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "operation_type", "status", "vault_id", "resource_id", "checkpoint_id", "policy_id", "newest_first")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    OPERATION_TYPE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    VAULT_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_ID_FIELD_NUMBER: _ClassVar[int]
    NEWEST_FIRST_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    operation_type: OperationType
    status: TaskStatus
    vault_id: str
    resource_id: str
    checkpoint_id: str
    policy_id: str
    newest_first: bool
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., operation_type: _Optional[_Union[OperationType, str]] = ..., status: _Optional[_Union[TaskStatus, str]] = ..., vault_id: _Optional[str] = ..., resource_id: _Optional[str] = ..., checkpoint_id: _Optional[str] = ..., policy_id: _Optional[str] = ..., newest_first: _Optional[bool] = ...) -> None: ...

class ListTasksResponse(_message.Message):
    __slots__ = ("tasks", "next_page_token", "total_count")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_COUNT_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[Task]
    next_page_token: str
    total_count: int
    def __init__(self, tasks: _Optional[_Iterable[_Union[Task, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., total_count: _Optional[int] = ...) -> None: ...

class WatchTaskRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class WatchTaskResponse(_message.Message):
    __slots__ = ("task",)
    TASK_FIELD_NUMBER: _ClassVar[int]
    task: Task
    def __init__(self, task: _Optional[_Union[Task, _Mapping]] = ...) -> None: ...

class CancelTaskRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class CancelTaskResponse(_message.Message):
    __slots__ = ("task",)
    TASK_FIELD_NUMBER: _ClassVar[int]
    task: Task
    def __init__(self, task: _Optional[_Union[Task, _Mapping]] = ...) -> None: ...
