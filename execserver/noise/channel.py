"""
L{NoiseStream}: one relay stream, after its handshake, as an
L{IMessageTransport}, so a JSON-RPC connection (client or server) runs over
it unchanged.

    sendMessage ─▶ RecordEncoder ─▶ data frames (seq = nonce) ─▶ socket pump
    data frames ─▶ ReorderBuffer ─▶ RecordDecoder ─▶ messageReceived

Both ends use it: the harness with the initiator's ciphers, the executor
with the responder's. What differs is given to the constructor:

  - C{shares_socket}: the executor's streams share one socket, so a paused
    stream keeps decoding and queues up to L{MAX_QUEUED_MESSAGES} messages
    (one more resets it, as codex does); a harness stream is alone on its
    socket and pausing it stops reading the socket.
  - C{sends_resets}: the executor ends a stream with a C{reset} frame (a
    protocol error, or its JSON-RPC connection ending); a harness never
    sends one, its owner closes the socket instead.

A record that is out of the reorder window, fails authentication (tampered,
replayed) or breaks the framing rules ends the stream, and only it; so does
a second handshake. A C{reset} from the peer ends it quietly (reset reasons
are not authenticated: never shown). C{ack_frame}, C{resume} and
C{heartbeat} are ignored.
"""

from __future__ import annotations

from collections import deque
from typing import Callable

from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from execserver.interfaces import IMessageProtocol, IMessageTransport
from execserver.noise.errors import NoiseError, RecordError
from execserver.noise.handshake import TransportCiphers
from execserver.noise.records import RecordDecoder, RecordEncoder
from execserver.relay.frames import FrameKind, Frame, encode_data, encode_reset
from execserver.relay.limits import MAX_QUEUED_MESSAGES, STREAM_SEND_HIGH_WATER
from execserver.relay.ordering import ReorderBuffer, ReorderError
from execserver.relay.socket import IRelayStream, RelaySocket

log = Logger()

#: A writer paused at L{STREAM_SEND_HIGH_WATER} resumes below this.
STREAM_SEND_LOW_WATER = STREAM_SEND_HIGH_WATER // 2


class StreamReset(ConnectionError):
    """The peer (or the rendezvous) reset the stream."""

    def __init__(self) -> None:
        super().__init__("Noise relay stream reset")


class StreamProtocolError(ConnectionError):
    """The peer broke the stream's rules; C{str()} is a fixed description."""


