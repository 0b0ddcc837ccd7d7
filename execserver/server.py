"""
The transport-free server core: one L{ServerConnection} per client
connection, all sharing one L{ExecServer}.

A connection must send C{initialize} (answered with a session id) and then
the C{initialized} notification before anything else is served. By default
requests run strictly one at a time in arrival order: the next message is
not even parsed until the current one has its reply. With
C{--concurrent-requests N} (N >= 2), requests after C{initialized} run
concurrently in two lanes of N: a control lane for cheap requests that must
stay responsive and an ordinary lane for the rest.

Connections take turns on the reactor thread (L{execserver.turns}): one
message each, round robin, with the reactor's I/O in between every couple
of milliseconds, so that a connection sending as fast as it can does not
hold up another's request.
"""

from __future__ import annotations

import collections
import itertools
from dataclasses import dataclass
from typing import Any, Callable

from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from twisted.python.failure import Failure
from zope.interface import implementer

from execserver import audit
from execserver import params as P
from execserver import rpc
from execserver.interfaces import IMessageProtocol, IMessageTransport
from execserver.extensions import ACK_FIELD
from execserver.metrics import Metrics
from execserver.process import MAX_UNACKNOWLEDGED_BYTES, MAX_UNACKNOWLEDGED_CHUNKS
from execserver.session import Session, SessionRegistry
from execserver.turns import TURN_SECONDS, Turns

log = Logger()

#: Malformed messages up to this size are diagnosed on the reactor thread;
#: larger ones in the thread pool.
INLINE_DIAGNOSIS_BYTES = 8 * 1024

#: What one connection may have waiting to be served (queued behind a
#: request in serial mode, or in flight) before we stop reading from it; we
#: read again once it is down to half. The reference stops reading a
#: connection after a few MiB too.
MAX_BACKLOG_BYTES = 4 * 1024 * 1024
MAX_BACKLOG_MESSAGES = 1024

#: A connection that has not sent initialize by then is closed: otherwise
#: idle sockets would be kept forever.
HANDSHAKE_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class Method:
    """
    A served method: its gating family, params schema, handler and lane.

    The handler is called as C{handler(connection, params)} and returns the
    result or a Deferred of it, or raises L{rpc.RpcError}.
    """

    family: str
    params: P.Type
    handler: Callable[["ServerConnection", Any], Any]
    control: bool = False
    #: A notification of our extensions, served only to a client that
    #: asked for the extension in C{initialize}; never a request.
    notification: bool = False


InitializeParams = P.Struct("InitializeParams", [
    P.Field("clientName", P.String()),
    P.Field("resumeSessionId", P.Optional(P.String()), default=None),
])


class ExecServer:
    """
    What all connections of one server process share.
    """

    def __init__(
        self,
        reactor,
        methods: dict[str, Method],
        environment_info: Callable[[], dict],
        concurrency: int = 1,
        threadpool: ThreadPool | None = None,
        clock=None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT_SECONDS,
        guardian=None,
        metrics: Metrics | None = None,
        turn_seconds: float = TURN_SECONDS,
    ) -> None:
        self.reactor = reactor
        #: Timers; the reactor unless a test injects a clock.
        self.clock = clock if clock is not None else reactor
        self.methods = methods
        self.environment_info = environment_info
        self.concurrency = concurrency
        #: How long a connection may take to send initialize; 0: forever.
        self.handshake_timeout = handshake_timeout
        self.registry = SessionRegistry(reactor, self.clock, guardian)
        #: The connections' turns on the reactor thread.
        self.turns = Turns(self.clock, turn_seconds)
        self._connection_ids = itertools.count(1)
        self.threadpool = threadpool
        #: Counted whether or not anyone scrapes them.
        self.metrics = metrics if metrics is not None else Metrics(frozenset(methods) | {"initialize"})

    def buildConnection(self) -> "ServerConnection":
        return ServerConnection(self, next(self._connection_ids))

    def run_blocking(self, function: Callable, *args, **kwargs) -> Deferred:
        """
        Run blocking work (file I/O) off the reactor thread.
        """
        return deferToThreadPool(self.reactor, self.threadpool, function, *args, **kwargs)

    def shutdown(self) -> Deferred:
        """
        Kill every managed process group; fires once all are reaped.
        """
        return self.registry.shutdown()

    def running_processes(self) -> list:
        """
        The managed processes that have not finished (exited, and their
        output read to the end).
        """
        return [process for session in self.registry.sessions.values()
                for process in session.processes.values()
                if not process.child.finished.called]


