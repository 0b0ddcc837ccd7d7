"""
Relay frames: the exact bytes codex exec-server 0.169.0 exchanges
(live-findings Part 1 section 5, docs/reference/relay-noise.md) and the
reference's validation, which makes a receiver drop a frame.
"""

from google.protobuf import __version__ as protobuf_version
from twisted.trial import unittest

from execserver.relay import frames, relay_pb2
from execserver.relay.frames import Frame, FrameKind, InvalidFrame

SID = "41b878b0-bc28-4cc4-9d3d-702fd94a4b73"
HEAD = bytes.fromhex("08011224") + SID.encode()


def payload(size: int, seed: int = 7) -> bytes:
    return bytes((seed + i * 31) % 251 for i in range(size))


class GoldenBytesTests(unittest.SynchronousTestCase):
    """
    Every frame kind codex sends, byte for byte: field-number order, zero
    values omitted, an empty resume body still present.
    """

    def assertRoundTrip(self, encoded: bytes, expected: bytes, frame: Frame) -> None:
        self.assertEqual(encoded.hex(), expected.hex())
        self.assertEqual(frames.parse_frame(expected), frame)

    def test_harness_resume(self):
        expected = HEAD + bytes.fromhex("3a00")
        self.assertEqual(len(expected), 42)
        self.assertRoundTrip(frames.encode_resume(SID), expected, Frame(FrameKind.RESUME, SID))

    def test_harness_handshake(self):
        msg1 = payload(3584)
        expected = HEAD + bytes.fromhex("52831c0a801c") + msg1
        self.assertEqual(len(expected), 3630)
        self.assertRoundTrip(frames.encode_handshake(SID, msg1), expected,
                             Frame(FrameKind.HANDSHAKE, SID, payload=msg1))

    def test_executor_handshake(self):
        msg2 = payload(3424)
        expected = HEAD + bytes.fromhex("52e31a0ae01a") + msg2
        self.assertEqual(len(expected), 3470)
        self.assertRoundTrip(frames.encode_handshake(SID, msg2), expected,
                             Frame(FrameKind.HANDSHAKE, SID, payload=msg2))

    def test_recorded_msg2_frame_prefix(self):
        """The first 80 bytes of an executor msg2 frame recorded from the binary."""
        recorded = bytes.fromhex(
            "0801122434316238373862302d626332382d346363342d396433642d3730326664393461"
            "3462373352e31a0ae01a74bbfde339089955fc92de67f8dd8fbb666ac073ba40c545ee4e"
            "dd868eca6bf47a5b"
        )
        self.assertEqual(len(recorded), 80)
        msg2 = recorded[46:] + bytes(3424 - (80 - 46))
        self.assertEqual(frames.encode_handshake(SID, msg2)[:80], recorded)

    def test_data_seq0_omits_seq_and_segment_index(self):
        ct = payload(1007)
        expected = HEAD + bytes.fromhex("2af407180122ef07") + ct
        self.assertEqual(len(expected), 1055)
        self.assertRoundTrip(frames.encode_data(SID, 0, ct), expected,
                             Frame(FrameKind.DATA, SID, seq=0, payload=ct))

    def test_data_seq1(self):
        ct = payload(77)
        expected = HEAD + bytes.fromhex("2a530801180122 4d".replace(" ", "")) + ct
        self.assertEqual(len(expected), 125)
        self.assertRoundTrip(frames.encode_data(SID, 1, ct), expected,
                             Frame(FrameKind.DATA, SID, seq=1, payload=ct))

    def test_full_record(self):
        """A 61 440-byte record's ciphertext, as the sixth record of a stream."""
        ct = payload(61456)
        expected = HEAD + bytes.fromhex("2a98e003080518012290e003") + ct
        self.assertEqual(len(expected), 61508)
        self.assertRoundTrip(frames.encode_data(SID, 5, ct), expected,
                             Frame(FrameKind.DATA, SID, seq=5, payload=ct))

    def test_executor_reset(self):
        expected = HEAD + bytes.fromhex("421c0a1a") + b"noise_relay_protocol_error"
        self.assertEqual(len(expected), 70)
        self.assertRoundTrip(frames.encode_reset(SID), expected,
                             Frame(FrameKind.RESET, SID, reason="noise_relay_protocol_error"))


def raw(**fields) -> bytes:
    """A frame as a peer could send it, valid or not."""
    return relay_pb2.RelayMessageFrame(**fields).SerializeToString()


def data(**fields) -> relay_pb2.RelayData:
    values = {"seq": 0, "segment_count": 1, "payload": b"x"}
    values.update(fields)
    return relay_pb2.RelayData(**values)


