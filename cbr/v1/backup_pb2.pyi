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

class ImageStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMAGE_STATUS_UNSPECIFIED: _ClassVar[ImageStatus]
    IMAGE_STATUS_CREATING: _ClassVar[ImageStatus]
    IMAGE_STATUS_AVAILABLE: _ClassVar[ImageStatus]
    IMAGE_STATUS_ERROR: _ClassVar[ImageStatus]

class BackupStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BACKUP_STATUS_UNSPECIFIED: _ClassVar[BackupStatus]
    BACKUP_STATUS_AVAILABLE: _ClassVar[BackupStatus]
    BACKUP_STATUS_PROTECTING: _ClassVar[BackupStatus]
    BACKUP_STATUS_DELETING: _ClassVar[BackupStatus]
    BACKUP_STATUS_RESTORING: _ClassVar[BackupStatus]
    BACKUP_STATUS_ERROR: _ClassVar[BackupStatus]
    BACKUP_STATUS_WAITING_PROTECT: _ClassVar[BackupStatus]
    BACKUP_STATUS_WAITING_DELETE: _ClassVar[BackupStatus]
    BACKUP_STATUS_WAITING_RESTORE: _ClassVar[BackupStatus]

class ImageType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMAGE_TYPE_UNSPECIFIED: _ClassVar[ImageType]
    IMAGE_TYPE_BACKUP: _ClassVar[ImageType]
    IMAGE_TYPE_REPLICATION: _ClassVar[ImageType]

class ChangeKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANGE_KIND_UNSPECIFIED: _ClassVar[ChangeKind]
    CHANGE_KIND_ADDED: _ClassVar[ChangeKind]
    CHANGE_KIND_REMOVED: _ClassVar[ChangeKind]
    CHANGE_KIND_MODIFIED: _ClassVar[ChangeKind]
IMAGE_STATUS_UNSPECIFIED: ImageStatus
IMAGE_STATUS_CREATING: ImageStatus
IMAGE_STATUS_AVAILABLE: ImageStatus
IMAGE_STATUS_ERROR: ImageStatus
BACKUP_STATUS_UNSPECIFIED: BackupStatus
BACKUP_STATUS_AVAILABLE: BackupStatus
BACKUP_STATUS_PROTECTING: BackupStatus
BACKUP_STATUS_DELETING: BackupStatus
BACKUP_STATUS_RESTORING: BackupStatus
BACKUP_STATUS_ERROR: BackupStatus
BACKUP_STATUS_WAITING_PROTECT: BackupStatus
BACKUP_STATUS_WAITING_DELETE: BackupStatus
BACKUP_STATUS_WAITING_RESTORE: BackupStatus
IMAGE_TYPE_UNSPECIFIED: ImageType
IMAGE_TYPE_BACKUP: ImageType
IMAGE_TYPE_REPLICATION: ImageType
CHANGE_KIND_UNSPECIFIED: ChangeKind
CHANGE_KIND_ADDED: ChangeKind
CHANGE_KIND_REMOVED: ChangeKind
CHANGE_KIND_MODIFIED: ChangeKind

class Image(_message.Message):
    __slots__ = ("id", "name", "description", "status", "backup_id", "disk_backup_id", "agent_id", "path", "size_bytes", "task_id", "source_backup_id", "source_cloud", "created_at", "updated_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    BACKUP_ID_FIELD_NUMBER: _ClassVar[int]
    DISK_BACKUP_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_BACKUP_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_CLOUD_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    description: str
    status: ImageStatus
    backup_id: str
    disk_backup_id: str
    agent_id: str
    path: str
    size_bytes: int
    task_id: str
    source_backup_id: str
    source_cloud: str
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., description: _Optional[str] = ..., status: _Optional[_Union[ImageStatus, str]] = ..., backup_id: _Optional[str] = ..., disk_backup_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., path: _Optional[str] = ..., size_bytes: _Optional[int] = ..., task_id: _Optional[str] = ..., source_backup_id: _Optional[str] = ..., source_cloud: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateImageRequest(_message.Message):
    __slots__ = ("backup_id", "name", "description", "target_agent_id", "target_path", "encrypted")
    BACKUP_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    TARGET_AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_PATH_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTED_FIELD_NUMBER: _ClassVar[int]
    backup_id: str
    name: str
    description: str
    target_agent_id: str
    target_path: str
    encrypted: bool
    def __init__(self, backup_id: _Optional[str] = ..., name: _Optional[str] = ..., description: _Optional[str] = ..., target_agent_id: _Optional[str] = ..., target_path: _Optional[str] = ..., encrypted: _Optional[bool] = ...) -> None: ...

class CreateImageResponse(_message.Message):
    __slots__ = ("image", "task_id")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    image: Image
    task_id: str
    def __init__(self, image: _Optional[_Union[Image, _Mapping]] = ..., task_id: _Optional[str] = ...) -> None: ...

class GetImageRequest(_message.Message):
    __slots__ = ("image_id",)
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    def __init__(self, image_id: _Optional[str] = ...) -> None: ...

class GetImageResponse(_message.Message):
    __slots__ = ("image",)
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    image: Image
    def __init__(self, image: _Optional[_Union[Image, _Mapping]] = ...) -> None: ...

class ListImagesRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "backup_id")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    BACKUP_ID_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    backup_id: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., backup_id: _Optional[str] = ...) -> None: ...

