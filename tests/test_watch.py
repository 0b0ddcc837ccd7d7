"""
fs/watchMissing through the connection core, on real directories with real
inotify instances. The reference's behaviour is compared in
tests/test_interop_watch.py; these tests specify what only we can observe:
what a watch holds open and when it lets go.
"""

from __future__ import annotations

import os

from twisted.python.failure import Failure
from twisted.trial import unittest

from execserver import watch
from tests.support import attach, build_exec_server, handshake, scratch_directory, send


def inotify_descriptors() -> int:
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "anon_inode:inotify":
                count += 1
        except OSError:
            pass
    return count


class ConnectionTests(unittest.TestCase):
    def setUp(self):
        self.server = build_exec_server(self)
        self.connection, self.transport = attach(self.server)
        handshake(self.connection, self.transport)
        self.directory = scratch_directory(self, "execserver-watch-")
        self._ids = 0

    def uri(self, *parts: str) -> str:
        return "file://" + os.path.join(self.directory, *parts)

    async def watch(self, watch_id: int, *missing: str, present: str | None = None) -> bool:
        self._ids += 1
        params = {"watchId": watch_id, "missing": list(missing)}
        if present is not None:
            params["present"] = present
        send(self.connection, {"id": self._ids, "method": "fs/watchMissing", "params": params})
        reply = await self.transport.reply(self._ids)
        return reply["result"]["watching"]

    def notifications(self) -> list:
        return [m["params"]["watchId"] for m in self.transport.messages()
                if m.get("method") == watch.NOTIFICATION]

    async def test_a_new_path_is_reported_once(self):
        self.assertTrue(await self.watch(1, self.uri("a"), self.uri("b")))
        os.mkdir(os.path.join(self.directory, "a"))
        os.mkdir(os.path.join(self.directory, "b"))
        await self.transport.wait_for(lambda m: m.get("method") == watch.NOTIFICATION)
        # A later watch's notification shows the first stayed single.
        self.assertTrue(await self.watch(2, self.uri("c")))
        os.mkdir(os.path.join(self.directory, "c"))
        await self.transport.wait_for(lambda m: m.get("params") == {"watchId": 2})
        self.assertEqual(self.notifications(), [1, 2])

    async def test_a_watch_holds_one_inotify_instance_until_it_fires(self):
        before = inotify_descriptors()
        self.assertTrue(await self.watch(1, self.uri("a")))
        self.assertEqual(inotify_descriptors(), before + 1)
        os.mkdir(os.path.join(self.directory, "a"))
        await self.transport.wait_for(lambda m: m.get("method") == watch.NOTIFICATION)
        self.assertEqual(inotify_descriptors(), before)

    async def test_replacing_a_watch_releases_the_old_one(self):
        before = inotify_descriptors()
        self.assertTrue(await self.watch(1, self.uri("a")))
        self.assertTrue(await self.watch(2, self.uri("b")))
        self.assertEqual(inotify_descriptors(), before + 1)

    async def test_an_unwatchable_request_holds_nothing(self):
        before = inotify_descriptors()
        self.assertFalse(await self.watch(1, self.uri()))
        self.assertEqual(inotify_descriptors(), before)

    async def test_the_watch_ends_with_its_connection(self):
        before = inotify_descriptors()
        self.assertTrue(await self.watch(1, self.uri("a")))
        self.connection.connectionLost(Failure(ConnectionError()))
        self.assertEqual(inotify_descriptors(), before)
        os.mkdir(os.path.join(self.directory, "a"))
        self.assertEqual(self.notifications(), [])

    async def test_a_stale_id_changes_nothing(self):
        self.assertTrue(await self.watch(5, self.uri("a")))
        self.assertFalse(await self.watch(4, self.uri("b")))
        self.assertFalse(await self.watch(5, self.uri("b")))
        os.mkdir(os.path.join(self.directory, "a"))
        await self.transport.wait_for(lambda m: m.get("params") == {"watchId": 5})


class WatchableTests(unittest.TestCase):
    """
    L{watch.MissingWatch.arm}'s refusals, without a connection.
    """

    def setUp(self):
        self.directory = scratch_directory(self, "execserver-watch-").encode()

    def arm(self, missing: list[bytes], present: bytes | None = None) -> watch.MissingWatch:
        armed = watch.MissingWatch(None, lambda: None)
        self.addCleanup(armed.stop)
        armed.arm(missing, present)
        return armed

    def path(self, *parts: str) -> bytes:
        return os.path.join(self.directory, *(part.encode() for part in parts))

    def test_the_ancestors_of_missing_and_present_paths_are_watched(self):
        os.mkdir(self.path("p"))
        armed = self.arm([self.path("a", "b")], self.path("p"))
        self.assertEqual(list(armed.directories)[-1], self.directory)
        self.assertIn(b"/", armed.directories)
        self.assertNotIn(self.path("p"), armed.directories)
        self.assertIn(self.path("a"), armed.interesting)
        self.assertIn(self.path("p"), armed.interesting)

    def test_an_existing_path_is_refused(self):
        self.assertRaises(watch.Unwatchable, self.arm, [self.directory])

    def test_a_symbolic_link_on_the_way_is_refused(self):
        os.symlink(self.directory, self.path("link"))
        self.assertRaises(watch.Unwatchable, self.arm, [self.path("link", "x")])
        self.assertRaises(watch.Unwatchable, self.arm, [self.path("x")], self.path("link"))

    def test_pseudo_file_systems_are_refused(self):
        self.assertRaises(watch.Unwatchable, self.arm, [b"/proc/nonexistent"])

    def test_file_system_types_are_read_with_statfs(self):
        self.assertEqual(watch.file_system_type(b"/proc"), 0x9FA0)

    def test_the_depth_limit_counts_components(self):
        deep = b"/" + b"/".join([b"n"] * watch.MAX_PATH_COMPONENTS)
        self.arm([deep])
        self.assertRaises(watch.Unwatchable, self.arm, [deep + b"/n"])
