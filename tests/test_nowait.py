"""
Reading a small file in place only when that cannot block
(L{execserver.nowait}).
"""

from __future__ import annotations

import os

from twisted.trial import unittest

from execserver import nowait


def skip_unless_read_in_place(directory: str) -> None:
    """
    Skip a test of reading in place where nothing is: a kernel without
    C{openat2(RESOLVE_CACHED)} (before 5.12), or a test directory on a
    file system that is not known to be local (overlayfs in a container).
    """
    if nowait._libc is None:
        raise unittest.SkipTest("no openat2, fstatfs or RWF_NOWAIT here")
    located = nowait._open_path_cached(b"/")
    if located is None:
        raise unittest.SkipTest("the kernel has no openat2(RESOLVE_CACHED)")
    os.close(located)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if nowait._file_system(fd) not in nowait.LOCAL_FILE_SYSTEMS:
            raise unittest.SkipTest(f"{directory} is not on a file system read in place")
    finally:
        os.close(fd)


class ReadSmallTests(unittest.SynchronousTestCase):
    def setUp(self):
        self.root = os.path.realpath(self.mktemp())
        os.makedirs(self.root)
        self.file = self.write("f", b"contents")

    def write(self, name: str, data: bytes) -> bytes:
        path = os.path.join(self.root, name)
        with open(path, "wb") as f:
            f.write(data)
        return os.fsencode(path)

    def test_a_small_file_in_the_page_cache(self):
        skip_unless_read_in_place(self.root)
        self.assertEqual(nowait.read_small(self.file), b"contents")

    def test_up_to_the_bound(self):
        skip_unless_read_in_place(self.root)
        data = os.urandom(nowait.INLINE_READ_BYTES)
        self.assertEqual(nowait.read_small(self.write("bound", data)), data)
        self.assertIsNone(nowait.read_small(self.write("over", data + b"x")))

    def test_symbolic_links_are_followed(self):
        skip_unless_read_in_place(self.root)
        os.symlink(self.file, os.path.join(self.root, "link"))
        self.assertEqual(nowait.read_small(os.fsencode(os.path.join(self.root, "link"))),
                         b"contents")

    def test_a_file_not_in_the_page_cache(self):
        skip_unless_read_in_place(self.root)
        fd = os.open(self.file, os.O_RDONLY)
        try:
            if nowait._file_system(fd) == 0x01021994:
                raise unittest.SkipTest("tmpfs keeps every file in memory")
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        self.assertIsNone(nowait.read_small(self.file))

    def test_what_is_not_a_regular_file(self):
        fifo = os.path.join(self.root, "fifo")
        os.mkfifo(fifo)
        for path in (fifo, self.root, "/dev/null"):
            self.assertIsNone(nowait.read_small(os.fsencode(path)), path)

    def test_other_file_systems(self):
        # procfs: its files may block (and announce no size).
        self.assertIsNone(nowait.read_small(b"/proc/self/status"))

    def test_missing(self):
        self.assertIsNone(nowait.read_small(os.fsencode(os.path.join(self.root, "missing"))))
        self.assertIsNone(nowait.read_small(self.file + b"/below-a-file"))

    def test_a_file_that_grew_since_it_was_looked_at(self):
        skip_unless_read_in_place(self.root)
        fd = os.open(self.file, os.O_RDONLY)
        try:
            self.assertEqual(nowait._read_cached(fd, len(b"contents")), b"contents")
            self.assertIsNone(nowait._read_cached(fd, len(b"contents") - 1))
        finally:
            os.close(fd)
