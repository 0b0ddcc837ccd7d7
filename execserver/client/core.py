"""
L{ExecServerClient}: one session with an exec-server, kept alive across
dropped connections.

The client is a small state machine; each state is a class below and every
transition goes through L{ExecServerClient._transition}:

    Connecting ──ok──▶ Ready ──transport lost──▶ Recovering ──resumed──▶ Ready
        │                │                           │
        │ failed         │ lost, not resumable       │ budget spent, or the
        ▼                ▼                           ▼ session is gone
      Failed ◀───────────┴───────────────────────────┘
    (any state) ──close()──▶ Closed

Recovering reconnects with backoff for up to L{RECOVERY_SECONDS} and resumes
the session (C{initialize} with C{resumeSessionId}). Then, in this order, it
catches every live process up from its last delivered sequence number (one
C{process/read} each), asks about processes whose C{process/start} was in
flight, and sends again the requests that may be repeated, in the order
they were first made. What happens to each request in flight when the
connection drops depends on its method (L{REPLAY_POLICY}):

* C{RETRY}: read-only requests; C{process/write}, which the server
  deduplicates by C{writeId}; and C{process/closeStdin}, which is
  idempotent: sent again after the resume.
* C{PROBE}: C{process/start}. Never sent again; the resumed session is asked
  with C{process/read} whether the process exists. It does: the start
  succeeded. It does not: the start fails with L{StartNotApplied}.
* C{FAIL}: every other mutating request fails at once with
  L{OutcomeUnknown}.
* C{LOST}: requests on per-connection resources (file handles) fail with
  L{HandleLost}; C{GONE}: C{fs/close} succeeds, as the server closed every
  file handle of the lost connection.

Output is acknowledged when the server offers it (our server's extension,
C{outputAcks} in C{initialize}): the client then tells the server, every
1/L{ACK_FRACTION} of its window, which events it has received, and the
server never evicts output that was not acknowledged, so nothing in flight
at a drop is lost, however much it is. A server without the extension (the
reference) keeps its replay window, and output beyond it that was in flight
fails the handle with L{OutputLost}.

Requests made while recovering wait and are sent after the resume. If the
recovery fails, every pending request and process handle fails with one
L{RecoveryFailed}. A server that closes the connection because it is
shutting down is not asked to resume: everything fails at once with
L{ServerGoingAway}.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from typing import Any, Callable, Sequence

import pybase64
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from execserver import rpc
from execserver.client.connectors import IConnector
from execserver.client.errors import (
    ClientClosed,
    ConnectFailed,
    ConnectionDropped,
    HandleLost,
    OutcomeUnknown,
    RecoveryFailed,
    RemoteError,
    ServerGoingAway,
    StartNotApplied,
    describe,
)
from execserver.client.fs import FileSystem, as_uri
from execserver.client.http import Http
from execserver.client.process import CLOSED, EXITED, OUTPUT, ProcessHandle
from execserver.client.rpc import RpcConnection
from execserver.extensions import ACK_FIELD, ACK_METHOD

log = Logger()

#: How long the client tries to resume its session after the connection
#: drops, counted from the drop.
RECOVERY_SECONDS = 25.0
#: The wait before the second reconnect attempt (the first is immediate);
#: it doubles with every failed attempt up to L{MAX_RETRY_DELAY}.
FIRST_RETRY_DELAY = 0.05
MAX_RETRY_DELAY = 1.0
#: How long one connection attempt (open and handshake) may take.
ATTEMPT_SECONDS = 10.0

DEFAULT_CLIENT_NAME = "execserver-client"

#: A process's events are acknowledged each time this fraction of the
#: server's window (bytes or chunks) has arrived since the last
#: acknowledgement: far enough below the window that the server does not
#: wait for an acknowledgement while output is on its way (what the socket
#: buffers hold comes on top), and rarely enough that acknowledging costs
#: little (each one is a WebSocket message both sides handle).
ACK_FRACTION = 4

RETRY = "retry"
PROBE = "probe"
FAIL = "fail"
LOST = "lost"
GONE = "gone"

#: What happens to a request that is in flight when the connection drops.
#: Methods not listed are treated as C{FAIL}.
REPLAY_POLICY = {
    "process/read": RETRY,
    "process/write": RETRY,
    "process/closeStdin": RETRY,
    "environment/info": RETRY,
    "environment/status": RETRY,
    "fs/readFile": RETRY,
    "fs/getMetadata": RETRY,
    "fs/readDirectory": RETRY,
    "fs/canonicalize": RETRY,
    "fs/walk": RETRY,
    "process/start": PROBE,
    "fs/open": LOST,
    "fs/readBlock": LOST,
    "fs/writeBlock": LOST,
    "fs/close": GONE,
}


class _Call:
    """
    One request made by a caller, across however many connections it takes.

    @ivar sent_on: the connection it is in flight on, or None while it waits
        to be sent.
    @ivar probe: for C{PROBE} requests, asks the resumed session for the
        outcome instead of sending the request again.
    """

    __slots__ = ("method", "params", "policy", "result", "sent_on", "probe", "needs_probe")

    def __init__(self, method: str, params: Any, probe: Callable[[], Deferred] | None = None):
        self.method = method
        self.params = params
        self.policy = REPLAY_POLICY.get(method, FAIL)
        self.result = Deferred()
        self.sent_on: RpcConnection | None = None
        self.probe = probe
        #: It was in flight when a connection dropped: ask, do not resend.
        self.needs_probe = False


class _State:
    """
    A state of the client; this base is the one before L{connect}, in
    which requests wait.
    """

    name = "idle"

    def __init__(self, client: "ExecServerClient") -> None:
        self.client = client

    def enter(self) -> None:
        pass

    def submit(self, call: _Call) -> None:
        """
        A new request; by default it waits for the next resume.
        """

    def link_lost(self, link: RpcConnection, reason: Failure) -> None:
        pass

    def leave(self) -> None:
        pass


class _Connecting(_State):
    """
    The first connection and handshake; requests wait for it.
    """

    name = "connecting"

    def __init__(self, client: "ExecServerClient") -> None:
        super().__init__(client)
        self.link: RpcConnection | None = None
        self._timer = None

    def enter(self) -> None:
        client = self.client
        self.link, opening = client._open_link(None)
        self._timer = client.clock.callLater(ATTEMPT_SECONDS, self._timed_out)
        opening.addCallbacks(self._opened, self._failed)

    def _opened(self, result: dict) -> None:
        if self.client._state is not self:
            return
        self.client._established(self.link, result)

    def _failed(self, reason: Failure) -> None:
        if self.client._state is not self:
            return
        self.client._transition(_Failed(self.client, ConnectFailed(
            f"could not connect to {self.client.connector.description}: {describe(reason)}"
        )))

    def _timed_out(self) -> None:
        self._timer = None
        self._failed(Failure(ConnectionDropped(
            f"no answer within {ATTEMPT_SECONDS:g} s"
        )))

    def leave(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self.client._link is not self.link and self.link is not None:
            self.link.abandon()


class _Ready(_State):
    name = "ready"

    def submit(self, call: _Call) -> None:
        self.client._send(call)

    def link_lost(self, link: RpcConnection, reason: Failure) -> None:
        client = self.client
        if link.going_away:
            client._transition(_Failed(client, client._going_away()))
        elif client.connector.resumable:
            client._transition(_Recovering(client, reason))
        else:
            client._transition(_Failed(client, RecoveryFailed(
                f"lost the connection to {client.connector.description} "
                f"({describe(reason)}); its session cannot be resumed"
            )))


class _Recovering(_State):
    """
    Reconnect with backoff and resume the session, within the budget.
    """

    name = "recovering"

    def __init__(self, client: "ExecServerClient", reason: Failure) -> None:
        super().__init__(client)
        self.first_reason = describe(reason)
        self.last_reason = self.first_reason
        self.delay = FIRST_RETRY_DELAY
        self.link: RpcConnection | None = None
        self._budget = None
        self._attempt_timer = None
        self._retry = None

    def enter(self) -> None:
        log.info("connection to {server} lost ({reason}); resuming session {session}",
                 server=self.client.connector.description, reason=self.first_reason,
                 session=self.client.session_id)
        self._budget = self.client.clock.callLater(self.client.recovery_seconds, self._give_up)
        self._attempt()

    def _attempt(self) -> None:
        client = self.client
        self._retry = None
        link, opening = client._open_link(client.session_id)
        self.link = link
        self._attempt_timer = client.clock.callLater(
            ATTEMPT_SECONDS, self._attempt_failed,
            Failure(ConnectionDropped(f"no answer within {ATTEMPT_SECONDS:g} s")), link,
        )
        opening.addCallbacks(self._resumed, self._attempt_failed,
                             callbackArgs=(link,), errbackArgs=(link,))

    def _resumed(self, result: dict, link: RpcConnection) -> None:
        if self.link is not link or self.client._state is not self:
            return
        self._cancel_attempt_timer()
        if result.get("sessionId") != self.client.session_id:
            self._give_up_with(RecoveryFailed(
                f"the server resumed session {result.get('sessionId')!r} instead of "
                f"{self.client.session_id!r}"
            ))
            return
        self.client._resumed(link, result)

    def _attempt_failed(self, reason: Failure, link: RpcConnection) -> None:
        if self.link is not link or self.client._state is not self:
            return
        self.link = None
        self._cancel_attempt_timer()
        if link.going_away:
            self._give_up_with(self.client._going_away())
            return
        link.abandon()
        self.last_reason = describe(reason)
        error = reason.value
        if isinstance(error, RemoteError) and error.code != rpc.SESSION_ALREADY_ATTACHED:
            # The session is gone (expired, or another server answers).
            self._give_up()
            return
        # Refused, dropped, or the server still thinks the old connection
        # is attached (it has not noticed the drop yet): try again.
        self._retry = self.client.clock.callLater(self.delay, self._attempt)
        self.delay = min(self.delay * 2, MAX_RETRY_DELAY)

    def _cancel_attempt_timer(self) -> None:
        if self._attempt_timer is not None and self._attempt_timer.active():
            self._attempt_timer.cancel()
        self._attempt_timer = None

    def _give_up(self) -> None:
        client = self.client
        self._give_up_with(RecoveryFailed(
            f"lost the connection to {client.connector.description} ({self.first_reason}) "
            f"and could not resume session {client.session_id} within "
            f"{client.recovery_seconds:g} s: {self.last_reason}"
        ))

    def _give_up_with(self, error: Exception) -> None:
        if self.client._state is self:
            self.client._transition(_Failed(self.client, error))

    def leave(self) -> None:
        self._cancel_attempt_timer()
        for timer in (self._budget, self._retry):
            if timer is not None and timer.active():
                timer.cancel()
        if self.link is not None and self.client._link is not self.link:
            self.link.abandon()
        self.link = None


class _Failed(_State):
    name = "failed"

    def __init__(self, client: "ExecServerClient", error: Exception) -> None:
        super().__init__(client)
        self.error = error

    def enter(self) -> None:
        log.warn("{error}", error=str(self.error))
        self.client._fail_everything(self.error)

    def submit(self, call: _Call) -> None:
        self.client._outstanding.pop(call, None)
        call.result.errback(self.error)


class _Closed(_Failed):
    name = "closed"

    def enter(self) -> None:
        client = self.client
        if client._link is not None:
            link, client._link = client._link, None
            link.close()
        client._fail_everything(self.error)


class ExecServerClient:
    """
    A client of one exec-server session.

        client = ExecServerClient(WebSocketConnector(reactor, "ws://127.0.0.1:8765"))
        await client.connect()
        handle = await client.start_process(["ls", "-l"])
        exit_code = await handle.when_closed()

    @param connector: an L{IConnector}; asked for a new connection at the
        start and after every drop.
    @param clock: times the recovery budget, backoff and attempt deadlines.
    @param acknowledge_output: ask for output acknowledgement (used only if
        the server offers it); without it, what the server's replay window
        cannot hold of the output in flight at a drop is lost.
    """

    def __init__(
        self,
        connector: IConnector,
        clock: IReactorTime | None = None,
        client_name: str = DEFAULT_CLIENT_NAME,
        recovery_seconds: float = RECOVERY_SECONDS,
        acknowledge_output: bool = True,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.connector = connector
        self.clock = clock
        self.client_name = client_name
        self.recovery_seconds = recovery_seconds
        self.acknowledge_output = acknowledge_output
        #: While the server takes acknowledgements: acknowledge a process
        #: after this many bytes or events (see L{ACK_FRACTION}).
        self.ack_every: tuple[int, int] | None = None
        self.session_id: str | None = None
        #: The server's description of itself, from the last handshake.
        self.environment: dict | None = None
        self._link: RpcConnection | None = None
        self._state: _State = _State(self)
        self._outstanding: OrderedDict[_Call, None] = OrderedDict()
        self._handles: dict[str, ProcessHandle] = {}
        self._streams: dict[str, Any] = {}
        self._pausers: set = set()
        self._connected: Deferred | None = None
        self._write_prefix = uuid.uuid4().hex[:12]
        self._writes = 0
        self._process_ids = 0
        #: File helpers (L{FileSystem}).
        self.fs = FileSystem(self)
        #: HTTP helpers (L{Http}).
        self.http = Http(self)

    @property
    def state(self) -> str:
        """
        C{idle}, C{connecting}, C{ready}, C{recovering}, C{failed} or
        C{closed}.
        """
        return self._state.name

    @property
    def failure(self) -> Exception | None:
        """
        Why the client failed or was closed, if it did.
        """
        return getattr(self._state, "error", None)

    # Lifecycle

    def connect(self) -> Deferred:
        """
        Connect and open a new session.

        @return: fires with this client once the session is ready, or fails
            with L{ConnectFailed}.
        """
        self._connected = Deferred()
        connected = self._connected
        self._transition(_Connecting(self))
        return connected

    def close(self) -> None:
        """
        Close the connection. Pending requests and process handles fail with
        L{ClientClosed}; the server keeps the session's processes until the
        session expires.
        """
        if not isinstance(self._state, _Failed):
            self._transition(_Closed(self, ClientClosed("the client was closed")))
        elif self._link is not None:
            self._link.close()

    def drop_connection(self) -> None:
        """
        Drop the current connection abruptly, as a network failure would;
        the client then recovers as it would from any drop.
        """
        if self._link is not None and self._link.transport is not None:
            self._link.transport.abortConnection()

    # Requests

    def call(self, method: str, params: Any = None, probe=None) -> Deferred:
        """
        Send a request; what happens to it if the connection drops is given
        by L{REPLAY_POLICY}.

        @return: fires with the result, or fails with L{RemoteError} or
            another L{ClientError}.
        """
        call = _Call(method, params, probe)
        self._outstanding[call] = None
        self._state.submit(call)
        return call.result

    def start_process(
        self,
        argv: Sequence[str],
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        tty: bool = False,
        pipe_stdin: bool = False,
        arg0: str | None = None,
        env_policy: dict | None = None,
        process_id: str | None = None,
        receiver=None,
    ) -> Deferred:
        """
        Start a process.

        @param cwd: a C{file:} URI or an absolute path on the server's host;
            by default the server's working directory.
        @param env: the child's environment. Without C{env_policy} the child
            gets exactly this (the server's own environment is not
            inherited).
        @param env_policy: the server-side policy (C{inherit}: C{core},
            C{all} or C{none}, ...), see the protocol.
        @param receiver: an L{IProcessReceiver}; it is registered before the
            request is sent, so early output is never missed.
        @return: fires with a L{ProcessHandle} once the server has started
            the process (its output may already have been delivered).
        """
        if process_id is None:
            self._process_ids += 1
            process_id = f"{self._write_prefix}-p{self._process_ids}"
        if process_id in self._handles:
            return fail(ValueError(f"process id {process_id!r} is already in use"))
        params: dict[str, Any] = {
            "processId": process_id,
            "argv": list(argv),
            "cwd": as_uri(cwd) if cwd is not None else self.default_cwd(),
            "env": dict(env or {}),
            "tty": tty,
            "pipeStdin": pipe_stdin,
            "arg0": arg0,
        }
        if env_policy is not None:
            params["envPolicy"] = env_policy
        handle = ProcessHandle(self, process_id, receiver)
        self._handles[process_id] = handle
        starting = self.call("process/start", params, probe=lambda: self._probe_start(handle))

        def started(result):
            handle._started(result)
            return handle

        def failed(reason):
            handle._start_failed(reason)
            return reason

        return starting.addCallbacks(started, failed)

    def _probe_start(self, handle: ProcessHandle) -> Deferred:
        """
        Was a C{process/start} that was in flight when the connection
        dropped carried out? A process under that id says it was.
        """
        reading = self._internal_request(
            "process/read", {"processId": handle.process_id, "afterSeq": handle.delivered_seq}
        )

        def exists(result):
            handle._started({})
            handle._apply_read(result)
            return {"processId": handle.process_id, "sandboxType": None}

        def missing(reason):
            error = reason.value
            if (isinstance(error, RemoteError) and error.code == rpc.INVALID_REQUEST
                    and error.message.startswith("unknown process id")):
                raise StartNotApplied(
                    f"the connection was lost before the server started process "
                    f"{handle.process_id}; it was not started"
                )
            return reason

        return reading.addCallbacks(exists, missing)

    def default_cwd(self) -> str:
        """
        The server's working directory (or its root if it has none).
        """
        cwd = (self.environment or {}).get("cwd")
        return cwd if isinstance(cwd, str) else "file:///"

    def read_process(self, process_id: str, after_seq: int | None = None,
                     max_bytes: int | None = None, wait_ms: int | None = None) -> Deferred:
        """
        C{process/read}: the raw reply (C{chunks}, C{nextSeq}, C{exited}...).
        """
        return self.call("process/read", {
            "processId": process_id, "afterSeq": after_seq, "maxBytes": max_bytes, "waitMs": wait_ms,
        })

    def write_process(self, process_id: str, data: bytes, write_id: str | None = None) -> Deferred:
        """
        C{process/write} with a write id generated here unless given; sent
        again with the same id after a reconnect, so it lands once.

        @return: fires with the status (C{accepted}...).
        """
        if write_id is None:
            self._writes += 1
            write_id = f"{self._write_prefix}-w{self._writes}"
        writing = self.call("process/write", {
            "processId": process_id,
            "chunk": pybase64.b64encode_as_string(data),
            "writeId": write_id,
        })
        return writing.addCallback(lambda result: result["status"])

    def close_process_stdin(self, process_id: str) -> Deferred:
        """
        C{process/closeStdin}, our server's extension: end the process's
        stdin once the writes sent before are written. Idempotent, so it is
        sent again after a reconnect.

        @return: fires with None; a server without the method (the
            reference) fails it with L{RemoteError} -32601.
        """
        closing = self.call("process/closeStdin", {"processId": process_id})
        return closing.addCallback(lambda result: None)

    def signal_process(self, process_id: str, signal: str = "interrupt") -> Deferred:
        return self.call("process/signal", {"processId": process_id, "signal": signal})

    def terminate_process(self, process_id: str) -> Deferred:
        """
        @return: fires with whether the process was still running.
        """
        terminating = self.call("process/terminate", {"processId": process_id})
        return terminating.addCallback(lambda result: result["running"])

    def environment_info(self) -> Deferred:
        return self.call("environment/info")

    def environment_status(self) -> Deferred:
        """
        @return: fires with the status (C{ready}).
        """
        return self.call("environment/status").addCallback(lambda result: result["status"])

    def handle(self, process_id: str) -> ProcessHandle | None:
        """
        The live handle of a process started by this client.
        """
        return self._handles.get(process_id)

    # State machine

    def _transition(self, state: _State) -> None:
        old = self._state
        old.leave()
        self._state = state
        log.debug("client {old} -> {new}", old=old.name, new=state.name)
        state.enter()

    def _open_link(self, resume: str | None) -> tuple[RpcConnection, Deferred]:
        link = RpcConnection(self._notification, self._link_lost)
        opening = maybeDeferred(self.connector.connect, link)
        params: dict[str, Any] = {"clientName": self.client_name, "resumeSessionId": resume}
        if self.acknowledge_output:
            # An extra member: servers without the extension ignore it.
            params[ACK_FIELD] = True
        opening.addCallback(lambda _: link.request("initialize", params))
        return link, opening

    def _established(self, link: RpcConnection, result: dict) -> None:
        self.session_id = result["sessionId"]
        self._attach(link, result)
        self._transition(_Ready(self))
        self._send_waiting()
        connected, self._connected = self._connected, None
        if connected is not None:
            connected.callback(self)

    def _resumed(self, link: RpcConnection, result: dict) -> None:
        self._attach(link, result)
        self._transition(_Ready(self))
        log.info("resumed session {session}", session=self.session_id)
        for handle in list(self._handles.values()):
            handle.catch_up()
        self._send_waiting()

    def _attach(self, link: RpcConnection, result: dict) -> None:
        self._link = link
        self.environment = result.get("environmentInfo")
        self.ack_every = _ack_every(result.get(ACK_FIELD)) if self.acknowledge_output else None
        link.notify("initialized", {})
        if self._pausers:
            link.pause_reading()

    def _send_waiting(self) -> None:
        for call in list(self._outstanding):
            if call.sent_on is None:
                self._send(call)

    def _send(self, call: _Call) -> None:
        link = self._link
        if link is None or not link.connected:
            return
        call.sent_on = link
        if call.needs_probe:
            requesting = call.probe()
        else:
            requesting = link.request(call.method, call.params)
        requesting.addBoth(self._call_done, call, link)

    def _call_done(self, result: Any, call: _Call, link: RpcConnection) -> None:
        if call.sent_on is not link:
            return
        if isinstance(result, Failure) and result.check(ConnectionDropped):
            return
        self._outstanding.pop(call, None)
        call.sent_on = None
        if isinstance(result, Failure):
            call.result.errback(result)
        else:
            call.result.callback(result)

    def _link_lost(self, link: RpcConnection, reason: Failure) -> None:
        if link is not self._link:
            return
        self._link = None
        self._state.link_lost(link, reason)
        if not isinstance(self._state, _Recovering):
            return
        for call in list(self._outstanding):
            if call.sent_on is not link:
                continue
            call.sent_on = None
            policy = call.policy
            if policy == RETRY:
                continue
            if policy == PROBE and call.probe is not None:
                call.needs_probe = True
                continue
            self._outstanding.pop(call, None)
            if policy == GONE:
                call.result.callback({})
            elif policy == LOST:
                call.result.errback(HandleLost(
                    f"the connection was lost during {call.method}; the server closes "
                    "file handles with their connection"
                ))
            else:
                call.result.errback(OutcomeUnknown(call.method))
        for stream in list(self._streams.values()):
            stream._connection_lost()

    def _going_away(self) -> ServerGoingAway:
        return ServerGoingAway(f"the server {self.connector.description} is shutting down")

    def _fail_everything(self, error: Exception) -> None:
        calls, self._outstanding = list(self._outstanding), OrderedDict()
        for call in calls:
            call.sent_on = None
            call.result.errback(error)
        for handle in list(self._handles.values()):
            handle._fail(error)
        for stream in list(self._streams.values()):
            stream._fail(error)
        connected, self._connected = self._connected, None
        if connected is not None:
            connected.errback(error)

    # For handles and streams

    def _internal_request(self, method: str, params: Any) -> Deferred:
        """
        A request of the library itself (catching up, probing): sent on the
        current connection only; a drop fails it with L{ConnectionDropped}
        and the recovery decides what to do next.
        """
        if self._link is None:
            return fail(ConnectionDropped("not connected"))
        return self._link.request(method, params)

    def _acknowledge(self, process_id: str, seq: int) -> None:
        """
        Tell the server that every event of the process up to C{seq} has
        arrived. One lost with a connection is made good by the catch-up
        read after the resume, whose C{afterSeq} acknowledges as much.
        """
        if self._link is not None and self.ack_every is not None:
            self._link.notify(ACK_METHOD, {"processId": process_id, "seq": seq})

    def _forget(self, handle: ProcessHandle) -> None:
        if self._handles.get(handle.process_id) is handle:
            del self._handles[handle.process_id]

    def _pause_reading(self, producer) -> None:
        first = not self._pausers
        self._pausers.add(producer)
        if first and self._link is not None:
            self._link.pause_reading()

    def _resume_reading(self, producer) -> None:
        if producer not in self._pausers:
            return
        self._pausers.discard(producer)
        if not self._pausers and self._link is not None:
            self._link.resume_reading()

    # Notifications

    def _notification(self, link: RpcConnection, method: str, params: Any) -> None:
        if method == "process/output":
            handle = self._handles.get(params["processId"])
            if handle is not None:
                handle._event(params["seq"], (OUTPUT, params["stream"], params["chunk"]))
        elif method == "process/exited":
            handle = self._handles.get(params["processId"])
            if handle is not None:
                handle._event(params["seq"], (EXITED, params["exitCode"],
                                              bool(params.get("sandboxDenied"))))
        elif method == "process/closed":
            handle = self._handles.get(params["processId"])
            if handle is not None:
                handle._event(params["seq"], (CLOSED,))
        elif method == "http/request/bodyDelta":
            stream = self._streams.get(params["requestId"])
            if stream is not None:
                stream._delta(params)
        else:
            log.debug("ignoring notification {method}", method=method)


def _ack_every(offer: Any) -> tuple[int, int] | None:
    """
    How often to acknowledge, from the server's offer (its window), or None
    when it made none we understand.
    """
    if not isinstance(offer, dict):
        return None
    window_bytes, window_chunks = offer.get("maxUnackedBytes"), offer.get("maxUnackedChunks")
    if not all(isinstance(value, int) and value > 0 for value in (window_bytes, window_chunks)):
        return None
    return (max(1, window_bytes // ACK_FRACTION), max(1, window_chunks // ACK_FRACTION))
