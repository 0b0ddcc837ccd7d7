"""
WebSocket transports: the local listener, and the client side used by the
client library and the tests.

    GET /         WebSocket upgrade; one JSON-RPC message per WebSocket
                  message, text frames out, text or binary frames in
    GET /readyz   200, empty body, while ready; 503 while draining (405 for
                  other methods); never needs authentication
    anything else 404
    any request carrying an Origin header: 403 (browsers send one; the
    exec-server is not for web pages)

Bad upgrade requests get the reference's status and plain-text reason;
then, with C{--ws-auth}, an upgrade without the right bearer token gets a
401 and the authenticator's reason (L{execserver.wsauth}); then, while the
server drains, 503.
Protocol violations (an oversized frame, invalid UTF-8 in a text frame) end
the connection without a Close frame, as in the reference. The server pings
every 30 s and does not enforce a pong deadline. A server that stops closes
every WebSocket with 1001 (going away); the reference just drops them.
"""

from __future__ import annotations

import socket
from typing import Callable
from urllib.parse import urlsplit

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from twisted.internet import endpoints, tcp
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, gatherResults
from twisted.python.failure import Failure
from twisted.web import resource, server
from zope.interface import implementer

from execserver.interfaces import IMessageProtocol, IMessageTransport, PeerGoingAway
from execserver.readiness import Readiness
from execserver.transports.framecutter import TEXT_FRAME, FrameCutter, client_frame, frame_header
from execserver.transports.sending import send_now
from execserver.wsauth import IAuthenticator

