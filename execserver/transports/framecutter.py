"""
Reading WebSocket data frames without autobahn's reader, on either side.

Once a WebSocket is open, almost every frame is a whole, unfragmented text
or binary frame within the limits. autobahn's reader spends dozens of
Python calls, a masker object and a few copies on each of them: on a
server answering small requests that was a tenth of its work per request,
and the largest part of a client's work while it streams output.
L{FrameCutter}, mixed into an autobahn protocol, cuts those frames out of
the stream itself and hands them to C{onMessage}. A frame autobahn has to
see (a control frame, a fragment, a frame over the limits or against the
rules, masked when it must not be or the other way round) goes to it with
the rest of that read, and it fails the connection where it must, as
before; the next read is cut here again once autobahn is between messages.

A client that streams output can go further (L{FrameCutter.read_in_place}):
its socket is read into one reused buffer, a megabyte at a time, and each
frame's payload is handed over where it lies, for the length of the call,
instead of being copied three times on its way (Twisted's read, the
buffer of unread bytes, the payload).

The same goes for writing: L{frame_header} and L{client_frame} make whole
frames for the server, the client and the relay sockets to write
themselves, without autobahn's per-frame objects.
"""

from __future__ import annotations

import mmap
import os
import socket
import struct

from autobahn.websocket.xormasker import create_xor_masker
from twisted.internet import main, tcp

#: The first byte of an unfragmented text or binary frame (FIN, no RSV).
TEXT_FRAME = 0x81
BINARY_FRAME = 0x82
_MASKED = 0x80
#: Up to this size a payload is unmasked through Python integers (under a
#: microsecond for a small request); autobahn's masker, whose set-up costs
#: a few microseconds, is faster beyond.
_INTEGER_UNMASK_BYTES = 512


def unmask(payload: memoryview | bytes, key: bytes) -> bytes:
    """
    C{payload} XORed with the repeated four-byte C{key} (RFC 6455 5.3):
    masking and unmasking alike.
    """
    length = len(payload)
    if length > _INTEGER_UNMASK_BYTES:
        return create_xor_masker(key, length).process(payload)
    repeated = (key * ((length >> 2) + 1))[:length]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(repeated, "little")).to_bytes(
        length, "little")


class ReadBuffer:
    """
    One anonymous mapping that a socket is read into again and again, and
    the window of it that holds bytes read but not consumed yet
    (C{data[start:end]}). Reads go after the window; the window moves back
    to the start only when too little room is left after it, so most reads
    copy nothing but what the kernel hands over.
    """

    #: The mapping's size, unless one message needs more.
    SIZE = 4 * 1024 * 1024
    #: Room to leave for one read.
    FLOOR = 256 * 1024
    #: The most one read takes: what a client that has paused its reading
    #: may still be handed before it stops.
    READ_LIMIT = 1024 * 1024

    def __init__(self, read_limit: int | None = READ_LIMIT, keep_grown: bool = False) -> None:
        """
        @param read_limit: the most one read takes (None: all the room).
        @param keep_grown: keep a mapping grown for a large message, for
            the next one, rather than going back to the usual size.
        """
        self.data = mmap.mmap(-1, self.SIZE)
        self.view = memoryview(self.data)
        self.start = 0
        self.end = 0
        self._read_limit = read_limit
        self._keep_grown = keep_grown

    def receive(self, sock: socket.socket, wanted: int = 0) -> int:
        """
        Read what C{sock} has (at most the room left), making room first
        for C{wanted} bytes from the window's start (a message whose size
        is known). Returns the count read: 0 at the end of the stream.

        @raise BlockingIOError: nothing to read.
        """
        if len(self.data) - self.end < self.FLOOR or self.start + wanted > len(self.data):
            self._make_room(wanted)
        room = len(self.data) - self.end
        if self._read_limit is not None:
            room = min(room, self._read_limit)
        received = sock.recv_into(self.view[self.end:], room, socket.MSG_DONTWAIT)
        self.end += received
        return received

    def consumed(self, position: int) -> None:
        """
        Everything before C{position} has been used. An empty window goes
        back to the start, and a mapping grown for a large message back to
        its usual size (unless kept).
        """
        if position == self.end:
            position = self.end = 0
            if len(self.data) > self.SIZE and not self._keep_grown:
                self.data = mmap.mmap(-1, self.SIZE)
                self.view = memoryview(self.data)
        self.start = position

    def _make_room(self, wanted: int) -> None:
        kept = self.end - self.start
        needed = max(wanted, kept) + self.FLOOR
        if needed > len(self.data):
            bigger = mmap.mmap(-1, max(needed, 2 * len(self.data)))
            bigger[:kept] = self.view[self.start:self.end]
            self.data, self.view = bigger, memoryview(bigger)
        elif self.start:
            self.data.move(0, self.start, kept)
        self.start, self.end = 0, kept


def frame_header(first: int, length: int, masked: bool = False) -> bytes:
    """
    The header of a frame of C{length} payload bytes whose first byte
    (FIN, RSV, opcode) is C{first}, without the masking key.
    """
    mask_bit = _MASKED if masked else 0
    if length < 126:
        return struct.pack("!BB", first, mask_bit | length)
    if length < 1 << 16:
        return struct.pack("!BBH", first, mask_bit | 126, length)
    return struct.pack("!BBQ", first, mask_bit | 127, length)


def client_frame(first: int, payload: bytes) -> tuple[bytes, bytes, bytes]:
    """
    A whole frame as a client sends it: masked with a fresh random key
    (RFC 6455 5.3).
    """
    key = os.urandom(4)
    return frame_header(first, len(payload), masked=True), key, unmask(payload, key)


class FrameCutter:
    """
    Mixed into an autobahn protocol (before it): call L{start_cutting} once
    the WebSocket is open; from then on whole data frames go straight to
    C{onMessage(payload, isBinary)}.
    """

    #: Bytes read but not yet delivered (the start of a frame); None until
    #: L{start_cutting}.
    _unread: bytearray | None = None
    #: Where L{read_in_place} reads, once it does.
    _in_place: ReadBuffer | None = None
    #: How many bytes the frame that L{_deliver_frames} stopped at needs
    #: in all (0 while its header is incomplete).
    _wanted = 0

    def start_cutting(self) -> None:
        self._unread = bytearray()

    def read_in_place(self) -> bool:
        """
        From now on, read the socket into a L{ReadBuffer} and hand each
        data frame's payload to C{onMessage} as a memoryview of it, valid
        only during the call. Only a client does this, and only over a
        plain TCP or UNIX socket (whose reads it takes over from Twisted's
        C{doRead}); returns whether it does.
        """
        transport = self.transport
        if self.factory.isServer or not isinstance(transport, tcp.Connection):
            return False
        self._in_place = ReadBuffer()
        transport.doRead = self._read_in_place
        return True

    def dataReceived(self, data: bytes) -> None:
        unread = self._unread
        if unread is None:
            super().dataReceived(data)
            return
        if not self._between_messages():
            # Closing since the start of a frame was read: autobahn reads
            # on, from that start.
            if unread:
                data = bytes(unread) + data
                unread.clear()
            super().dataReceived(data)
            return
        unread += data
        with memoryview(unread) as view:
            read = self._deliver_frames(unread, view, 0, len(unread), copy=True)
        if read < 0:
            rest = bytes(unread[-read - 1:])
            unread.clear()
            super().dataReceived(rest)
        else:
            del unread[:read]

    def _read_in_place(self):
        """The transport's C{doRead}, once L{read_in_place} has been called."""
        buffer = self._in_place
        try:
            if not buffer.receive(self.transport.socket, self._wanted):
                return main.CONNECTION_DONE
        except BlockingIOError:
            return None
        except OSError:
            return main.CONNECTION_LOST
        if self._between_messages():
            read = self._deliver_frames(buffer.data, buffer.view, buffer.start, buffer.end,
                                        copy=False)
            if read >= 0:
                buffer.consumed(read)
                return None
            start = -read - 1
        else:
            start = buffer.start
        # autobahn reads on from there (a control frame, a frame against
        # the rules, or the close under way).
        rest = bytes(buffer.view[start:buffer.end])
        buffer.consumed(buffer.end)
        self._wanted = 0
        super().dataReceived(rest)
        return None

    def _between_messages(self) -> bool:
        """
        Whether autobahn's reader is between messages with nothing
        buffered, where a frame may be read without it.
        """
        return (self.state == self.STATE_OPEN and self.current_frame is None
                and not self.inside_message and not self.data)

    def _deliver_frames(self, data, view: memoryview, position: int, end: int,
                        copy: bool) -> int:
        """
        Deliver the complete plain frames of C{data[position:end]}: their
        payloads copied, or views of C{view} unless C{copy}. Returns the
        offset of the first byte not delivered, or -1 - that offset when
        autobahn must read on from there.
        """
        # A client masks every frame it sends, a server none (RFC 6455 5.1).
        mask_bit = _MASKED if self.factory.isServer else 0
        self._wanted = 0
        while end - position >= 2:
            if not self._between_messages():
                return -1 - position
            first, second = data[position], data[position + 1]
            if first != TEXT_FRAME and first != BINARY_FRAME or second & _MASKED != mask_bit:
                return -1 - position
            length = second & 0x7F
            header = 6 if mask_bit else 2
            if length == 126:
                if end - position < header + 2:
                    break
                length = int.from_bytes(view[position + 2:position + 4], "big")
                header += 2
                if length < 126:
                    return -1 - position
            elif length == 127:
                if end - position < header + 8:
                    break
                length = int.from_bytes(view[position + 2:position + 10], "big")
                header += 8
                if length < 1 << 16 or length >> 63:
                    return -1 - position
            if length > self.maxFramePayloadSize > 0 or length > self.maxMessagePayloadSize > 0:
                return -1 - position
            if end - position - header < length:
                self._wanted = header + length
                break
            start = position + header
            position = start + length
            if mask_bit:
                payload = unmask(view[start:position], bytes(view[start - 4:start]))
            elif copy:
                payload = bytes(view[start:position])
            else:
                payload = view[start:position]
            self.onMessage(payload, first == BINARY_FRAME)
        return position
