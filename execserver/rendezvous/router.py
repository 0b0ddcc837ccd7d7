"""
Routing between an environment's executor socket and its harness sockets,
by C{stream_id}. Transport-free: the sockets are L{IRelayPeer}s.

  - The first frame a harness socket sends on a stream id claims it for
    that socket (up to L{MAX_STREAMS_PER_HARNESS_SOCKET} streams); frames
    on a stream another socket holds are dropped.
  - Frames travel as they arrived, bytes unchanged: the rendezvous never
    decrypts, and newer fields it does not know pass through.
  - A stream whose other side is gone is reset: a harness socket that
    closes resets its streams at the executor, an executor that goes
    resets every stream at its harnesses, and a harness frame for an
    environment without an executor is answered with a reset.
  - A C{reset} either way ends the route.
  - Back-pressure: a harness that cannot take more pauses reading from the
    executor's socket (for at most L{SLOW_HARNESS_SECONDS}; then that
    harness is dropped); an executor that cannot take more pauses every
    harness socket of its environment.

A tap (C{tap(direction, environment_id, frame, raw)}) sees every frame
routed or sent by the router, for tests and diagnostics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Hashable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import Interface

from execserver.relay.frames import Frame, FrameKind, encode_reset, parse_frame
from execserver.rendezvous.limits import (
    MAX_HARNESS_SOCKETS_PER_ENVIRONMENT,
    MAX_STREAMS_PER_HARNESS_SOCKET,
    SLOW_HARNESS_SECONDS,
)

log = Logger()

TO_EXECUTOR = "to_executor"
TO_HARNESS = "to_harness"

Tap = Callable[[str, str, Frame, bytes], None]


class IRelayPeer(Interface):
    """One socket, as the router drives it."""

    def writeFrame(raw: bytes) -> None:
        """Send one encoded frame."""

    def close() -> None:
        """Close the socket cleanly."""

    def abort() -> None:
        """Drop the socket."""

    def pauseReading(reason: Hashable) -> None:
        """Stop reading until every reason is withdrawn."""

    def resumeReading(reason: Hashable) -> None:
        """Withdraw a reason."""


@dataclass(eq=False)
class _Harness:
    peer: object
    environment_id: str
    streams: set[str] = field(default_factory=set)
    slow_timer: IDelayedCall | None = None


@dataclass(eq=False)
class _Environment:
    executor: object | None = None
    executor_blocked: bool = False
    #: stream id -> the harness that claimed it.
    routes: dict[str, _Harness] = field(default_factory=dict)
    harnesses: dict[object, _Harness] = field(default_factory=dict)


class Router:
    """
    The live routes of one rendezvous process.
    """

    def __init__(self, clock: IReactorTime, tap: Tap | None = None) -> None:
        self.clock = clock
        self.tap = tap
        self._environments: dict[str, _Environment] = {}
        self._harnesses: dict[object, _Harness] = {}
        self._executors: dict[object, str] = {}
        self._executor_waiters: dict[str, list[Deferred]] = {}

    def _environment(self, environment_id: str) -> _Environment:
        environment = self._environments.get(environment_id)
        if environment is None:
            environment = self._environments[environment_id] = _Environment()
        return environment

    def _forget_if_empty(self, environment_id: str) -> None:
        environment = self._environments.get(environment_id)
        if environment is not None and environment.executor is None and not environment.harnesses:
            del self._environments[environment_id]

    def has_executor(self, environment_id: str) -> bool:
        environment = self._environments.get(environment_id)
        return environment is not None and environment.executor is not None

    def executors(self) -> list[str]:
        """The environments whose executor socket is here."""
        return [environment_id for environment_id, environment in self._environments.items()
                if environment.executor is not None]

    def when_executor(self, environment_id: str) -> Deferred:
        """Fires once C{environment_id} has an executor socket (now, if it has)."""
        if self.has_executor(environment_id):
            return succeed(None)
        waiter = Deferred(lambda d: self._executor_waiters[environment_id].remove(d))
        self._executor_waiters.setdefault(environment_id, []).append(waiter)
        return waiter

    def deliver(self, peer, direction: str, environment_id: str, raw: bytes,
                frame: Frame | None = None) -> None:
        """
        The one place a frame leaves the router (routed, or a reset of its
        own); a subclass may watch or alter what passes here.
        """
        if self.tap is not None:
            self.tap(direction, environment_id, frame or parse_frame(raw), raw)
        peer.writeFrame(raw)

    # The executor's socket

    def executor_connected(self, environment_id: str, peer) -> None:
        """A (re)connected executor; one it replaces is closed."""
        environment = self._environment(environment_id)
        old = environment.executor
        if old is not None:
            self.executor_lost(old)
            old.close()
            environment = self._environment(environment_id)
        environment.executor = peer
        self._executors[peer] = environment_id
        for waiter in self._executor_waiters.pop(environment_id, []):
            waiter.callback(None)

    def executor_lost(self, peer) -> None:
        environment_id = self._executors.pop(peer, None)
        if environment_id is None:
            return
        environment = self._environments[environment_id]
        environment.executor = None
        if environment.executor_blocked:
            self.executor_blocked(peer, False, environment_id)
        for stream_id, harness in list(environment.routes.items()):
            self._unroute(environment, stream_id)
            self.deliver(harness.peer, TO_HARNESS, environment_id, encode_reset(stream_id))
        self._forget_if_empty(environment_id)

    def from_executor(self, peer, frame: Frame, raw: bytes) -> None:
        environment_id = self._executors.get(peer)
        if environment_id is None:
            return
        environment = self._environments[environment_id]
        harness = environment.routes.get(frame.stream_id)
        if harness is None:
            # A stream the harness side already left: the executor learnt
            # (or will learn) of it from our reset.
            return
        if frame.kind is FrameKind.RESET:
            self._unroute(environment, frame.stream_id)
        self.deliver(harness.peer, TO_HARNESS, environment_id, raw, frame)

    def executor_blocked(self, peer, blocked: bool, environment_id: str | None = None) -> None:
        """The executor's socket cannot take more (or can again)."""
        environment_id = environment_id or self._executors.get(peer)
        environment = self._environments.get(environment_id) if environment_id else None
        if environment is None or environment.executor_blocked == blocked:
            return
        environment.executor_blocked = blocked
        for harness in environment.harnesses.values():
            if blocked:
                harness.peer.pauseReading(peer)
            else:
                harness.peer.resumeReading(peer)

    # Harness sockets

    def harness_connected(self, environment_id: str, peer) -> bool:
        """
        A harness socket opened; C{False} when the environment has too many
        (the caller closes it).
        """
        environment = self._environment(environment_id)
        if len(environment.harnesses) >= MAX_HARNESS_SOCKETS_PER_ENVIRONMENT:
            self._forget_if_empty(environment_id)
            return False
        harness = _Harness(peer, environment_id)
        environment.harnesses[peer] = harness
        self._harnesses[peer] = harness
        if environment.executor_blocked:
            peer.pauseReading(environment.executor)
        return True

    def harness_lost(self, peer) -> None:
        harness = self._harnesses.get(peer)
        if harness is None:
            return
        self.harness_blocked(peer, False)
        del self._harnesses[peer]
        environment = self._environments[harness.environment_id]
        del environment.harnesses[peer]
        for stream_id in list(harness.streams):
            self._unroute(environment, stream_id)
            if environment.executor is not None:
                self.deliver(environment.executor, TO_EXECUTOR, harness.environment_id,
                           encode_reset(stream_id))
        self._forget_if_empty(harness.environment_id)

    def from_harness(self, peer, frame: Frame, raw: bytes) -> None:
        harness = self._harnesses.get(peer)
        if harness is None:
            return
        environment = self._environments[harness.environment_id]
        stream_id = frame.stream_id
        owner = environment.routes.get(stream_id)
        if owner is None:
            if frame.kind is FrameKind.RESET:
                return
            if (environment.executor is None
                    or len(harness.streams) >= MAX_STREAMS_PER_HARNESS_SOCKET):
                self.deliver(peer, TO_HARNESS, harness.environment_id, encode_reset(stream_id))
                return
            environment.routes[stream_id] = harness
            harness.streams.add(stream_id)
        elif owner is not harness:
            log.debug("rendezvous: dropping a frame on another harness's stream")
            return
        if frame.kind is FrameKind.RESET:
            self._unroute(environment, stream_id)
        self.deliver(environment.executor, TO_EXECUTOR, harness.environment_id, raw, frame)

    def harness_blocked(self, peer, blocked: bool) -> None:
        """A harness socket cannot take more (or can again)."""
        harness = self._harnesses.get(peer)
        if harness is None or (harness.slow_timer is not None) == blocked:
            return
        executor = self._environments[harness.environment_id].executor
        if blocked:
            harness.slow_timer = self.clock.callLater(SLOW_HARNESS_SECONDS, self._too_slow, harness)
            if executor is not None:
                executor.pauseReading(peer)
        else:
            if harness.slow_timer.active():
                harness.slow_timer.cancel()
            harness.slow_timer = None
            if executor is not None:
                executor.resumeReading(peer)

    def _too_slow(self, harness: _Harness) -> None:
        log.info("rendezvous: dropping a harness that read nothing for {seconds} s",
                 seconds=SLOW_HARNESS_SECONDS)
        harness.slow_timer = None
        environment = self._environments.get(harness.environment_id)
        if environment is not None and environment.executor is not None:
            environment.executor.resumeReading(harness.peer)
        harness.peer.abort()

    def _unroute(self, environment: _Environment, stream_id: str) -> None:
        harness = environment.routes.pop(stream_id, None)
        if harness is not None:
            harness.streams.discard(stream_id)