@implementer(IMessageProtocol)
class ServerConnection:
    """
    The JSON-RPC server side of one connection.
    """

    def __init__(self, server: ExecServer, connection_id: int = 0) -> None:
        self.server = server
        #: Names the connection in logs and the audit trail.
        self.id = connection_id
        self.reactor = server.reactor
        self.transport: IMessageTransport | None = None
        self.connected = False
        self.session: Session | None = None
        self.initialize_requested = False
        self.initialized = False
        #: Per-connection state of other modules (file handles, HTTP
        #: streams), keyed by the module that owns it.
        self.resources: dict[str, Any] = {}
        self._closers: list[Callable[[], None]] = []
        self._producers: set = set()
        self.paused = False
        #: Whether we asked the transport to stop delivering messages.
        self._reading_paused = False
        self._queue: collections.deque[bytes] = collections.deque()
        self._queued_bytes = 0
        self._busy = False
        self._in_flight: set[Deferred] = set()
        self._lanes: dict[bool, DeferredSemaphore] = {}
        self._handshake_timer = None
        if server.concurrency > 1:
            self._lanes = {
                True: DeferredSemaphore(server.concurrency),
                False: DeferredSemaphore(server.concurrency),
            }

    # IMessageProtocol

    def makeConnection(self, transport: IMessageTransport) -> None:
        self.transport = transport
        self.connected = True
        audit.record("connection.open", connection=self.id, peer=transport.peer)
        transport.registerProducer(self, True)
        if self.server.handshake_timeout > 0:
            self._handshake_timer = self.server.clock.callLater(
                self.server.handshake_timeout, self._handshake_timed_out)
            self.onClose(self._cancel_handshake_timer)

    def _handshake_timed_out(self) -> None:
        self._handshake_timer = None
        log.info("no initialize within {seconds} s; closing the connection",
                 seconds=self.server.handshake_timeout)
        self.transport.loseConnection()

    def _cancel_handshake_timer(self) -> None:
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        self._handshake_timer = None

    def messageReceived(self, data: bytes) -> None:
        self._queue.append(data)
        self._queued_bytes += len(data)
        self._drain()
        self._update_reading()

    def connectionLost(self, reason: Failure) -> None:
        if not self.connected:
            return
        self.connected = False
        audit.record("connection.close", connection=self.id)
        self.server.turns.leave(self)
        self._queue.clear()
        self._queued_bytes = 0
        for pending in list(self._in_flight):
            pending.cancel()
        closers, self._closers = self._closers, []
        for close in reversed(closers):
            close()
        if self.session is not None:
            self.session.detach(self)

    # What handlers and sessions use

    def sendMessage(self, data: bytes | tuple[bytes, ...]) -> None:
        if self.connected:
            self.transport.sendMessage(data)

    def flush(self) -> None:
        if self.connected:
            self.transport.flush()

    def notify(self, method: str, params: Any) -> None:
        self.sendMessage(rpc.encode_notification(method, params))

    def onClose(self, close: Callable[[], None]) -> None:
        """
        Run C{close} when the connection ends (HTTP streams, file handles).
        """
        self._closers.append(close)

    def addProducer(self, producer) -> None:
        """
        Pause C{producer} (an IPushProducer streaming into this connection)
        whenever the connection's outgoing buffer is full.
        """
        self._producers.add(producer)
        if self.paused:
            producer.pauseProducing()

    def removeProducer(self, producer) -> None:
        self._producers.discard(producer)

    # IPushProducer: the transport pauses us while its buffer is full, and
    # we pass that on to whatever streams into this connection.

    def pauseProducing(self) -> None:
        self.paused = True
        if self.session is not None:
            self.session.pauseProducing()
        for producer in list(self._producers):
            producer.pauseProducing()
        # A peer that does not read our answers gets no more requests served.
        self._update_reading()

    def resumeProducing(self) -> None:
        self.paused = False
        if self.session is not None:
            self.session.resumeProducing()
        for producer in list(self._producers):
            producer.resumeProducing()
        self._update_reading()

    def stopProducing(self) -> None:
        pass

    # Dispatch

    def _drain(self) -> None:
        """
        Serve what is queued, in this connection's turns.
        """
        if self._servable():
            self.server.turns.want(self)

    def _servable(self) -> bool:
        return bool(self._queue) and not self._busy and self.connected

    def serve_next(self) -> bool:
        """
        Serve the next queued message (our turn); whether another may
        follow at once.
        """
        if self._servable():
            data = self._queue.popleft()
            self._queued_bytes -= len(data)
            pending = self._handle(data)
            if pending is not None:
                self._busy = True
                pending.addBoth(self._unblock)
            self._update_reading()
        return self._servable()

    def _unblock(self, _: Any) -> None:
        self._busy = False
        self._drain()
        self._update_reading()

    def _update_reading(self) -> None:
        """
        Stop reading from the peer while its answers back up or too much of
        what it sent waits to be served; read again once both are over.
        """
        if not self.connected:
            return
        waiting = len(self._queue) + len(self._in_flight)
        if self._reading_paused:
            backlog = (self._queued_bytes > MAX_BACKLOG_BYTES // 2
                       or waiting > MAX_BACKLOG_MESSAGES // 2)
        else:
            backlog = self._queued_bytes > MAX_BACKLOG_BYTES or waiting > MAX_BACKLOG_MESSAGES
        pause = backlog or self.paused
        if pause != self._reading_paused:
            self._reading_paused = pause
            if pause:
                self.transport.pauseProducing()
            else:
                self.transport.resumeProducing()

    def _handle(self, data: bytes) -> Deferred | None:
        """
        Handle one message; a Deferred means "wait for it before the next".
        """
        try:
            message = rpc.parse(data, diagnose_now=len(data) <= INLINE_DIAGNOSIS_BYTES)
        except rpc.NeedsDiagnosis:
            # The fast parser refused it, which does not make it malformed
            # (an escaped surrogate pair, say): the full parser decides,
            # and names the first problem the way the reference does. For a
            # large message that takes a while: let the reactor serve the
            # other connections meanwhile. This one waits for it.
            pending = self.server.run_blocking(_diagnose, data)
            return pending.addCallbacks(self._diagnosed, self._diagnosis_failed)
        except rpc.MalformedMessage as e:
            self._malformed(str(e))
            return None
        return self._dispatch(message)

    def _diagnosed(self, outcome: rpc.Message | str) -> Deferred | None:
        if isinstance(outcome, str):
            self._malformed(outcome)
            return None
        return self._dispatch(outcome)

    def _diagnosis_failed(self, failure: Failure) -> None:
        log.failure("parsing a message failed", failure)
        if self.connected:
            self.transport.abortConnection()

    def _malformed(self, detail: str) -> None:
        if self.transport.parseErrorPrefix is None:
            # A relay stream: the reference resets it instead of answering.
            log.info("a message that is not JSON-RPC; closing the connection")
            self.transport.abortConnection()
            return
        self._send_reply(rpc.encode_error(
            rpc.MALFORMED_ID,
            rpc.INVALID_REQUEST,
            f"{self.transport.parseErrorPrefix}: {detail}",
        ))

    def _dispatch(self, message: rpc.Message) -> Deferred | None:
        if not self.connected:
            return None
        if isinstance(message, rpc.Request):
            return self._request(message)
        if isinstance(message, rpc.Notification) and message.method == "initialized":
            if self.session is None:
                log.info("initialized before initialize; closing the connection")
                self.transport.abortConnection()
            else:
                self.initialized = True
            return None
        if isinstance(message, rpc.Notification) and self._notification(message):
            return None
        log.info("unexpected {kind} from client; closing the connection",
                 kind=type(message).__name__)
        self.transport.abortConnection()
        return None

    def _notification(self, message: rpc.Notification) -> bool:
        """
        Serve a notification of an extension the client asked for.

        @return: whether it was one; any other notification is unexpected.
        """
        method = self.server.methods.get(message.method)
        # The one such extension is output acknowledgement.
        if (method is None or not method.notification or not self.initialized
                or not self.session.acknowledging):
            return False
        try:
            method.handler(self, _decode(method.params, message.params))
        except rpc.RpcError as e:
            log.info("bad {method} notification ({error}); closing the connection",
                     method=message.method, error=e.message)
            self.transport.abortConnection()
        return True

    def _request(self, request: rpc.Request) -> Deferred | None:
        started = self.server.clock.seconds()
        method = self.server.methods.get(request.method)
        if method is not None and method.notification:
            method = None
        if request.method == "initialize":
            run = self._initialize
        elif method is None:
            self._reply_error(request, rpc.RpcError(
                rpc.METHOD_NOT_FOUND,
                f"exec-server stub does not implement `{request.method}` yet",
            ), started)
            return None
        else:
            run = lambda params: self._call(method, params)
        if self.initialized and self._lanes:
            lane = self._lanes[method is not None and method.control]
            self._track(lane.run(run, request.params), request, started)
            return None
        try:
            result = run(request.params)
        except rpc.RpcError as e:
            self._reply_error(request, e, started)
            return None
        except Exception:
            self._internal_error(request, Failure(), started)
            return None
        if isinstance(result, Deferred):
            return self._track(result, request, started)
        self._reply(request, result, started)
        return None

    def _track(self, pending: Deferred, request: rpc.Request, started: float) -> Deferred:
        self._in_flight.add(pending)

        def done(result):
            self._in_flight.discard(pending)
            if isinstance(result, Failure):
                if result.check(rpc.RpcError):
                    self._reply_error(request, result.value, started)
                elif not result.check(CancelledError):
                    self._internal_error(request, result, started)
            else:
                self._reply(request, result, started)
            self._update_reading()

        pending.addBoth(done)
        return pending

    def _reply(self, request: rpc.Request, result: Any, started: float) -> None:
        try:
            encoded = rpc.encode_response(request.id, result)
        except Exception:
            self._internal_error(request, Failure(), started)
            return
        self._measure(request, True, started)
        self._send_reply(encoded)

    def _send_reply(self, encoded: bytes) -> None:
        self.sendMessage(encoded)
        if not self._queue:
            # Nothing else of this peer's is waiting to be answered in
            # this turn: the reply goes now, not at the end of the turn.
            self.flush()

    def _internal_error(self, request: rpc.Request, failure: Failure, started: float) -> None:
        """
        A bug of ours: the peer gets an error; the connection and everyone
        else carry on.
        """
        log.failure("handler for {method} failed", failure, method=request.method)
        self._reply_error(request, rpc.internal_error("internal error"), started)

    def _reply_error(self, request: rpc.Request, error: rpc.RpcError, started: float) -> None:
        self._measure(request, False, started)
        self._send_reply(rpc.encode_error(request.id, error.code, error.message))

    def _measure(self, request: rpc.Request, succeeded: bool, started: float) -> None:
        server = self.server
        server.metrics.request_completed(
            request.method, succeeded, server.clock.seconds() - started)

    def _call(self, method: Method, params: Any) -> Any:
        # As in the reference, params are decoded before the handshake gate.
        decoded = _decode(method.params, params)
        self._gate(method.family)
        return method.handler(self, decoded)

    def _gate(self, family: str) -> None:
        if not self.initialize_requested:
            raise rpc.invalid_request(f"client must call initialize before using {family} methods")
        if not self.initialized:
            raise rpc.invalid_request(f"client must send initialized before using {family} methods")

    def _initialize(self, params: Any) -> dict:
        self._cancel_handshake_timer()
        if self.initialize_requested:
            raise rpc.invalid_request("initialize may only be sent once per connection")
        decoded = _decode(InitializeParams, params)
        registry = self.server.registry
        resume = decoded["resumeSessionId"]
        if resume is None:
            self.session = registry.create(self)
            event = "session.create"
        else:
            self.session = registry.resume(resume, self)
            event = "session.resume"
        audit.record(event, session=self.session.id, connection=self.id)
        self.initialize_requested = True
        # Our extension is an extra member, which the reference ignores;
        # not a field of the params struct, whose sequence form and
        # errors stay the reference's.
        acknowledging = isinstance(params, dict) and params.get(ACK_FIELD) is True
        self.session.set_acknowledging(acknowledging)
        result = {
            "sessionId": self.session.id,
            "environmentInfo": self.server.environment_info(),
        }
        if acknowledging:
            result[ACK_FIELD] = {
                "maxUnackedBytes": MAX_UNACKNOWLEDGED_BYTES,
                "maxUnackedChunks": MAX_UNACKNOWLEDGED_CHUNKS,
            }
        return result


def _diagnose(data: bytes | str) -> rpc.Message | str:
    """
    Parse a message that the fast parser refused (in the thread pool).

    @return: the message, or the reference's text for its first problem:
        returned, not raised, so that no traceback keeps the message alive
        (a Failure from the thread pool and its frames form a cycle that
        only the cycle collector frees, which an idle server never runs).
    """
    try:
        return rpc.parse(data)
    except rpc.MalformedMessage as e:
        return str(e)


def _decode(schema: P.Type, params: Any) -> Any:
    try:
        return P.decode_params(schema, params)
    except P.DecodeError as e:
        raise rpc.invalid_params(str(e)) from None
