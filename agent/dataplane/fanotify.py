"""The kernel's fanotify interface, through ctypes: the constants of
``<sys/fanotify.h>`` and ``statx``, the record layouts, and the three calls
Python's ``os`` lacks. It decides nothing about what changed (``changes``
does); it only makes the calls and names the numbers."""

from __future__ import annotations

import ctypes
import struct

# <sys/fanotify.h>
FAN_CLOEXEC = 0x1
FAN_NONBLOCK = 0x2
FAN_UNLIMITED_QUEUE = 0x10
FAN_CLASS_NOTIF = 0x0
FAN_REPORT_FID = 0x200
FAN_REPORT_DIR_FID = 0x400
FAN_REPORT_NAME = 0x800
FAN_MARK_ADD = 0x1
FAN_MARK_REMOVE = 0x2
FAN_MARK_FILESYSTEM = 0x100
FAN_MODIFY = 0x2
FAN_ATTRIB = 0x4
FAN_CLOSE_WRITE = 0x8
FAN_MOVED_FROM = 0x40
FAN_MOVED_TO = 0x80
FAN_CREATE = 0x100
FAN_DELETE = 0x200
FAN_DELETE_SELF = 0x400
FAN_MOVE_SELF = 0x800
FAN_Q_OVERFLOW = 0x4000
FAN_ONDIR = 0x40000000
INFO_FID = 1
INFO_DFID_NAME = 2
INFO_DFID = 3
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_SYMLINK_NOFOLLOW = 0x100
STATX_BTIME = 0x800
STATX_SIZE = 256
STATX_BTIME_AT = 80  # offset of stx_btime (tv_sec i64, tv_nsec u32) in struct statx
METADATA = struct.Struct("=IBBHQii")  # event_len, vers, reserved, metadata_len, mask, fd, pid
INFO_HEADER = struct.Struct("=BBH")  # info_type, pad, len; then fsid (8 bytes), file_handle
HANDLE_HEADER = struct.Struct("=Ii")  # handle_bytes, handle_type


class Libc:
    """The three calls Python's ``os`` lacks, through ctypes."""

    def __init__(self) -> None:
        # The process's own C library (find_library would run ldconfig).
        libc = ctypes.CDLL(None, use_errno=True)
        self.fanotify_init = libc.fanotify_init
        self.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
        self.fanotify_init.restype = ctypes.c_int
        self.fanotify_mark = libc.fanotify_mark
        self.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64,
                                       ctypes.c_int, ctypes.c_char_p]
        self.fanotify_mark.restype = ctypes.c_int
        self.open_by_handle_at = libc.open_by_handle_at
        self.open_by_handle_at.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.open_by_handle_at.restype = ctypes.c_int
        self.statx = getattr(libc, "statx", None)
        if self.statx is not None:
            self.statx.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint,
                                   ctypes.c_char_p]
            self.statx.restype = ctypes.c_int

    def birth_ns(self, fd: int, path: bytes = b"") -> int | None:
        """When the file open at ``fd`` (or at ``path`` relative to ``fd``,
        not following a symlink) was born, if its file system says."""
        if self.statx is None:
            return None
        buf = ctypes.create_string_buffer(STATX_SIZE)
        flags = AT_SYMLINK_NOFOLLOW if path else AT_EMPTY_PATH
        if self.statx(fd, path, flags, STATX_BTIME, buf) != 0:
            return None
        mask = struct.unpack_from("=I", buf.raw, 0)[0]
        if not mask & STATX_BTIME:
            return None
        seconds, nanos = struct.unpack_from("=qI", buf.raw, STATX_BTIME_AT)
        return seconds * 1_000_000_000 + nanos


_libc: Libc | None = None


def lib() -> Libc:
    global _libc
    if _libc is None:
        _libc = Libc()
    return _libc


def birth_ns(path: bytes) -> int | None:
    """When the file at ``path`` was born (wall clock, ns), if its file
    system says (statx; Python's os has no btime)."""
    try:
        return lib().birth_ns(AT_FDCWD, path)
    except (OSError, AttributeError):
        return None
