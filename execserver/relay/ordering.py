"""
The per-stream reorder buffer that stands between relay C{data} frames and
the Noise cipher, whose implicit nonce demands records strictly in order.

C{seq} is the record's nonce, from 0. A record behind the next expected one,
or a second copy of a buffered one, is dropped silently (the first copy
wins); one too far ahead, or one that would buffer too many bytes, is a
protocol error that ends the stream.
"""

from __future__ import annotations

from execserver.relay.limits import MAX_REORDER_BYTES, MAX_REORDER_DISTANCE, MAX_SEQ


class ReorderError(Exception):
    """The peer sent records the window cannot hold: reset the stream."""


class ReorderBuffer:
    """Releases records in C{seq} order, each sequence number at most once."""

    def __init__(self) -> None:
        self.next_seq = 0
        self._pending: dict[int, bytes] = {}
        self.buffered_bytes = 0

    def push(self, seq: int, record: bytes) -> list[bytes]:
        """
        Accept one record; return the records that are now in order (none
        while a gap remains).

        @raise ReorderError: when C{seq} is beyond the window, the buffer
            is full, or the sequence numbers are exhausted.
        """
        if seq < self.next_seq or seq in self._pending:
            return []
        if seq > self.next_seq:
            if seq - self.next_seq > MAX_REORDER_DISTANCE:
                raise ReorderError("relay record beyond the reorder window")
            if self.buffered_bytes + len(record) > MAX_REORDER_BYTES:
                raise ReorderError("relay reorder buffer is full")
            self._pending[seq] = record
            self.buffered_bytes += len(record)
            return []
        released = [record]
        self._advance()
        while self.next_seq in self._pending:
            record = self._pending.pop(self.next_seq)
            self.buffered_bytes -= len(record)
            released.append(record)
            self._advance()
        return released

    def _advance(self) -> None:
        if self.next_seq == MAX_SEQ:
            raise ReorderError("relay sequence numbers exhausted")
        self.next_seq += 1
