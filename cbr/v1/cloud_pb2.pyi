from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Region(_message.Message):
    __slots__ = ("id", "replication_supported")
    ID_FIELD_NUMBER: _ClassVar[int]
    REPLICATION_SUPPORTED_FIELD_NUMBER: _ClassVar[int]
    id: str
    replication_supported: bool
    def __init__(self, id: _Optional[str] = ..., replication_supported: _Optional[bool] = ...) -> None: ...

class Cloud(_message.Message):
    __slots__ = ("name", "region", "regions", "version", "ca_sha256")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CA_SHA256_FIELD_NUMBER: _ClassVar[int]
    name: str
    region: str
    regions: _containers.RepeatedCompositeFieldContainer[Region]
    version: str
    ca_sha256: str
    def __init__(self, name: _Optional[str] = ..., region: _Optional[str] = ..., regions: _Optional[_Iterable[_Union[Region, _Mapping]]] = ..., version: _Optional[str] = ..., ca_sha256: _Optional[str] = ...) -> None: ...

class GetCloudRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetCloudResponse(_message.Message):
    __slots__ = ("cloud",)
    CLOUD_FIELD_NUMBER: _ClassVar[int]
    cloud: Cloud
    def __init__(self, cloud: _Optional[_Union[Cloud, _Mapping]] = ...) -> None: ...
