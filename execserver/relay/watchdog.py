"""
Liveness of a relay socket: a WebSocket Ping every 30 s, and a peer whose
Pong has not come 60 s after a Ping is gone (as codex exec-server 0.169.0
does on both ends). Pings sent while a Pong is due do not move the
deadline; a Pong clears it.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from execserver.relay.limits import PING_INTERVAL_SECONDS, PONG_TIMEOUT_SECONDS


class PongWatchdog:
    """
    Pings through C{send_ping} and calls C{timed_out} once when a Pong is
    overdue. Runs from L{start} until L{stop}.
    """

    def __init__(self, clock: IReactorTime, send_ping: Callable[[], None],
                 timed_out: Callable[[], None],
                 interval: float = PING_INTERVAL_SECONDS,
                 timeout: float = PONG_TIMEOUT_SECONDS) -> None:
        self._clock = clock
        self._send_ping = send_ping
        self._timed_out = timed_out
        self._interval = interval
        self._timeout = timeout
        self._tick: IDelayedCall | None = None
        self._deadline: IDelayedCall | None = None

    @property
    def running(self) -> bool:
        return self._tick is not None

    @property
    def pong_due(self) -> bool:
        """A Ping is unanswered."""
        return self._deadline is not None

    def start(self) -> None:
        """The first Ping goes out one interval from now."""
        if self._tick is None:
            self._tick = self._clock.callLater(self._interval, self._ping)

    def stop(self) -> None:
        for call in (self._tick, self._deadline):
            if call is not None and call.active():
                call.cancel()
        self._tick = self._deadline = None

    def pong_received(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _ping(self) -> None:
        self._tick = self._clock.callLater(self._interval, self._ping)
        if self._deadline is None:
            self._deadline = self._clock.callLater(self._timeout, self._expired)
        self._send_ping()

    def _expired(self) -> None:
        self._deadline = None
        self.stop()
        self._timed_out()
