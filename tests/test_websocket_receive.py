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
import socket
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


class HandPeer(protocol.Protocol):
    """
    The other side of the WebSocket, by hand: once upgraded it keeps the
    frames it receives as (opcode, payload) pairs, unmasked.
    """

    def __init__(self, opened: Deferred) -> None:
        self.opened = opened
        self.buffer = b""
        self.upgraded = False
        self.frames: list[tuple[int, bytes]] = []
        self.frame_arrived: Deferred | None = None
        self.lost = Deferred()

    def upgrade(self, head: bytes) -> None:
        raise NotImplementedError

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded:
            if b"\r\n\r\n" not in self.buffer:
                return
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            self.upgrade(head)
            self.upgraded = True
            self.opened.callback(self)
        while len(self.buffer) >= 2:
            length, start = self.buffer[1] & 0x7F, 2
            extended = {126: 2, 127: 8}.get(length, 0)
            masked = 4 if self.buffer[1] & 0x80 else 0
            if len(self.buffer) < start + extended + masked:
                return
            if length == 126:
                length, start = struct.unpack("!H", self.buffer[2:4])[0], 4
            elif length == 127:
                length, start = struct.unpack("!Q", self.buffer[2:10])[0], 10
            mask = self.buffer[start:start + masked]
            start += masked
            if len(self.buffer) < start + length:
                return
            payload = self.buffer[start:start + length]
            if mask:
                payload = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
            self.frames.append((self.buffer[0] & 0x0F, payload))
            self.buffer = self.buffer[start + length:]
            arrived, self.frame_arrived = self.frame_arrived, None
            if arrived is not None:
                arrived.callback(None)

    def next_frame(self) -> Deferred:
        self.frame_arrived = Deferred()
        return self.frame_arrived

    def connectionLost(self, reason) -> None:
        self.lost.callback(None)


class HandServer(HandPeer):
    def upgrade(self, head: bytes) -> None:
        key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key:"))
        accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
        self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                             b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")


class HandClient(HandPeer):
    def connectionMade(self) -> None:
        key = base64.b64encode(os.urandom(16))
        self.transport.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                             b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                             b"Sec-WebSocket-Key: " + key + b"\r\n\r\n")

    def upgrade(self, head: bytes) -> None:
        assert head.startswith(b"HTTP/1.1 101 "), head


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


def listen(testcase) -> tuple:
    """
    Our WebSocket server on a loopback port: the port, and the list to
    which each connection's L{Recorder} is added.
    """
    recorders: list[Recorder] = []

    def build() -> Recorder:
        recorders.append(Recorder())
        return recorders[-1]

    port = reactor.listenTCP(0, websocket.site(build), interface="127.0.0.1")
    testcase.addCleanup(port.stopListening)
    return port, recorders


async def hand_client(testcase) -> tuple[HandClient, Recorder]:
    """
    A L{HandClient} connected to our WebSocket server (L{listen}), and the
    L{Recorder} of the server's side of the connection.
    """
    port, recorders = listen(testcase)
    opened = Deferred()
    factory = protocol.ClientFactory()
    factory.buildProtocol = lambda addr: HandClient(opened)
    reactor.connectTCP("127.0.0.1", port.getHost().port, factory)
    client = await support.with_timeout(opened)
    testcase.addCleanup(client.transport.abortConnection)
    recorder = recorders[0]
    testcase.addCleanup(recorder.transport.abortConnection)
    return client, recorder


