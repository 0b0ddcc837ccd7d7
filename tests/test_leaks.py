"""
Thousands of processes leave nothing behind: no zombies, no descriptors, no
pseudo-terminals.
"""

import os

from twisted.internet import defer, task
from twisted.trial import unittest

from tests.support import (
    attach,
    build_exec_server,
    children_states,
    handshake,
    send,
    start_params,
)


def open_descriptors() -> set[str]:
    return {
        os.readlink(f"/proc/self/fd/{fd}")
        for fd in os.listdir("/proc/self/fd")
        if os.path.exists(f"/proc/self/fd/{fd}")
    }


def descriptor_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def zombie_children() -> list[int]:
    return [child for child, state in children_states(os.getpid()).items() if state == "Z"]


class LeakTests(unittest.TestCase):
    timeout = 300

    async def setUp(self):
        self.server = build_exec_server(self, task.Clock())
        self.connection, self.transport = attach(self.server)
        handshake(self.connection, self.transport)
        # The first child makes the reactor set up its own plumbing once;
        # what matters is that nothing grows with the number of children.
        await self.start_many(1, tty=False)
        await self.start_many(1, tty=True)

    async def start_many(self, count: int, tty: bool, batch: int = 100) -> None:
        self.started = getattr(self, "started", 0)
        for first in range(0, count, batch):
            closed = []
            for n in range(first, min(first + batch, count)):
                self.started += 1
                process_id = f"p{self.started}"
                closed.append(self.transport.closed_event(process_id))
                send(self.connection, {"id": n, "method": "process/start",
                                       "params": start_params(process_id, ["/bin/true"], tty=tty)})
            await defer.gatherResults(closed)
            self.transport.sent.clear()

    async def test_thousands_of_pipe_processes(self):
        before = descriptor_count()
        await self.start_many(3000, tty=False)
        self.assertEqual(zombie_children(), [])
        self.assertEqual(descriptor_count(), before)

    async def test_hundreds_of_pty_processes(self):
        before = descriptor_count()
        await self.start_many(500, tty=True)
        self.assertEqual(zombie_children(), [])
        self.assertEqual(descriptor_count(), before)
        self.assertFalse([d for d in open_descriptors() if d.startswith("/dev/pts")])

    async def test_killed_sessions_leave_nothing(self):
        before = descriptor_count()
        for n in range(200):
            send(self.connection, {"id": n, "method": "process/start",
                                   "params": start_params(f"s{n}", ["/bin/sleep", "100"], tty=n % 2 == 0)})
        await self.server.shutdown()
        self.assertEqual(zombie_children(), [])
        self.assertEqual(descriptor_count(), before)
