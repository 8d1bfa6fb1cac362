"""The storage backend contract, run on every backend (restic's backend test suite).

Each test states one promise of ``cbr.storage.backend.Backend`` and runs once
per backend kind (``backend`` fixture: ``local``, ``s3`` on a real SeaweedFS).
A new backend passes this file before anything else uses it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from cbr.storage.backend import (
    DEFAULT_PART_SIZE,
    MAX_NAME_LENGTH,
    Backend,
    InvalidName,
    ObjectNotFound,
)

MiB = 1024 * 1024


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _names(backend: Backend, prefix: str = "") -> set[str]:
    return {info.name for info in backend.list(prefix)}


# -- round trips --------------------------------------------------------------------------------


def test_put_then_get_returns_the_same_bytes(backend: Backend) -> None:
    backend.put("data/abc", b"hello vault")
    assert backend.get("data/abc") == b"hello vault"


def test_empty_object_round_trips(backend: Backend) -> None:
    backend.put("empty", b"")
    assert backend.get("empty") == b""
    assert backend.stat("empty").size == 0
    assert b"".join(backend.iter_get("empty")) == b""


def test_large_object_round_trips_byte_identical(backend: Backend) -> None:
    data = os.urandom(20 * MiB)
    backend.put("packs/large", data)
    assert _sha(backend.get("packs/large")) == _sha(data)
    assert _sha(b"".join(backend.iter_get("packs/large", chunk_size=3 * MiB))) == _sha(data)


# -- range reads --------------------------------------------------------------------------------

RANGES = [
    (0, None),
    (0, 1),
    (1, 3),
    (5, None),
    (9, 1),
    (9, 5),  # past the end: up to the end
    (10, None),  # at the end: nothing
    (10, 4),
    (25, 3),  # beyond the end: nothing
    (4, 0),  # zero length
]


@pytest.mark.parametrize(("offset", "length"), RANGES)
def test_range_reads_behave_like_slicing(backend: Backend, offset: int, length: int | None) -> None:
    data = b"0123456789"
    backend.put("r", data)
    expected = data[offset:] if length is None else data[offset : offset + length]
    assert backend.get("r", offset, length) == expected
    assert b"".join(backend.iter_get("r", offset, length, chunk_size=3)) == expected


def test_iter_get_yields_pieces_no_larger_than_chunk_size(backend: Backend) -> None:
    data = os.urandom(100_000)
    backend.put("pieces", data)
    pieces = list(backend.iter_get("pieces", 10, 90_000, chunk_size=7_000))
    assert b"".join(pieces) == data[10:90_010]
    assert max(len(p) for p in pieces) <= 7_000


def test_negative_offset_or_length_is_a_value_error(backend: Backend) -> None:
    backend.put("r", b"x")
    with pytest.raises(ValueError):
        backend.get("r", -1)
    with pytest.raises(ValueError):
        backend.get("r", 0, -1)


# -- overwrite and write-once ---------------------------------------------------------------


def test_put_replaces_an_existing_object(backend: Backend) -> None:
    backend.put("index/current", b"first version, longer")
    backend.put("index/current", b"second")
    assert backend.get("index/current") == b"second"
    assert backend.stat("index/current").size == len(b"second")
    assert _names(backend) == {"index/current"}


def test_put_if_absent_refuses_the_second_write(backend: Backend) -> None:
    assert backend.put_if_absent("manifests/m1", b"original") is True
    assert backend.put_if_absent("manifests/m1", b"impostor") is False
    assert backend.get("manifests/m1") == b"original"


def test_put_if_absent_races_have_exactly_one_winner(backend: Backend) -> None:
    barrier = threading.Barrier(8)

    def write(i: int) -> bool:
        barrier.wait()
        return backend.put_if_absent("manifests/race", f"writer {i}".encode())

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(write, range(8)))
    assert results.count(True) == 1
    winner = results.index(True)
    assert backend.get("manifests/race") == f"writer {winner}".encode()


# -- stat, exists, missing objects ------------------------------------------------------------


def test_stat_reports_size_and_a_recent_utc_mtime(backend: Backend) -> None:
    before = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)
    backend.put("s/one", b"x" * 1234)
    info = backend.stat("s/one")
    assert info.name == "s/one"
    assert info.size == 1234
    assert info.mtime.tzinfo is not None
    assert before <= info.mtime <= dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)
    assert backend.exists("s/one")


def test_missing_object_raises_object_not_found(backend: Backend) -> None:
    backend.put("present/a", b"x")
    for call in (
        lambda: backend.get("absent"),
        lambda: backend.get("absent", 3, 4),
        lambda: backend.iter_get("absent"),
        lambda: backend.stat("absent"),
        lambda: backend.get("present"),  # a "directory" of other names is no object
        lambda: backend.stat("present"),
        lambda: backend.get("present/a/deeper"),
    ):
        with pytest.raises(ObjectNotFound):
            call()
    assert not backend.exists("absent")
    assert not backend.exists("present")


def test_delete_removes_the_object_and_is_idempotent(backend: Backend) -> None:
    backend.put("d/x", b"x")
    backend.put("d/y", b"y")
    backend.delete("d/x")
    backend.delete("d/x")
    backend.delete("never/existed")
    assert not backend.exists("d/x")
    assert _names(backend) == {"d/y"}
    with pytest.raises(ObjectNotFound):
        backend.get("d/x")


# -- listing ------------------------------------------------------------------------------------


def test_list_with_prefix_returns_exactly_the_matching_names(backend: Backend) -> None:
    names = {
        "data/ab/abc1",
        "data/ab/abc2",
        "data/ac/ac1",
        "data/b",
        "database",
        "index/i1",
        "top",
    }
    for name in names:
        backend.put(name, name.encode())
    assert _names(backend) == names
    assert _names(backend, "data/") == {"data/ab/abc1", "data/ab/abc2", "data/ac/ac1", "data/b"}
    assert _names(backend, "data") == names - {"index/i1", "top"}
    assert _names(backend, "data/a") == {"data/ab/abc1", "data/ab/abc2", "data/ac/ac1"}
    assert _names(backend, "data/ab/abc") == {"data/ab/abc1", "data/ab/abc2"}
    assert _names(backend, "data/ab/abc1") == {"data/ab/abc1"}
    assert _names(backend, "nothing/") == set()
    assert _names(backend, "to") == {"top"}
    sizes = {info.name: info.size for info in backend.list()}
    assert sizes == {name: len(name) for name in names}


def test_list_pages_through_more_than_1000_objects(backend: Backend) -> None:
    names = [f"many/{i:05d}" for i in range(1100)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: backend.put(n, b"."), names))
    listed = [info.name for info in backend.list("many/")]
    assert len(listed) == 1100  # each exactly once
    assert set(listed) == set(names)


# -- names --------------------------------------------------------------------------------------

INVALID_NAMES = [
    "",
    "/abs",
    "a/",
    "a//b",
    "../escape",
    "a/../../escape",
    "a/./b",
    ".hidden",
    "a/.tmp-123",
    "nul\x00byte",
    "back\\slash",
    "space name",
    "ünïcode",
    "x" * 256,
    "/".join(["abcdefgh"] * 120),  # 1079 bytes > MAX_NAME_LENGTH
]


@pytest.mark.parametrize("name", INVALID_NAMES, ids=lambda n: repr(n)[:30])
def test_invalid_names_are_refused_before_any_io(backend: Backend, name: str) -> None:
    for call in (
        lambda: backend.put(name, b"x"),
        lambda: backend.put_if_absent(name, b"x"),
        lambda: backend.put_stream(name, iter([b"x"])),
        lambda: backend.get(name),
        lambda: backend.iter_get(name),
        lambda: backend.stat(name),
        lambda: backend.exists(name),
        lambda: backend.delete(name),
    ):
        with pytest.raises(InvalidName):
            call()
    assert _names(backend) == set()


def test_longest_valid_name_round_trips(backend: Backend) -> None:
    # Segments of 200 characters up to the name limit (minus room for an S3 prefix).
    name = "/".join(["n" * 200] * 4) + "/" + "e" * (MAX_NAME_LENGTH - 4 * 201 - 16)
    backend.put(name, b"long")
    assert backend.get(name) == b"long"
    assert _names(backend) == {name}


def test_invalid_list_prefix_is_refused(backend: Backend) -> None:
    for prefix in ("../", "/abs", "a//", "a/../b"):
        with pytest.raises(InvalidName):
            list(backend.list(prefix))


# -- streaming writes -------------------------------------------------------------------------


def _chunks(total: int, size: int, seed: bytes) -> Iterator[bytes]:
    block = hashlib.sha256(seed).digest() * (size // 32 + 1)
    sent = 0
    counter = 0
    while sent < total:
        piece = min(size, total - sent)
        counter += 1
        yield counter.to_bytes(8, "big") + block[: piece - 8]
        sent += piece


def test_put_stream_stores_a_multi_part_object(backend: Backend) -> None:
    total = 40 * MiB  # 3 parts of 16 MiB on S3 (16 + 16 + 8)
    expected = hashlib.sha256()
    for chunk in _chunks(total, MiB, b"stream"):
        expected.update(chunk)
    size = backend.put_stream("packs/streamed", _chunks(total, MiB, b"stream"))
    assert size == total
    assert backend.stat("packs/streamed").size == total
    got = hashlib.sha256()
    for piece in backend.iter_get("packs/streamed", chunk_size=4 * MiB):
        got.update(piece)
    assert got.hexdigest() == expected.hexdigest()
    assert backend.get("packs/streamed", 16 * MiB - 4, 8)[:4] == backend.get(
        "packs/streamed", 16 * MiB - 4, 4
    )


def test_put_stream_of_an_exact_multiple_of_the_part_size(backend: Backend) -> None:
    data = os.urandom(2 * DEFAULT_PART_SIZE)
    assert backend.put_stream(
        "packs/exact", iter([data[:DEFAULT_PART_SIZE], data[DEFAULT_PART_SIZE:]])
    ) == len(data)
    assert _sha(backend.get("packs/exact")) == _sha(data)


def test_put_stream_small_objects_and_odd_chunks(backend: Backend) -> None:
    pieces = [b"a", b"", b"bc", b"def" * 1000]
    assert backend.put_stream("small", iter(pieces)) == len(b"".join(pieces))
    assert backend.get("small") == b"".join(pieces)
    assert backend.put_stream("empty-stream", iter([])) == 0
    assert backend.get("empty-stream") == b""


class _SourceBroke(Exception):
    pass


def test_put_stream_failure_leaves_no_object(backend: Backend) -> None:
    def failing() -> Iterator[bytes]:
        yield from _chunks(20 * MiB, MiB, b"fail")  # past one S3 part: multipart started
        raise _SourceBroke

    with pytest.raises(_SourceBroke):
        backend.put_stream("packs/broken", failing())
    assert not backend.exists("packs/broken")
    assert _names(backend) == set()


def test_put_stream_failure_keeps_the_previous_object(backend: Backend) -> None:
    backend.put("packs/keep", b"old")

    def failing() -> Iterator[bytes]:
        yield b"new"
        raise _SourceBroke

    with pytest.raises(_SourceBroke):
        backend.put_stream("packs/keep", failing())
    assert backend.get("packs/keep") == b"old"


# -- concurrency and atomicity ----------------------------------------------------------------


def test_concurrent_puts_from_8_threads_all_land(backend: Backend) -> None:
    payloads = {f"c/{t}/{i}": os.urandom(1000 + t * 100 + i) for t in range(8) for i in range(25)}
    barrier = threading.Barrier(8)

    def writer(t: int) -> None:
        barrier.wait()
        for i in range(25):
            backend.put(f"c/{t}/{i}", payloads[f"c/{t}/{i}"])

    with ThreadPoolExecutor(8) as pool:
        for future in [pool.submit(writer, t) for t in range(8)]:
            future.result()
    assert _names(backend, "c/") == set(payloads)
    for name in list(payloads)[::17]:
        assert backend.get(name) == payloads[name]


def test_concurrent_puts_of_one_name_leave_one_whole_object(backend: Backend) -> None:
    versions = [bytes([i]) * (MiB + i) for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda v: backend.put("same", v), versions))
    assert backend.get("same") in versions


@pytest.mark.parametrize("how", ["put", "put_stream"])
def test_a_reader_never_sees_a_partial_object(backend: Backend, how: str) -> None:
    size = 24 * MiB
    data = os.urandom(size)
    digest = _sha(data)
    done = threading.Event()
    observed: list[str] = []
    problems: list[str] = []

    def reader() -> None:
        while not done.is_set():
            try:
                info = backend.stat("big/atomic")
            except ObjectNotFound:
                observed.append("missing")
                time.sleep(0.002)
                continue
            if info.size != size:
                problems.append(f"stat saw size {info.size}")
            got = backend.get("big/atomic")
            if _sha(got) != digest:
                problems.append(f"get saw {len(got)} bytes, not the object")
            observed.append("whole")

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        time.sleep(0.02)
        if how == "put":
            backend.put("big/atomic", data)
        else:
            backend.put_stream("big/atomic", (data[i : i + MiB] for i in range(0, size, MiB)))
        time.sleep(0.05)
    finally:
        done.set()
        thread.join(60)
    assert not problems, problems[:5]
    assert "missing" in observed
    assert _sha(backend.get("big/atomic")) == digest
