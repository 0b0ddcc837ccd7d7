"""
The server's messages go to the kernel in one vectored send when nothing is
queued ahead of them (small ones at the end of the reactor's turn, together);
what the kernel does not take is queued in order, and nothing overtakes
them, the Close included. A reply of a MiB or more is sent with the kernel
send buffer raised, and the next smaller message bounds it again. Over real
loopback TCP connections.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import termios

from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred
from twisted.trial import unittest

from execserver.transports import websocket
from execserver.transports.sending import send_now
from tests import support
from tests.test_websocket_receive import HandClient, Recorder, hand_client, listen, masked


class Collector(protocol.Protocol):
    """
    Keeps what it receives; C{until(n)} fires once n bytes have come.
    """

    def __init__(self) -> None:
        self.received = bytearray()
        self._wanted: tuple[int, Deferred] | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self._check()

    def until(self, length: int) -> Deferred:
        self._wanted = (length, Deferred())
        waiter = self._wanted[1]
        self._check()
        return waiter

    def _check(self) -> None:
        if self._wanted is not None and len(self.received) >= self._wanted[0]:
            waiter, self._wanted = self._wanted[1], None
            waiter.callback(bytes(self.received))


class VectoredSendTests(unittest.TestCase):
    async def connected(self):
        """
        The server side's transport of a loopback connection, and the
        client's collector.
        """
        accepted = Deferred()
        factory = protocol.Factory.forProtocol(protocol.Protocol)
        factory.buildProtocol = lambda addr: _Accepted(accepted)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = Collector()
        await protocol.ClientCreator(reactor, lambda: client).connectTCP(
            "127.0.0.1", port.getHost().port)
        self.addCleanup(client.transport.loseConnection)
        server = await support.with_timeout(accepted)
        self.addCleanup(server.transport.loseConnection)
        return server.transport, client

    async def test_a_message_larger_than_the_socket_buffer_arrives_whole_and_in_order(self):
        transport, client = await self.connected()
        big = os.urandom(8 * 1024 * 1024)
        self.assertTrue(send_now(transport, (b"head", big, b"tail")))
        # The kernel cannot have taken 8 MiB at once: the rest is queued
        # where it is, not copied, and a later write comes after it.
        self.assertIs(transport.dataBuffer, big)
        self.assertGreater(transport.offset, 0)
        self.assertEqual(transport._tempDataBuffer, [b"tail"])
        transport.write(b"after")
        expected = b"head" + big + b"tail" + b"after"
        received = await support.with_timeout(client.until(len(expected)))
        self.assertEqual(received, expected)

    async def test_nothing_is_sent_ahead_of_queued_bytes(self):
        transport, client = await self.connected()
        transport.write(b"first")
        self.assertFalse(send_now(transport, (b"second",)))
        transport.writeSequence((b"second",))
        received = await support.with_timeout(client.until(len(b"firstsecond")))
        self.assertEqual(received, b"firstsecond")


class _Accepted(protocol.Protocol):
    def __init__(self, accepted: Deferred) -> None:
        self.accepted = accepted

    def connectionMade(self) -> None:
        self.accepted.callback(self)


def _wmem_max() -> int:
    with open("/proc/sys/net/core/wmem_max") as f:
        return int(f.read())


class SendWindowTests(unittest.TestCase):
    async def test_a_large_reply_raises_the_send_buffer_until_the_next_message(self):
        port, servers = listen(self)
        client = Recorder()
        client_transport = await support.with_timeout(websocket.connect(
            reactor, f"ws://127.0.0.1:{port.getHost().port}/", client))
        self.addCleanup(client_transport.abortConnection)
        server = servers[0].transport
        tcp = server.protocol.transport
        handle = tcp.getHandle()

        def send_buffer() -> int:
            return handle.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)

        # Linux doubles what is asked, up to twice net.core.wmem_max.
        bounded = 2 * min(websocket.SEND_BUFFER_BYTES, _wmem_max())
        self.assertEqual(send_buffer(), bounded)
        big = os.urandom(websocket.LARGE_MESSAGE_BYTES // 2).hex().encode()
        server.sendMessage((b'"', big, b'"'))
        self.assertEqual(send_buffer(), 2 * min(websocket.LARGE_SEND_BUFFER_BYTES, _wmem_max()))
        self.assertEqual(tcp.SEND_LIMIT, websocket.LARGE_SEND_BUFFER_BYTES)
        server.sendMessage(b'"small"')
        self.assertEqual(send_buffer(), bounded)
        self.assertEqual(tcp.SEND_LIMIT, type(tcp).SEND_LIMIT)
        await support.with_timeout(client.until(2))
        self.assertEqual(client.messages, [b'"' + big + b'"', b'"small"'])


class EndOfTurnTests(unittest.TestCase):
    async def connected(self):
        client, recorder = await hand_client(self)
        return client, recorder.transport

    async def until_frames(self, client: HandClient, count: int) -> list[tuple[int, bytes]]:
        while len(client.frames) < count:
            await support.with_timeout(client.next_frame())
        return client.frames

    async def test_small_and_large_messages_keep_their_order(self):
        client, server = await self.connected()
        big = b'"' + b"x" * websocket.END_OF_TURN_BYTES + b'"'
        server.sendMessage(b'"one"')
        server.sendMessage(big)
        server.sendMessage(b'"two"')
        self.assertEqual(await self.until_frames(client, 3),
                         [(0x1, b'"one"'), (0x1, big), (0x1, b'"two"')])

    async def test_many_small_messages_reach_twisted_within_the_turn(self):
        client, server = await self.connected()
        tcp = server.protocol.transport
        paused = []
        tcp.registerProducer(_PauseRecorder(paused), True)
        message = b'"' + b"y" * 1000 + b'"'
        # More than the socket and Twisted's buffer hold, in one turn: the
        # producer is paused before the turn ends.
        for _ in range(2000):
            server.sendMessage(message)
        self.assertTrue(paused)
        frames = await self.until_frames(client, 2000)
        self.assertEqual(frames, [(0x1, message)] * 2000)

    async def test_a_flush_sends_the_turn_so_far_at_once(self):
        client, server = await self.connected()

        def arrived() -> int:
            # Loopback: what the server's kernel takes is in the client's
            # receive queue before the call returns.
            return struct.unpack("i", fcntl.ioctl(client.transport.getHandle().fileno(),
                                                  termios.FIONREAD, b"\0" * 4))[0]

        server.sendMessage(b'"one"')
        self.assertEqual(arrived(), 0)
        server.flush()
        # The frame: a two-byte header and the message.
        self.assertEqual(arrived(), 2 + len(b'"one"'))
        server.sendMessage(b'"two"')
        frames = await self.until_frames(client, 2)
        self.assertEqual(frames, [(0x1, b'"one"'), (0x1, b'"two"')])

    async def test_messages_of_the_turn_go_before_the_close(self):
        client, server = await self.connected()
        server.sendMessage(b'"one"')
        server.sendMessage(b'"two"')
        server.loseConnection()
        frames = await self.until_frames(client, 3)
        self.assertEqual(frames[:2], [(0x1, b'"one"'), (0x1, b'"two"')])
        self.assertEqual(frames[2][0], 0x8)
        # The closing handshake, completed: the server hangs up.
        client.transport.write(masked(frames[2][1], 0x8))
        await support.with_timeout(client.lost)


class _PauseRecorder:
    def __init__(self, paused: list) -> None:
        self.paused = paused

    def pauseProducing(self) -> None:
        self.paused.append(True)

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass
