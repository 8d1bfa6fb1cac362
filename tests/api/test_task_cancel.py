"""TaskService.CancelTask over the wire: statuses, CBR codes, accounts."""

from __future__ import annotations

import grpc

from cbr import errors
from cbr.client import Client
from cbr.v1 import agent_pb2, iam_pb2, task_pb2
from controller.persistence.vocabulary import OperationType
from controller.services import tasks
from tests.api.test_bad_input import refused
from tests.support.inproc import RunningController


def _task(api: RunningController, operation: OperationType, *, command: bool) -> str:
    with api.app.db.begin() as session:
        return tasks.create_task(
            session, project_id=api.account_id, operation_type=operation,
            now=api.app.clock.now(), agent_id="agent-1" if command else "",
            command=agent_pb2.Command(sync=agent_pb2.SyncCommand()) if command else None).id


def test_a_waiting_task_is_cancelled_and_then_refused_as_already_ended(
        api: RunningController) -> None:
    client = api.client()
    task_id = _task(api, OperationType.SYNC, command=True)
    task = client.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=task_id)).task
    assert task.status == task_pb2.TASK_STATUS_CANCELLED
    assert task.error_info.code == errors.TaskCancelled.code
    listed = client.tasks.ListTasks(task_pb2.ListTasksRequest(
        status=task_pb2.TASK_STATUS_CANCELLED)).tasks
    assert [t.id for t in listed] == [task_id]
    status, code, details = refused(client.tasks.CancelTask,
                                    task_pb2.CancelTaskRequest(task_id=task_id))
    assert (status, code) == (grpc.StatusCode.FAILED_PRECONDITION,
                              errors.TaskAlreadyFinished.code)
    assert "already ended cancelled" in details


def test_the_controllers_own_tasks_are_refused_as_not_cancellable(
        api: RunningController) -> None:
    task_id = _task(api, OperationType.PRUNE, command=False)
    status, code, details = refused(api.client().tasks.CancelTask,
                                    task_pb2.CancelTaskRequest(task_id=task_id))
    assert (status, code) == (grpc.StatusCode.FAILED_PRECONDITION,
                              errors.TaskNotCancellable.code)
    assert "prune task" in details


def test_another_accounts_task_is_not_found_and_stays_as_it_was(
        api: RunningController) -> None:
    admin = api.client()
    task_id = _task(api, OperationType.SYNC, command=True)
    made = admin.iam.CreateAccount(iam_pb2.CreateAccountRequest(
        name="other", admin_user_name="other-admin"))
    other = Client(api.endpoint, made.access_key.access_key_id,
                   made.access_key.secret_access_key, insecure=True)
    try:
        status, code, _ = refused(other.tasks.CancelTask,
                                  task_pb2.CancelTaskRequest(task_id=task_id))
    finally:
        other.close()
    assert (status, code) == (grpc.StatusCode.NOT_FOUND, errors.ResourceNotFound.code)
    task = admin.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task_id)).task
    assert task.status == task_pb2.TASK_STATUS_WAITING
