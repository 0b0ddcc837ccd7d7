"""
Relay sockets: WebSockets that carry relay frames, one binary message per
frame, at most 256 KiB each, with the 30 s Ping / 60 s Pong liveness check.

    harness  ──socket──▶ rendezvous ◀──socket── executor
    (dials; one stream)               (dials; many streams)

The same layer serves every end. A socket parses each message
(L{execserver.relay.frames.parse_frame}) and hands it to the stream
attached under its C{stream_id} (an L{IRelayStream}); frames for other
stream ids, undecodable or invalid frames and text messages go to the
socket's owner (an L{IRelaySocketOwner}), which decides what they mean:
an executor opens a stream on a handshake and drops invalid frames, a
harness gives up on the socket, a rendezvous routes them unread.

Flow control, both ways:

  - Sending: streams do not write; they say they have frames
    (L{RelaySocket.wantsToSend}) and the socket pulls one frame per stream
    in turn while its TCP buffer has room. So no stream starves the
    others, and a record is sealed only when it can go out. The pulling
    waits for the end of the reactor's turn (Twisted writes to TCP on the
    next turn anyway), so that what a stream is given in one turn (a reply
    and the notifications after it) goes out in as few records as fit.
  - Receiving: L{RelaySocket.pauseReading} stops reading the socket, for as
    long as any reason given is in force (a rendezvous pauses an executor's
    socket for each harness that cannot keep up).

The client side (L{connect}) dials C{ws://} or C{wss://}; the server side
is L{RelayServerProtocol}, subclassed by the rendezvous.
"""

from __future__ import annotations

import socket
from collections import OrderedDict
from typing import Callable, Hashable
from urllib.parse import urlsplit

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerProtocol,
)
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from execserver.relay.frames import Frame, FrameKind, InvalidFrame, parse_frame
from execserver.relay.limits import MAX_WEBSOCKET_MESSAGE_BYTES
from execserver.relay.watchdog import PongWatchdog
from execserver.transports.framecutter import BINARY_FRAME, FrameCutter, client_frame, frame_header
from execserver.transports.sending import send_now

log = Logger()

#: Seconds to open a socket: TCP, TLS and the WebSocket upgrade.
CONNECT_TIMEOUT_SECONDS = 10.0
#: A pump round sends its frames together, at least every this many bytes.
PUMP_BATCH_BYTES = 64 * 1024

#: Why a socket ended, as codex names it in its logs.
PONG_TIMEOUT = "pong_timeout"
PEER_CLOSE = "peer_close"
LOCAL_SHUTDOWN = "local_shutdown"


def public_url(url: str) -> str:
    """
    C{url} without its query and fragment, which may hold a signature: the
    only form of a rendezvous URL that may be shown or logged.
    """
    for separator in "?#":
        url = url.split(separator, 1)[0]
    return url


class IRelayStream(Interface):
    """
    One stream attached to a socket: it receives its frames and produces
    frames to send when the socket asks.
    """

    def frameReceived(frame: Frame) -> None:
        """A valid frame with this stream's id."""

    def pullFrame() -> bytes | None:
        """
        The next encoded frame to send, or C{None} when there is nothing
        (the stream calls L{RelaySocket.wantsToSend} again when there is).
        """

    def socketLost(reason: Failure) -> None:
        """The socket is gone; the stream is over."""


class IRelaySocketOwner(Interface):
    """
    Whoever opened or accepted a socket: gets what no stream takes.
    """

    def socketOpened(socket: "RelaySocket") -> None:
        """The WebSocket is open; frames may flow."""

    def frameReceived(frame: Frame, raw: bytes) -> None:
        """A valid frame for a stream id nothing is attached under."""

    def invalidMessage(description: str) -> None:
        """
        A text message or a message that is not a valid frame (C{description}
        is a fixed text, never the content).
        """

    def sendingPaused() -> None:
        """The socket's send buffer is full."""

    def sendingResumed() -> None:
        """It has room again."""

    def socketLost(reason: Failure) -> None:
        """The socket is closed; C{reason} says why, if it was not clean."""


class RelaySocketLost(ConnectionError):
    """
    Why a relay socket ended: C{reason} is codex's name for it
    (L{PONG_TIMEOUT}, L{PEER_CLOSE}, ...), C{code} the WebSocket close code.
    """

    def __init__(self, reason: str, code: int | None = None) -> None:
        super().__init__(f"relay socket closed ({reason})")
        self.reason = reason
        self.code = code


