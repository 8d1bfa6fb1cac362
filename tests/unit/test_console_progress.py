"""How the console turns a task's reported counters into its progress bar,
and the overview's per-resource and per-region summaries."""

from __future__ import annotations

import datetime as dt

from google.protobuf.timestamp_pb2 import Timestamp

from cbr.v1 import replication_pb2, task_pb2
from console import formats, web
from console.views import overview

T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
MiB = 1 << 20


def _ts(at: dt.datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(at)
    return stamp


def _task(status: int, progress: int, info: dict[str, int], *, seconds: float,
          ended: bool = False) -> task_pb2.Task:
    task = task_pb2.Task(id="t1", status=status, progress=progress,  # type: ignore[arg-type]
                         extra_info={k: str(v) for k, v in info.items()},
                         started_at=_ts(T0), updated_at=_ts(T0 + dt.timedelta(seconds=seconds)))
    if ended:
        task.ended_at.CopyFrom(_ts(T0 + dt.timedelta(seconds=seconds)))
    return task


def test_a_running_backup_shows_bytes_scanned_of_total_its_rate_and_time_left() -> None:
    # What agent.dataplane.Progress.snapshot reports for a disk backup.
    task = _task(task_pb2.TASK_STATUS_RUNNING, 25,
                 {"bytes_total": 400 * MiB, "bytes_scanned": 100 * MiB, "bytes_read": 90 * MiB,
                  "bytes_sent": 50 * MiB, "bytes_new": 60 * MiB}, seconds=10)
    p = formats.progress(task)
    assert (p.percent, p.done, p.total, p.sent) == (25, 100 * MiB, 400 * MiB, 50 * MiB)
    assert p.rate_text == "10.0 MiB/s" and p.left == 30 and p.left_text == "30 s"
    assert not p.final and not p.estimated


def test_a_replication_without_a_byte_count_is_estimated_from_its_percent() -> None:
    # The replication source reports bytes_total and bytes_sent, and the percent of its walk.
    task = _task(task_pb2.TASK_STATUS_RUNNING, 40,
                 {"bytes_total": 100 * MiB, "bytes_sent": 7 * MiB, "chunks_sent": 3},
                 seconds=8)
    p = formats.progress(task)
    assert p.estimated and p.done == 40 * MiB and p.sent == 7 * MiB
    assert p.rate_text == "5.0 MiB/s" and p.left == 12


def test_an_importer_shows_what_arrived_without_a_total_or_time_left() -> None:
    task = _task(task_pb2.TASK_STATUS_RUNNING, 0,
                 {"bytes_stored": 3 * MiB, "chunks_received": 9}, seconds=3)
    p = formats.progress(task)
    assert (p.percent, p.done, p.total, p.left) == (0, 3 * MiB, 0, None)


def test_a_cancelled_task_shows_how_far_it_got_not_the_apis_final_100() -> None:
    task = _task(task_pb2.TASK_STATUS_CANCELLED, 100,
                 {"bytes_total": 400 * MiB, "bytes_scanned": 100 * MiB}, seconds=20, ended=True)
    p = formats.progress(task)
    assert p.final and p.percent == 25 and p.left is None
    assert p.rate_text == "5.0 MiB/s"  # to its end


def test_a_successful_task_is_complete_even_if_its_last_report_was_short() -> None:
    task = _task(task_pb2.TASK_STATUS_SUCCESS, 100,
                 {"bytes_total": 400 * MiB, "bytes_scanned": 390 * MiB}, seconds=40, ended=True)
    p = formats.progress(task)
    assert (p.percent, p.done) == (100, 400 * MiB)


def test_a_waiting_task_has_no_rate_or_time_left() -> None:
    task = task_pb2.Task(id="t1", status=task_pb2.TASK_STATUS_WAITING)
    p = formats.progress(task)
    assert (p.percent, p.done, p.rate, p.left) == (0, 0, 0.0, None)


def _fragment(task: task_pb2.Task, final: bool) -> str:
    return web.templates().get_template("_task_progress.html").render(
        task=task, final=final, swap_cancel=final)


def test_the_progress_fragment_of_a_running_task_names_its_figures() -> None:
    task = _task(task_pb2.TASK_STATUS_RUNNING, 25,
                 {"bytes_total": 400 * MiB, "bytes_scanned": 100 * MiB}, seconds=10)
    html = _fragment(task, final=False)
    assert '<progress max="100" value="25"' in html and "25%" in html
    assert "100.0 MiB of 400.0 MiB" in html and "10.0 MiB/s" in html and "30 s" in html
    assert "hx-swap-oob" not in html


def test_the_last_fragment_of_an_ended_task_removes_the_cancel_control() -> None:
    task = _task(task_pb2.TASK_STATUS_FAILED, 100, {}, seconds=1, ended=True)
    task.error_info.code, task.error_info.message = "BackupService.2006", "no <such> path"
    html = _fragment(task, final=True)
    assert 'id="task-cancel" hx-swap-oob="true"' in html
    assert "no &lt;such&gt; path" in html and "Time left" not in html


def test_replication_lag_is_the_age_of_the_oldest_pending_record_per_region() -> None:
    def record(region: str, minutes_ago: int) -> replication_pb2.ReplicationRecord:
        return replication_pb2.ReplicationRecord(
            destination_region=region,
            created_at=_ts(T0 - dt.timedelta(minutes=minutes_ago)))

    lags = overview.lag_by_region([record("eu", 5), record("us", 90), record("eu", 30)], T0)
    assert [(r.region, r.pending, r.lag) for r in lags] == [
        ("us", 1, dt.timedelta(minutes=90)), ("eu", 2, dt.timedelta(minutes=30))]
