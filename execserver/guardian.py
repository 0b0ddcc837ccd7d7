"""
The guardian: a tiny companion process that kills the server's process
groups if the server dies without doing it itself (SIGKILL, a crash, the
OOM killer).

The server tells it, one line per event on its stdin, which groups to watch
(C{+PGID}) and which have ended (C{-PGID}). When its stdin ends, the server
is gone: it sends SIGKILL to every group still watched, then exits. A server
that stops normally has killed them already, so nothing is left to do.

The guardian is not woken for each line: it waits for the hang-up alone and
takes what the pipe holds every L{DRAIN_SECONDS}. Waking it was the largest
cost of a short process on the server's side; the lines wait in the pipe
(or, when it is full, in the server) and are all read before the kill.

    python -m execserver.guardian      (started by the server)
"""

from __future__ import annotations

import os
import select
import signal
import sys

from twisted.internet import protocol
from twisted.logger import Logger

log = Logger()

#: How often the guardian takes the lines waiting in its pipe.
DRAIN_SECONDS = 0.1


def _read_available(fd: int) -> tuple[bytes, bool]:
    """
    What the non-blocking C{fd} holds now, and whether it has ended.
    """
    data = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return data, False
        if not chunk:
            return data, True
        data += chunk


def main() -> None:
    # Out of the server's session: a Ctrl-C meant for the server must not
    # end its guardian first.
    os.setsid()
    stdin = sys.stdin.fileno()
    os.set_blocking(stdin, False)
    # Registered for no event: the hang-up (the server gone) is reported
    # anyway, and a line written does not wake the guardian.
    poller = select.poll()
    poller.register(stdin, 0)
    groups: set[int] = set()
    pending = b""
    ended = False
    while not ended:
        poller.poll(DRAIN_SECONDS * 1000)
        data, ended = _read_available(stdin)
        *lines, pending = (pending + data).split(b"\n")
        for line in lines:
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
