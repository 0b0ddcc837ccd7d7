"""
The record channel: JSON-RPC messages as u32-length-framed plaintext, cut
into records of at most 61 440 bytes, each sealed by the transport cipher.
"""

from twisted.trial import unittest

from execserver.noise.errors import DecryptFailed, RecordError
from execserver.noise.limits import MAX_MESSAGE_LEN, MAX_RECORDS, RECORD_PLAINTEXT_LEN
from execserver.noise.records import MessageReassembler, RecordDecoder, RecordEncoder
from execserver.noise.symmetric import CipherState

KEY = bytes(range(32))


def channel():
    """An encoder and the decoder at the other end of the same key."""
    return RecordEncoder(CipherState(KEY)), RecordDecoder(CipherState(KEY))


def plaintexts(records):
    """What the records carry, opened with a cipher of our own."""
    cipher = CipherState(KEY)
    return [cipher.decrypt(ciphertext) for _, ciphertext in records]


class EncoderTests(unittest.SynchronousTestCase):
    def test_small_message_is_one_record_with_a_length_prefix(self):
        encoder, _ = channel()
        encoder.write(b'{"method":"initialized"}')
        records = encoder.drain()
        self.assertEqual([seq for seq, _ in records], [0])
        self.assertEqual(plaintexts(records), [b"\x00\x00\x00\x18" + b'{"method":"initialized"}'])
        self.assertEqual(len(records[0][1]), 4 + 24 + 16)

    def test_large_message_is_cut_into_61440_byte_records(self):
        encoder, _ = channel()
        message = bytes(range(256)) * 512  # 128 KiB
        encoder.write(message)
        records = encoder.drain()
        self.assertEqual([seq for seq, _ in records], [0, 1, 2])
        opened = plaintexts(records)
        self.assertEqual([len(p) for p in opened], [61440, 61440, 4 + 131072 - 2 * 61440])
        self.assertEqual(b"".join(opened), len(message).to_bytes(4, "big") + message)

    def test_queued_messages_share_records(self):
        encoder, decoder = channel()
        encoder.write(b"a" * 61430)
        encoder.write(b"b" * 10)
        encoder.write(b"c")
        records = encoder.drain()
        self.assertEqual([len(p) for p in plaintexts(records)], [61440, 61453 - 61440])
        messages = [m for _, ct in records for m in decoder.receive(ct)]
        self.assertEqual(messages, [b"a" * 61430, b"b" * 10, b"c"])

    def test_parts_are_framed_as_one_message(self):
        encoder, decoder = channel()
        parts = (b"[" + b"1," * 40000, b"2," * 30000, b"", b"3]")
        encoder.write(parts)
        messages = [m for _, ct in encoder.drain() for m in decoder.receive(ct)]
        self.assertEqual(messages, [b"".join(parts)])

    def test_records_are_made_on_demand(self):
        encoder, _ = channel()
        self.assertIsNone(encoder.pull())
        encoder.write(b"x" * 100000)
        encoder.write(b"y")
        self.assertEqual(encoder.pending_bytes, 100004 + 5)
        self.assertEqual(encoder.pull()[0], 0)
        self.assertEqual(encoder.pending_bytes, 100004 + 5 - 61440)
        self.assertEqual(len(encoder.drain()), 1)
        self.assertEqual(encoder.pending_bytes, 0)
        self.assertIsNone(encoder.pull())

    def test_message_sizes_1_byte_to_64_mib(self):
        encoder, _ = channel()
        mib = bytes(1024 * 1024)
        self.assertRaises(RecordError, encoder.write, b"")
        self.assertRaises(RecordError, encoder.write, (mib,) * 64 + (b"x",))
        self.assertEqual(encoder.pending_bytes, 0)
        encoder.write((mib,) * 64)
        self.assertEqual(encoder.pending_bytes, 4 + MAX_MESSAGE_LEN)

    def test_sequence_numbers_run_out_at_2_to_the_32(self):
        cipher = CipherState(KEY)
        cipher.nonce = MAX_RECORDS
        encoder = RecordEncoder(cipher)
        encoder.write(b"x")
        self.assertRaises(RecordError, encoder.pull)


class ReassemblerTests(unittest.SynchronousTestCase):
    def test_several_messages_in_one_record(self):
        record = b"\x00\x00\x00\x01a" + b"\x00\x00\x00\x02bc"
        self.assertEqual(MessageReassembler().feed(record), [b"a", b"bc"])

    def test_any_cut_is_accepted(self):
        stream = b"\x00\x00\x00\x03abc\x00\x00\x00\x05defgh"
        for cut in range(1, len(stream)):
            reassembler = MessageReassembler()
            got = reassembler.feed(stream[:cut]) + reassembler.feed(stream[cut:])
            self.assertEqual(got, [b"abc", b"defgh"], cut)

    def test_zero_length_is_refused(self):
        self.assertRaises(RecordError, MessageReassembler().feed, b"\x00\x00\x00\x00")

    def test_length_over_64_mib_is_refused_from_the_prefix_alone(self):
        reassembler = MessageReassembler()
        self.assertEqual(reassembler.feed(b"\x04\x00"), [])
        self.assertRaises(RecordError, reassembler.feed, b"\x00\x01")

    def test_length_of_64_mib_is_accepted(self):
        reassembler = MessageReassembler()
        self.assertEqual(reassembler.feed(MAX_MESSAGE_LEN.to_bytes(4, "big")), [])

    def test_records_over_61440_bytes_are_refused(self):
        reassembler = MessageReassembler()
        self.assertRaises(RecordError, reassembler.feed, bytes(RECORD_PLAINTEXT_LEN + 1))
        message = b"x" * (RECORD_PLAINTEXT_LEN - 4)
        self.assertEqual(MessageReassembler().feed(len(message).to_bytes(4, "big") + message),
                         [message])


class DecoderTests(unittest.SynchronousTestCase):
    def test_round_trip_of_many_messages(self):
        encoder, decoder = channel()
        sent = [b"%d:" % i + b"x" * (i * 4999) for i in range(40)]
        for message in sent:
            encoder.write(message)
        received = [m for _, ct in encoder.drain() for m in decoder.receive(ct)]
        self.assertEqual(received, sent)

    def test_64_mib_message(self):
        encoder, decoder = channel()
        message = bytes(range(256)) * (MAX_MESSAGE_LEN // 256)
        encoder.write(message)
        received = [m for _, ct in encoder.drain() for m in decoder.receive(ct)]
        self.assertEqual(received, [message])

    def test_empty_record_is_accepted(self):
        """The reference accepts a record with no plaintext (a bare tag)."""
        sender = CipherState(KEY)
        decoder = RecordDecoder(CipherState(KEY))
        self.assertEqual(decoder.receive(sender.encrypt(b"")), [])
        self.assertEqual(decoder.receive(sender.encrypt(b"\x00\x00\x00\x02{}")), [b"{}"])

    def test_oversized_record_is_refused(self):
        sender = CipherState(KEY)
        decoder = RecordDecoder(CipherState(KEY))
        record = sender.encrypt(b"\x00\x00\x00\x10" + bytes(RECORD_PLAINTEXT_LEN - 3))
        self.assertRaises(RecordError, decoder.receive, record)

    def test_tampered_record_is_refused(self):
        encoder, decoder = channel()
        encoder.write(b"{}")
        (_, record), = encoder.drain()
        self.assertRaises(DecryptFailed, decoder.receive, record[:-1] + bytes([record[-1] ^ 1]))