class IgnoredFieldsTests(unittest.SynchronousTestCase):
    def test_ack_fields_are_ignored(self):
        message = raw(version=1, stream_id=SID, ack=5, ack_bits=3, data=data(seq=2))
        self.assertEqual(frames.parse_frame(message), Frame(FrameKind.DATA, SID, seq=2, payload=b"x"))

    def test_trace_context_fields_are_ignored(self):
        """Newer codex sends W3C trace context as fields 11 and 12."""
        traceparent = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        extra = bytes([0x5A, len(traceparent)]) + traceparent + bytes([0x62, 3]) + b"a=b"
        message = raw(version=1, stream_id=SID, data=data(seq=4)) + extra
        self.assertEqual(frames.parse_frame(message), Frame(FrameKind.DATA, SID, seq=4, payload=b"x"))

    def test_resume_next_seq_is_ignored(self):
        message = raw(version=1, stream_id=SID, resume=relay_pb2.RelayResume(next_seq=9))
        self.assertEqual(frames.parse_frame(message), Frame(FrameKind.RESUME, SID))

    def test_ack_frame_and_heartbeat_are_valid(self):
        self.assertEqual(frames.parse_frame(raw(version=1, stream_id=SID, ack_frame={})),
                         Frame(FrameKind.ACK, SID))
        self.assertEqual(frames.parse_frame(raw(version=1, stream_id=SID, heartbeat={})),
                         Frame(FrameKind.HEARTBEAT, SID))


class ValidationTests(unittest.SynchronousTestCase):
    """Frames the reference drops (the executor keeps the stream)."""

    def assertInvalid(self, message: bytes) -> None:
        self.assertRaises(InvalidFrame, frames.parse_frame, message)

    def test_version_must_be_1(self):
        self.assertInvalid(raw(version=2, stream_id=SID, data=data()))
        self.assertInvalid(raw(stream_id=SID, data=data()))

    def test_stream_id_must_not_be_blank(self):
        self.assertInvalid(raw(version=1, data=data()))
        self.assertInvalid(raw(version=1, stream_id=" \t\u3000\u2028", data=data()))

    def test_stream_id_is_not_trimmed_by_python_rules(self):
        """U+001C is whitespace to Python's str.strip() but not to Rust's trim()."""
        self.assertEqual(frames.parse_frame(raw(version=1, stream_id="\x1c", heartbeat={})),
                         Frame(FrameKind.HEARTBEAT, "\x1c"))

    def test_body_is_required(self):
        self.assertInvalid(raw(version=1, stream_id=SID))

    def test_data_is_never_segmented(self):
        self.assertInvalid(raw(version=1, stream_id=SID, data=data(segment_count=0)))
        self.assertInvalid(raw(version=1, stream_id=SID, data=data(segment_count=2)))
        self.assertInvalid(raw(version=1, stream_id=SID, data=data(segment_index=1)))

    def test_data_needs_a_payload(self):
        self.assertInvalid(raw(version=1, stream_id=SID, data=data(payload=b"")))

    def test_handshake_needs_a_payload(self):
        self.assertInvalid(raw(version=1, stream_id=SID, handshake={}))

    def test_reset_needs_a_reason(self):
        self.assertInvalid(raw(version=1, stream_id=SID, reset={}))

    def test_undecodable_bytes(self):
        self.assertInvalid(b"\xff\xff\xff")
        self.assertInvalid(HEAD[:10])

    def test_stream_id_must_be_utf8(self):
        self.assertInvalid(bytes.fromhex("080112 02 ff fe 4a 00".replace(" ", "")))


class EncoderTests(unittest.SynchronousTestCase):
    def test_refuses_frames_a_receiver_would_drop(self):
        self.assertRaises(ValueError, frames.encode_data, SID, 0, b"")
        self.assertRaises(ValueError, frames.encode_handshake, SID, b"")
        self.assertRaises(ValueError, frames.encode_reset, SID, "")
        self.assertRaises(ValueError, frames.encode_resume, " ")


class GeneratedCodeTests(unittest.SynchronousTestCase):
    def test_runtime_is_at_least_the_gencode_version(self):
        """relay_pb2 was written by protoc for protobuf 7.35.1 (setup.cfg's bound)."""
        installed = tuple(int(p) for p in protobuf_version.split(".")[:3])
        self.assertGreaterEqual(installed, (7, 35, 1))
        self.assertEqual(relay_pb2.DESCRIPTOR.name, "codex/exec_server/relay/v1/relay.proto")
        self.assertEqual(relay_pb2.DESCRIPTOR.package, "codex.exec_server.relay.v1")