class ListImagesResponse(_message.Message):
    __slots__ = ("images", "next_page_token")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[Image]
    next_page_token: str
    def __init__(self, images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteImageRequest(_message.Message):
    __slots__ = ("image_id",)
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    def __init__(self, image_id: _Optional[str] = ...) -> None: ...

class DeleteImageResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BackupExtendInfo(_message.Message):
    __slots__ = ("auto_trigger", "contain_system_disk", "encrypted", "system_disk", "snapshot_id", "server_type", "app_consistent", "change_detection", "damaged", "damaged_at")
    AUTO_TRIGGER_FIELD_NUMBER: _ClassVar[int]
    CONTAIN_SYSTEM_DISK_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTED_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_DISK_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    SERVER_TYPE_FIELD_NUMBER: _ClassVar[int]
    APP_CONSISTENT_FIELD_NUMBER: _ClassVar[int]
    CHANGE_DETECTION_FIELD_NUMBER: _ClassVar[int]
    DAMAGED_FIELD_NUMBER: _ClassVar[int]
    DAMAGED_AT_FIELD_NUMBER: _ClassVar[int]
    auto_trigger: bool
    contain_system_disk: bool
    encrypted: bool
    system_disk: bool
    snapshot_id: str
    server_type: str
    app_consistent: bool
    change_detection: str
    damaged: str
    damaged_at: str
    def __init__(self, auto_trigger: _Optional[bool] = ..., contain_system_disk: _Optional[bool] = ..., encrypted: _Optional[bool] = ..., system_disk: _Optional[bool] = ..., snapshot_id: _Optional[str] = ..., server_type: _Optional[str] = ..., app_consistent: _Optional[bool] = ..., change_detection: _Optional[str] = ..., damaged: _Optional[str] = ..., damaged_at: _Optional[str] = ...) -> None: ...

class Backup(_message.Message):
    __slots__ = ("id", "name", "description", "checkpoint_id", "vault_id", "resource_id", "resource_name", "resource_type", "resource_size_bytes", "status", "image_type", "incremental", "parent_id", "children", "extend_info", "stored_bytes", "replication_record_ids", "project_id", "protected_at", "created_at", "expired_at", "updated_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    VAULT_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_NAME_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_TYPE_FIELD_NUMBER: _ClassVar[int]
    INCREMENTAL_FIELD_NUMBER: _ClassVar[int]
    PARENT_ID_FIELD_NUMBER: _ClassVar[int]
    CHILDREN_FIELD_NUMBER: _ClassVar[int]
    EXTEND_INFO_FIELD_NUMBER: _ClassVar[int]
    STORED_BYTES_FIELD_NUMBER: _ClassVar[int]
    REPLICATION_RECORD_IDS_FIELD_NUMBER: _ClassVar[int]
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    PROTECTED_AT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    description: str
    checkpoint_id: str
    vault_id: str
    resource_id: str
    resource_name: str
    resource_type: _common_pb2.ObjectType
    resource_size_bytes: int
    status: BackupStatus
    image_type: ImageType
    incremental: bool
    parent_id: str
    children: _containers.RepeatedCompositeFieldContainer[Backup]
    extend_info: BackupExtendInfo
    stored_bytes: int
    replication_record_ids: _containers.RepeatedScalarFieldContainer[str]
    project_id: str
    protected_at: _timestamp_pb2.Timestamp
    created_at: _timestamp_pb2.Timestamp
    expired_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., description: _Optional[str] = ..., checkpoint_id: _Optional[str] = ..., vault_id: _Optional[str] = ..., resource_id: _Optional[str] = ..., resource_name: _Optional[str] = ..., resource_type: _Optional[_Union[_common_pb2.ObjectType, str]] = ..., resource_size_bytes: _Optional[int] = ..., status: _Optional[_Union[BackupStatus, str]] = ..., image_type: _Optional[_Union[ImageType, str]] = ..., incremental: _Optional[bool] = ..., parent_id: _Optional[str] = ..., children: _Optional[_Iterable[_Union[Backup, _Mapping]]] = ..., extend_info: _Optional[_Union[BackupExtendInfo, _Mapping]] = ..., stored_bytes: _Optional[int] = ..., replication_record_ids: _Optional[_Iterable[str]] = ..., project_id: _Optional[str] = ..., protected_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expired_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SkippedResource(_message.Message):
    __slots__ = ("resource_id", "resource_name", "code", "reason")
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_NAME_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    resource_id: str
    resource_name: str
    code: str
    reason: str
    def __init__(self, resource_id: _Optional[str] = ..., resource_name: _Optional[str] = ..., code: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class Checkpoint(_message.Message):
    __slots__ = ("id", "vault_id", "name", "description", "status", "backup_ids", "task_ids", "skipped_resources", "auto_trigger", "policy_id", "created_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    VAULT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    BACKUP_IDS_FIELD_NUMBER: _ClassVar[int]
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_RESOURCES_FIELD_NUMBER: _ClassVar[int]
    AUTO_TRIGGER_FIELD_NUMBER: _ClassVar[int]
    POLICY_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    vault_id: str
    name: str
    description: str
    status: str
    backup_ids: _containers.RepeatedScalarFieldContainer[str]
    task_ids: _containers.RepeatedScalarFieldContainer[str]
    skipped_resources: _containers.RepeatedCompositeFieldContainer[SkippedResource]
    auto_trigger: bool
    policy_id: str
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., vault_id: _Optional[str] = ..., name: _Optional[str] = ..., description: _Optional[str] = ..., status: _Optional[str] = ..., backup_ids: _Optional[_Iterable[str]] = ..., task_ids: _Optional[_Iterable[str]] = ..., skipped_resources: _Optional[_Iterable[_Union[SkippedResource, _Mapping]]] = ..., auto_trigger: _Optional[bool] = ..., policy_id: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateCheckpointRequest(_message.Message):
    __slots__ = ("vault_id", "resource_ids", "name", "description", "full")
    VAULT_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_IDS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    FULL_FIELD_NUMBER: _ClassVar[int]
    vault_id: str
    resource_ids: _containers.RepeatedScalarFieldContainer[str]
    name: str
    description: str
    full: bool
    def __init__(self, vault_id: _Optional[str] = ..., resource_ids: _Optional[_Iterable[str]] = ..., name: _Optional[str] = ..., description: _Optional[str] = ..., full: _Optional[bool] = ...) -> None: ...

class CreateCheckpointResponse(_message.Message):
    __slots__ = ("checkpoint",)
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    checkpoint: Checkpoint
    def __init__(self, checkpoint: _Optional[_Union[Checkpoint, _Mapping]] = ...) -> None: ...

class GetCheckpointRequest(_message.Message):
    __slots__ = ("checkpoint_id",)
    CHECKPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    checkpoint_id: str
    def __init__(self, checkpoint_id: _Optional[str] = ...) -> None: ...

class GetCheckpointResponse(_message.Message):
    __slots__ = ("checkpoint",)
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    checkpoint: Checkpoint
    def __init__(self, checkpoint: _Optional[_Union[Checkpoint, _Mapping]] = ...) -> None: ...

class GetBackupRequest(_message.Message):
    __slots__ = ("backup_id",)
    BACKUP_ID_FIELD_NUMBER: _ClassVar[int]
    backup_id: str
    def __init__(self, backup_id: _Optional[str] = ...) -> None: ...

class GetBackupResponse(_message.Message):
    __slots__ = ("backup",)
    BACKUP_FIELD_NUMBER: _ClassVar[int]
    backup: Backup
    def __init__(self, backup: _Optional[_Union[Backup, _Mapping]] = ...) -> None: ...

class ListBackupsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "vault_id", "resource_id", "checkpoint_id", "status", "image_type", "resource_type", "name", "show_children", "newest_first")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    VAULT_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHOW_CHILDREN_FIELD_NUMBER: _ClassVar[int]
    NEWEST_FIRST_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    vault_id: str
    resource_id: str
    checkpoint_id: str
    status: BackupStatus
    image_type: ImageType
    resource_type: _common_pb2.ObjectType
    name: str
    show_children: bool
    newest_first: bool
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., vault_id: _Optional[str] = ..., resource_id: _Optional[str] = ..., checkpoint_id: _Optional[str] = ..., status: _Optional[_Union[BackupStatus, str]] = ..., image_type: _Optional[_Union[ImageType, str]] = ..., resource_type: _Optional[_Union[_common_pb2.ObjectType, str]] = ..., name: _Optional[str] = ..., show_children: _Optional[bool] = ..., newest_first: _Optional[bool] = ...) -> None: ...

class ListBackupsResponse(_message.Message):
    __slots__ = ("backups", "next_page_token", "total_count")
    BACKUPS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_COUNT_FIELD_NUMBER: _ClassVar[int]
    backups: _containers.RepeatedCompositeFieldContainer[Backup]
    next_page_token: str
    total_count: int
    def __init__(self, backups: _Optional[_Iterable[_Union[Backup, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., total_count: _Optional[int] = ...) -> None: ...

class UpdateBackupRequest(_message.Message):
    __slots__ = ("backup_id", "name", "description")
    BACKUP_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    backup_id: str
    name: str
    description: str
    def __init__(self, backup_id: _Optional[str] = ..., name: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class UpdateBackupResponse(_message.Message):
    __slots__ = ("backup",)
    BACKUP_FIELD_NUMBER: _ClassVar[int]
    backup: Backup
    def __init__(self, backup: _Optional[_Union[Backup, _Mapping]] = ...) -> None: ...

class DeleteBackupRequest(_message.Message):
    __slots__ = ("backup_id",)
    BACKUP_ID_FIELD_NUMBER: _ClassVar[int]
    backup_id: str
    def __init__(self, backup_id: _Optional[str] = ...) -> None: ...

class DeleteBackupResponse(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class RestoreBackupRequest(_message.Message):
    __slots__ = ("backup_id", "target_resource_id", "target_agent_id", "target_path", "mappings", "power_on", "source_path", "encrypted")
    class MappingsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    BACKUP_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_PATH_FIELD_NUMBER: _ClassVar[int]
    MAPPINGS_FIELD_NUMBER: _ClassVar[int]
    POWER_ON_FIELD_NUMBER: _ClassVar[int]
    SOURCE_PATH_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTED_FIELD_NUMBER: _ClassVar[int]
    backup_id: str
    target_resource_id: str
    target_agent_id: str
    target_path: str
    mappings: _containers.ScalarMap[str, str]
    power_on: bool
    source_path: str
    encrypted: bool
    def __init__(self, backup_id: _Optional[str] = ..., target_resource_id: _Optional[str] = ..., target_agent_id: _Optional[str] = ..., target_path: _Optional[str] = ..., mappings: _Optional[_Mapping[str, str]] = ..., power_on: _Optional[bool] = ..., source_path: _Optional[str] = ..., encrypted: _Optional[bool] = ...) -> None: ...

class RestoreBackupResponse(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class ListBackupFilesRequest(_message.Message):
    __slots__ = ("backup_id", "path")
    BACKUP_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    backup_id: str
    path: str
    def __init__(self, backup_id: _Optional[str] = ..., path: _Optional[str] = ...) -> None: ...

class BackupFile(_message.Message):
    __slots__ = ("name", "type", "size", "mode", "uid", "gid", "user", "group", "mtime", "target", "changed", "raw_name", "raw_target", "xattrs", "rdev")
    class XattrsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    MTIME_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    RAW_NAME_FIELD_NUMBER: _ClassVar[int]
    RAW_TARGET_FIELD_NUMBER: _ClassVar[int]
    XATTRS_FIELD_NUMBER: _ClassVar[int]
    RDEV_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    size: int
    mode: int
    uid: int
    gid: int
    user: str
    group: str
    mtime: _timestamp_pb2.Timestamp
    target: str
    changed: bool
    raw_name: bytes
    raw_target: bytes
    xattrs: _containers.ScalarMap[str, bytes]
    rdev: int
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., size: _Optional[int] = ..., mode: _Optional[int] = ..., uid: _Optional[int] = ..., gid: _Optional[int] = ..., user: _Optional[str] = ..., group: _Optional[str] = ..., mtime: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., target: _Optional[str] = ..., changed: _Optional[bool] = ..., raw_name: _Optional[bytes] = ..., raw_target: _Optional[bytes] = ..., xattrs: _Optional[_Mapping[str, bytes]] = ..., rdev: _Optional[int] = ...) -> None: ...

class ListBackupFilesResponse(_message.Message):
    __slots__ = ("files",)
    FILES_FIELD_NUMBER: _ClassVar[int]
    files: _containers.RepeatedCompositeFieldContainer[BackupFile]
    def __init__(self, files: _Optional[_Iterable[_Union[BackupFile, _Mapping]]] = ...) -> None: ...

class DiffBackupsRequest(_message.Message):
    __slots__ = ("backup_id", "other_backup_id", "path")
    BACKUP_ID_FIELD_NUMBER: _ClassVar[int]
    OTHER_BACKUP_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    backup_id: str
    other_backup_id: str
    path: str
    def __init__(self, backup_id: _Optional[str] = ..., other_backup_id: _Optional[str] = ..., path: _Optional[str] = ...) -> None: ...

class BackupChange(_message.Message):
    __slots__ = ("path", "raw_path", "kind", "type", "old_type", "changed", "old_size", "size")
    PATH_FIELD_NUMBER: _ClassVar[int]
    RAW_PATH_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    OLD_TYPE_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    OLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    path: str
    raw_path: bytes
    kind: ChangeKind
    type: str
    old_type: str
    changed: _containers.RepeatedScalarFieldContainer[str]
    old_size: int
    size: int
    def __init__(self, path: _Optional[str] = ..., raw_path: _Optional[bytes] = ..., kind: _Optional[_Union[ChangeKind, str]] = ..., type: _Optional[str] = ..., old_type: _Optional[str] = ..., changed: _Optional[_Iterable[str]] = ..., old_size: _Optional[int] = ..., size: _Optional[int] = ...) -> None: ...

class DiffSummary(_message.Message):
    __slots__ = ("added", "removed", "modified", "bytes_added", "bytes_removed", "content_by_metadata")
    ADDED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    MODIFIED_FIELD_NUMBER: _ClassVar[int]
    BYTES_ADDED_FIELD_NUMBER: _ClassVar[int]
    BYTES_REMOVED_FIELD_NUMBER: _ClassVar[int]
    CONTENT_BY_METADATA_FIELD_NUMBER: _ClassVar[int]
    added: int
    removed: int
    modified: int
    bytes_added: int
    bytes_removed: int
    content_by_metadata: bool
    def __init__(self, added: _Optional[int] = ..., removed: _Optional[int] = ..., modified: _Optional[int] = ..., bytes_added: _Optional[int] = ..., bytes_removed: _Optional[int] = ..., content_by_metadata: _Optional[bool] = ...) -> None: ...

class DiffBackupsResponse(_message.Message):
    __slots__ = ("changes", "summary")
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    changes: _containers.RepeatedCompositeFieldContainer[BackupChange]
    summary: DiffSummary
    def __init__(self, changes: _Optional[_Iterable[_Union[BackupChange, _Mapping]]] = ..., summary: _Optional[_Union[DiffSummary, _Mapping]] = ...) -> None: ...

class WalkBackupFilesRequest(_message.Message):
    __slots__ = ("backup_id", "path")
    BACKUP_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    backup_id: str
    path: str
    def __init__(self, backup_id: _Optional[str] = ..., path: _Optional[str] = ...) -> None: ...

class WalkBackupFilesResponse(_message.Message):
    __slots__ = ("directory", "raw_directory", "files", "continued", "entry")
    DIRECTORY_FIELD_NUMBER: _ClassVar[int]
    RAW_DIRECTORY_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    CONTINUED_FIELD_NUMBER: _ClassVar[int]
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    directory: str
    raw_directory: bytes
    files: _containers.RepeatedCompositeFieldContainer[BackupFile]
    continued: bool
    entry: BackupFile
    def __init__(self, directory: _Optional[str] = ..., raw_directory: _Optional[bytes] = ..., files: _Optional[_Iterable[_Union[BackupFile, _Mapping]]] = ..., continued: _Optional[bool] = ..., entry: _Optional[_Union[BackupFile, _Mapping]] = ...) -> None: ...
