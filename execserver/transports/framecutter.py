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

The same goes for writing: L{frame_header} and L{client_frame} make whole
frames for the server, the client and the relay sockets to write
themselves, without autobahn's per-frame objects.
"""

from __future__ import annotations

import os
import struct

from autobahn.websocket.xormasker import create_xor_masker

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

    def start_cutting(self) -> None:
        self._unread = bytearray()

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
            read = self._deliver_frames(unread, view)
        if read < 0:
            rest = bytes(unread[-read - 1:])
            unread.clear()
            super().dataReceived(rest)
        else:
            del unread[:read]

    def _between_messages(self) -> bool:
        """
        Whether autobahn's reader is between messages with nothing
        buffered, where a frame may be read without it.
        """
        return (self.state == self.STATE_OPEN and self.current_frame is None
                and not self.inside_message and not self.data)

    def _deliver_frames(self, unread: bytearray, view: memoryview) -> int:
        """
        Deliver the complete plain frames at the start of C{unread}; the
        offset of the first byte not delivered, or -1 - that offset when
        autobahn must read on from there.
        """
        # A client masks every frame it sends, a server none (RFC 6455 5.1).
        mask_bit = _MASKED if self.factory.isServer else 0
        position, end = 0, len(unread)
        while end - position >= 2:
            if not self._between_messages():
                return -1 - position
            first, second = unread[position], unread[position + 1]
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
                break
            start = position + header
            position = start + length
            if mask_bit:
                payload = unmask(view[start:position], bytes(view[start - 4:start]))
            else:
                payload = bytes(view[start:position])
            self.onMessage(payload, first == BINARY_FRAME)
        return position