class _ReadingTests:
    """
    What both sides must do with the frames of the other; a subclass says
    how frames are written to it and how their messages arrive.
    """

    async def connected(self) -> tuple[HandPeer, Recorder]:
        raise NotImplementedError

    def frame(self, payload: bytes, opcode: int = 0x1, fin: bool = True) -> bytes:
        raise NotImplementedError

    def delivered(self, payload: bytes, binary: bool):
        raise NotImplementedError

    def feed(self, recorder: Recorder, stream: bytes, cuts: list[int]) -> None:
        """
        Hand C{stream} to the protocol under test as if it had been read in
        pieces ending at C{cuts}.
        """
        start = 0
        for cut in [*cuts, len(stream)]:
            recorder.transport.protocol.dataReceived(stream[start:cut])
            start = cut

    async def test_messages_cut_anywhere_arrive_whole_and_in_order(self):
        peer, recorder = await self.connected()
        # Random bytes go in binary frames: a text frame must be UTF-8.
        payloads = [b"", b"a" * 125, os.urandom(126), b'{"id":1}' * 16, b"b" * 511, b"c" * 512,
                    b"d" * 513, b"e" * 65535, b"f" * 65536, os.urandom(200_000),
                    b'{"method":"process/output"}']
        binary = [n in (2, 9) for n in range(len(payloads))]
        stream = b"".join(self.frame(payload, 0x2 if is_binary else 0x1)
                          for payload, is_binary in zip(payloads, binary))
        expected = [self.delivered(payload, is_binary) for payload, is_binary in zip(payloads, binary)]
        # Every cut in the headers and the small frames, random ones after.
        rng = random.Random(6455)
        cuts = list(range(1, 1200)) + sorted(rng.sample(range(1200, len(stream)), 300))
        self.feed(recorder, stream, cuts)
        self.assertEqual(recorder.messages, expected)
        # And straight from the socket.
        peer.transport.write(stream)
        await support.with_timeout(recorder.until(2 * len(expected)))
        self.assertEqual(recorder.messages, expected * 2)

    async def test_a_ping_between_messages_is_answered(self):
        peer, recorder = await self.connected()
        pong = peer.next_frame()
        stream = self.frame(b"one") + self.frame(b"hi", 0x9) + self.frame(b"two")
        self.feed(recorder, stream, list(range(1, len(stream))))
        await support.with_timeout(pong)
        self.assertEqual(peer.frames, [(0xA, b"hi")])
        self.assertEqual(recorder.messages, [self.delivered(b"one", False), self.delivered(b"two", False)])

    async def test_a_fragmented_message_arrives_whole(self):
        peer, recorder = await self.connected()
        stream = (self.frame(b"ab", fin=False) + self.frame(b"cd", 0x0, fin=False)
                  + self.frame(b"ef", 0x0) + self.frame(b"gh"))
        self.feed(recorder, stream, list(range(1, len(stream))))
        expected = [self.delivered(b"abcdef", False), self.delivered(b"gh", False)]
        self.assertEqual(recorder.messages, expected)
        peer.transport.write(stream)
        await support.with_timeout(recorder.until(4))
        self.assertEqual(recorder.messages, expected * 2)


class ReceiveTests(_ReadingTests, unittest.TestCase):
    """
    The client side reads the plain frames of its server.
    """

    async def connected(self) -> tuple[HandServer, Recorder]:
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
        return server, recorder

    def frame(self, payload: bytes, opcode: int = 0x1, fin: bool = True) -> bytes:
        return frame(payload, opcode, fin)

    def delivered(self, payload: bytes, binary: bool) -> bytes:
        return payload

    async def test_a_frame_begun_before_the_client_closes_arrives(self):
        server, recorder = await self.connected()
        stream = frame(b"hello" * 100) + frame(b"after")
        self.feed(recorder, stream[:300], [1, 3, 100])
        recorder.transport.loseConnection()
        self.feed(recorder, stream[300:], [])
        self.assertEqual(recorder.messages, [b"hello" * 100, b"after"])

    async def test_a_masked_frame_ends_the_connection(self):
        server, recorder = await self.connected()
        server.transport.write(frame(b"one") + frame(b"masked", mask=b"\x01\x02\x03\x04") + frame(b"two"))
        await support.with_timeout(recorder.lost)
        self.assertEqual(recorder.messages, [b"one"])

    async def test_a_frame_over_the_limit_ends_the_connection(self):
        server, recorder = await self.connected()
        server.transport.write(frame(b"one")
                               + struct.pack("!BBQ", 0x81, 127, websocket.MAX_FRAME_BYTES + 1))
        await support.with_timeout(recorder.lost)
        self.assertEqual(recorder.messages, [b"one"])

    async def test_a_close_ends_the_connection_after_the_messages_before_it(self):
        server, recorder = await self.connected()
        answer = server.next_frame()
        server.transport.write(frame(b"one") + frame(struct.pack("!H", 1001) + b"bye", 0x8))
        await support.with_timeout(answer)
        self.assertEqual([opcode for opcode, _ in server.frames], [0x8])
        server.transport.loseConnection()
        await support.with_timeout(recorder.lost)
        self.assertEqual(recorder.messages, [b"one"])
        self.assertTrue(recorder.reason.check(PeerGoingAway))


