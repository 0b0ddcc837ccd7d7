"""
The guardian, as its own process: it kills the groups still watched once
its stdin ends, after reading every line the server wrote. The server's
side writes each line at once, keeps what the pipe cannot take until there
is room, and reaps the guardian when it ends.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial import unittest

from execserver.guardian import Guardian
from tests import support


class _Ended(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.ended = Deferred()

    def processEnded(self, reason) -> None:
        self.ended.callback(reason.value.exitCode)


def _sleeper(testcase) -> subprocess.Popen:
    """
    A process in a group of its own, killed at the end of the test.
    """
    child = subprocess.Popen(["sleep", "100"], start_new_session=True)

    def cleanup() -> None:
        if child.poll() is None:
            child.kill()
        child.wait()

    testcase.addCleanup(cleanup)
    return child


class GuardianTests(unittest.TestCase):
    async def test_watched_groups_die_when_stdin_ends_and_forgotten_ones_live(self):
        watched, forgotten = _sleeper(self), _sleeper(self)
        guardian = _Ended()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        process = reactor.spawnProcess(guardian, sys.executable,
                                       [sys.executable, "-m", "execserver.guardian"],
                                       env=env, childFDs={0: "w", 2: 2})
        lines = b"+%d\n+%d\n-%d\n" % (watched.pid, forgotten.pid, forgotten.pid)
        process.write(lines)
        process.closeStdin()
        self.assertEqual(await support.with_timeout(guardian.ended), 0)
        await support.process_gone(watched.pid)
        self.assertIsNone(forgotten.poll())


class ServerSideTests(unittest.TestCase):
    async def test_lines_beyond_the_pipe_wait_and_stop_delivers_them_first(self):
        first, last, forgotten = _sleeper(self), _sleeper(self), _sleeper(self)
        guardian = Guardian(reactor)
        guardian.start()
        self.addCleanup(guardian.stop)
        guardian.watch(first.pid)
        guardian.watch(forgotten.pid)
        guardian.forget(forgotten.pid)
        # Far more than a pipe holds (64 KiB), written faster than the
        # guardian takes them (every 0.1 s): the last lines wait in the
        # server.
        for _ in range(40_000):
            guardian.forget(1)
        guardian.watch(last.pid)
        self.assertTrue(guardian._pipe.waiting)
        guardian.stop()
        await support.process_gone(first.pid)
        await support.process_gone(last.pid)
        self.assertIsNone(forgotten.poll())
        self.assertEqual(await support.with_timeout(guardian.ended), 0)
        self.assertNotIn(guardian.pid, support.children_states(os.getpid()))

    async def test_a_guardian_that_died_is_reaped_and_reported(self):
        errors = []

        def observe(event) -> None:
            if event["log_level"] == LogLevel.error:
                errors.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        guardian = Guardian(reactor)
        guardian.start()
        self.addCleanup(guardian.stop)
        os.kill(guardian.pid, signal.SIGKILL)
        self.assertEqual(await support.with_timeout(guardian.ended), -signal.SIGKILL)
        self.assertNotIn(guardian.pid, support.children_states(os.getpid()))
        self.assertEqual(errors, ["the process guardian ended while the server runs (status -9)"])
        # Nothing is written any more.
        guardian.watch(12345)