PING_INTERVAL_SECONDS = 30
#: Kernel send buffer per connection (Linux doubles it).
SEND_BUFFER_BYTES = 128 * 1024
#: A message at least this large is a reply (a file read...: process output
#: goes out in messages of about 128 KiB); it is sent with the kernel send
#: buffer raised to L{LARGE_SEND_BUFFER_BYTES} (at most net.core.wmem_max),
#: and Twisted's sends are as large, until the next smaller message. Sent
#: 128 KiB per reactor turn, a 16 MiB file read took 169 turns.
LARGE_MESSAGE_BYTES = 1024 * 1024
LARGE_SEND_BUFFER_BYTES = 4 * 1024 * 1024
#: The server's messages below this size wait for the end of the reactor's
#: turn and go out together (a process's exit and close, a reply and the
#: output that came with it), in one send with no further turn; larger
#: ones go at once (L{execserver.transports.sending}). Through Twisted's
#: write buffer each send took another turn and two epoll_ctl calls.
END_OF_TURN_BYTES = 32 * 1024
#: The reference's limits (tungstenite's defaults).
MAX_FRAME_BYTES = 16 * 1024 * 1024
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: The Close frame of a server that stops (RFC 6455's "going away").
GOING_AWAY = 1001
GOING_AWAY_REASON = "server shutting down"
#: What the client reads from its socket at a time (Twisted's default is
#: 64 KiB) until it reads in place (L{FrameCutter.read_in_place}, once the
#: WebSocket is open over plain TCP), and always on other transports:
#: about one process/output message of ours (96 KiB of output).
CLIENT_READ_BYTES = 128 * 1024


@implementer(IMessageTransport)
class MessageTransport:
    """
    The JSON-RPC connection's view of a WebSocket (either side).

    C{protocol} is the autobahn protocol underneath, for callers that need
    WebSocket specifics (binary frames, pings).
    """

    def __init__(self, protocol) -> None:
        self.protocol = protocol
        self._send_window_raised = False
        #: The parts of this turn's small messages, not sent yet.
        self._waiting: list[bytes] = []
        self._waiting_bytes = 0
        self._flush_call = None
        peer = protocol.transport.getPeer()
        if isinstance(peer, (IPv4Address, IPv6Address)):
            host = f"[{peer.host}]" if ":" in peer.host else peer.host
            self.peer = f"{host}:{peer.port}"
        else:
            # A UNIX socket's peer has no address (the reference has no
            # UNIX listener).
            self.peer = "unix"
        self.parseErrorPrefix = (
            f"failed to parse websocket JSON-RPC message from exec-server websocket {self.peer}"
        )

    def sendMessage(self, data: bytes | tuple[bytes, ...]) -> None:
        protocol = self.protocol
        if protocol.state != protocol.STATE_OPEN:
            return
        parts = data if isinstance(data, tuple) else (data,)
        if protocol.factory.isServer:
            # An unmasked text frame written as header + payload: no copy of
            # the payload, and no size limit (the reference sends answers of
            # hundreds of MiB; its limits are for what it receives).
            length = sum(len(part) for part in parts)
            if (length >= LARGE_MESSAGE_BYTES) is not self._send_window_raised:
                self._raise_send_window(length >= LARGE_MESSAGE_BYTES)
            parts = (frame_header(TEXT_FRAME, length), *parts)
            transport = protocol.transport
            if length < END_OF_TURN_BYTES and type(transport) is tcp.Server:
                self._waiting.extend(parts)
                self._waiting_bytes += length
                if self._waiting_bytes >= END_OF_TURN_BYTES:
                    # Many in one turn: Twisted's buffer sees them now, and
                    # pauses what produces them if the peer does not read.
                    self.flush()
                elif self._flush_call is None:
                    self._flush_call = transport.reactor.callLater(0, self.flush)
                return
            self.flush()
            if not send_now(transport, parts):
                transport.writeSequence(parts)
        else:
            # Masked by hand: autobahn's sendMessage set up a masker and
            # several objects for each frame, and a client streaming output
            # sends an acknowledgement every few chunks.
            frame = client_frame(TEXT_FRAME, b"".join(parts))
            if not send_now(protocol.transport, frame):
                protocol.transport.writeSequence(frame)

    def flush(self) -> None:
        """
        Send the small messages of this turn, together, in one send when
        the socket has nothing queued.
        """
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        if self._waiting:
            parts, self._waiting, self._waiting_bytes = self._waiting, [], 0
            transport = self.protocol.transport
            if not send_now(transport, parts):
                transport.writeSequence(parts)

    def _raise_send_window(self, raised: bool) -> None:
        """
        Raise the kernel send buffer for a large reply, or bound it again
        for what follows: whatever the large reply left in the kernel
        drains first, so a later message (process output) never has more
        than the bounded buffer in flight.
        """
        transport = self.protocol.transport
        if type(transport) is not tcp.Server:
            return
        self._send_window_raised = raised
        size = LARGE_SEND_BUFFER_BYTES if raised else SEND_BUFFER_BYTES
        transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
        if raised:
            transport.SEND_LIMIT = size
        else:
            del transport.SEND_LIMIT

    def loseConnection(self) -> None:
        self.protocol.sendClose()

    def abortConnection(self) -> None:
        self._waiting.clear()
        self._waiting_bytes = 0
        self.protocol.transport.abortConnection()

    def registerProducer(self, producer, streaming: bool) -> None:
        self.protocol.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.protocol.transport.unregisterProducer()

    # IPushProducer: the messages we deliver come from the socket.

    def pauseProducing(self) -> None:
        self.protocol.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.protocol.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.abortConnection()


class OpenWebSockets:
    """
    The open WebSockets of one listener, so that a server that stops can
    close them with 1001: clients then fail at once instead of trying to
    resume sessions that end with the server.
    """

    def __init__(self) -> None:
        self._closed: dict[WebSocketServerProtocol, Deferred] = {}

    def add(self, protocol: WebSocketServerProtocol) -> None:
        self._closed[protocol] = Deferred()

    def discard(self, protocol: WebSocketServerProtocol) -> None:
        closed = self._closed.pop(protocol, None)
        if closed is not None:
            closed.callback(None)

    def go_away(self) -> Deferred:
        """
        Send every open WebSocket a Close frame with 1001.

        @return: fires once all are closed (the closing handshake times out
            after a second for a client that does not answer).
        """
        closing = list(self._closed.values())
        for protocol in list(self._closed):
            # autobahn's sendClose only takes the codes an application
            # chooses (1000, 3000-4999); 1001 is the endpoint's own.
            protocol.sendCloseFrame(GOING_AWAY, GOING_AWAY_REASON.encode())
        return gatherResults(closing)


class ExecServerWebSocketProtocol(FrameCutter, WebSocketServerProtocol):
    connection = None
    message_transport = None

    def sendCloseFrame(self, code=None, reasonUtf8=None, isReply=False) -> None:
        # Every message sent before the Close goes before it.
        if self.message_transport is not None:
            self.message_transport.flush()
        super().sendCloseFrame(code, reasonUtf8, isReply)

    def onOpen(self) -> None:
        # Bound what sits in the kernel unacknowledged: what a dropped
        # connection loses in flight must fit in a process's replay window.
        handle = self.transport.getHandle()
        handle.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        # twisted.web's HTTP channel registered itself as the socket's
        # producer; the JSON-RPC connection takes its place.
        self.transport.unregisterProducer()
        self.factory.websockets.add(self)
        self.connection = self.factory.build_protocol()
        self.message_transport = MessageTransport(self)
        self.connection.makeConnection(self.message_transport)
        self.start_cutting()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if isBinary:
            # Binary frames are parsed as bytes: invalid UTF-8 in them is a
            # JSON error answered on the connection.
            self.connection.messageReceived(payload)
            return
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            # Closed at once: nothing read after this frame is delivered.
            self.dropConnection(abort=True)
            return
        self.connection.messageReceived(text)

    def onClose(self, wasClean: bool, code, reason) -> None:
        if self.connection is not None:
            connection, self.connection = self.connection, None
            connection.connectionLost(Failure(ConnectionError(code, reason)))
        self.factory.websockets.discard(self)


class _Status(resource.Resource):
    """
    A fixed answer: a status, an optional plain-text reason, headers.
    """

    isLeaf = True

    def __init__(self, code: int, reason: str = "", headers: dict[bytes, bytes] | None = None):
        super().__init__()
        self.code = code
        self.body = reason.encode()
        self.headers = headers or {}

    def render(self, request: server.Request) -> bytes:
        request.setResponseCode(self.code)
        for name, value in self.headers.items():
            request.setHeader(name, value)
        if self.body:
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        else:
            request.defaultContentType = None
        request.setHeader(b"content-length", b"%d" % len(self.body))
        return b"" if request.method == b"HEAD" else self.body


_READY = _Status(200)
_NOT_READY = _Status(503)
_NOT_READY_METHOD = _Status(405, headers={b"allow": b"GET,HEAD"})
_DRAINING = _Status(503, GOING_AWAY_REASON)
_FORBIDDEN = _Status(403)
_NOT_FOUND = _Status(404)


def _tokens(request: server.Request, name: bytes) -> list[bytes]:
    value = request.getHeader(name) or b""
    return [token.strip().lower() for token in value.split(b",")]


def _upgrade_problem(request: server.Request) -> resource.Resource | None:
    """
    Why this request to / cannot become a WebSocket, as the reference says it.
    """
    if request.method not in (b"GET",):
        return _Status(405, "Request method must be `GET`")
    if request.clientproto == b"HTTP/1.0":
        return _Status(426, "WebSocket request couldn't be upgraded since no upgrade state was present")
    if b"upgrade" not in _tokens(request, b"connection"):
        return _Status(400, "Connection header did not include 'upgrade'")
    if b"websocket" not in _tokens(request, b"upgrade"):
        return _Status(400, "`Upgrade` header did not include 'websocket'")
    if request.getHeader(b"sec-websocket-version") != b"13":
        return _Status(400, "`Sec-WebSocket-Version` header did not include '13'")
    if request.getHeader(b"sec-websocket-key") is None:
        return _Status(400, "`Sec-WebSocket-Key` header missing")
    return None


def readyz(request: server.Request, readiness: Readiness) -> resource.Resource:
    """
    The answer to C{/readyz}.
    """
    if request.method not in (b"GET", b"HEAD"):
        return _NOT_READY_METHOD
    return _READY if readiness.ready else _NOT_READY


class _Root(resource.Resource):
    def __init__(self, websocket: resource.Resource, authenticator: IAuthenticator | None,
                 readiness: Readiness) -> None:
        super().__init__()
        self._websocket = websocket
        self._authenticator = authenticator
        self._readiness = readiness

    def getChildWithDefault(self, path: bytes, request: server.Request) -> resource.Resource:
        if request.getHeader(b"origin") is not None:
            return _FORBIDDEN
        if not request.postpath:
            if path == b"":
                return _upgrade_problem(request) or self._refusal(request) or self._websocket
            if path == b"readyz":
                return readyz(request, self._readiness)
        return _NOT_FOUND

    def _refusal(self, request: server.Request) -> resource.Resource | None:
        if self._authenticator is not None:
            reason = self._authenticator.refusal(
                request.requestHeaders.getRawHeaders(b"authorization", []))
            if reason is not None:
                return _Status(401, reason)
        if self._readiness.draining:
            return _DRAINING
        return None


class Site(server.Site):
    """
    The HTTP site of a listener; C{websockets} are its open WebSockets.
    """

    def __init__(self, root: resource.Resource, websockets: OpenWebSockets) -> None:
        super().__init__(root)
        self.websockets = websockets


def site(build_protocol: Callable[[], IMessageProtocol],
         authenticator: IAuthenticator | None = None,
         readiness: Readiness | None = None) -> Site:
    """
    The HTTP site serving the WebSocket endpoint: each WebSocket carries the
    message protocol that C{build_protocol} returns.

    @param authenticator: admits upgrade requests (C{--ws-auth}); None
        admits all.
    @param readiness: what C{/readyz} reports; by default always ready.
    """
    factory = WebSocketServerFactory()
    factory.protocol = ExecServerWebSocketProtocol
    factory.build_protocol = build_protocol
    factory.websockets = OpenWebSockets()
    factory.setProtocolOptions(
        autoPingInterval=PING_INTERVAL_SECONDS,
        autoPingTimeout=0,
        maxFramePayloadSize=MAX_FRAME_BYTES,
        maxMessagePayloadSize=MAX_MESSAGE_BYTES,
        perMessageCompressionAccept=lambda offers: None,
        utf8validateIncoming=False,
        openHandshakeTimeout=0,
        closeHandshakeTimeout=1,
        trustXForwardedFor=0,
    )
    root = _Root(WebSocketResource(factory), authenticator,
                 readiness if readiness is not None else Readiness())
    http = Site(root, factory.websockets)
    http.displayTracebacks = False
    http.noisy = False
    return http


class WebSocketConnectError(ConnectionError):
    """
    The WebSocket connection could not be opened (refused, HTTP error...).
    """


class _ClientProtocol(FrameCutter, WebSocketClientProtocol):
    """
    The client side: frames are read by L{FrameCutter} once the WebSocket
    is open.
    """

    message_protocol = None

    def connectionMade(self) -> None:
        self.transport.bufferSize = CLIENT_READ_BYTES
        if self.factory.receive_buffer is not None:
            handle = self.transport.getHandle()
            handle.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.factory.receive_buffer)
        super().connectionMade()

    def onOpen(self) -> None:
        self.start_cutting()
        self.message_protocol = self.factory.message_protocol
        self._views = self.read_in_place() and getattr(self.message_protocol, "takes_views", False)
        transport = MessageTransport(self)
        self.message_protocol.makeConnection(transport)
        opened, self.factory.opened = self.factory.opened, None
        opened.callback(transport)

    def onMessage(self, payload: bytes | memoryview, isBinary: bool) -> None:
        if isinstance(payload, memoryview) and not self._views:
            payload = bytes(payload)
        self.message_protocol.messageReceived(payload)

    def onClose(self, wasClean: bool, code, reason) -> None:
        if self.message_protocol is not None:
            message_protocol, self.message_protocol = self.message_protocol, None
            error = PeerGoingAway if code == GOING_AWAY else ConnectionError
            message_protocol.connectionLost(Failure(error(code, reason)))
        elif self.factory.opened is not None:
            opened, self.factory.opened = self.factory.opened, None
            opened.errback(WebSocketConnectError(self.wasNotCleanReason or reason))


