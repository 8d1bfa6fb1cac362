import datetime

from cbr.v1 import cloud_pb2 as _cloud_pb2
from cbr.v1 import replication_pb2 as _replication_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListReplicationDestinationsRequest(_message.Message):
    __slots__ = ("credential_id",)
    CREDENTIAL_ID_FIELD_NUMBER: _ClassVar[int]
    credential_id: str
    def __init__(self, credential_id: _Optional[str] = ...) -> None: ...

class ListReplicationDestinationsResponse(_message.Message):
    __slots__ = ("target_cloud", "target_account_id", "regions", "vaults")
    TARGET_CLOUD_FIELD_NUMBER: _ClassVar[int]
    TARGET_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    VAULTS_FIELD_NUMBER: _ClassVar[int]
    target_cloud: str
    target_account_id: str
    regions: _containers.RepeatedCompositeFieldContainer[_cloud_pb2.Region]
    vaults: _containers.RepeatedCompositeFieldContainer[_replication_pb2.DestinationVault]
    def __init__(self, target_cloud: _Optional[str] = ..., target_account_id: _Optional[str] = ..., regions: _Optional[_Iterable[_Union[_cloud_pb2.Region, _Mapping]]] = ..., vaults: _Optional[_Iterable[_Union[_replication_pb2.DestinationVault, _Mapping]]] = ...) -> None: ...

class Credential(_message.Message):
    __slots__ = ("id", "name", "description", "target_cloud", "target_endpoint", "target_account_id", "access_key_id", "project_id", "created_at", "updated_at", "target_ca_sha256")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    TARGET_CLOUD_FIELD_NUMBER: _ClassVar[int]
    TARGET_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    TARGET_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    ACCESS_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    TARGET_CA_SHA256_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    description: str
    target_cloud: str
    target_endpoint: str
    target_account_id: str
    access_key_id: str
    project_id: str
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    target_ca_sha256: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., description: _Optional[str] = ..., target_cloud: _Optional[str] = ..., target_endpoint: _Optional[str] = ..., target_account_id: _Optional[str] = ..., access_key_id: _Optional[str] = ..., project_id: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., target_ca_sha256: _Optional[str] = ...) -> None: ...

class CreateCredentialRequest(_message.Message):
    __slots__ = ("name", "description", "target_cloud", "target_endpoint", "target_account_id", "access_key_id", "secret_access_key", "target_ca_certificate", "target_ca_sha256")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    TARGET_CLOUD_FIELD_NUMBER: _ClassVar[int]
    TARGET_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    TARGET_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    ACCESS_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SECRET_ACCESS_KEY_FIELD_NUMBER: _ClassVar[int]
    TARGET_CA_CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    TARGET_CA_SHA256_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    target_cloud: str
    target_endpoint: str
    target_account_id: str
    access_key_id: str
    secret_access_key: str
    target_ca_certificate: str
    target_ca_sha256: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., target_cloud: _Optional[str] = ..., target_endpoint: _Optional[str] = ..., target_account_id: _Optional[str] = ..., access_key_id: _Optional[str] = ..., secret_access_key: _Optional[str] = ..., target_ca_certificate: _Optional[str] = ..., target_ca_sha256: _Optional[str] = ...) -> None: ...

class CreateCredentialResponse(_message.Message):
    __slots__ = ("credential",)
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    credential: Credential
    def __init__(self, credential: _Optional[_Union[Credential, _Mapping]] = ...) -> None: ...

class GetCredentialRequest(_message.Message):
    __slots__ = ("credential_id",)
    CREDENTIAL_ID_FIELD_NUMBER: _ClassVar[int]
    credential_id: str
    def __init__(self, credential_id: _Optional[str] = ...) -> None: ...

class GetCredentialResponse(_message.Message):
    __slots__ = ("credential",)
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    credential: Credential
    def __init__(self, credential: _Optional[_Union[Credential, _Mapping]] = ...) -> None: ...

class ListCredentialsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "target_cloud")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TARGET_CLOUD_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    target_cloud: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., target_cloud: _Optional[str] = ...) -> None: ...

class ListCredentialsResponse(_message.Message):
    __slots__ = ("credentials", "next_page_token", "total_count")
    CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_COUNT_FIELD_NUMBER: _ClassVar[int]
    credentials: _containers.RepeatedCompositeFieldContainer[Credential]
    next_page_token: str
    total_count: int
    def __init__(self, credentials: _Optional[_Iterable[_Union[Credential, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., total_count: _Optional[int] = ...) -> None: ...

class UpdateCredentialRequest(_message.Message):
    __slots__ = ("credential_id", "name", "description", "target_endpoint", "access_key_id", "secret_access_key", "target_cloud", "target_account_id", "target_ca_certificate", "target_ca_sha256")
    CREDENTIAL_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    TARGET_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    ACCESS_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SECRET_ACCESS_KEY_FIELD_NUMBER: _ClassVar[int]
    TARGET_CLOUD_FIELD_NUMBER: _ClassVar[int]
    TARGET_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_CA_CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    TARGET_CA_SHA256_FIELD_NUMBER: _ClassVar[int]
    credential_id: str
    name: str
    description: str
    target_endpoint: str
    access_key_id: str
    secret_access_key: str
    target_cloud: str
    target_account_id: str
    target_ca_certificate: str
    target_ca_sha256: str
    def __init__(self, credential_id: _Optional[str] = ..., name: _Optional[str] = ..., description: _Optional[str] = ..., target_endpoint: _Optional[str] = ..., access_key_id: _Optional[str] = ..., secret_access_key: _Optional[str] = ..., target_cloud: _Optional[str] = ..., target_account_id: _Optional[str] = ..., target_ca_certificate: _Optional[str] = ..., target_ca_sha256: _Optional[str] = ...) -> None: ...

class UpdateCredentialResponse(_message.Message):
    __slots__ = ("credential",)
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    credential: Credential
    def __init__(self, credential: _Optional[_Union[Credential, _Mapping]] = ...) -> None: ...

class DeleteCredentialRequest(_message.Message):
    __slots__ = ("credential_id",)
    CREDENTIAL_ID_FIELD_NUMBER: _ClassVar[int]
    credential_id: str
    def __init__(self, credential_id: _Optional[str] = ...) -> None: ...

class DeleteCredentialResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
