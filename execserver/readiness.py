"""
Readiness: whether this server should be sent new work.

C{GET /readyz} answers 200 while ready and 503 otherwise; systemd hears
C{READY=1} the first time the server is ready and C{STOPPING=1} when it
starts draining (L{SystemdNotifier}).

A service that needs something before it can serve requires a named
condition and reports it met or lost: a local listener is ready once it
listens; a remote executor requires "registered" and "connected" (to the
rendezvous) and drives them as its link comes and goes. Draining (a
SIGTERM) makes the server unready for good.
"""

from __future__ import annotations

import os
import socket
from typing import Callable

from twisted.logger import Logger

log = Logger()

#: Set by systemd for Type=notify services.
NOTIFY_SOCKET_VARIABLE = "NOTIFY_SOCKET"


class Readiness:
    def __init__(self) -> None:
        self._unmet: set[str] = set()
        self.draining = False
        self._observers: list[Callable[["Readiness"], None]] = []

    @property
    def ready(self) -> bool:
        return not self.draining and not self._unmet

    def require(self, condition: str) -> None:
        """
        Be unready until C{condition} is L{met}.
        """
        self._change(lambda: self._unmet.add(condition))

    def met(self, condition: str) -> None:
        self._change(lambda: self._unmet.discard(condition))

    def lost(self, condition: str) -> None:
        self.require(condition)

    def drain(self) -> None:
        """
        Stop being ready, for good: the server is stopping.
        """
        def start_draining():
            self.draining = True

        self._change(start_draining)

    def subscribe(self, observer: Callable[["Readiness"], None]) -> None:
        """
        Call C{observer} with this object after every change, and now.
        """
        self._observers.append(observer)
        observer(self)

    def _change(self, change: Callable[[], None]) -> None:
        before = (self.ready, self.draining)
        change()
        if (self.ready, self.draining) != before:
            for observer in list(self._observers):
                observer(self)


class SystemdNotifier:
    """
    Tells systemd (C{sd_notify}) when the server is first ready and when it
    starts stopping, if C{NOTIFY_SOCKET} names a socket.
    """

    def __init__(self, address: str) -> None:
        # A leading "@" names a socket in the abstract namespace.
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self._told_ready = False
        self._told_stopping = False

    @classmethod
    def from_environment(cls, environ=os.environ) -> "SystemdNotifier | None":
        """
        The notifier of C{NOTIFY_SOCKET}, taken out of the environment so that
        children do not inherit it.
        """
        address = environ.pop(NOTIFY_SOCKET_VARIABLE, None)
        return cls(address) if address else None

    def __call__(self, readiness: Readiness) -> None:
        if readiness.ready and not self._told_ready:
            self._told_ready = True
            self.send(b"READY=1")
        elif readiness.draining and not self._told_stopping:
            self._told_stopping = True
            self.send(b"STOPPING=1")

    def send(self, message: bytes) -> None:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.sendto(message, self.address)
        except OSError as e:
            log.warn("cannot notify systemd ({state}): {error}", state=message.decode(), error=e)