def connect(reactor, url: str, message_protocol: IMessageProtocol,
            headers: dict | None = None, receive_buffer: int | None = None,
            endpoint=None) -> Deferred:
    """
    Open a WebSocket to C{url} (C{ws://HOST:PORT/...}) and attach
    C{message_protocol} to it.

    @param headers: of the upgrade request (C{Authorization}...).
    @param receive_buffer: the socket's kernel receive buffer, when the
        default (which Linux grows to many megabytes) holds too much.
    @param endpoint: where to connect, when not to C{url}'s host and port
        (a UNIX socket).
    @return: fires with the L{MessageTransport} once the WebSocket is open.
    """
    parts = urlsplit(url)
    if parts.scheme != "ws" or parts.hostname is None:
        raise ValueError(f"expected a ws://HOST:PORT URL, got {url!r}")
    factory = WebSocketClientFactory(url, headers=headers or {})
    factory.protocol = _ClientProtocol
    factory.message_protocol = message_protocol
    factory.receive_buffer = receive_buffer
    factory.opened = Deferred()
    # No autobahn timers: they run on a batched global timer that outlives
    # the connection. Callers that need deadlines set their own. Every
    # message is decoded as UTF-8 by the JSON parser anyway; validating it
    # here too would cost as much as decoding the base64 of process output.
    factory.setProtocolOptions(
        utf8validateIncoming=False,
        maxFramePayloadSize=MAX_FRAME_BYTES,
        maxMessagePayloadSize=MAX_MESSAGE_BYTES,
        openHandshakeTimeout=0,
        closeHandshakeTimeout=0,
        autoPingInterval=0,
    )
    if endpoint is None:
        endpoint = endpoints.HostnameEndpoint(reactor, parts.hostname, parts.port or 80)
    opened = factory.opened

    def failed(reason):
        if factory.opened is not None:
            factory.opened = None
            return reason
        return None

    endpoint.connect(factory).addErrback(failed).addErrback(opened.errback)
    return opened
