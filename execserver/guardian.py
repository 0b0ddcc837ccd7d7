"""
The guardian: a tiny companion process that kills the server's process
groups if the server dies without doing it itself (SIGKILL, a crash, the
OOM killer).

The server tells it, one line per event on its stdin, which groups to watch
(C{+PGID}) and which have ended (C{-PGID}). When its stdin ends, the server
is gone: it sends SIGKILL to every group still watched, then exits. A server
that stops normally has killed them already, so nothing is left to do.

    python -m execserver.guardian      (started by the server)
"""

from __future__ import annotations

import os
import signal
import sys

from twisted.internet import protocol
from twisted.logger import Logger

log = Logger()


def main() -> None:
    # Out of the server's session: a Ctrl-C meant for the server must not
    # end its guardian first.
    os.setsid()
    groups: set[int] = set()
    for line in sys.stdin.buffer:
        sign, pgid = line[:1], int(line[1:])
        if sign == b"+":
            groups.add(pgid)
        else:
            groups.discard(pgid)
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass


class _GuardianProcess(protocol.ProcessProtocol):
    def processEnded(self, reason) -> None:
        log.info("the process guardian ended: {reason}", reason=reason.value)


class Guardian:
    """
    The server's side of the guardian.
    """

    def __init__(self, reactor) -> None:
        self.reactor = reactor
        self._process = None

    def start(self) -> None:
        argv = [sys.executable, "-m", "execserver.guardian"]
        self._process = self.reactor.spawnProcess(
            _GuardianProcess(), argv[0], argv, env=dict(os.environ),
            childFDs={0: "w", 2: 2},
        )

    def watch(self, pgid: int) -> None:
        if self._process is not None:
            self._process.write(b"+%d\n" % pgid)

    def forget(self, pgid: int) -> None:
        if self._process is not None:
            self._process.write(b"-%d\n" % pgid)

    def stop(self) -> None:
        """
        Let the guardian go: with its stdin closed it exits.
        """
        if self._process is not None:
            self._process.closeStdin()
            self._process = None


if __name__ == "__main__":
    main()