@implementer(IPushProducer)
class RelaySocket:
    """
    What both sides of a relay WebSocket share (mixed into autobahn's client
    and server protocols): frame dispatch, the stream pump, read pauses and
    the liveness watchdog.

    @ivar owner: the L{IRelaySocketOwner}; set before the socket opens.
    @ivar sending_paused: the TCP send buffer is full.
    """

    owner = None
    #: Sees every frame: C{counter(received, kind, size)}, where C{kind}
    #: is the L{FrameKind} (for a sent frame, what its writer said).
    counter: Callable[[bool, FrameKind, int], None] | None = None
    #: The watchdog's timers.
    clock: IReactorTime
    #: Whose turns the pump follows: the reactor (the clock, in memory).
    turns: IReactorTime

    def _relay_init(self) -> None:
        self.sending_paused = False
        self._streams: dict[str, IRelayStream] = {}
        self._ready: OrderedDict[IRelayStream, None] = OrderedDict()
        self._pumping = False
        #: The frames of a pump round not sent yet (None between rounds).
        self._batch: list[bytes] | None = None
        self._batch_bytes = 0
        self._pump_call: IDelayedCall | None = None
        self._read_pauses: set[Hashable] = set()
        self._end_reason: str | None = None
        self._opened = False
        self._watchdog = PongWatchdog(self.clock, self._ping, self._pong_overdue)

    # Streams

    def attach(self, stream_id: str, stream: IRelayStream) -> None:
        """Deliver the frames of C{stream_id} to C{stream} from now on."""
        self._streams[stream_id] = stream

    def detach(self, stream_id: str) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is not None:
            self._ready.pop(stream, None)

    @property
    def streams(self) -> dict[str, IRelayStream]:
        """The attached streams by id (do not modify)."""
        return self._streams

    def wantsToSend(self, stream: IRelayStream) -> None:
        """
        C{stream} has frames: pull them, at the end of this turn, while the
        socket has room.
        """
        self._ready[stream] = None
        if self._pump_call is None:
            self._pump_call = self.turns.callLater(0, self._turn_ended)

    def _turn_ended(self) -> None:
        self._pump_call = None
        self._pump()

    def _pump(self) -> None:
        if self._pumping:
            return
        self._pumping = True
        # The round's frames go out together, in one send when the socket
        # has nothing queued; every PUMP_BATCH_BYTES, so that a full send
        # buffer still pauses the round.
        self._batch = []
        try:
            while self._ready and not self.sending_paused and self.relay_open:
                stream, _ = self._ready.popitem(last=False)
                frame = stream.pullFrame()
                if frame is None:
                    continue
                self._ready[stream] = None
                self.writeFrame(frame)
                if self._batch_bytes >= PUMP_BATCH_BYTES:
                    self._send_batch()
        finally:
            self._pumping = False
            self._send_batch()
            self._batch = None

    def _send_batch(self) -> None:
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        if batch and self.relay_open:
            self._send(batch)

    def _send(self, parts) -> None:
        if not send_now(self.transport, parts):
            self.transport.writeSequence(parts)

    # Sending

    @property
    def relay_open(self) -> bool:
        return self._opened and self.state == self.STATE_OPEN

    def writeFrame(self, data: bytes, kind: FrameKind = FrameKind.DATA) -> None:
        """
        Send one encoded frame now (dropped once the socket is closing).

        @param kind: what C{data} is, for the L{counter}.
        """
        if self.relay_open:
            if self.counter is not None:
                self.counter(False, kind, len(data))
            # One binary WebSocket frame, written whole: autobahn's
            # sendMessage costs several times more per frame, and relay
            # frames are many and small.
            parts = _binary_frame(data, masked=not self.factory.isServer)
            if self._batch is not None:
                self._batch.extend(parts)
                self._batch_bytes += len(data)
            else:
                self._send(parts)

    # Reading

    def pauseReading(self, reason: Hashable) -> None:
        """Stop reading until every reason given is withdrawn."""
        if not self._read_pauses and self.transport is not None:
            self.transport.pauseProducing()
        self._read_pauses.add(reason)

    def resumeReading(self, reason: Hashable) -> None:
        if reason not in self._read_pauses:
            return
        self._read_pauses.discard(reason)
        if not self._read_pauses and self.transport is not None:
            self.transport.resumeProducing()

    # Ending

    def close(self) -> None:
        """
        Close after what was sent: a Close frame, then the TCP connection,
        without waiting for the peer's Close (which may never come).
        """
        if self._end_reason is None:
            self._end_reason = LOCAL_SHUTDOWN
        if self.state == self.STATE_OPEN:
            self.sendClose(1000)
        if self.transport is not None:
            self.transport.loseConnection()

    def abort(self, reason: str = LOCAL_SHUTDOWN) -> None:
        """Drop the TCP connection at once."""
        if self._end_reason is None:
            self._end_reason = reason
        if self.transport is not None:
            self.transport.abortConnection()

    # IPushProducer, registered with the TCP transport: its send buffer.

    def pauseProducing(self) -> None:
        if not self.sending_paused:
            self.sending_paused = True
            self.owner.sendingPaused()

    def resumeProducing(self) -> None:
        if self.sending_paused:
            self.sending_paused = False
            self._pump()
            if not self.sending_paused:
                self.owner.sendingResumed()

    def stopProducing(self) -> None:
        pass

    # autobahn's callbacks

    def _relay_opened(self) -> None:
        transport = self.transport
        transport.setTcpNoDelay(True)
        # The server side runs under twisted.web, whose channel registered
        # itself as the TCP transport's producer; the socket takes over.
        if getattr(transport, "producer", None) is not None:
            transport.unregisterProducer()
        transport.registerProducer(self, True)
        if self._read_pauses:
            transport.pauseProducing()
        self._opened = True
        self.start_cutting()
        self._watchdog.start()
        self.owner.socketOpened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if not isBinary:
            self.owner.invalidMessage("text message on a relay socket")
            return
        try:
            frame = parse_frame(payload)
        except InvalidFrame as e:
            self.owner.invalidMessage(str(e))
            return
        if self.counter is not None:
            self.counter(True, frame.kind, len(payload))
        stream = self._streams.get(frame.stream_id)
        if stream is not None:
            stream.frameReceived(frame)
        else:
            self.owner.frameReceived(frame, payload)

    def onPong(self, payload: bytes) -> None:
        self._watchdog.pong_received()

    def _ping(self) -> None:
        if self.state == self.STATE_OPEN:
            self.sendPing()

    def _pong_overdue(self) -> None:
        log.info("relay socket: no Pong within the deadline", noise_reason=PONG_TIMEOUT)
        self.abort(PONG_TIMEOUT)

    def _relay_closed(self, code: int | None) -> Failure:
        self._watchdog.stop()
        if self._pump_call is not None:
            self._pump_call.cancel()
            self._pump_call = None
        self._opened = False
        self._ready.clear()
        reason = Failure(RelaySocketLost(self._end_reason or PEER_CLOSE, code))
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            stream.socketLost(reason)
        return reason


