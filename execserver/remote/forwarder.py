"""
The forwarder (C{twistd execserver-remote --connect ws://HOST:PORT}, like
codex's C{exec-server forward --connect}): each relay stream becomes a new
WebSocket connection to an exec-server that already runs (ours or the
reference), and messages cross unchanged both ways.

    harness ══ relay stream ══ WebSocketBridge ══ WebSocket ══ exec-server

The stream's messages wait until the WebSocket is open (a stream that
cannot reach the exec-server is reset); either side ending ends the other;
each side pauses the other while it cannot take more.
"""

from __future__ import annotations

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from execserver.interfaces import IMessageProtocol, IMessageTransport
from execserver.transports import websocket

log = Logger()


@implementer(IMessageProtocol)
class _Backend:
    """The WebSocket side of a bridge."""

    def __init__(self, bridge: "WebSocketBridge") -> None:
        self.bridge = bridge

    def makeConnection(self, transport: IMessageTransport) -> None:
        self.bridge.backend_opened(transport)

    def messageReceived(self, data: bytes) -> None:
        self.bridge.stream.sendMessage(data)

    def connectionLost(self, reason: Failure) -> None:
        self.bridge.backend_lost()


@implementer(IPushProducer)
class _Pauses:
    """
    Passes pauses on to a stream, but not C{stopProducing}: a TCP transport
    calls that when it closes, and the stream must then still deliver what
    it holds.
    """

    def __init__(self, stream: IMessageTransport) -> None:
        self.stream = stream

    def pauseProducing(self) -> None:
        self.stream.pauseProducing()

    def resumeProducing(self) -> None:
        self.stream.resumeProducing()

    def stopProducing(self) -> None:
        pass


@implementer(IMessageProtocol)
class WebSocketBridge:
    """
    The message protocol of one relay stream, in place of a server
    connection: a bridge to a new WebSocket to C{url}.
    """

    def __init__(self, reactor, url: str) -> None:
        self.reactor = reactor
        self.url = url
        self.stream: IMessageTransport | None = None
        self.backend: IMessageTransport | None = None
        self._ended = False

    # The relay stream

    def makeConnection(self, stream: IMessageTransport) -> None:
        self.stream = stream
        stream.pauseProducing()
        opening = websocket.connect(self.reactor, self.url, _Backend(self))
        opening.addErrback(self._unreachable)

    def messageReceived(self, data: bytes) -> None:
        self.backend.sendMessage(data)

    def connectionLost(self, reason: Failure) -> None:
        self._ended = True
        if self.backend is not None:
            self.backend.loseConnection()

    # The WebSocket

    def backend_opened(self, backend: IMessageTransport) -> None:
        if self._ended:
            backend.loseConnection()
            return
        self.backend = backend
        # Each side stops reading while the other cannot take more.
        self.stream.registerProducer(backend, True)
        backend.registerProducer(_Pauses(self.stream), True)
        self.stream.resumeProducing()

    def backend_lost(self) -> None:
        self.backend = None
        if not self._ended:
            self.stream.loseConnection()

    def _unreachable(self, failure: Failure) -> None:
        log.info("forwarder: cannot reach the exec-server at {url}: {error}",
                 url=self.url, error=failure.getErrorMessage())
        if not self._ended:
            self.stream.abortConnection()
