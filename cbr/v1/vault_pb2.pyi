import datetime

from cbr.v1 import backup_pb2 as _backup_pb2
from cbr.v1 import common_pb2 as _common_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ProtectType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROTECT_TYPE_UNSPECIFIED: _ClassVar[ProtectType]
    PROTECT_TYPE_BACKUP: _ClassVar[ProtectType]
    PROTECT_TYPE_REPLICATION: _ClassVar[ProtectType]

class ConsistentLevel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONSISTENT_LEVEL_UNSPECIFIED: _ClassVar[ConsistentLevel]
    CONSISTENT_LEVEL_CRASH_CONSISTENT: _ClassVar[ConsistentLevel]
    CONSISTENT_LEVEL_APP_CONSISTENT: _ClassVar[ConsistentLevel]

class VaultStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VAULT_STATUS_UNSPECIFIED: _ClassVar[VaultStatus]
    VAULT_STATUS_AVAILABLE: _ClassVar[VaultStatus]
    VAULT_STATUS_LOCK: _ClassVar[VaultStatus]
    VAULT_STATUS_FROZEN: _ClassVar[VaultStatus]
    VAULT_STATUS_DELETING: _ClassVar[VaultStatus]
    VAULT_STATUS_ERROR: _ClassVar[VaultStatus]

class ProtectStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROTECT_STATUS_UNSPECIFIED: _ClassVar[ProtectStatus]
    PROTECT_STATUS_AVAILABLE: _ClassVar[ProtectStatus]
    PROTECT_STATUS_ERROR: _ClassVar[ProtectStatus]
    PROTECT_STATUS_PROTECTING: _ClassVar[ProtectStatus]
    PROTECT_STATUS_RESTORING: _ClassVar[ProtectStatus]
    PROTECT_STATUS_REMOVING: _ClassVar[ProtectStatus]
PROTECT_TYPE_UNSPECIFIED: ProtectType
PROTECT_TYPE_BACKUP: ProtectType
PROTECT_TYPE_REPLICATION: ProtectType
CONSISTENT_LEVEL_UNSPECIFIED: ConsistentLevel
CONSISTENT_LEVEL_CRASH_CONSISTENT: ConsistentLevel
CONSISTENT_LEVEL_APP_CONSISTENT: ConsistentLevel
VAULT_STATUS_UNSPECIFIED: VaultStatus
VAULT_STATUS_AVAILABLE: VaultStatus
VAULT_STATUS_LOCK: VaultStatus
VAULT_STATUS_FROZEN: VaultStatus
VAULT_STATUS_DELETING: VaultStatus
VAULT_STATUS_ERROR: VaultStatus
PROTECT_STATUS_UNSPECIFIED: ProtectStatus
PROTECT_STATUS_AVAILABLE: ProtectStatus
PROTECT_STATUS_ERROR: ProtectStatus
PROTECT_STATUS_PROTECTING: ProtectStatus
PROTECT_STATUS_RESTORING: ProtectStatus
PROTECT_STATUS_REMOVING: ProtectStatus

class Vault(_message.Message):
    __slots__ = ("id", "name", "description", "object_type", "protect_type", "consistent_level", "status", "size_gb", "used_bytes", "auto_expand", "threshold", "backup_name_prefix", "tags", "auto_bind", "bind_rules", "resources", "backup_policy_id", "replication_policy_id", "destination_vault_id", "project_id", "region", "created_at", "updated_at", "storage_url", "encrypted", "kms_key_id", "threshold_exceeded")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    OBJECT_TYPE_FIELD_NUMBER: _ClassVar[int]
    PROTECT_TYPE_FIELD_NUMBER: _ClassVar[int]
    CONSISTENT_LEVEL_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SIZE_GB_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    AUTO_EXPAND_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    BACKUP_NAME_PREFIX_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    AUTO_BIND_FIELD_NUMBER: _ClassVar[int]
    BIND_RULES_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    BACKUP_POLICY_ID_FIELD_NUMBER: _ClassVar[int]
    REPLICATION_POLICY_ID_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_VAULT_ID_FIELD_NUMBER: _ClassVar[int]
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    STORAGE_URL_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTED_FIELD_NUMBER: _ClassVar[int]
    KMS_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_EXCEEDED_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    description: str
    object_type: _common_pb2.ObjectType
    protect_type: ProtectType
    consistent_level: ConsistentLevel
    status: VaultStatus
    size_gb: int
    used_bytes: int
    auto_expand: bool
    threshold: int
    backup_name_prefix: str
    tags: _containers.RepeatedCompositeFieldContainer[_common_pb2.Tag]
    auto_bind: bool
    bind_rules: _containers.RepeatedCompositeFieldContainer[_common_pb2.Tag]
    resources: _containers.RepeatedCompositeFieldContainer[VaultResource]
    backup_policy_id: str
    replication_policy_id: str
    destination_vault_id: str
    project_id: str
    region: str
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    storage_url: str
    encrypted: bool
    kms_key_id: str
    threshold_exceeded: bool
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., description: _Optional[str] = ..., object_type: _Optional[_Union[_common_pb2.ObjectType, str]] = ..., protect_type: _Optional[_Union[ProtectType, str]] = ..., consistent_level: _Optional[_Union[ConsistentLevel, str]] = ..., status: _Optional[_Union[VaultStatus, str]] = ..., size_gb: _Optional[int] = ..., used_bytes: _Optional[int] = ..., auto_expand: _Optional[bool] = ..., threshold: _Optional[int] = ..., backup_name_prefix: _Optional[str] = ..., tags: _Optional[_Iterable[_Union[_common_pb2.Tag, _Mapping]]] = ..., auto_bind: _Optional[bool] = ..., bind_rules: _Optional[_Iterable[_Union[_common_pb2.Tag, _Mapping]]] = ..., resources: _Optional[_Iterable[_Union[VaultResource, _Mapping]]] = ..., backup_policy_id: _Optional[str] = ..., replication_policy_id: _Optional[str] = ..., destination_vault_id: _Optional[str] = ..., project_id: _Optional[str] = ..., region: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., storage_url: _Optional[str] = ..., encrypted: _Optional[bool] = ..., kms_key_id: _Optional[str] = ..., threshold_exceeded: _Optional[bool] = ...) -> None: ...

