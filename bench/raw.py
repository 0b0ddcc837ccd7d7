"""
The raw benchmark client: a WebSocket client that parses only what it
needs, so that what a benchmark shows is the server's limit, not the
client's.

It speaks RFC 6455 directly on a TCP connection (no autobahn): frames are
cut out of a large receive buffer, a C{process/output} notification is
recognised by its first bytes and its chunk sliced out and decoded with
pybase64 without parsing the JSON around it; replies are parsed only when
a caller wants their result. Requests go out as masked text frames with an
all-zero key (legal, and the payload needs no copy).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
from urllib.parse import urlsplit

import pybase64
from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred

from execserver import rpc

#: What one read from the socket may take (Twisted reads 64 KiB by default).
READ_BYTES = 4 * 1024 * 1024

_OUTPUT_PREFIX = b'{"method":"process/output"'
_CHUNK_KEY = b'"chunk":"'
_NOTIFICATION_PREFIX = b'{"method":"'


def _frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """
    A client frame: FIN, C{opcode}, masked with the zero key.
    """
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    return header + b"\0\0\0\0" + payload


def chunk_bytes(message: bytes) -> int:
    """
    How many bytes of output a C{process/output} notification carries.
    """
    start = message.index(_CHUNK_KEY) + len(_CHUNK_KEY)
    end = message.index(b'"', start)
    return len(pybase64.b64decode(memoryview(message)[start:end]))


class RawClient(protocol.Protocol):
    """
    One WebSocket connection. C{on_output(nbytes)} sees every
    C{process/output}; C{on_notification(method, message)} every other
    notification (C{message} unparsed).
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.opened = Deferred()
        self.closed = Deferred()
        self.pending: dict[int, Deferred] = {}
        self.next_id = 0
        self.on_output = lambda nbytes: None
        self.on_notification = lambda method, message: None
        self._buffer = bytearray()
        self._handshaking = True
        self._fragments: list[bytes] = []

    def connectionMade(self) -> None:
        self.transport.bufferSize = READ_BYTES
        handle = self.transport.getHandle()
        handle.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        parts = urlsplit(self.url)
        key = base64.b64encode(os.urandom(16))
        self.transport.write(
            b"GET / HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
            % (parts.hostname.encode(), parts.port, key))

    def dataReceived(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        if self._handshaking:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buffer.startswith(b"HTTP/1.1 101"):
                self.transport.loseConnection()
                self.opened.errback(ConnectionError(bytes(buffer[:end]).decode(errors="replace")))
                return
            del buffer[: end + 4]
            self._handshaking = False
            self.opened.callback(self)
        position = 0
        available = len(buffer)
        view = memoryview(buffer)
        while available - position >= 2:
            first, second = buffer[position], buffer[position + 1]
            length = second & 0x7F
            header = 2
            if length == 126:
                if available - position < 4:
                    break
                length = int.from_bytes(buffer[position + 2:position + 4], "big")
                header = 4
            elif length == 127:
                if available - position < 10:
                    break
                length = int.from_bytes(buffer[position + 2:position + 10], "big")
                header = 10
            end = position + header + length
            if end > available:
                break
            self._frameReceived(first, bytes(view[position + header:end]))
            position = end
        view.release()
        del buffer[:position]

    def _frameReceived(self, first: int, payload: bytes) -> None:
        opcode = first & 0x0F
        if opcode == 0x9:
            self.transport.write(_frame(payload, 0xA))
            return
        if opcode == 0x8:
            self.transport.loseConnection()
            return
        if opcode == 0xA:
            return
        if not first & 0x80:
            self._fragments.append(payload)
            return
        if self._fragments:
            self._fragments.append(payload)
            payload = b"".join(self._fragments)
            self._fragments = []
        self._messageReceived(payload)

    def _messageReceived(self, message: bytes) -> None:
        if message.startswith(_OUTPUT_PREFIX):
            self.on_output(chunk_bytes(message))
        elif message.startswith(_NOTIFICATION_PREFIX):
            end = message.index(b'"', len(_NOTIFICATION_PREFIX))
            self.on_notification(message[len(_NOTIFICATION_PREFIX):end].decode(), message)
        else:
            # A reply: its id is a number we chose, found without parsing.
            start = message.index(b'"id":') + 5
            end = start
            while message[end] in b"0123456789":
                end += 1
            self.pending.pop(int(message[start:end])).callback(message)

    def connectionLost(self, reason) -> None:
        for waiter in self.pending.values():
            waiter.errback(reason)
        self.pending.clear()
        self.closed.callback(None)

    def call(self, method: str, params=None) -> Deferred:
        """
        Send a request; fires with the reply's bytes, unparsed.
        """
        self.next_id += 1
        waiter = Deferred()
        self.pending[self.next_id] = waiter
        self.transport.write(_frame(rpc.encode_request(self.next_id, method, params)))
        return waiter

    async def call_result(self, method: str, params=None):
        """
        Send a request; its parsed result (or raise on an error reply).
        """
        reply = json.loads(await self.call(method, params))
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply["result"]

    def notify(self, method: str) -> None:
        self.transport.write(_frame(json.dumps({"method": method}).encode()))

    def close(self) -> None:
        self.transport.loseConnection()


async def connect(url: str, receive_buffer: int | None = None) -> RawClient:
    """
    A raw client connected to C{url}, past C{initialize}/C{initialized}.
    """
    parts = urlsplit(url)
    client = RawClient(url)
    await protocol.ClientCreator(reactor, lambda: client).connectTCP(parts.hostname, parts.port)
    if receive_buffer is not None:
        client.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    await client.opened
    await client.call("initialize", {"clientName": "bench-raw"})
    client.notify("initialized")
    return client
