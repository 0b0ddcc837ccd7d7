"""
The record channel: JSON-RPC messages over Noise transport records.

Each direction is one plaintext byte stream of framed messages, a u32
big-endian length L (1 <= L <= 64 MiB) then L bytes of JSON. The stream is
cut into records of at most 61 440 plaintext bytes, each sealed by the
transport cipher and sent as one relay C{data} frame whose C{seq} is the
record's nonce. Unlike codex, which starts every message on a fresh
record, L{RecordEncoder} fills each record with whatever is queued, so that
messages written together (a reply and the notifications after it, output
that piled up while the socket was full) cost one record, one frame and
one AEAD operation; receivers, codex's included, accept any cut, and so
does L{RecordDecoder}.

Both classes only transform bytes: the relay stream that carries the
records decides when to pull and where to send them.
"""

from __future__ import annotations

from collections import deque

from execserver.noise.errors import RecordError
from execserver.noise.limits import (
    LENGTH_PREFIX_LEN,
    MAX_MESSAGE_LEN,
    MAX_RECORDS,
    RECORD_PLAINTEXT_LEN,
)
from execserver.noise.symmetric import CipherState


class _Outgoing:
    """One framed message, consumed a record at a time without joining it."""

    __slots__ = ("parts", "remaining")

    def __init__(self, parts: deque[memoryview], size: int) -> None:
        self.parts = parts
        self.remaining = size

    def take(self, room: int, pieces: list[memoryview]) -> int:
        """Append up to C{room} bytes of the message to C{pieces}; how many."""
        wanted = taken = min(room, self.remaining)
        self.remaining -= wanted
        while wanted:
            part = self.parts[0]
            if len(part) <= wanted:
                self.parts.popleft()
            else:
                self.parts[0] = part[wanted:]
                part = part[:wanted]
            pieces.append(part)
            wanted -= len(part)
        return taken


class RecordEncoder:
    """
    Queues outgoing messages and seals them into records on demand, so the
    sender can stop pulling while its relay connection pushes back.
    """

    def __init__(self, cipher: CipherState) -> None:
        self._cipher = cipher
        self._queue: deque[_Outgoing] = deque()
        self.pending_bytes = 0

    def write(self, message: bytes | tuple[bytes, ...]) -> None:
        """
        Queue one message (UTF-8 JSON text, or its parts in order).

        @raise RecordError: the message is empty or over 64 MiB.
        """
        parts = message if isinstance(message, tuple) else (message,)
        size = sum(len(part) for part in parts)
        if not 1 <= size <= MAX_MESSAGE_LEN:
            raise RecordError("JSON-RPC message size is outside 1 byte to 64 MiB")
        views = deque(memoryview(part) for part in parts if part)
        views.appendleft(memoryview(size.to_bytes(LENGTH_PREFIX_LEN, "big")))
        framed = size + LENGTH_PREFIX_LEN
        self._queue.append(_Outgoing(views, framed))
        self.pending_bytes += framed

    def pull(self) -> tuple[int, bytes] | None:
        """
        The next record as (C{seq}, ciphertext), or C{None} when nothing is
        queued.

        @raise RecordError: the stream has used all its sequence numbers.
        """
        if not self._queue:
            return None
        seq = self._cipher.nonce
        if seq >= MAX_RECORDS:
            raise RecordError("record sequence numbers exhausted")
        pieces: list[memoryview] = []
        room = RECORD_PLAINTEXT_LEN
        queue = self._queue
        while room and queue:
            message = queue[0]
            room -= message.take(room, pieces)
            if not message.remaining:
                queue.popleft()
        self.pending_bytes -= RECORD_PLAINTEXT_LEN - room
        plaintext = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        return seq, self._cipher.encrypt(plaintext)

    def drain(self) -> list[tuple[int, bytes]]:
        """Every queued record, in order."""
        records = []
        while (record := self.pull()) is not None:
            records.append(record)
        return records


class MessageReassembler:
    """
    Turns plaintext records back into messages. A length out of range is
    refused as soon as its four bytes are in, before any payload arrives.
    """

    def __init__(self) -> None:
        self._header = bytearray()
        self._remaining: int | None = None
        self._parts: list[memoryview] = []

    def feed(self, record: bytes) -> list[bytes]:
        """
        Take one decrypted record; return the messages it completes.

        @raise RecordError: the record is over 61 440 bytes, or a declared
            length is 0 or over 64 MiB.
        """
        if len(record) > RECORD_PLAINTEXT_LEN:
            raise RecordError("Noise record is larger than 61440 bytes")
        view = memoryview(record)
        messages = []
        while view:
            if self._remaining is None:
                needed = LENGTH_PREFIX_LEN - len(self._header)
                self._header += view[:needed]
                view = view[needed:]
                if len(self._header) < LENGTH_PREFIX_LEN:
                    break
                length = int.from_bytes(self._header, "big")
                self._header.clear()
                if not 1 <= length <= MAX_MESSAGE_LEN:
                    raise RecordError("JSON-RPC message length is outside 1 byte to 64 MiB")
                self._remaining = length
            piece = view[:self._remaining]
            view = view[len(piece):]
            self._parts.append(piece)
            self._remaining -= len(piece)
            if not self._remaining:
                messages.append(b"".join(self._parts))
                self._parts = []
                self._remaining = None
        return messages


class RecordDecoder:
    """
    Opens records in order (the relay's reorder buffer guarantees it) and
    returns the messages they complete. Any error ends the stream.
    """

    def __init__(self, cipher: CipherState) -> None:
        self._cipher = cipher
        self._reassembler = MessageReassembler()

    def receive(self, ciphertext: bytes) -> list[bytes]:
        """
        @raise DecryptFailed: the record is forged, replayed or out of order.
        @raise RecordError: it breaks the framing rules.
        """
        return self._reassembler.feed(self._cipher.decrypt(ciphertext))