class VaultResource(_message.Message):
    __slots__ = ("id", "name", "type", "resource_type", "protect_status", "size_bytes", "backup_size_bytes", "backup_count", "exclude_volumes", "include_volumes", "last_backup_id", "last_backup_name", "last_backup_status", "last_backup_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    PROTECT_STATUS_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    BACKUP_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    BACKUP_COUNT_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_VOLUMES_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_VOLUMES_FIELD_NUMBER: _ClassVar[int]
    LAST_BACKUP_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_BACKUP_NAME_FIELD_NUMBER: _ClassVar[int]
    LAST_BACKUP_STATUS_FIELD_NUMBER: _ClassVar[int]
    LAST_BACKUP_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    type: _common_pb2.ObjectType
    resource_type: str
    protect_status: ProtectStatus
    size_bytes: int
    backup_size_bytes: int
    backup_count: int
    exclude_volumes: _containers.RepeatedScalarFieldContainer[str]
    include_volumes: _containers.RepeatedScalarFieldContainer[str]
    last_backup_id: str
    last_backup_name: str
    last_backup_status: _backup_pb2.BackupStatus
    last_backup_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., type: _Optional[_Union[_common_pb2.ObjectType, str]] = ..., resource_type: _Optional[str] = ..., protect_status: _Optional[_Union[ProtectStatus, str]] = ..., size_bytes: _Optional[int] = ..., backup_size_bytes: _Optional[int] = ..., backup_count: _Optional[int] = ..., exclude_volumes: _Optional[_Iterable[str]] = ..., include_volumes: _Optional[_Iterable[str]] = ..., last_backup_id: _Optional[str] = ..., last_backup_name: _Optional[str] = ..., last_backup_status: _Optional[_Union[_backup_pb2.BackupStatus, str]] = ..., last_backup_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateVaultRequest(_message.Message):
    __slots__ = ("name", "description", "object_type", "protect_type", "consistent_level", "size_gb", "auto_expand", "threshold", "backup_name_prefix", "tags", "auto_bind", "bind_rules", "resources", "backup_policy_id", "storage_url", "encrypted", "kms_key_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    OBJECT_TYPE_FIELD_NUMBER: _ClassVar[int]
    PROTECT_TYPE_FIELD_NUMBER: _ClassVar[int]
    CONSISTENT_LEVEL_FIELD_NUMBER: _ClassVar[int]
    SIZE_GB_FIELD_NUMBER: _ClassVar[int]
    AUTO_EXPAND_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    BACKUP_NAME_PREFIX_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    AUTO_BIND_FIELD_NUMBER: _ClassVar[int]
    BIND_RULES_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    BACKUP_POLICY_ID_FIELD_NUMBER: _ClassVar[int]
    STORAGE_URL_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTED_FIELD_NUMBER: _ClassVar[int]
    KMS_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    object_type: _common_pb2.ObjectType
    protect_type: ProtectType
    consistent_level: ConsistentLevel
    size_gb: int
    auto_expand: bool
    threshold: int
    backup_name_prefix: str
    tags: _containers.RepeatedCompositeFieldContainer[_common_pb2.Tag]
    auto_bind: bool
    bind_rules: _containers.RepeatedCompositeFieldContainer[_common_pb2.Tag]
    resources: _containers.RepeatedCompositeFieldContainer[ResourceSpec]
    backup_policy_id: str
    storage_url: str
    encrypted: bool
    kms_key_id: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., object_type: _Optional[_Union[_common_pb2.ObjectType, str]] = ..., protect_type: _Optional[_Union[ProtectType, str]] = ..., consistent_level: _Optional[_Union[ConsistentLevel, str]] = ..., size_gb: _Optional[int] = ..., auto_expand: _Optional[bool] = ..., threshold: _Optional[int] = ..., backup_name_prefix: _Optional[str] = ..., tags: _Optional[_Iterable[_Union[_common_pb2.Tag, _Mapping]]] = ..., auto_bind: _Optional[bool] = ..., bind_rules: _Optional[_Iterable[_Union[_common_pb2.Tag, _Mapping]]] = ..., resources: _Optional[_Iterable[_Union[ResourceSpec, _Mapping]]] = ..., backup_policy_id: _Optional[str] = ..., storage_url: _Optional[str] = ..., encrypted: _Optional[bool] = ..., kms_key_id: _Optional[str] = ...) -> None: ...

class ResourceSpec(_message.Message):
    __slots__ = ("id", "exclude_volumes", "include_volumes")
    ID_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_VOLUMES_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_VOLUMES_FIELD_NUMBER: _ClassVar[int]
    id: str
    exclude_volumes: _containers.RepeatedScalarFieldContainer[str]
    include_volumes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., exclude_volumes: _Optional[_Iterable[str]] = ..., include_volumes: _Optional[_Iterable[str]] = ...) -> None: ...

