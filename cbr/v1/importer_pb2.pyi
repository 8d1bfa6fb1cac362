from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ImportRequest(_message.Message):
    __slots__ = ("open", "query", "chunks", "commit")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    open: ImportOpen
    query: ChunkQuery
    chunks: ChunkBatch
    commit: ImportCommit
    def __init__(self, open: _Optional[_Union[ImportOpen, _Mapping]] = ..., query: _Optional[_Union[ChunkQuery, _Mapping]] = ..., chunks: _Optional[_Union[ChunkBatch, _Mapping]] = ..., commit: _Optional[_Union[ImportCommit, _Mapping]] = ...) -> None: ...

class ImportOpen(_message.Message):
    __slots__ = ("import_token", "source_vault_id", "chunk_key_id", "chunk_key")
    IMPORT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    SOURCE_VAULT_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNK_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNK_KEY_FIELD_NUMBER: _ClassVar[int]
    import_token: str
    source_vault_id: str
    chunk_key_id: bytes
    chunk_key: bytes
    def __init__(self, import_token: _Optional[str] = ..., source_vault_id: _Optional[str] = ..., chunk_key_id: _Optional[bytes] = ..., chunk_key: _Optional[bytes] = ...) -> None: ...

class ChunkQuery(_message.Message):
    __slots__ = ("chunk_key_id", "chunk_ids")
    CHUNK_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNK_IDS_FIELD_NUMBER: _ClassVar[int]
    chunk_key_id: bytes
    chunk_ids: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, chunk_key_id: _Optional[bytes] = ..., chunk_ids: _Optional[_Iterable[bytes]] = ...) -> None: ...

class WireChunk(_message.Message):
    __slots__ = ("blob_type", "chunk_id", "raw_length", "compressed", "body")
    BLOB_TYPE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_ID_FIELD_NUMBER: _ClassVar[int]
    RAW_LENGTH_FIELD_NUMBER: _ClassVar[int]
    COMPRESSED_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    blob_type: int
    chunk_id: bytes
    raw_length: int
    compressed: bool
    body: bytes
    def __init__(self, blob_type: _Optional[int] = ..., chunk_id: _Optional[bytes] = ..., raw_length: _Optional[int] = ..., compressed: _Optional[bool] = ..., body: _Optional[bytes] = ...) -> None: ...

class ChunkBatch(_message.Message):
    __slots__ = ("chunk_key_id", "chunks")
    CHUNK_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    chunk_key_id: bytes
    chunks: _containers.RepeatedCompositeFieldContainer[WireChunk]
    def __init__(self, chunk_key_id: _Optional[bytes] = ..., chunks: _Optional[_Iterable[_Union[WireChunk, _Mapping]]] = ...) -> None: ...

class ImportCommit(_message.Message):
    __slots__ = ("manifests",)
    MANIFESTS_FIELD_NUMBER: _ClassVar[int]
    manifests: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, manifests: _Optional[_Iterable[bytes]] = ...) -> None: ...

class ImportResponse(_message.Message):
    __slots__ = ("opened", "missing", "stored", "committed")
    OPENED_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_FIELD_NUMBER: _ClassVar[int]
    opened: ImportOpened
    missing: ChunkQueryResult
    stored: ChunkBatchStored
    committed: ImportCommitted
    def __init__(self, opened: _Optional[_Union[ImportOpened, _Mapping]] = ..., missing: _Optional[_Union[ChunkQueryResult, _Mapping]] = ..., stored: _Optional[_Union[ChunkBatchStored, _Mapping]] = ..., committed: _Optional[_Union[ImportCommitted, _Mapping]] = ...) -> None: ...

class ImportOpened(_message.Message):
    __slots__ = ("target_vault_id",)
    TARGET_VAULT_ID_FIELD_NUMBER: _ClassVar[int]
    target_vault_id: str
    def __init__(self, target_vault_id: _Optional[str] = ...) -> None: ...

class ChunkQueryResult(_message.Message):
    __slots__ = ("chunk_ids",)
    CHUNK_IDS_FIELD_NUMBER: _ClassVar[int]
    chunk_ids: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, chunk_ids: _Optional[_Iterable[bytes]] = ...) -> None: ...

class ChunkBatchStored(_message.Message):
    __slots__ = ("stored_bytes",)
    STORED_BYTES_FIELD_NUMBER: _ClassVar[int]
    stored_bytes: int
    def __init__(self, stored_bytes: _Optional[int] = ...) -> None: ...

class ImportCommitted(_message.Message):
    __slots__ = ("backup_ids", "manifest_sha256")
    class ManifestSha256Entry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    BACKUP_IDS_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_SHA256_FIELD_NUMBER: _ClassVar[int]
    backup_ids: _containers.RepeatedScalarFieldContainer[str]
    manifest_sha256: _containers.ScalarMap[str, str]
    def __init__(self, backup_ids: _Optional[_Iterable[str]] = ..., manifest_sha256: _Optional[_Mapping[str, str]] = ...) -> None: ...