class ViewRecorder(Recorder):
    """
    Takes messages as views of the transport's buffer, and copies them
    before the call returns (as it must).
    """

    takes_views = True

    def __init__(self) -> None:
        super().__init__()
        self.kinds: set[type] = set()

    def messageReceived(self, data) -> None:
        self.kinds.add(type(data))
        super().messageReceived(bytes(data))


class InPlaceReceiveTests(unittest.TestCase):
    """
    A client over TCP reads its socket into one reused buffer and hands
    over views of it, to a message protocol that takes them.
    """

    async def connected(self, recorder: Recorder) -> HandServer:
        opened = Deferred()
        factory = protocol.Factory()
        factory.buildProtocol = lambda addr: HandServer(opened)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        transport = await support.with_timeout(websocket.connect(
            reactor, f"ws://127.0.0.1:{port.getHost().port}/", recorder))
        server = await support.with_timeout(opened)
        self.addCleanup(server.transport.loseConnection)
        self.addCleanup(transport.abortConnection)
        self.assertIsNotNone(recorder.transport.protocol._in_place)
        return server

    async def test_views_of_every_size_including_one_over_the_mapping(self):
        recorder = ViewRecorder()
        server = await self.connected(recorder)
        over = framecutter.ReadBuffer.SIZE + 12345
        payloads = [b"a", os.urandom(130_000), b"b" * 70_000, os.urandom(over), b"after"]
        server.transport.write(b"".join(frame(payload, 0x2) for payload in payloads))
        await support.with_timeout(recorder.until(len(payloads)))
        self.assertEqual(recorder.messages, payloads)
        self.assertEqual(recorder.kinds, {memoryview})

    async def test_a_protocol_that_takes_no_views_gets_bytes(self):
        recorder = Recorder()
        server = await self.connected(recorder)
        server.transport.write(frame(b"one") + frame(b"two" * 50_000))
        await support.with_timeout(recorder.until(2))
        self.assertEqual(recorder.messages, [b"one", b"two" * 50_000])
        self.assertEqual({type(message) for message in recorder.messages}, {bytes})


class ReadBufferTests(unittest.TestCase):
    """
    The window of bytes read but not consumed, over a real socket pair.
    """

    def setUp(self):
        self.writer, self.reader = socket.socketpair()
        self.addCleanup(self.writer.close)
        self.addCleanup(self.reader.close)
        self.buffer = framecutter.ReadBuffer()

    def window(self) -> bytes:
        return bytes(self.buffer.view[self.buffer.start:self.buffer.end])

    def test_nothing_to_read(self):
        self.assertRaises(BlockingIOError, self.buffer.receive, self.reader)

    def test_end_of_stream(self):
        self.writer.close()
        self.assertEqual(self.buffer.receive(self.reader), 0)

    def test_reads_go_after_what_is_kept(self):
        self.writer.sendall(b"abcdef")
        self.assertEqual(self.buffer.receive(self.reader), 6)
        self.buffer.consumed(4)
        self.writer.sendall(b"gh")
        self.buffer.receive(self.reader)
        self.assertEqual(self.window(), b"efgh")
        self.assertEqual(self.buffer.start, 4)
        self.buffer.consumed(self.buffer.end)
        self.assertEqual((self.buffer.start, self.buffer.end), (0, 0))

    def test_the_window_moves_back_when_room_runs_short(self):
        size, floor = framecutter.ReadBuffer.SIZE, framecutter.ReadBuffer.FLOOR
        self.buffer.start = size - floor - 10
        self.buffer.end = size - floor + 5
        self.buffer.view[self.buffer.start:self.buffer.end] = b"k" * 15
        self.writer.sendall(b"new")
        self.buffer.receive(self.reader)
        self.assertEqual((self.buffer.start, self.window()), (0, b"k" * 15 + b"new"))

    def test_a_wanted_message_larger_than_the_mapping_grows_it(self):
        self.writer.sendall(b"head")
        self.buffer.receive(self.reader)
        wanted = 2 * framecutter.ReadBuffer.SIZE
        self.writer.sendall(b"tail")
        self.buffer.receive(self.reader, wanted)
        self.assertGreaterEqual(len(self.buffer.data), wanted + framecutter.ReadBuffer.FLOOR)
        self.assertEqual(self.window(), b"headtail")
        self.buffer.consumed(self.buffer.end)
        self.assertEqual(len(self.buffer.data), framecutter.ReadBuffer.SIZE)

    def test_a_grown_mapping_may_be_kept(self):
        self.buffer = framecutter.ReadBuffer(keep_grown=True)
        self.writer.sendall(b"x")
        self.buffer.receive(self.reader, 2 * framecutter.ReadBuffer.SIZE)
        grown = len(self.buffer.data)
        self.buffer.consumed(self.buffer.end)
        self.assertEqual(len(self.buffer.data), grown)
        self.assertGreater(grown, framecutter.ReadBuffer.SIZE)

    def test_one_read_takes_at_most_the_limit(self):
        self.buffer = framecutter.ReadBuffer(read_limit=1000)
        self.writer.sendall(b"x" * 5000)
        self.assertEqual(self.buffer.receive(self.reader), 1000)
        self.assertEqual(self.buffer.receive(self.reader), 1000)
        self.assertEqual(self.window(), b"x" * 2000)


class ServerReceiveTests(_ReadingTests, unittest.TestCase):
    """
    The listening side reads the masked frames of its clients; a text
    message arrives as a string.
    """

    async def connected(self) -> tuple[HandClient, Recorder]:
        return await hand_client(self)

    def frame(self, payload: bytes, opcode: int = 0x1, fin: bool = True) -> bytes:
        return masked(payload, opcode, fin)

    def delivered(self, payload: bytes, binary: bool) -> bytes | str:
        return payload if binary else payload.decode()

    async def assert_ends_the_connection(self, bad: bytes) -> None:
        """
        C{bad}, between two good messages, ends the connection: only the
        first arrives.
        """
        client, recorder = await self.connected()
        client.transport.write(masked(b"one") + bad + masked(b"two"))
        await support.with_timeout(recorder.lost)
        self.assertEqual(recorder.messages, ["one"])

    async def test_an_unmasked_frame_ends_the_connection(self):
        await self.assert_ends_the_connection(frame(b"plain"))

    async def test_a_frame_over_the_limit_ends_the_connection(self):
        await self.assert_ends_the_connection(
            struct.pack("!BBQ", 0x81, 0x80 | 127, websocket.MAX_FRAME_BYTES + 1) + os.urandom(4))

    async def test_invalid_utf8_in_a_text_frame_ends_the_connection(self):
        await self.assert_ends_the_connection(masked(b"\xff"))

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


class ClientFrameTests(unittest.TestCase):
    def test_header_key_and_masked_payload(self):
        for length, header in [(0, b"\x81\x80"), (125, b"\x81\xfd"), (126, b"\x81\xfe\x00\x7e"),
                               (65535, b"\x81\xfe\xff\xff"),
                               (65536, b"\x81\xff" + struct.pack("!Q", 65536))]:
            payload = os.urandom(length)
            sent_header, key, masked = framecutter.client_frame(framecutter.TEXT_FRAME, payload)
            self.assertEqual(sent_header, header, length)
            self.assertEqual(len(key), 4)
            self.assertEqual(framecutter.unmask(memoryview(masked), key), payload, length)

    def test_every_frame_has_a_fresh_key(self):
        keys = {framecutter.client_frame(framecutter.BINARY_FRAME, b"x")[1] for _ in range(64)}
        self.assertGreater(len(keys), 60)