@implementer(IMessageTransport, IRelayStream, IPushProducer)
class NoiseStream:
    """
    An encrypted stream on a relay socket.

    @param on_end: called once with the reason when the stream ends (the
        harness closes its socket then, the executor forgets the stream).
    @ivar ended: the stream is over; nothing is sent or delivered.
    """

    #: A message that is not JSON-RPC is not answered: the server ends
    #: (resets) the stream, as codex does over the relay.
    parseErrorPrefix = None

    def __init__(self, socket: RelaySocket, stream_id: str, ciphers: TransportCiphers, *,
                 shares_socket: bool, sends_resets: bool,
                 on_end: Callable[[Failure], None] = lambda reason: None) -> None:
        self.socket = socket
        self.stream_id = stream_id
        self.shares_socket = shares_socket
        self.sends_resets = sends_resets
        self.peer = f"relay stream {stream_id}"
        self._on_end = on_end
        self._encoder = RecordEncoder(ciphers.send)
        self._decoder = RecordDecoder(ciphers.receive)
        self._reorder = ReorderBuffer()
        self._protocol: IMessageProtocol | None = None
        self._inbound: deque[bytes] = deque()
        self._reading_paused = False
        self._producer = None
        self._producer_paused = False
        self._closing = False
        self.ended = False

    def start(self, protocol: IMessageProtocol) -> None:
        """Attach to the socket and hand this transport to C{protocol}."""
        self._protocol = protocol
        self.socket.attach(self.stream_id, self)
        protocol.makeConnection(self)

    # IMessageTransport

    def sendMessage(self, data: bytes | tuple[bytes, ...]) -> None:
        if self.ended or self._closing:
            return
        try:
            self._encoder.write(data)
        except RecordError as e:
            log.warn("Noise relay stream: {error}", error=str(e))
            self._end(Failure(StreamProtocolError(str(e))), reset=True)
            return
        self.socket.wantsToSend(self)
        if (self._producer is not None and not self._producer_paused
                and self._encoder.pending_bytes > STREAM_SEND_HIGH_WATER):
            self._producer_paused = True
            self._producer.pauseProducing()

    def flush(self) -> None:
        """
        Left to the relay socket, which sends what every stream has for it
        in one pump round: sending one stream's closing frames on their
        own made relayed round trips slower, not faster (see the README's
        "Tried and not kept").
        """

    def loseConnection(self) -> None:
        """End the stream once what was sent is on the socket."""
        if self.ended or self._closing:
            return
        self._closing = True
        self.socket.wantsToSend(self)

    def abortConnection(self) -> None:
        self._end(Failure(ConnectionAborted()), reset=True)

    def registerProducer(self, producer, streaming: bool) -> None:
        self._producer = producer
        self._producer_paused = False
        if self._encoder.pending_bytes > STREAM_SEND_HIGH_WATER:
            self._producer_paused = True
            producer.pauseProducing()

    def unregisterProducer(self) -> None:
        self._producer = None

    # IPushProducer: the messages this stream delivers.

    def pauseProducing(self) -> None:
        if self._reading_paused or self.ended:
            return
        self._reading_paused = True
        if not self.shares_socket:
            self.socket.pauseReading(self)

    def resumeProducing(self) -> None:
        if not self._reading_paused or self.ended:
            return
        self._reading_paused = False
        while self._inbound and not self._reading_paused and not self.ended:
            self._protocol.messageReceived(self._inbound.popleft())
        if not self._reading_paused and not self.shares_socket:
            self.socket.resumeReading(self)

    def stopProducing(self) -> None:
        self.abortConnection()

    # IRelayStream

    def frameReceived(self, frame: Frame) -> None:
        if self.ended:
            return
        kind = frame.kind
        if kind is FrameKind.DATA:
            try:
                messages = []
                for record in self._reorder.push(frame.seq, frame.payload):
                    messages.extend(self._decoder.receive(record))
            except (ReorderError, NoiseError) as e:
                self._protocol_error(str(e))
                return
            self._deliver(messages)
        elif kind is FrameKind.RESET:
            self._end(Failure(StreamReset()), reset=False)
        elif kind is FrameKind.HANDSHAKE:
            self._protocol_error("handshake frame on an established Noise relay stream")

    def pullFrame(self) -> bytes | None:
        if self.ended:
            return None
        try:
            record = self._encoder.pull()
        except RecordError as e:
            self._protocol_error(str(e))
            return None
        if record is None:
            if self._closing:
                self._end(Failure(ConnectionDone()), reset=True)
            return None
        if self._producer_paused and self._encoder.pending_bytes < STREAM_SEND_LOW_WATER:
            self._producer_paused = False
            self._producer.resumeProducing()
        seq, ciphertext = record
        return encode_data(self.stream_id, seq, ciphertext)

    def socketLost(self, reason: Failure) -> None:
        self._end(reason, reset=False)

    # Inside

    def _deliver(self, messages: list[bytes]) -> None:
        if self._reading_paused or self._inbound:
            self._inbound.extend(messages)
            if self.shares_socket and len(self._inbound) > MAX_QUEUED_MESSAGES:
                self._protocol_error("Noise relay stream consumer fell too far behind")
            return
        for index, message in enumerate(messages):
            if self.ended:
                return
            if self._reading_paused:
                self._inbound.extend(messages[index:])
                return
            self._protocol.messageReceived(message)

    def _protocol_error(self, description: str) -> None:
        log.info("Noise relay stream ended: {error}", error=description)
        self._end(Failure(StreamProtocolError(description)), reset=True)

    def _end(self, reason: Failure, reset: bool) -> None:
        if self.ended:
            return
        self.ended = True
        self._inbound.clear()
        socket = self.socket
        socket.detach(self.stream_id)
        if self._reading_paused and not self.shares_socket:
            socket.resumeReading(self)
        if reset and self.sends_resets:
            socket.writeFrame(encode_reset(self.stream_id), FrameKind.RESET)
        self._producer = None
        if self._protocol is not None:
            self._protocol.connectionLost(reason)
        self._on_end(reason)
