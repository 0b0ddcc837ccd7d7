"""
Sessions outlive connections.

A session owns the processes a client started. When its connection goes
away the session is detached: processes keep running and their events keep
being recorded, but nothing is sent. A new connection may resume it with
C{initialize}'s C{resumeSessionId} within L{DETACHED_TTL_SECONDS}; after
that the session expires and every process group it owns is killed.

The reference (0.169.0) waits 80 s, not the 30 s its older documentation
gives; we follow the binary (docs/reference/process.md §7).
"""

from __future__ import annotations

import uuid
from collections import deque
from typing import TYPE_CHECKING, Protocol

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from execserver import audit, rpc
from execserver.process import CATCH_UP_SECONDS, CLOSED_RETENTION_SECONDS, ManagedProcess

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall

#: How long a detached session waits to be resumed.
DETACHED_TTL_SECONDS = 80.0

#: How long stopping the server waits for its killed children to be reaped.
SHUTDOWN_REAP_SECONDS = 5.0

log = Logger()


class Attachment(Protocol):
    """
    What a session needs of the connection it is attached to.
    """

    def sendMessage(self, data: bytes | tuple[bytes, ...]) -> None: ...

    def flush(self) -> None: ...


class Session:
    def __init__(self, registry: "SessionRegistry", session_id: str) -> None:
        self.registry = registry
        self.reactor = registry.reactor
        self.clock = registry.clock
        self.id = session_id
        self.processes: dict[str, ManagedProcess] = {}
        self.connection: Attachment | None = None
        self.paused = False
        #: Whether the attached client acknowledges output (our extension,
        #: asked for in each C{initialize}).
        self.acknowledging = False
        self.deadline: float | None = None
        self._expiry: IDelayedCall | None = None
        self._catch_up: IDelayedCall | None = None
        #: Closed processes still readable, with when each goes, oldest
        #: first (the retention is the same for all, so the deadlines come
        #: in order); one timer, for the oldest.
        self._closed: deque[tuple[float, ManagedProcess]] = deque()
        self._eviction: IDelayedCall | None = None

    def deliver(self, message: bytes | tuple[bytes, ...]) -> None:
        """
        Send a notification if a connection is attached; drop it otherwise
        (it stays readable through C{process/read}).
        """
        if self.connection is not None:
            self.connection.sendMessage(message)

    def flush(self) -> None:
        """
        Send what was delivered at once rather than with the rest of the
        reactor's turn.
        """
        if self.connection is not None:
            self.connection.flush()

    def attach(self, connection: Attachment) -> None:
        self.connection = connection
        self.deadline = None
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if any(process.log.holding for process in self.processes.values()):
            self._catch_up = self.clock.callLater(CATCH_UP_SECONDS, self._release_all)

    def detach(self, connection: Attachment) -> None:
        if self.connection is not connection:
            return
        self.connection = None
        audit.record("session.detach", session=self.id)
        self._cancel_catch_up()
        self.paused = False
        for process in self.processes.values():
            process.hold()
        self.deadline = self.clock.seconds() + DETACHED_TTL_SECONDS
        self._expiry = self.clock.callLater(DETACHED_TTL_SECONDS, self.expire)

    def set_acknowledging(self, acknowledging: bool) -> None:
        self.acknowledging = acknowledging
        for process in list(self.processes.values()):
            process.set_acknowledging(acknowledging)

    def _release_all(self) -> None:
        self._catch_up = None
        for process in list(self.processes.values()):
            process.release()

    def _cancel_catch_up(self) -> None:
        if self._catch_up is not None and self._catch_up.active():
            self._catch_up.cancel()
        self._catch_up = None

    def expire(self) -> None:
        audit.record("session.expire", session=self.id)
        self._expiry = None
        self.registry.remove(self)
        self.kill_all()

    def kill_all(self) -> list[Deferred]:
        """
        Kill every process group of the session.

        @return: Deferreds that fire as each child is reaped and its streams end.
        """
        processes, self.processes = self.processes, {}
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None
        self._cancel_catch_up()
        if self._eviction is not None and self._eviction.active():
            self._eviction.cancel()
        self._eviction = None
        self._closed.clear()
        return [process.discard() for process in processes.values()]

    def retain_closed(self, process: ManagedProcess) -> None:
        """
        Keep a closed process readable for L{CLOSED_RETENTION_SECONDS}, then
        free its id.
        """
        self._closed.append((self.clock.seconds() + CLOSED_RETENTION_SECONDS, process))
        if self._eviction is None:
            self._eviction = self.clock.callLater(CLOSED_RETENTION_SECONDS, self._evict_closed)

    def _evict_closed(self) -> None:
        self._eviction = None
        now = self.clock.seconds()
        closed = self._closed
        while closed and closed[0][0] <= now:
            self.evict_process(closed.popleft()[1])
        if closed:
            self._eviction = self.clock.callLater(closed[0][0] - now, self._evict_closed)

    def evict_process(self, process: ManagedProcess) -> None:
        if self.processes.get(process.process_id) is process:
            del self.processes[process.process_id]
            process.evicted()

    # IPushProducer, on behalf of every process of the session: the attached
    # connection pauses them while its outgoing buffer is full.

    def pauseProducing(self) -> None:
        self.paused = True
        for process in self.processes.values():
            process.update_reading()

    def resumeProducing(self) -> None:
        self.paused = False
        for process in list(self.processes.values()):
            process.update_reading()

    def stopProducing(self) -> None:
        self.resumeProducing()


class SessionRegistry:
    """
    Every session of one server process.
    """

    def __init__(self, reactor, clock: IReactorTime | None = None, guardian=None) -> None:
        #: Runs the child processes' I/O.
        self.reactor = reactor
        #: Runs the timers (detached sessions, closed processes).
        self.clock = clock if clock is not None else reactor
        #: Kills the process groups if the server dies without doing it
        #: (an L{execserver.guardian.Guardian}), when there is one.
        self.guardian = guardian
        self.sessions: dict[str, Session] = {}

    def create(self, connection: Attachment) -> Session:
        session = Session(self, str(uuid.uuid4()))
        self.sessions[session.id] = session
        session.attach(connection)
        return session

    def resume(self, session_id: str, connection: Attachment) -> Session:
        """
        @raise rpc.RpcError: the reference's error when the session cannot
            be resumed.
        """
        session = self.sessions.get(session_id)
        if session is not None and session.connection is None:
            if self.clock.seconds() >= session.deadline:
                session.expire()
                session = None
        if session is None:
            raise rpc.invalid_request(f"unknown session id {session_id}")
        if session.connection is not None:
            raise rpc.RpcError(
                rpc.SESSION_ALREADY_ATTACHED,
                f"session {session_id} is already attached to another connection",
            )
        session.attach(connection)
        return session

    def remove(self, session: Session) -> None:
        if self.sessions.get(session.id) is session:
            del self.sessions[session.id]

    def shutdown(self) -> Deferred:
        """
        Kill every process of every session.

        @return: fires once every child has been reaped and its streams
            have ended, or after L{SHUTDOWN_REAP_SECONDS} at the latest: a
            child whose end is never observed must not keep the server from
            stopping.
        """
        sessions, self.sessions = self.sessions, {}
        processes = [p for session in sessions.values() for p in session.processes.values()]
        finishing = [d for session in sessions.values() for d in session.kill_all()]
        done = Deferred()

        def finished(_=None) -> None:
            if deadline.active():
                deadline.cancel()
            if not done.called:
                done.callback(None)

        def give_up() -> None:
            for process in processes:
                if not process.child.finished.called:
                    log.warn("child {pid} was not seen to exit after being killed",
                             pid=process.child.pid)
                    process.child.abandon()
            finished()

        deadline = self.clock.callLater(SHUTDOWN_REAP_SECONDS, give_up)
        DeferredList(finishing).addCallback(finished)
        return done
