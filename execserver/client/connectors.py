"""
Connectors open one message transport to a server and attach a message
protocol to it. The client asks its connector for a new connection every
time it (re)connects, so the same client runs over a WebSocket, a spawned
stdio server or, later, an encrypted relay stream.

Each connector also says whether a dropped connection can be resumed: a
WebSocket server keeps a detached session for a while, a stdio server ends
with its only connection.

Pausing the message transport handed to the message protocol stops reading
from the server, which is how a slow consumer of process output pushes back
on the server.
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

from twisted.internet import protocol
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

from execserver.interfaces import IMessageProtocol
from execserver.transports import stdio, websocket

log = Logger()

#: Kernel receive buffer of a client WebSocket. Whatever sits in it when a
#: connection breaks is lost and must be read again from the server's replay
#: window (1 MiB per process), so the buffer must stay well below that;
#: left alone, Linux grows it to many megabytes on a fast stream. Linux
#: doubles the value given.
RECEIVE_BUFFER_BYTES = 128 * 1024

#: How much of a stdio server's stderr is kept to explain a failure.
STDERR_TAIL_BYTES = 4096


class IConnector(Interface):
    """
    Opens connections to one server.
    """

    description = Attribute("What to call the server in messages, e.g. its URL.")
    resumable = Attribute(
        "Whether a session survives a dropped connection, so that reconnecting "
        "and resuming it makes sense."
    )

    def connect(message_protocol: IMessageProtocol) -> Deferred:
        """
        Open a connection and attach C{message_protocol} to it.

        @return: fires once the connection is open, or fails.
        """


@implementer(IConnector)
class WebSocketConnector:
    """
    Connects to C{ws://HOST:PORT}, sending C{token} (if any) as the bearer
    token of a server started with C{--ws-auth}.
    """

    resumable = True

    def __init__(self, reactor, url: str, token: str | None = None) -> None:
        self.reactor = reactor
        self.url = url
        self.description = url
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}

    def connect(self, message_protocol: IMessageProtocol) -> Deferred:
        return websocket.connect(self.reactor, self.url, message_protocol,
                                 headers=self._headers, receive_buffer=RECEIVE_BUFFER_BYTES)


def server_command() -> list[str]:
    """
    The command that runs our own server over stdio.
    """
    return [
        sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
        "-n", "--pidfile=", "execserver", "--listen", "stdio",
    ]


class _StdioServerProcess(protocol.ProcessProtocol):
    """
    Feeds a child's stdout into the newline-delimited JSON layer and keeps
    the end of its stderr for error messages.
    """

    def __init__(self, inner: IMessageProtocol) -> None:
        self.lines = stdio.LineMessageProtocol(inner)
        self.stderr_tail = b""
        self.ended = Deferred()

    def connectionMade(self) -> None:
        self.lines.makeConnection(_ChildPipes(self.transport))

    def outReceived(self, data: bytes) -> None:
        self.lines.dataReceived(data)

    def errReceived(self, data: bytes) -> None:
        self.stderr_tail = (self.stderr_tail + data)[-STDERR_TAIL_BYTES:]

    def processEnded(self, reason: Failure) -> None:
        if self.stderr_tail:
            log.info("stdio server ended; its last output: {tail}",
                     tail=self.stderr_tail.decode("utf-8", "replace"))
        self.lines.connectionLost(reason)
        self.ended.callback(None)


class _ChildPipes:
    """
    A child's stdin and stdout as the byte transport of the line layer.
    Closing it closes the child's stdin, which ends a stdio server.
    """

    def __init__(self, process) -> None:
        self.process = process
        self.disconnecting = False

    def writeSequence(self, data) -> None:
        self.process.writeSequence(data)

    def loseConnection(self) -> None:
        self.disconnecting = True
        self.process.closeStdin()

    def registerProducer(self, producer, streaming: bool) -> None:
        self.process.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.process.unregisterProducer()

    def pauseProducing(self) -> None:
        self.process.pauseProducing()

    def resumeProducing(self) -> None:
        self.process.resumeProducing()

    def stopProducing(self) -> None:
        self.loseConnection()


@implementer(IConnector)
class StdioConnector:
    """
    Spawns a server that speaks newline-delimited JSON on its stdin and
    stdout: our own (the default) or any other command, such as
    C{codex exec-server --listen stdio}.

    Each connection is a new server process, so a dropped connection cannot
    be resumed.
    """

    resumable = False

    def __init__(self, reactor, argv: Sequence[str] | None = None,
                 env: dict[str, str] | None = None, path: str | None = None) -> None:
        self.reactor = reactor
        self.argv = list(argv) if argv is not None else server_command()
        self.env = env if env is not None else dict(os.environ)
        self.path = path
        self.description = f"stdio server {self.argv[0]}"
        #: Fires when the last server started has exited.
        self.ended: Deferred | None = None

    def connect(self, message_protocol: IMessageProtocol) -> Deferred:
        process_protocol = _StdioServerProcess(message_protocol)
        self.ended = process_protocol.ended
        process = self.reactor.spawnProcess(
            process_protocol, self.argv[0], self.argv, env=self.env, path=self.path,
        )
        return succeed(process)