def _binary_frame(payload: bytes, masked: bool) -> tuple[bytes, ...]:
    """A final binary frame (RFC 6455 5.2); a client masks it with a random key."""
    if masked:
        return client_frame(BINARY_FRAME, payload)
    return frame_header(BINARY_FRAME, len(payload)), payload


def _relay_options(factory) -> None:
    # No autobahn timers (they run on a global batched timer, not on the
    # injected clock); liveness is the watchdog's, deadlines the caller's.
    factory.setProtocolOptions(
        maxFramePayloadSize=MAX_WEBSOCKET_MESSAGE_BYTES,
        maxMessagePayloadSize=MAX_WEBSOCKET_MESSAGE_BYTES,
        perMessageCompressionAccept=lambda offers: None,
        autoPingInterval=0,
        openHandshakeTimeout=0,
        closeHandshakeTimeout=0,
    )


class RelayServerProtocol(FrameCutter, RelaySocket, WebSocketServerProtocol):
    """
    The accepting side, for a rendezvous: a subclass sets L{owner} in
    C{onConnect} (or refuses the upgrade there). Its factory provides
    C{clock} (and C{turns}).
    """

    def connectionMade(self) -> None:
        self.clock = self.factory.clock
        self.turns = self.factory.turns
        self._relay_init()
        super().connectionMade()

    def onOpen(self) -> None:
        self._relay_opened()

    def onClose(self, wasClean: bool, code, reason) -> None:
        if not self._opened:
            return
        lost = self._relay_closed(code)
        self.owner.socketLost(lost)


def configure_server_factory(factory, clock: IReactorTime,
                             turns: IReactorTime | None = None) -> None:
    """
    Give an autobahn server factory of L{RelayServerProtocol}s the relay
    socket limits, the clock of its watchdogs and the reactor whose turns
    its pumps follow (the clock by default).
    """
    factory.clock = clock
    factory.turns = turns or clock
    _relay_options(factory)
    factory.setProtocolOptions(utf8validateIncoming=False, trustXForwardedFor=0)


def _tcp_socket(transport) -> socket.socket:
    """The TCP socket under a transport, through TLS if there is any."""
    while not isinstance(transport.getHandle(), socket.socket):
        transport = transport.transport
    return transport.getHandle()


