"""
The message interface that joins the layers of a connection stack.

A transport layer (WebSocket, stdio lines, an encrypted relay stream) delivers
whole messages to an L{IMessageProtocol} and exposes itself to it as an
L{IMessageTransport}. The JSON-RPC connection only ever sees these two
interfaces, so it runs unchanged over any of them.
"""

from twisted.internet.interfaces import IPushProducer
from zope.interface import Attribute, Interface


class IMessageTransport(IPushProducer):
    """
    Sends whole messages to the peer, and pushes back in both directions.

    Outgoing: a streaming producer registered here is paused while the
    outgoing buffer is full. Incoming: the transport is itself a push
    producer of the messages it delivers; pausing it stops reading from the
    peer (for a relay stream, only that stream), so one slow message
    protocol holds back only its own connection.
    """

    peer = Attribute(
        "Who is at the other end, for logs: 'IP:PORT' of a WebSocket, 'stdio', "
        "'relay stream ID'."
    )

    parseErrorPrefix = Attribute(
        "How a malformed message from this peer is introduced in the error "
        "sent back, e.g. 'failed to parse websocket JSON-RPC message from "
        "exec-server websocket 127.0.0.1:50000'; or None when no error is "
        "sent back and a malformed message ends the connection (a relay "
        "stream, which the reference resets)."
    )

    def sendMessage(data: bytes | tuple[bytes, ...]) -> None:
        """
        Send one message (UTF-8 encoded JSON text). A tuple holds the
        message's parts in order, so that a large message need not be
        joined before it is written.
        """

    def flush() -> None:
        """
        Send at once what the transport holds back to send together with
        the rest of this reactor turn's messages: a message that ends an
        exchange (a process's C{process/closed}) need not wait for them.
        A transport that holds nothing back does nothing.
        """

    def loseConnection() -> None:
        """
        Close the connection after flushing what was already sent.
        """

    def abortConnection() -> None:
        """
        Drop the connection at once, without a closing handshake.
        """

    def registerProducer(producer, streaming: bool) -> None:
        """
        Register a producer to be paused while the outgoing buffer is full.
        """

    def unregisterProducer() -> None:
        """
        Forget the registered producer.
        """


class IMessageProtocol(Interface):
    """
    Receives whole messages from an L{IMessageTransport}.
    """

    def makeConnection(transport: IMessageTransport) -> None:
        """
        Attach the transport; called once before any message.
        """

    def messageReceived(data: bytes | str | memoryview) -> None:
        """
        One whole message arrived: text the transport already decoded, or
        bytes to be parsed as UTF-8 JSON. A protocol whose C{takes_views}
        attribute is true may be handed a memoryview of the transport's
        read buffer instead, valid only until this call returns.
        """

    def connectionLost(reason) -> None:
        """
        The transport is gone; no more messages will arrive or can be sent.
        """


class PeerGoingAway(ConnectionError):
    """
    Why a message transport was lost when its peer closed it on purpose
    because it is shutting down (a WebSocket Close frame with code 1001):
    its sessions go with it, so there is no point in reconnecting.
    """
