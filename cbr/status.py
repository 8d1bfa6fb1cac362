"""A ``CbrError`` as a gRPC status, the same for every server of the project
(the controller's API and agent streams, an importer's ImporterService): the
status code of its class, its message, and a ``google.rpc.ErrorInfo`` detail
whose reason is the CBR code (``cbr.client.error_from_rpc`` reads it back)."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from cbr import errors

# Trailers are bounded (8 KiB by default); an echo of a huge bad input must
# not turn a clear refusal into a RESOURCE_EXHAUSTED about headers.
MAX_MESSAGE_CHARS = 1024
MAX_METADATA_VALUE_CHARS = 128


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def status_of(err: errors.CbrError) -> grpc.Status:
    metadata = {k: _clip(v, MAX_METADATA_VALUE_CHARS) for k, v in err.metadata.items()}
    info = error_details_pb2.ErrorInfo(
        reason=err.code, domain=errors.ERROR_DOMAIN, metadata=metadata
    )
    detail = any_pb2.Any()
    detail.Pack(info)
    proto = status_pb2.Status(
        code=getattr(code_pb2, err.status.name),
        message=_clip(err.message, MAX_MESSAGE_CHARS), details=[detail]
    )
    return rpc_status.to_status(proto)
