"""
Fair turns on the reactor thread for the connections of one server.

Every message of every connection is handled on the one reactor thread.
Served as it arrives, one read of a busy connection (up to 64 KiB of
frames, dozens of messages) or a backlog released when its long request
ends would hold the thread for tens of milliseconds, while a request
that arrives on another connection meanwhile is not even read. So the
connections with a message to serve wait in one line and serve one
message each in turn. A turn lasts until the reactor's next iteration
(a call scheduled in 0 s marks it); once it has taken L{TURN_SECONDS},
the line waits for that next iteration, which first reads, writes and
runs whatever else is due.

Time is measured on the server's clock: a test's L{task.Clock} only
moves when the test moves it, so there everything is served at once
unless a test makes a message take its time; moving it ends the turn.
"""

from __future__ import annotations

import collections
from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime

#: How long the reactor thread serves messages before it lets the
#: reactor read and write again: about six messages of the fuzzer's mix.
#: Right where one socket carries every connection (the relay executor's
#: streams): what a turn lets in is already read, and shorter turns only
#: send in smaller batches (50 streams: about a fifth fewer execs/s at
#: L{SOCKETS_TURN_SECONDS}).
TURN_SECONDS = 0.002
#: The same where each connection has a socket of its own (a local
#: server): a request that arrives meanwhile is read, and joins the line,
#: sooner. Under the fuzzer, a victim connection's p99 went from about 5
#: to about 3.5 ms, at the same execs/s with 20 and 300 connections.
SOCKETS_TURN_SECONDS = 0.00025


class Taker(Protocol):
    def serve_next(self) -> bool:
        """
        Serve one message; whether another may be served right now.
        """


class Turns:
    """
    The line of connections that have a message to serve.
    """

    def __init__(self, clock: IReactorTime, turn_seconds: float = TURN_SECONDS) -> None:
        self._clock = clock
        self._turn_seconds = turn_seconds
        self._line: collections.deque[Taker] = collections.deque()
        self._in_line: set[Taker] = set()
        #: When the current turn started, and the call that ends it.
        self._started: float | None = None
        self._next_turn: IDelayedCall | None = None
        self._serving = False

    def want(self, taker: Taker) -> None:
        """
        C{taker} has a message to serve: now, if the turn allows and
        nobody is before it, or in its turn.
        """
        if taker not in self._in_line:
            self._in_line.add(taker)
            self._line.append(taker)
        self._serve()

    def leave(self, taker: Taker) -> None:
        """
        C{taker} has gone: it leaves the line, and a turn that nobody
        waits for ends, leaving no timer behind.
        """
        if taker in self._in_line:
            self._in_line.discard(taker)
            self._line.remove(taker)
        if not self._line and self._next_turn is not None:
            self._next_turn.cancel()
            self._turn_over()

    def _serve(self) -> None:
        # A message served may make a connection want again (an answer
        # ready at once): it joins the line that this loop serves.
        if self._serving:
            return
        self._serving = True
        try:
            while self._line and self._in_turn():
                taker = self._line.popleft()
                self._in_line.discard(taker)
                if taker.serve_next() and taker not in self._in_line:
                    self._in_line.add(taker)
                    self._line.append(taker)
        finally:
            self._serving = False

    def _in_turn(self) -> bool:
        now = self._clock.seconds()
        if self._started is None:
            self._started = now
            self._next_turn = self._clock.callLater(0, self._next)
        return now - self._started < self._turn_seconds

    def _next(self) -> None:
        self._turn_over()
        self._serve()

    def _turn_over(self) -> None:
        self._next_turn = None
        self._started = None
