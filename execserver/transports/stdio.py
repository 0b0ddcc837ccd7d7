"""
The stdio transport: newline-delimited JSON on stdin and stdout.

One message per line in each direction (C{\\n} in, with one C{\\r} before it
dropped; C{\\n} out). Lines that are only whitespace are skipped. A line
longer than L{MAX_LINE_BYTES} or one that is not UTF-8 ends the connection,
as in the reference. There is exactly one connection: when stdin ends, the
server kills every process it started and exits.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet import protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from execserver.interfaces import IMessageProtocol, IMessageTransport

#: Longest accepted line, without its terminator.
MAX_LINE_BYTES = 64 * 1024 * 1024

#: What Rust's str::trim() strips: Unicode White_Space.
_WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005" \
    "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"


@implementer(IMessageTransport)
class LineMessageProtocol(protocol.Protocol):
    """
    Splits a byte stream into lines and hands each to a message protocol.

    Only the newly arrived bytes are searched for a newline, so a long line
    arriving in many pieces costs linear time.
    """

    peer = "stdio"
    parseErrorPrefix = "failed to parse JSON-RPC message from exec-server stdio"

    def __init__(
        self, message_protocol: IMessageProtocol, ended: Callable[[], None] | None = None
    ) -> None:
        self.message_protocol = message_protocol
        self._ended = ended
        self._pending: list[bytes] = []
        self._pending_size = 0

    def connectionMade(self) -> None:
        self.message_protocol.makeConnection(self)

    def dataReceived(self, data: bytes) -> None:
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                break
            piece = data[start:end]
            start = end + 1
            if self._pending:
                self._pending.append(piece)
                line = b"".join(self._pending)
                self._pending = []
                self._pending_size = 0
            else:
                line = piece
            if not self._deliver(line):
                return
        rest = data[start:]
        if rest:
            self._pending.append(rest)
            self._pending_size += len(rest)
            if self._pending_size > MAX_LINE_BYTES + 1:
                self._end()

    def _deliver(self, line: bytes) -> bool:
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > MAX_LINE_BYTES:
            self._end()
            return False
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self._end()
            return False
        if text.strip(_WHITESPACE):
            self.message_protocol.messageReceived(text)
        return not self.transport.disconnecting

    def _end(self) -> None:
        self._pending = []
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        self.message_protocol.connectionLost(reason)
        if self._ended is not None:
            self._ended()

    # IMessageTransport

    def sendMessage(self, data: bytes | tuple[bytes, ...]) -> None:
        parts = data if isinstance(data, tuple) else (data,)
        self.transport.writeSequence((*parts, b"\n"))

    def flush(self) -> None:
        """
        Nothing is held back: each message is written as it is sent.
        """

    def loseConnection(self) -> None:
        self.transport.loseConnection()

    def abortConnection(self) -> None:
        self.transport.loseConnection()

    def registerProducer(self, producer, streaming: bool) -> None:
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.transport.unregisterProducer()

    # IPushProducer: the lines we deliver come from the byte transport.

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.transport.loseConnection()
