"""What a source user reads when the target cloud refuses a replication call."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from cbr import errors
from controller.jobs.replicator import calling_target


class _Refused(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    """A call the target refused, as grpcio hands it to the caller."""

    def __init__(self, err: errors.CbrError) -> None:
        info = error_details_pb2.ErrorInfo(reason=err.code, domain=errors.ERROR_DOMAIN,
                                           metadata=err.metadata)
        detail = any_pb2.Any()
        detail.Pack(info)
        self._status = status_pb2.Status(code=err.status.value[0], message=err.message,
                                         details=[detail])
        self._code = err.status

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._status.message

    def trailing_metadata(self) -> Any:
        return (("grpc-status-details-bin", self._status.SerializeToString()),)

    def initial_metadata(self) -> Any:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float:
        return 0.0

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Any) -> bool:
        return False


def test_a_missing_action_on_the_target_names_the_credentials_user_not_the_caller() -> None:
    """Issue 20: the source user read "The caller lacks the action ...", about
    a user of another cloud."""
    refusal = errors.PermissionDenied(
        "The caller lacks the action cbr:backups:import; grant it to the user.",
        action="cbr:backups:import")
    with pytest.raises(errors.PermissionDenied) as caught, calling_target("to-b", "b:7400"):
        raise _Refused(refusal)
    assert "user behind credential 'to-b'" in caught.value.message
    assert "cbr:backups:import" in caught.value.message
    assert "The caller" not in caught.value.message
    assert caught.value.metadata["action"] == "cbr:backups:import"


def test_other_refusals_of_the_target_come_back_as_they_are() -> None:
    refusal = errors.AlreadyReplicated("Backup b already has replica r in region-b.")
    with pytest.raises(errors.AlreadyReplicated, match="already has replica"), \
            calling_target("to-b", "b:7400"):
        raise _Refused(refusal)