class CreateVaultResponse(_message.Message):
    __slots__ = ("vault",)
    VAULT_FIELD_NUMBER: _ClassVar[int]
    vault: Vault
    def __init__(self, vault: _Optional[_Union[Vault, _Mapping]] = ...) -> None: ...

class GetVaultRequest(_message.Message):
    __slots__ = ("vault_id",)
    VAULT_ID_FIELD_NUMBER: _ClassVar[int]
    vault_id: str
    def __init__(self, vault_id: _Optional[str] = ...) -> None: ...

class GetVaultResponse(_message.Message):
    __slots__ = ("vault",)
    VAULT_FIELD_NUMBER: _ClassVar[int]
    vault: Vault
    def __init__(self, vault: _Optional[_Union[Vault, _Mapping]] = ...) -> None: ...

class ListVaultsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "name", "object_type", "protect_type", "status", "policy_id", "resource_id")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    OBJECT_TYPE_FIELD_NUMBER: _ClassVar[int]
    PROTECT_TYPE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    POLICY_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    name: str
    object_type: _common_pb2.ObjectType
    protect_type: ProtectType
    status: VaultStatus
    policy_id: str
    resource_id: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., name: _Optional[str] = ..., object_type: _Optional[_Union[_common_pb2.ObjectType, str]] = ..., protect_type: _Optional[_Union[ProtectType, str]] = ..., status: _Optional[_Union[VaultStatus, str]] = ..., policy_id: _Optional[str] = ..., resource_id: _Optional[str] = ...) -> None: ...

