"""Task state machine and keyset pagination."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from cbr import errors
from controller.app import App
from controller.persistence.models import Task
from controller.services import paging, tasks
from tests.state.conftest import NOW


def test_a_final_status_never_changes_again(app: App, project: str) -> None:
    with app.db.begin() as s:
        tid = tasks.create_task(s, project_id=project, operation_type="sync", now=NOW).id
    with app.db.begin() as s:
        assert tasks.report_progress(s, tid, 40, NOW) is not None
    with app.db.begin() as s:
        assert tasks.finish_task(s, tid, "success", NOW) is not None
    with app.db.begin() as s:
        assert tasks.finish_task(s, tid, "failed", NOW, error_code="x") is None
        assert tasks.report_progress(s, tid, 50, NOW) is None
        task = tasks.get_task(s, project, tid)
        assert (task.status, task.progress, task.error_code) == ("success", 100, "")
        assert task.started_at is not None and task.ended_at is not None


def test_progress_never_goes_backwards_or_reaches_100_before_the_end(app: App,
                                                                     project: str) -> None:
    with app.db.begin() as s:
        tid = tasks.create_task(s, project_id=project, operation_type="backup", now=NOW).id
        for p in (30, 10, 150):
            tasks.report_progress(s, tid, p, NOW)
        assert tasks.get_task(s, project, tid).progress == 99


def test_another_accounts_task_is_not_found(app: App, project: str) -> None:
    with app.db.begin() as s:
        tid = tasks.create_task(s, project_id=project, operation_type="sync", now=NOW).id
    with app.db.begin() as s, pytest.raises(errors.ResourceNotFound):
        tasks.get_task(s, "someone-else", tid)


def test_pages_cover_every_row_once_in_creation_order(app: App, project: str) -> None:
    with app.db.begin() as s:
        made = [tasks.create_task(s, project_id=project, operation_type="sync",
                                  now=NOW + dt.timedelta(seconds=i % 3)).id for i in range(25)]
    seen: list[str] = []
    token = ""
    while True:
        with app.db.begin() as s:
            items, token, total = paging.paginate(
                s, select(Task).where(Task.project_id == project), Task, 7, token)
        assert total == 25
        seen.extend(t.id for t in items)
        if not token:
            break
    assert sorted(seen) == sorted(made) and len(seen) == 25


@pytest.mark.parametrize("size", [-1, 1001])
def test_page_size_outside_limits_is_refused(size: int) -> None:
    with pytest.raises(errors.InvalidParameter, match="page_size"):
        paging.page_size(size)


def test_a_forged_page_token_is_refused(app: App, project: str) -> None:
    with app.db.begin() as s, pytest.raises(errors.InvalidParameter, match="page_token"):
        paging.paginate(s, select(Task), Task, 10, "not-a-token!!")
