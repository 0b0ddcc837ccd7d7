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
import subprocess
import sys

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReadDescriptor, IWriteDescriptor
from twisted.logger import Logger
from zope.interface import implementer

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


@implementer(IWriteDescriptor)
class _LinePipe:
    """
    The write end of the guardian's stdin: a line is written at once, with
    no turn of the reactor; what the pipe cannot take waits for room.
    """

    def __init__(self, reactor, stdin) -> None:
        self.reactor = reactor
        self.stdin = stdin
        self.fd = stdin.fileno()
        os.set_blocking(self.fd, False)
        self.waiting = bytearray()
        self.closing = False

    def logPrefix(self) -> str:
        return "guardian"

    def fileno(self) -> int:
        return self.fd

    def send(self, line: bytes) -> None:
        if self.fd < 0:
            return
        if not self.waiting:
            written = self._write(line)
            if written == len(line):
                return
            self.reactor.addWriter(self)
            line = line[written:]
        self.waiting += line

    def _write(self, data) -> int:
        try:
            return os.write(self.fd, data)
        except BlockingIOError:
            return 0
        except OSError as e:
            log.error("the process guardian no longer reads its stdin: {error}", error=e)
            self.close()
            return len(data)

    def doWrite(self) -> None:
        del self.waiting[:self._write(self.waiting)]
        if not self.waiting:
            self.reactor.removeWriter(self)
            if self.closing:
                self.close()

    def finish(self) -> None:
        """
        Close the pipe once every line has been written.
        """
        self.closing = True
        if not self.waiting:
            self.close()

    def close(self) -> None:
        if self.fd >= 0:
            self.reactor.removeWriter(self)
            self.waiting.clear()
            self.stdin.close()
            self.fd = -1

    def connectionLost(self, reason) -> None:
        self.close()


@implementer(IReadDescriptor)
class _Reaper:
    """
    Reaps the guardian when its pidfd says it has ended, and calls
    C{ended} with its status.
    """

    def __init__(self, reactor, popen: subprocess.Popen, ended) -> None:
        self.reactor = reactor
        self.popen = popen
        self.ended = ended
        self.fd = os.pidfd_open(popen.pid)
        reactor.addReader(self)

    def logPrefix(self) -> str:
        return "guardian"

    def fileno(self) -> int:
        return self.fd

    def doRead(self) -> None:
        self.connectionLost(None)
        self.ended(self.popen.wait())

    def connectionLost(self, reason) -> None:
        if self.fd >= 0:
            self.reactor.removeReader(self)
            os.close(self.fd)
            self.fd = -1


class Guardian:
    """
    The server's side of the guardian.
    """

    def __init__(self, reactor) -> None:
        self.reactor = reactor
        self._pipe: _LinePipe | None = None
        #: The guardian's pid, once started.
        self.pid: int | None = None
        #: Fires with the guardian's exit status once it has been reaped.
        self.ended = Deferred()

    def start(self) -> None:
        popen = subprocess.Popen([sys.executable, "-m", "execserver.guardian"], stdin=subprocess.PIPE)
        self.pid = popen.pid
        self._pipe = _LinePipe(self.reactor, popen.stdin)
        _Reaper(self.reactor, popen, self._ended)

    def _ended(self, status: int) -> None:
        if self._pipe is not None:
            log.error("the process guardian ended while the server runs (status {status})",
                      status=status)
            self._pipe.close()
            self._pipe = None
        self.ended.callback(status)

    def watch(self, pgid: int) -> None:
        if self._pipe is not None:
            self._pipe.send(b"+%d\n" % pgid)

    def forget(self, pgid: int) -> None:
        if self._pipe is not None:
            self._pipe.send(b"-%d\n" % pgid)

    def stop(self) -> None:
        """
        Let the guardian go: with its stdin closed (once it has every line)
        it exits.
        """
        if self._pipe is not None:
            self._pipe.finish()
            self._pipe = None


if __name__ == "__main__":
    main()
