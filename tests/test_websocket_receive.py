"""
Both sides of the WebSocket transport read plain data frames themselves
(L{execserver.transports.framecutter}) and leave everything else to
autobahn: whatever the frames and however the stream is cut into reads, the
messages that arrive are the ones sent, in order, control frames are
answered, and frames against the rules end the connection. Over real
loopback connections to a peer that speaks RFC 6455 by hand; some streams
are fed to the protocol in pieces so that every cut is tried.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import struct

from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred
from twisted.trial import unittest
from zope.interface import implementer

from execserver.interfaces import IMessageProtocol, PeerGoingAway
from execserver.transports import framecutter, websocket
from tests import support

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def frame(payload: bytes, opcode: int = 0x1, fin: bool = True, mask: bytes | None = None) -> bytes:
    """
    A frame as a server writes it (or, with C{mask}, as it must not).
    """
    first = (0x80 if fin else 0) | opcode
    masked = 0x80 if mask is not None else 0
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", first, masked | length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", first, masked | 126, length)
    else:
        header = struct.pack("!BBQ", first, masked | 127, length)
    if mask is None:
        return header + payload
    return header + mask + bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))


def masked(payload: bytes, opcode: int = 0x1, fin: bool = True) -> bytes:
    """
    A frame as a client writes it, with a random key.
    """
    return frame(payload, opcode, fin, mask=os.urandom(4))


class HandServer(protocol.Protocol):
    """
    Answers the upgrade, then keeps the frames the client sends as
    (opcode, payload) pairs.
    """

    def __init__(self, opened: Deferred) -> None:
        self.opened = opened
        self.buffer = b""
        self.upgraded = False
        self.frames: list[tuple[int, bytes]] = []
        self.frame_arrived: Deferred | None = None

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded:
            if b"\r\n\r\n" not in self.buffer:
                return
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                       if line.lower().startswith(b"sec-websocket-key:"))
            accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
            self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                 b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
            self.upgraded = True
            self.opened.callback(self)
        while len(self.buffer) >= 6:
            length, start = self.buffer[1] & 0x7F, 2
            if length == 126:
                length, start = struct.unpack("!H", self.buffer[2:4])[0], 4
            elif length == 127:
                length, start = struct.unpack("!Q", self.buffer[2:10])[0], 10
            if len(self.buffer) < start + 4 + length:
                return
            mask = self.buffer[start:start + 4]
            payload = bytes(byte ^ mask[i % 4] for i, byte in
                            enumerate(self.buffer[start + 4:start + 4 + length]))
            self.frames.append((self.buffer[0] & 0x0F, payload))
            self.buffer = self.buffer[start + 4 + length:]
            arrived, self.frame_arrived = self.frame_arrived, None
            if arrived is not None:
                arrived.callback(None)

    def next_frame(self) -> Deferred:
        self.frame_arrived = Deferred()
        return self.frame_arrived


@implementer(IMessageProtocol)
class Recorder:
    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.lost = Deferred()
        self._waiting: tuple[int, Deferred] | None = None

    def makeConnection(self, transport) -> None:
        self.transport = transport

    def messageReceived(self, data: bytes) -> None:
        self.messages.append(data)
        if self._waiting is not None and len(self.messages) >= self._waiting[0]:
            waiter, self._waiting = self._waiting[1], None
            waiter.callback(None)

    def connectionLost(self, reason) -> None:
        self.reason = reason
        self.lost.callback(None)

    def until(self, count: int) -> Deferred:
        self._waiting = (count, Deferred())
        waiter = self._waiting[1]
        if len(self.messages) >= count:
            self._waiting = None
            waiter.callback(None)
        return waiter


class ReceiveTests(unittest.TestCase):
    async def connected(self) -> tuple[HandServer, Recorder, websocket.MessageTransport]:
        opened = Deferred()
        factory = protocol.Factory()
        factory.buildProtocol = lambda addr: HandServer(opened)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        recorder = Recorder()
        transport = await support.with_timeout(websocket.connect(
            reactor, f"ws://127.0.0.1:{port.getHost().port}/", recorder))
        server = await support.with_timeout(opened)
        self.addCleanup(server.transport.loseConnection)
        self.addCleanup(transport.abortConnection)
        return server, recorder, transport

    def feed(self, transport: websocket.MessageTransport, stream: bytes, cuts: list[int]) -> None:
        """
        Hand C{stream} to the client protocol as if it had been read in
        pieces ending at C{cuts}.
        """
        start = 0
        for cut in [*cuts, len(stream)]:
            transport.protocol.dataReceived(stream[start:cut])
            start = cut

    async def test_messages_cut_anywhere_arrive_whole_and_in_order(self):
        server, recorder, transport = await self.connected()
        payloads = [b"", b"a" * 125, os.urandom(126), b"b" * 65535, b"c" * 65536, os.urandom(200_000),
                    b'{"method":"process/output"}']
        stream = b"".join(frame(payload, 0x2 if n % 2 else 0x1) for n, payload in enumerate(payloads))
        # Every cut in the headers and the small frames, random ones after.
        rng = random.Random(6455)
        cuts = list(range(1, 400)) + sorted(rng.sample(range(400, len(stream)), 300))
        self.feed(transport, stream, cuts)
        self.assertEqual(recorder.messages, payloads)
        # And straight from the socket.
        server.transport.write(stream)
        await support.with_timeout(recorder.until(2 * len(payloads)))
        self.assertEqual(recorder.messages, payloads * 2)

    async def test_a_ping_between_messages_is_answered(self):
        server, recorder, transport = await self.connected()
        pong = server.next_frame()
        stream = frame(b"one") + frame(b"hi", 0x9) + frame(b"two")
        self.feed(transport, stream, list(range(1, len(stream))))
        await support.with_timeout(pong)
        self.assertEqual(server.frames, [(0xA, b"hi")])
        self.assertEqual(recorder.messages, [b"one", b"two"])

    async def test_a_fragmented_message_arrives_whole(self):
        server, recorder, transport = await self.connected()
        stream = (frame(b"ab", fin=False) + frame(b"cd", 0x0, fin=False) + frame(b"ef", 0x0)
                  + frame(b"gh"))
        self.feed(transport, stream, list(range(1, len(stream))))
        self.assertEqual(recorder.messages, [b"abcdef", b"gh"])
        server.transport.write(stream)
        await support.with_timeout(recorder.until(4))
        self.assertEqual(recorder.messages, [b"abcdef", b"gh"] * 2)

    async def test_a_frame_begun_before_the_client_closes_arrives(self):
        server, recorder, transport = await self.connected()
        stream = frame(b"hello" * 100) + frame(b"after")
        self.feed(transport, stream[:300], [1, 3, 100])
        transport.loseConnection()
        self.feed(transport, stream[300:], [])
        self.assertEqual(recorder.messages, [b"hello" * 100, b"after"])

    async def test_a_masked_frame_ends_the_connection(self):
        server, recorder, transport = await self.connected()
        server.transport.write(frame(b"one") + frame(b"masked", mask=b"\x01\x02\x03\x04") + frame(b"two"))
        await support.with_timeout(recorder.lost)
        self.assertEqual(recorder.messages, [b"one"])

    async def test_a_frame_over_the_limit_ends_the_connection(self):
        server, recorder, transport = await self.connected()
        server.transport.write(frame(b"one")
                               + struct.pack("!BBQ", 0x81, 127, websocket.MAX_FRAME_BYTES + 1))
        await support.with_timeout(recorder.lost)
        self.assertEqual(recorder.messages, [b"one"])

    async def test_a_close_ends_the_connection_after_the_messages_before_it(self):
        server, recorder, transport = await self.connected()
        answer = server.next_frame()
        server.transport.write(frame(b"one") + frame(struct.pack("!H", 1001) + b"bye", 0x8))
        await support.with_timeout(answer)
        self.assertEqual([opcode for opcode, _ in server.frames], [0x8])
        server.transport.loseConnection()
        await support.with_timeout(recorder.lost)
        self.assertEqual(recorder.messages, [b"one"])
        self.assertTrue(recorder.reason.check(PeerGoingAway))


class HandClient(protocol.Protocol):
    """
    Sends the upgrade, then keeps the frames the server sends as (opcode,
    payload) pairs.
    """

    def __init__(self, opened: Deferred) -> None:
        self.opened = opened
        self.buffer = b""
        self.upgraded = False
        self.frames: list[tuple[int, bytes]] = []
        self.frame_arrived: Deferred | None = None
        self.lost = Deferred()

    def connectionMade(self) -> None:
        key = base64.b64encode(os.urandom(16))
        self.transport.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                             b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                             b"Sec-WebSocket-Key: " + key + b"\r\n\r\n")

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded:
            if b"\r\n\r\n" not in self.buffer:
                return
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            assert head.startswith(b"HTTP/1.1 101 "), head
            self.upgraded = True
            self.opened.callback(self)
        while len(self.buffer) >= 2:
            length, start = self.buffer[1] & 0x7F, 2
            if length == 126:
                length, start = struct.unpack("!H", self.buffer[2:4])[0], 4
            elif length == 127:
                length, start = struct.unpack("!Q", self.buffer[2:10])[0], 10
            if len(self.buffer) < start + length:
                return
            self.frames.append((self.buffer[0] & 0x0F, self.buffer[start:start + length]))
            self.buffer = self.buffer[start + length:]
            arrived, self.frame_arrived = self.frame_arrived, None
            if arrived is not None:
                arrived.callback(None)

    def next_frame(self) -> Deferred:
        self.frame_arrived = Deferred()
        return self.frame_arrived

    def connectionLost(self, reason) -> None:
        self.lost.callback(None)


class ServerReceiveTests(unittest.TestCase):
    """
    The listening side reads the masked frames of its clients.
    """

    async def connected(self) -> tuple[HandClient, Recorder]:
        recorders: list[Recorder] = []

        def build() -> Recorder:
            recorders.append(Recorder())
            return recorders[-1]

        port = reactor.listenTCP(0, websocket.site(build), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        opened = Deferred()
        client_factory = protocol.ClientFactory()
        client_factory.buildProtocol = lambda addr: HandClient(opened)
        reactor.connectTCP("127.0.0.1", port.getHost().port, client_factory)
        client = await support.with_timeout(opened)
        self.addCleanup(client.transport.abortConnection)
        recorder = recorders[0]
        self.addCleanup(recorder.transport.abortConnection)
        return client, recorder

    def feed(self, recorder: Recorder, stream: bytes, cuts: list[int]) -> None:
        start = 0
        for cut in [*cuts, len(stream)]:
            recorder.transport.protocol.dataReceived(stream[start:cut])
            start = cut

    async def test_messages_cut_anywhere_arrive_whole_and_in_order(self):
        client, recorder = await self.connected()
        texts = [b"", b"a" * 125, b'{"id":1}' * 16, b"b" * 511, b"c" * 512, b"d" * 513,
                 b"e" * 65535, b"f" * 65536, b"g" * 200_000]
        binaries = [os.urandom(3), os.urandom(126), os.urandom(70_000)]
        stream = b"".join([masked(payload) for payload in texts]
                          + [masked(payload, 0x2) for payload in binaries])
        expected = [payload.decode() for payload in texts] + binaries
        rng = random.Random(6455)
        cuts = list(range(1, 1200)) + sorted(rng.sample(range(1200, len(stream)), 300))
        self.feed(recorder, stream, cuts)
        self.assertEqual(recorder.messages, expected)
        client.transport.write(stream)
        await support.with_timeout(recorder.until(2 * len(expected)))
        self.assertEqual(recorder.messages, expected * 2)

    async def test_a_ping_between_messages_is_answered(self):
        client, recorder = await self.connected()
        pong = client.next_frame()
        stream = masked(b"one") + masked(b"hi", 0x9) + masked(b"two")
        self.feed(recorder, stream, list(range(1, len(stream))))
        await support.with_timeout(pong)
        self.assertEqual(client.frames, [(0xA, b"hi")])
        self.assertEqual(recorder.messages, ["one", "two"])

    async def test_a_fragmented_message_arrives_whole(self):
        client, recorder = await self.connected()
        stream = (masked(b"ab", fin=False) + masked(b"cd", 0x0, fin=False) + masked(b"ef", 0x0)
                  + masked(b"gh"))
        self.feed(recorder, stream, list(range(1, len(stream))))
        self.assertEqual(recorder.messages, ["abcdef", "gh"])
        client.transport.write(stream)
        await support.with_timeout(recorder.until(4))
        self.assertEqual(recorder.messages, ["abcdef", "gh"] * 2)

    async def test_an_unmasked_frame_ends_the_connection(self):
        client, recorder = await self.connected()
        client.transport.write(masked(b"one") + frame(b"plain") + masked(b"two"))
        await support.with_timeout(recorder.lost)
        self.assertEqual(recorder.messages, ["one"])

    async def test_a_frame_over_the_limit_ends_the_connection(self):
        client, recorder = await self.connected()
        client.transport.write(masked(b"one")
                               + struct.pack("!BBQ", 0x81, 0x80 | 127, websocket.MAX_FRAME_BYTES + 1)
                               + os.urandom(4))
        await support.with_timeout(recorder.lost)
        self.assertEqual(recorder.messages, ["one"])

    async def test_invalid_utf8_in_a_text_frame_ends_the_connection(self):
        client, recorder = await self.connected()
        client.transport.write(masked(b"one") + masked(b"\xff") + masked(b"two"))
        await support.with_timeout(recorder.lost)
        self.assertEqual(recorder.messages, ["one"])

    async def test_a_close_is_answered_after_the_messages_before_it(self):
        client, recorder = await self.connected()
        answer = client.next_frame()
        client.transport.write(masked(b"one") + masked(struct.pack("!H", 1000) + b"bye", 0x8))
        await support.with_timeout(answer)
        self.assertEqual([opcode for opcode, _ in client.frames], [0x8])
        await support.with_timeout(recorder.lost)
        self.assertEqual(recorder.messages, ["one"])


class UnmaskTests(unittest.TestCase):
    def test_every_length_and_key(self):
        rng = random.Random(5)
        for length in [*range(0, 1030), 65536, 1 << 20]:
            payload = rng.randbytes(length)
            key = rng.randbytes(4)
            expected = bytes(byte ^ key[i % 4] for i, byte in enumerate(payload))
            self.assertEqual(framecutter.unmask(memoryview(payload), key), expected, length)