class RelayConnectError(ConnectionError):
    """
    A relay socket could not be opened. C{status} is the HTTP status that
    refused the upgrade, if one did (a 401 means the URL or authorization
    expired: fetch a new one).
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class _RelayClientProtocol(FrameCutter, RelaySocket, WebSocketClientProtocol):
    def connectionMade(self) -> None:
        factory = self.factory
        self.clock = factory.clock
        self.turns = factory.turns
        self.owner = factory.owner
        self._relay_init()
        if factory.receive_buffer is not None:
            _tcp_socket(self.transport).setsockopt(
                socket.SOL_SOCKET, socket.SO_RCVBUF, factory.receive_buffer)
        super().connectionMade()

    def failHandshake(self, reason: str) -> None:
        # autobahn logs the reason; the URL or the response may carry a
        # signature, so only the status is kept.
        self.wasNotCleanReason = reason
        self.dropConnection(abort=True)

    def onOpen(self) -> None:
        self._relay_opened()
        self.factory.opened(self)

    def onClose(self, wasClean: bool, code, reason) -> None:
        if not self._opened:
            self.factory.failed(self._upgrade_error())
            return
        lost = self._relay_closed(code)
        self.owner.socketLost(lost)

    def _upgrade_error(self) -> RelayConnectError:
        status_line = getattr(self, "http_status_line", None)
        if status_line:
            parts = status_line.split()
            if len(parts) >= 2 and parts[1].isdigit() and parts[1] != "101":
                status = int(parts[1])
                return RelayConnectError(f"the rendezvous refused the WebSocket upgrade (HTTP {status})",
                                         status)
        return RelayConnectError("the rendezvous closed the connection during the WebSocket upgrade")


class RelayClientFactory(WebSocketClientFactory):
    """
    Builds the dialling side of a relay socket; C{result} fires with the
    open L{RelaySocket} or fails with L{RelayConnectError}. L{connect} is
    the way to use it; tests connect it in memory.
    """

    protocol = _RelayClientProtocol

    def __init__(self, url: str, owner: IRelaySocketOwner, clock: IReactorTime,
                 headers: dict[str, str] | None = None, receive_buffer: int | None = None,
                 turns: IReactorTime | None = None) -> None:
        super().__init__(url, headers=headers or {})
        self.owner = owner
        self.clock = clock
        self.turns = turns or clock
        self.receive_buffer = receive_buffer
        self.result: Deferred = Deferred(self._cancel)
        self.connecting: Deferred | None = None
        self.cancelled = False
        self.client: _RelayClientProtocol | None = None
        _relay_options(self)
        self.setProtocolOptions(utf8validateIncoming=False, serverConnectionDropTimeout=0)

    def buildProtocol(self, addr):
        self.client = super().buildProtocol(addr)
        return self.client

    def pending(self) -> bool:
        return not self.result.called

    def opened(self, protocol: _RelayClientProtocol) -> None:
        if self.pending():
            self.result.callback(protocol)

    def failed(self, error: Exception) -> None:
        if self.pending():
            self.result.errback(error)

    def _cancel(self, result: Deferred) -> None:
        # Fired by the timeout or a caller that gave up.
        self.cancelled = True
        if self.client is not None:
            self.client.abort()
        elif self.connecting is not None:
            self.connecting.cancel()


def connect(reactor, url: str, owner: IRelaySocketOwner, clock: IReactorTime | None = None,
            headers: dict[str, str] | None = None, trust_root=None,
            receive_buffer: int | None = None,
            timeout: float = CONNECT_TIMEOUT_SECONDS) -> Deferred:
    """
    Open a relay socket to C{url} (C{ws://} or C{wss://}; its query is kept
    on the wire but never shown).

    @param owner: gets the socket's frames and its end.
    @param trust_root: certificate authorities for C{wss://} (the
        platform's when C{None}).
    @param receive_buffer: the kernel receive buffer, to bound what is in
        flight.
    @return: fires with the open L{RelaySocket}, or fails with
        L{RelayConnectError} (a refused upgrade, a timeout, no route).
    """
    clock = clock or reactor
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"a relay URL is ws:// or wss://, got {public_url(url)!r}")
    factory = RelayClientFactory(url, owner, clock, dict(headers or {}), receive_buffer,
                                 turns=reactor)
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    endpoint = endpoints.HostnameEndpoint(reactor, parts.hostname, port, timeout=timeout)
    if parts.scheme == "wss":
        endpoint = endpoints.wrapClientTLS(
            optionsForClientTLS(parts.hostname, trustRoot=trust_root), endpoint)
    result = factory.result

    def no_connection(reason: Failure) -> None:
        factory.connecting = None
        if factory.pending() and not factory.cancelled:
            message = f"could not reach the rendezvous at {public_url(url)}: {reason.getErrorMessage()}"
            factory.failed(RelayConnectError(message))

    factory.connecting = endpoint.connect(factory)
    factory.connecting.addCallbacks(lambda _: setattr(factory, "connecting", None), no_connection)

    def timed_out(reason: Failure) -> Failure:
        if reason.check(TimeoutError):
            return Failure(RelayConnectError(
                f"no WebSocket to {public_url(url)} within {timeout:g} s"))
        return reason

    result.addTimeout(timeout, clock)
    return result.addErrback(timed_out)
