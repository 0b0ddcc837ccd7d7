"""
The reorder buffer in front of the Noise cipher: records leave in seq
order, duplicates vanish, and a peer cannot make a stream buffer without
bound (64 records ahead, 1 MiB).
"""

from twisted.trial import unittest

from execserver.relay.limits import MAX_REORDER_BYTES, MAX_REORDER_DISTANCE, MAX_SEQ
from execserver.relay.ordering import ReorderBuffer, ReorderError


class ReleaseOrderTests(unittest.SynchronousTestCase):
    def test_in_order_records_pass_straight_through(self):
        buffer = ReorderBuffer()
        self.assertEqual(buffer.push(0, b"a"), [b"a"])
        self.assertEqual(buffer.push(1, b"b"), [b"b"])
        self.assertEqual(buffer.next_seq, 2)

    def test_a_later_record_waits_for_the_missing_one(self):
        buffer = ReorderBuffer()
        self.assertEqual(buffer.push(1, b"b"), [])
        self.assertEqual(buffer.push(0, b"a"), [b"a", b"b"])

    def test_reversed_records_are_released_together(self):
        buffer = ReorderBuffer()
        self.assertEqual(buffer.push(2, b"c"), [])
        self.assertEqual(buffer.push(1, b"b"), [])
        self.assertEqual(buffer.buffered_bytes, 2)
        self.assertEqual(buffer.push(0, b"a"), [b"a", b"b", b"c"])
        self.assertEqual(buffer.buffered_bytes, 0)
        self.assertEqual(buffer.next_seq, 3)

    def test_release_stops_at_the_next_gap(self):
        buffer = ReorderBuffer()
        buffer.push(1, b"b")
        buffer.push(3, b"d")
        self.assertEqual(buffer.push(0, b"a"), [b"a", b"b"])
        self.assertEqual(buffer.push(2, b"c"), [b"c", b"d"])


class DuplicateTests(unittest.SynchronousTestCase):
    def test_an_old_seq_is_dropped_silently(self):
        buffer = ReorderBuffer()
        buffer.push(0, b"a")
        self.assertEqual(buffer.push(0, b"replayed"), [])
        self.assertEqual(buffer.next_seq, 1)

    def test_the_first_copy_of_a_buffered_record_wins(self):
        buffer = ReorderBuffer()
        buffer.push(1, b"first")
        self.assertEqual(buffer.push(1, b"second copy"), [])
        self.assertEqual(buffer.buffered_bytes, len(b"first"))
        self.assertEqual(buffer.push(0, b"a"), [b"a", b"first"])


class BoundTests(unittest.SynchronousTestCase):
    def test_window_is_64_records_ahead(self):
        buffer = ReorderBuffer()
        self.assertEqual(MAX_REORDER_DISTANCE, 64)
        self.assertEqual(buffer.push(64, b"x"), [])
        self.assertRaises(ReorderError, buffer.push, 65, b"x")

    def test_window_moves_with_the_next_expected_record(self):
        buffer = ReorderBuffer()
        buffer.push(0, b"a")
        self.assertEqual(buffer.push(65, b"x"), [])
        self.assertRaises(ReorderError, buffer.push, 66, b"x")

    def test_at_most_1_mib_is_buffered(self):
        buffer = ReorderBuffer()
        self.assertEqual(MAX_REORDER_BYTES, 1048576)
        record = bytes(65536)
        for seq in range(1, 17):
            buffer.push(seq, record)
        self.assertEqual(buffer.buffered_bytes, MAX_REORDER_BYTES)
        self.assertRaises(ReorderError, buffer.push, 17, b"x")

    def test_released_records_free_their_bytes(self):
        buffer = ReorderBuffer()
        buffer.push(1, bytes(MAX_REORDER_BYTES))
        buffer.push(0, b"a")
        self.assertEqual(buffer.push(3, bytes(MAX_REORDER_BYTES)), [])

    def test_sequence_numbers_never_wrap(self):
        buffer = ReorderBuffer()
        buffer.next_seq = MAX_SEQ
        self.assertRaises(ReorderError, buffer.push, MAX_SEQ, b"last")
