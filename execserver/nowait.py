"""
Reading a small file on the reactor thread, when that cannot block.

fs/readFile reads in the thread pool because opening or reading a file
can block for as long as its file system likes (a hung network mount, a
FUSE daemon that never answers), and on the reactor thread that would
freeze every connection. But most files a harness reads are small and
in the page cache, and the hop through the pool and back costs each of
them two thread wake-ups, which on a busy machine wait for a CPU.

L{read_small} reads such a file in place only when the kernel says that
nothing on the way needs I/O:

* the path is resolved with C{openat2(RESOLVE_CACHED)}, which fails
  rather than look anything up on disk or over the network, to an
  C{O_PATH} descriptor (which calls into no file system);
* the file is regular, at most L{INLINE_READ_BYTES}, on a local file
  system of L{LOCAL_FILE_SYSTEMS} (so that opening it calls no daemon and
  no server), and is then opened through that descriptor;
* it is read with C{RWF_NOWAIT}, which fails rather than wait for the
  disk.

Anything else, any error included, gives None and the caller reads in the
thread pool as before, which also gives the errors their texts.
"""

from __future__ import annotations

import ctypes
import os
import stat

#: The largest file read in place: about what fits in one quick read.
INLINE_READ_BYTES = 64 * 1024

#: File systems whose open and read of a cached file go to no daemon or
#: server (statfs(2) magic numbers): ext2/3/4, XFS, Btrfs, tmpfs. Not
#: overlayfs, whose lower layers may be anything.
LOCAL_FILE_SYSTEMS = frozenset((0xEF53, 0x58465342, 0x9123683E, 0x01021994))

_SYS_OPENAT2 = 437  # the same number on every Linux architecture
_AT_FDCWD = -100
_RESOLVE_CACHED = 0x20
#: struct statfs, of which only f_type (the first field) is read; the
#: buffer is larger than the structure on every 64-bit architecture.
_STATFS_BYTES = 256


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


def _load_libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    if not (hasattr(libc, "syscall") and hasattr(libc, "fstatfs")
            and hasattr(os, "preadv") and hasattr(os, "RWF_NOWAIT")):
        return None
    libc.syscall.restype = ctypes.c_long
    # The one system call made through it: openat2(dirfd, path, how, size).
    libc.syscall.argtypes = (ctypes.c_long, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p,
                             ctypes.c_size_t)
    libc.fstatfs.argtypes = (ctypes.c_int, ctypes.c_char_p)
    return libc


_libc = _load_libc()
#: How every path is resolved: to an O_PATH descriptor, from the cache only.
_HOW = _OpenHow(os.O_PATH | os.O_CLOEXEC, 0, _RESOLVE_CACHED)


def _open_path_cached(path: bytes) -> int | None:
    fd = _libc.syscall(_SYS_OPENAT2, _AT_FDCWD, path, ctypes.addressof(_HOW), ctypes.sizeof(_HOW))
    return None if fd < 0 else fd


def _file_system(fd: int) -> int | None:
    buffer = ctypes.create_string_buffer(_STATFS_BYTES)
    if _libc.fstatfs(fd, buffer) != 0:
        return None
    return ctypes.c_long.from_buffer(buffer).value


def read_small(path: bytes) -> bytes | None:
    """
    The contents of the regular file at the absolute C{path} (symbolic
    links followed), if reading them in place cannot block (see the
    module docstring); None otherwise.
    """
    if _libc is None:
        return None
    located = _open_path_cached(path)
    if located is None:
        return None
    try:
        info = os.fstat(located)
        if (not stat.S_ISREG(info.st_mode) or info.st_size > INLINE_READ_BYTES
                or _file_system(located) not in LOCAL_FILE_SYSTEMS):
            return None
        fd = os.open(f"/proc/self/fd/{located}",
                     os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return None
    finally:
        os.close(located)
    try:
        return _read_cached(fd, info.st_size)
    finally:
        os.close(fd)


def _read_cached(fd: int, size: int) -> bytes | None:
    """
    The file's bytes if they are all in the page cache and no more than
    C{size}, its size when it was looked at; None otherwise.
    """
    view = memoryview(bytearray(size + 1))
    got = 0
    while got <= size:
        try:
            read = os.preadv(fd, [view[got:]], got, os.RWF_NOWAIT)
        except OSError:
            return None  # not all in the page cache (EAGAIN), or worse
        if read == 0:
            return bytes(view[:got])
        got += read
    return None  # it grew meanwhile: read in the pool