class ListVaultsResponse(_message.Message):
    __slots__ = ("vaults", "next_page_token", "total_count")
    VAULTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_COUNT_FIELD_NUMBER: _ClassVar[int]
    vaults: _containers.RepeatedCompositeFieldContainer[Vault]
    next_page_token: str
    total_count: int
    def __init__(self, vaults: _Optional[_Iterable[_Union[Vault, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., total_count: _Optional[int] = ...) -> None: ...

class UpdateVaultRequest(_message.Message):
    __slots__ = ("vault_id", "vault", "update_mask")
    VAULT_ID_FIELD_NUMBER: _ClassVar[int]
    VAULT_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    vault_id: str
    vault: Vault
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, vault_id: _Optional[str] = ..., vault: _Optional[_Union[Vault, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class UpdateVaultResponse(_message.Message):
    __slots__ = ("vault",)
    VAULT_FIELD_NUMBER: _ClassVar[int]
    vault: Vault
    def __init__(self, vault: _Optional[_Union[Vault, _Mapping]] = ...) -> None: ...

class DeleteVaultRequest(_message.Message):
    __slots__ = ("vault_id",)
    VAULT_ID_FIELD_NUMBER: _ClassVar[int]
    vault_id: str
    def __init__(self, vault_id: _Optional[str] = ...) -> None: ...

class DeleteVaultResponse(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class AddVaultResourcesRequest(_message.Message):
    __slots__ = ("vault_id", "resources")
    VAULT_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    vault_id: str
    resources: _containers.RepeatedCompositeFieldContainer[ResourceSpec]
    def __init__(self, vault_id: _Optional[str] = ..., resources: _Optional[_Iterable[_Union[ResourceSpec, _Mapping]]] = ...) -> None: ...

class AddVaultResourcesResponse(_message.Message):
    __slots__ = ("add_resource_ids", "vault")
    ADD_RESOURCE_IDS_FIELD_NUMBER: _ClassVar[int]
    VAULT_FIELD_NUMBER: _ClassVar[int]
    add_resource_ids: _containers.RepeatedScalarFieldContainer[str]
    vault: Vault
    def __init__(self, add_resource_ids: _Optional[_Iterable[str]] = ..., vault: _Optional[_Union[Vault, _Mapping]] = ...) -> None: ...

class RemoveVaultResourcesRequest(_message.Message):
    __slots__ = ("vault_id", "resource_ids")
    VAULT_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_IDS_FIELD_NUMBER: _ClassVar[int]
    vault_id: str
    resource_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, vault_id: _Optional[str] = ..., resource_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class RemoveVaultResourcesResponse(_message.Message):
    __slots__ = ("remove_resource_ids", "task_ids")
    REMOVE_RESOURCE_IDS_FIELD_NUMBER: _ClassVar[int]
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    remove_resource_ids: _containers.RepeatedScalarFieldContainer[str]
    task_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, remove_resource_ids: _Optional[_Iterable[str]] = ..., task_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class AssociateVaultPolicyRequest(_message.Message):
    __slots__ = ("vault_id", "policy_id", "destination_vault_id")
    VAULT_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_ID_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_VAULT_ID_FIELD_NUMBER: _ClassVar[int]
    vault_id: str
    policy_id: str
    destination_vault_id: str
    def __init__(self, vault_id: _Optional[str] = ..., policy_id: _Optional[str] = ..., destination_vault_id: _Optional[str] = ...) -> None: ...

class AssociateVaultPolicyResponse(_message.Message):
    __slots__ = ("vault",)
    VAULT_FIELD_NUMBER: _ClassVar[int]
    vault: Vault
    def __init__(self, vault: _Optional[_Union[Vault, _Mapping]] = ...) -> None: ...

class DissociateVaultPolicyRequest(_message.Message):
    __slots__ = ("vault_id", "policy_id")
    VAULT_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_ID_FIELD_NUMBER: _ClassVar[int]
    vault_id: str
    policy_id: str
    def __init__(self, vault_id: _Optional[str] = ..., policy_id: _Optional[str] = ...) -> None: ...

class DissociateVaultPolicyResponse(_message.Message):
    __slots__ = ("vault",)
    VAULT_FIELD_NUMBER: _ClassVar[int]
    vault: Vault
    def __init__(self, vault: _Optional[_Union[Vault, _Mapping]] = ...) -> None: ...

class VerifyVaultRequest(_message.Message):
    __slots__ = ("vault_id", "read_data", "read_data_subset")
    VAULT_ID_FIELD_NUMBER: _ClassVar[int]
    READ_DATA_FIELD_NUMBER: _ClassVar[int]
    READ_DATA_SUBSET_FIELD_NUMBER: _ClassVar[int]
    vault_id: str
    read_data: bool
    read_data_subset: str
    def __init__(self, vault_id: _Optional[str] = ..., read_data: _Optional[bool] = ..., read_data_subset: _Optional[str] = ...) -> None: ...

class VerifyVaultResponse(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class ImportVaultStorageRequest(_message.Message):
    __slots__ = ("storage_url", "name", "size_gb", "kms_key_id")
    STORAGE_URL_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_GB_FIELD_NUMBER: _ClassVar[int]
    KMS_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    storage_url: str
    name: str
    size_gb: int
    kms_key_id: str
    def __init__(self, storage_url: _Optional[str] = ..., name: _Optional[str] = ..., size_gb: _Optional[int] = ..., kms_key_id: _Optional[str] = ...) -> None: ...

class ImportVaultStorageResponse(_message.Message):
    __slots__ = ("vault", "imported_backups", "warnings")
    VAULT_FIELD_NUMBER: _ClassVar[int]
    IMPORTED_BACKUPS_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    vault: Vault
    imported_backups: int
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, vault: _Optional[_Union[Vault, _Mapping]] = ..., imported_backups: _Optional[int] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class PruneVaultRequest(_message.Message):
    __slots__ = ("vault_id",)
    VAULT_ID_FIELD_NUMBER: _ClassVar[int]
    vault_id: str
    def __init__(self, vault_id: _Optional[str] = ...) -> None: ...

class PruneVaultResponse(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class RepairVaultRequest(_message.Message):
    __slots__ = ("vault_id", "dry_run")
    VAULT_ID_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    vault_id: str
    dry_run: bool
    def __init__(self, vault_id: _Optional[str] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class RepairVaultResponse(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...
