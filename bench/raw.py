"""
The raw benchmark client: a WebSocket client that parses only what it
needs and copies and allocates as little as it can, so that what a
benchmark shows is the server's limit, not the client's.

It speaks RFC 6455 directly on a socket of its own (no autobahn, no
Twisted transport). Everything is received into one buffer that is reused
(the L{ReadBuffer} of our client's in-place reads, an anonymous mapping:
pages are touched only when data lands in them, and the same pages take
the next message): taking a 16 MiB reply as fresh memory cost about as
much as the server's whole work, at a page fault per 4 KiB. Frames are
cut out in place; a C{process/output} notification is recognised by its
first bytes and its chunk decoded with pybase64 where it lies, without
parsing the JSON around it; other messages are copied out only for a
caller that wants them. Requests go out as masked text frames
with an all-zero key (legal, and the payload needs no copy).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
from urllib.parse import urlsplit

import pybase64
from twisted.internet import error, reactor
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from execserver import rpc
from execserver.transports.framecutter import ReadBuffer

#: Base64 characters decoded at a time (a multiple of 4): the decoded
#: pieces are small enough to come from the heap and be reused.
DECODE_PIECE = 96 * 1024

_OUTPUT_PREFIX = b'{"method":"process/output"'
_CHUNK_KEY = b'"chunk":"'
_NOTIFICATION_PREFIX = b'{"method":"'
_ID_KEY = b'"id":'
_DIGITS = frozenset(b"0123456789")


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


def decoded_length(encoded: memoryview) -> int:
    """
    How many bytes the base64 text C{encoded} decodes to, decoding all of
    it (strictly) a piece at a time.
    """
    return sum(len(pybase64.b64decode(encoded[start:start + DECODE_PIECE], validate=True))
               for start in range(0, len(encoded), DECODE_PIECE))


def _string_bounds(data, start: int, end: int, key: bytes) -> tuple[int, int]:
    """
    Where the JSON string after C{key} (which ends with its opening quote)
    lies in C{data[start:end]}: a base64 string has no escapes, so its end
    is the next quote.
    """
    found = data.find(key, start, end)
    if found < 0:
        raise KeyError(key)
    first = found + len(key)
    return first, data.find(b'"', first, end)


class RawClient:
    """
    One WebSocket connection. C{on_output(nbytes)} sees every
    C{process/output}; C{on_notification(method, message)} every other
    notification (C{message} copied out, unparsed).
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.opened = Deferred()
        self.closed = Deferred()
        self.pending: dict[int, tuple[Deferred, bytes | None]] = {}
        self.next_id = 0
        self.on_output = lambda nbytes: None
        self.on_notification = lambda method, message: None
        self._socket: socket.socket | None = None
        # Every read there may take all the room, and a mapping grown for
        # a large reply is kept for the next.
        self._read = ReadBuffer(read_limit=None, keep_grown=True)
        self._wanted = 0
        self._handshaking = True
        self._fragments: list[bytes] = []

    def open(self) -> Deferred:
        """
        Connect and send the upgrade request; fires with this client once
        the server has switched protocols.
        """
        parts = urlsplit(self.url)
        self._socket = socket.create_connection((parts.hostname, parts.port))
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16))
        self._socket.sendall(
            b"GET / HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
            % (parts.hostname.encode(), parts.port, key))
        reactor.addReader(self)
        return self.opened

    # IReadDescriptor

    def fileno(self) -> int:
        return self._socket.fileno() if self._socket is not None else -1

    def logPrefix(self) -> str:
        return "RawClient"

    def doRead(self):
        try:
            received = self._read.receive(self._socket, self._wanted)
        except BlockingIOError:
            return None
        except OSError as e:
            return error.ConnectionLost(str(e))
        if not received:
            return error.ConnectionDone()
        if self._handshaking and not self._handshake():
            return None
        self._cut_frames()
        return None

    def connectionLost(self, reason: Failure) -> None:
        if self._socket is None:
            return
        self._socket.close()
        self._socket = None
        for waiter, _ in self.pending.values():
            waiter.errback(reason)
        self.pending.clear()
        if self._handshaking:
            self.opened.errback(reason)
        self.closed.callback(None)

    def _handshake(self) -> bool:
        read = self._read
        end = read.data.find(b"\r\n\r\n", 0, read.end)
        if end < 0:
            return False
        if read.data[:12] != b"HTTP/1.1 101":
            status = bytes(read.view[:end]).decode(errors="replace")
            reactor.removeReader(self)
            self.connectionLost(Failure(ConnectionError(status)))
            return False
        read.consumed(end + 4)
        self._handshaking = False
        self.opened.callback(self)
        return True

    def _cut_frames(self) -> None:
        data = self._read.data
        position, available = self._read.start, self._read.end
        self._wanted = 0
        while available - position >= 2:
            first, second = data[position], data[position + 1]
            length = second & 0x7F
            header = 2
            if length == 126:
                header = 4
            elif length == 127:
                header = 10
            if available - position < header:
                break
            if header > 2:
                length = int.from_bytes(data[position + 2:position + header], "big")
            end = position + header + length
            if end > available:
                self._wanted = end - position
                break
            self._frame_received(first, position + header, end)
            if self._socket is None:
                return
            position = end
        self._read.consumed(position)

    def _frame_received(self, first: int, start: int, end: int) -> None:
        opcode = first & 0x0F
        if opcode == 0x9:
            self._send(_frame(bytes(self._read.view[start:end]), 0xA))
        elif opcode == 0x8:
            self.close()
        elif opcode == 0xA:
            pass
        elif not first & 0x80 or self._fragments:
            self._fragments.append(bytes(self._read.view[start:end]))
            if first & 0x80:
                message = b"".join(self._fragments)
                self._fragments = []
                self._message_received(message, memoryview(message), 0, len(message))
        else:
            self._message_received(self._read.data, self._read.view, start, end)

    def _message_received(self, data, view: memoryview, start: int, end: int) -> None:
        if data[start:start + len(_NOTIFICATION_PREFIX)] == _NOTIFICATION_PREFIX:
            if data[start:start + len(_OUTPUT_PREFIX)] == _OUTPUT_PREFIX:
                first, last = _string_bounds(data, start, end, _CHUNK_KEY)
                self.on_output(decoded_length(view[first:last]))
            else:
                first = start + len(_NOTIFICATION_PREFIX)
                method = bytes(view[first:data.find(b'"', first, end)]).decode()
                self.on_notification(method, bytes(view[start:end]))
            return
        # A reply: its id is a number we chose, found without parsing.
        position = data.find(_ID_KEY, start, end) + len(_ID_KEY)
        first = position
        while data[position] in _DIGITS:
            position += 1
        waiter, counted = self.pending.pop(int(bytes(view[first:position])))
        if counted is None:
            waiter.callback(bytes(view[start:end]))
            return
        try:
            first, last = _string_bounds(data, start, end, counted)
        except KeyError:
            waiter.errback(RuntimeError(bytes(view[start:end]).decode(errors="replace")))
            return
        waiter.callback(decoded_length(view[first:last]))

    def _send(self, frame: bytes) -> None:
        if self._socket is not None:
            self._socket.sendall(frame)

    def call(self, method: str, params=None, *, count: bytes | None = None) -> Deferred:
        """
        Send a request; fires with the reply's bytes, unparsed, or with
        C{count} (a key, such as C{b"dataBase64"}): with how many bytes
        the reply's base64 string under that key decodes to, decoded where
        it lies (the reply is not copied).
        """
        self.next_id += 1
        waiter = Deferred()
        self.pending[self.next_id] = (waiter, None if count is None else b'"%s":"' % count)
        self._send(_frame(rpc.encode_request(self.next_id, method, params)))
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
        self._send(_frame(json.dumps({"method": method}).encode()))

    def close(self) -> None:
        if self._socket is not None:
            reactor.removeReader(self)
            self.connectionLost(Failure(error.ConnectionDone()))


async def connect(url: str) -> RawClient:
    """
    A raw client connected to C{url}, past C{initialize}/C{initialized}.
    """
    client = RawClient(url)
    await client.open()
    await client.call("initialize", {"clientName": "bench-raw"})
    client.notify("initialized")
    return client
