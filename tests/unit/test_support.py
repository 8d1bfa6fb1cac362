"""The test helpers themselves: polling, process-group cleanup, throw-away databases.

Integration tests trust these to never leave a process behind and never share a
database between tests, so those guarantees are checked here with real child
processes and the real PostgreSQL server.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import psycopg
import pytest
import sqlalchemy

from tests.support.pg import fresh_database
from tests.support.processes import ManagedProcess, wait_until


class PythonProcess(ManagedProcess):
    """A child running a Python snippet, to exercise the base class without the CBR binaries."""

    def __init__(self, code: str, log_dir: Path, name: str = "snippet") -> None:
        super().__init__(name, log_dir)
        self.code = code

    def start(self) -> PythonProcess:
        self._spawn([sys.executable, "-c", self.code])
        return self


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers signal 0; it is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_wait_until_returns_the_truthy_value() -> None:
    calls = iter([0, None, "", "done"])
    assert wait_until(lambda: next(calls), timeout=5, interval=0.01) == "done"


def test_wait_until_times_out_with_the_message() -> None:
    start = time.monotonic()
    with pytest.raises(AssertionError, match="never true"):
        wait_until(lambda: False, timeout=0.3, interval=0.05, message="never true")
    assert 0.3 <= time.monotonic() - start < 5


def test_wait_until_ignores_only_the_given_exceptions() -> None:
    attempts: list[int] = []

    def flaky() -> bool:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("not yet")
        return True

    assert wait_until(flaky, timeout=5, interval=0.01, ignore=(ConnectionError,))
    with pytest.raises(ValueError):
        wait_until(lambda: int("x"), timeout=1, ignore=(ConnectionError,))
    with pytest.raises(AssertionError, match="last error: ConnectionError"):
        wait_until(
            lambda: (_ for _ in ()).throw(ConnectionError("down")),
            timeout=0.2,
            interval=0.05,
            ignore=(ConnectionError,),
        )


def test_stop_kills_the_whole_process_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    code = (
        "import subprocess, sys, time, pathlib\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
        f"pathlib.Path({str(pid_file)!r}).write_text(str(child.pid))\n"
        "print('rea' + 'dy', flush=True)\n"
        "time.sleep(300)\n"
    )
    process = PythonProcess(code, tmp_path).start()
    process.wait_for_log("ready", timeout=10)
    child = int(pid_file.read_text())
    assert _alive(child)
    process.stop(timeout=5)
    assert not process.running
    wait_until(lambda: not _alive(child), timeout=5, message="grandchild survived stop()")


def test_stop_escalates_to_sigkill(tmp_path: Path) -> None:
    code = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ignor' + 'ing', flush=True)\n"
        "time.sleep(300)\n"
    )
    process = PythonProcess(code, tmp_path).start()
    process.wait_for_log("ignoring", timeout=10)
    assert process.stop(timeout=0.5) == -9
    assert "SIGKILL" in process.log_text()


def test_log_keeps_every_start_and_wait_for_log_fails_fast_on_exit(tmp_path: Path) -> None:
    process = PythonProcess("print('hel' + 'lo', flush=True)", tmp_path)
    process.start()
    process.wait_for_log("hello", timeout=10)
    process.stop()
    process.start()
    wait_until(lambda: not process.running, timeout=10)
    assert process.log_text().count("hello") == 2
    with pytest.raises(AssertionError, match="exited"):
        process.wait_for_log("never " + "printed", timeout=10)
    process.close()


def test_fresh_database_is_created_and_dropped() -> None:
    with fresh_database() as url:
        name = url.rsplit("/", 1)[1]
        assert name.startswith("cbr_test_")
        with psycopg.connect(url) as conn:
            # A connection left open must not stop the drop (WITH (FORCE)).
            conn.execute("CREATE TABLE t (x int)")
            conn.commit()
            with fresh_database():
                pass
    admin_url = url.rsplit("/", 1)[0] + "/test"
    with psycopg.connect(admin_url) as conn:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    assert row is None


def test_database_url_is_usable_by_sqlalchemy(database_url: str) -> None:
    url = database_url.replace("postgresql://", "postgresql+psycopg://", 1)
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text("CREATE TABLE t (x integer)"))
            conn.execute(sqlalchemy.text("INSERT INTO t VALUES (1)"))
            assert conn.execute(sqlalchemy.text("SELECT count(*) FROM t")).scalar() == 1
    finally:
        engine.dispose()
