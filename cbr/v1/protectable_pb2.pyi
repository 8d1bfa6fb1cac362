import datetime

from cbr.v1 import common_pb2 as _common_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ProtectableStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROTECTABLE_STATUS_UNSPECIFIED: _ClassVar[ProtectableStatus]
    PROTECTABLE_STATUS_AVAILABLE: _ClassVar[ProtectableStatus]
    PROTECTABLE_STATUS_ERROR: _ClassVar[ProtectableStatus]
    PROTECTABLE_STATUS_UNREACHABLE: _ClassVar[ProtectableStatus]
    PROTECTABLE_STATUS_GONE: _ClassVar[ProtectableStatus]
PROTECTABLE_STATUS_UNSPECIFIED: ProtectableStatus
PROTECTABLE_STATUS_AVAILABLE: ProtectableStatus
PROTECTABLE_STATUS_ERROR: ProtectableStatus
PROTECTABLE_STATUS_UNREACHABLE: ProtectableStatus
PROTECTABLE_STATUS_GONE: ProtectableStatus

class ProtectableDisk(_message.Message):
    __slots__ = ("id", "name", "path", "size_bytes", "system_disk", "device_type")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_DISK_FIELD_NUMBER: _ClassVar[int]
    DEVICE_TYPE_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    path: str
    size_bytes: int
    system_disk: bool
    device_type: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., path: _Optional[str] = ..., size_bytes: _Optional[int] = ..., system_disk: _Optional[bool] = ..., device_type: _Optional[str] = ...) -> None: ...

class Protectable(_message.Message):
    __slots__ = ("id", "name", "type", "resource_type", "status", "size_bytes", "disks", "path", "agent_id", "agent_name", "agent_online", "vault_id", "tags", "status_message", "project_id", "created_at", "updated_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISKS_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_NAME_FIELD_NUMBER: _ClassVar[int]
    AGENT_ONLINE_FIELD_NUMBER: _ClassVar[int]
    VAULT_ID_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    STATUS_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    type: _common_pb2.ObjectType
    resource_type: str
    status: ProtectableStatus
    size_bytes: int
    disks: _containers.RepeatedCompositeFieldContainer[ProtectableDisk]
    path: str
    agent_id: str
    agent_name: str
    agent_online: bool
    vault_id: str
    tags: _containers.RepeatedCompositeFieldContainer[_common_pb2.Tag]
    status_message: str
    project_id: str
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., type: _Optional[_Union[_common_pb2.ObjectType, str]] = ..., resource_type: _Optional[str] = ..., status: _Optional[_Union[ProtectableStatus, str]] = ..., size_bytes: _Optional[int] = ..., disks: _Optional[_Iterable[_Union[ProtectableDisk, _Mapping]]] = ..., path: _Optional[str] = ..., agent_id: _Optional[str] = ..., agent_name: _Optional[str] = ..., agent_online: _Optional[bool] = ..., vault_id: _Optional[str] = ..., tags: _Optional[_Iterable[_Union[_common_pb2.Tag, _Mapping]]] = ..., status_message: _Optional[str] = ..., project_id: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListProtectablesRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "type", "agent_id", "name", "status", "protection")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PROTECTION_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    type: _common_pb2.ObjectType
    agent_id: str
    name: str
    status: ProtectableStatus
    protection: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., type: _Optional[_Union[_common_pb2.ObjectType, str]] = ..., agent_id: _Optional[str] = ..., name: _Optional[str] = ..., status: _Optional[_Union[ProtectableStatus, str]] = ..., protection: _Optional[str] = ...) -> None: ...

class ListProtectablesResponse(_message.Message):
    __slots__ = ("protectables", "next_page_token", "total_count")
    PROTECTABLES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_COUNT_FIELD_NUMBER: _ClassVar[int]
    protectables: _containers.RepeatedCompositeFieldContainer[Protectable]
    next_page_token: str
    total_count: int
    def __init__(self, protectables: _Optional[_Iterable[_Union[Protectable, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., total_count: _Optional[int] = ...) -> None: ...

class GetProtectableRequest(_message.Message):
    __slots__ = ("protectable_id",)
    PROTECTABLE_ID_FIELD_NUMBER: _ClassVar[int]
    protectable_id: str
    def __init__(self, protectable_id: _Optional[str] = ...) -> None: ...

class GetProtectableResponse(_message.Message):
    __slots__ = ("protectable",)
    PROTECTABLE_FIELD_NUMBER: _ClassVar[int]
    protectable: Protectable
    def __init__(self, protectable: _Optional[_Union[Protectable, _Mapping]] = ...) -> None: ...
