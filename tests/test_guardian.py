"""
The guardian, as its own process: it kills the groups still watched once
its stdin ends, after reading every line the server wrote.
"""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred
from twisted.trial import unittest

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
