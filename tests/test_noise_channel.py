"""
The Noise stream transport over relay sockets joined in memory: a harness
stream (initiator's ciphers, alone on its socket, never resets) and an
executor stream (responder's ciphers, sharing its socket, resets on
error). Records out of order, duplicated, tampered, oversized or too far
ahead behave as in codex exec-server 0.169.0 (docs/reference/relay-noise.md),
and a misbehaving relay can end only the stream it tampers with.
"""

from __future__ import annotations

import json
import os

from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.trial import unittest
from zope.interface import implementer

from execserver.interfaces import IMessageProtocol
from execserver.noise.channel import NoiseStream, StreamProtocolError, StreamReset
from execserver.noise.handshake import TransportCiphers
from execserver.noise.limits import RECORD_PLAINTEXT_LEN
from execserver.noise.symmetric import CipherState
from execserver.relay import frames
from execserver.relay.limits import MAX_QUEUED_MESSAGES, MAX_REORDER_DISTANCE, STREAM_SEND_HIGH_WATER
from execserver.relay.socket import RelaySocketLost
from tests.relaypair import RelayPair


@implementer(IMessageProtocol)
class Recorder:
    """Records messages; can pause its transport after a given message."""

    def __init__(self, pause_after: int | None = None) -> None:
        self.transport = None
        self.messages: list[bytes] = []
        self.lost = []
        self.pause_after = pause_after

    def makeConnection(self, transport) -> None:
        self.transport = transport

    def messageReceived(self, data: bytes) -> None:
        self.messages.append(bytes(data))
        if self.pause_after is not None and len(self.messages) == self.pause_after:
            self.transport.pauseProducing()

    def connectionLost(self, reason) -> None:
        self.lost.append(reason)


class Writer:
    """A producer writing into a stream, recording when it is told to stop."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def pauseProducing(self) -> None:
        self.events.append("pause")

    def resumeProducing(self) -> None:
        self.events.append("resume")

    def stopProducing(self) -> None:
        self.events.append("stop")


def message(n: int, size: int = 0) -> bytes:
    return json.dumps({"method": "m", "params": {"n": n, "pad": "x" * size}}).encode()


def framed(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


class StreamTests(unittest.TestCase):
    """One harness stream on the client socket, one executor stream on the server's."""

    def setUp(self):
        self.pair = RelayPair()
        self.k1, self.k2 = os.urandom(32), os.urandom(32)
        self.ended: dict[str, list] = {"harness": [], "executor": []}
        self.harness, self.harness_app = self.open("s1")
        self.executor = self.executors["s1"]
        self.executor_app = self.executor_apps["s1"]

    def open(self, stream_id: str):
        if not hasattr(self, "executors"):
            self.executors, self.executor_apps = {}, {}
        harness = NoiseStream(
            self.pair.client, stream_id,
            TransportCiphers(send=CipherState(self.k1), receive=CipherState(self.k2)),
            shares_socket=False, sends_resets=False, on_end=self.ended["harness"].append)
        harness_app = Recorder()
        harness.start(harness_app)
        self.start_executor(stream_id)
        return harness, harness_app

    def start_executor(self, stream_id: str, app: Recorder | None = None) -> None:
        executor = NoiseStream(
            self.pair.server, stream_id,
            TransportCiphers(send=CipherState(self.k2), receive=CipherState(self.k1)),
            shares_socket=True, sends_resets=True, on_end=self.ended["executor"].append)
        self.executor_apps[stream_id] = app or Recorder()
        self.executors[stream_id] = executor
        executor.start(self.executor_apps[stream_id])

    def forged(self, seq: int, plaintext: bytes, stream_id: str = "s1") -> bytes:
        """A data frame as the harness would seal record C{seq}."""
        cipher = CipherState(self.k1)
        cipher.nonce = seq
        return frames.encode_data(stream_id, seq, cipher.encrypt(plaintext))

    def relay(self, raw: bytes) -> None:
        """A frame put on the harness's socket by the relay itself."""
        self.pair.client.writeFrame(raw)
        self.pair.flush()

    # Traffic

    def test_messages_cross_both_ways(self):
        self.harness.sendMessage(message(1))
        self.executor.sendMessage((b'{"id":1,', b'"result":{}}'))
        self.pair.flush()
        self.assertEqual(self.executor_app.messages, [message(1)])
        self.assertEqual(self.harness_app.messages, [b'{"id":1,"result":{}}'])

    def test_a_large_message_goes_as_consecutive_records_of_60_kib(self):
        self.pair.server.detach("s1")  # the server's owner sees the frames
        big = message(1, 200 * 1024)
        self.harness.sendMessage(big)
        self.pair.flush()
        data = [frame for frame, _ in self.pair.server_owner.frames]
        self.assertEqual([frame.seq for frame in data], [0, 1, 2, 3])
        self.assertEqual([len(frame.payload) for frame in data],
                         [RECORD_PLAINTEXT_LEN + 16] * 3 + [len(framed(big)) - 3 * RECORD_PLAINTEXT_LEN + 16])
        self.pair.server.attach("s1", self.executor)
        for frame in data:
            self.executor.frameReceived(frame)
        self.assertEqual(self.executor_app.messages, [big])

    def test_records_out_of_order_are_delivered_in_order(self):
        for seq in (2, 0, 1):
            self.relay(self.forged(seq, framed(message(seq))))
        self.assertEqual(self.executor_app.messages, [message(0), message(1), message(2)])

    def test_a_duplicate_record_is_dropped(self):
        for seq in (0, 0, 1):
            self.relay(self.forged(seq, framed(message(seq))))
        self.assertEqual(self.executor_app.messages, [message(0), message(1)])
        self.assertEqual(self.executor_app.lost, [])

    def test_two_messages_in_one_record_and_a_message_across_records(self):
        second = framed(message(2))
        self.relay(self.forged(0, framed(message(1)) + second[:5]))
        self.relay(self.forged(1, second[5:]))
        self.assertEqual(self.executor_app.messages, [message(1), message(2)])

    # Misbehaviour ends the stream, and only it

    def assert_executor_reset(self, harness_app: Recorder | None = None) -> None:
        """The executor stream ended, and its reset ended the harness's."""
        (lost,) = self.executor_app.lost
        self.assertIsInstance(lost.value, StreamProtocolError)
        self.pair.flush()
        (lost,) = (harness_app or self.harness_app).lost
        self.assertIsInstance(lost.value, StreamReset)

    def test_a_tampered_record_ends_only_its_stream(self):
        other, other_app = self.open("s2")
        raw = bytearray(self.forged(0, framed(message(1))))
        raw[-1] ^= 1
        self.relay(bytes(raw))
        self.assert_executor_reset()
        other.sendMessage(message(2))
        self.executors["s2"].sendMessage(message(3))
        self.pair.flush()
        self.assertEqual((self.executor_apps["s2"].messages, other_app.messages),
                         ([message(2)], [message(3)]))
        self.assertEqual(self.pair.server_owner.lost, [])

    def test_the_reset_ends_the_harness_stream_and_the_harness_sends_none(self):
        raw = bytearray(self.forged(0, framed(message(1))))
        raw[-1] ^= 1
        self.relay(bytes(raw))
        (lost,) = self.harness_app.lost
        self.assertIsInstance(lost.value, StreamReset)
        self.assertEqual(str(lost.value), "Noise relay stream reset")
        self.assertEqual(len(self.ended["harness"]), 1)
        self.assertEqual(self.pair.server_owner.frames, [])

    def test_a_tampered_record_to_the_harness_ends_it_without_a_reset(self):
        cipher = CipherState(self.k2)
        raw = bytearray(frames.encode_data("s1", 0, cipher.encrypt(framed(message(1)))))
        raw[-3] ^= 0x40
        self.pair.server.writeFrame(bytes(raw))
        self.pair.flush()
        (lost,) = self.harness_app.lost
        self.assertIsInstance(lost.value, StreamProtocolError)
        self.assertEqual(self.pair.server_owner.frames, [])

    def test_a_record_beyond_the_reorder_window_ends_the_stream(self):
        self.relay(self.forged(MAX_REORDER_DISTANCE, framed(message(1))))
        self.assertEqual(self.executor_app.lost, [])
        self.relay(self.forged(MAX_REORDER_DISTANCE + 1, framed(message(1))))
        self.assert_executor_reset()

    def test_a_record_over_61440_bytes_ends_the_stream(self):
        record = framed(message(1, RECORD_PLAINTEXT_LEN))[:RECORD_PLAINTEXT_LEN + 1]
        self.relay(self.forged(0, record))
        self.assert_executor_reset()

    def test_a_record_of_exactly_61440_bytes_is_fine(self):
        padded = message(1, RECORD_PLAINTEXT_LEN)
        body = padded[:RECORD_PLAINTEXT_LEN - 4 - 2] + b'"}'
        self.relay(self.forged(0, framed(body)[:RECORD_PLAINTEXT_LEN]))
        self.assertEqual(self.executor_app.lost, [])

    def test_a_zero_length_message_ends_the_stream(self):
        self.relay(self.forged(0, b"\x00\x00\x00\x00"))
        self.assert_executor_reset()

    def test_a_second_handshake_ends_the_stream(self):
        self.relay(frames.encode_handshake("s1", b"\x01" * 100))
        self.assert_executor_reset()

    def test_a_reset_from_the_peer_ends_the_stream_quietly(self):
        self.relay(frames.encode_reset("s1"))
        (lost,) = self.executor_app.lost
        self.assertIsInstance(lost.value, StreamReset)
        self.pair.flush()
        self.assertEqual(self.harness_app.lost, [])

    def test_resume_ack_and_heartbeat_frames_are_ignored(self):
        self.relay(frames.encode_resume("s1"))
        self.harness.sendMessage(message(1))
        self.pair.flush()
        self.assertEqual((self.executor_app.messages, self.executor_app.lost), ([message(1)], []))

    def test_the_socket_going_ends_the_stream(self):
        self.pair.server.close()
        self.pair.flush()
        (lost,) = self.harness_app.lost
        self.assertIsInstance(lost.value, RelaySocketLost)

    # Pausing reading

    def test_a_paused_harness_stream_holds_messages_until_resumed(self):
        self.harness.pauseProducing()
        for n in range(MAX_QUEUED_MESSAGES * 2):
            self.executor.sendMessage(message(n))
        self.pair.flush()
        self.assertEqual(self.harness_app.messages, [])
        self.harness.resumeProducing()
        self.assertEqual(self.harness_app.messages,
                         [message(n) for n in range(MAX_QUEUED_MESSAGES * 2)])
        self.assertEqual(self.harness_app.lost, [])

    def test_a_paused_executor_stream_holds_128_messages_and_resets_at_129(self):
        self.executor.pauseProducing()
        for n in range(MAX_QUEUED_MESSAGES):
            self.harness.sendMessage(message(n))
        self.pair.flush()
        self.assertEqual((self.executor_app.messages, self.executor_app.lost), ([], []))
        self.harness.sendMessage(message(MAX_QUEUED_MESSAGES))
        self.pair.flush()
        self.assert_executor_reset()

    def test_a_paused_executor_stream_delivers_its_queue_when_resumed(self):
        self.executor.pauseProducing()
        for n in range(3):
            self.harness.sendMessage(message(n))
        self.pair.flush()
        self.executor.resumeProducing()
        self.assertEqual(self.executor_app.messages, [message(0), message(1), message(2)])

    def test_pausing_while_receiving_holds_the_rest_of_a_record(self):
        self.pair.server.detach("s1")
        app = Recorder(pause_after=1)
        self.start_executor("s1", app)
        self.relay(self.forged(0, b"".join(framed(message(n)) for n in range(3))))
        self.assertEqual(app.messages, [message(0)])
        self.executors["s1"].resumeProducing()
        self.assertEqual(app.messages, [message(0), message(1), message(2)])

    # Ending and back-pressure

    def test_lose_connection_sends_what_is_queued_then_the_reset(self):
        self.pair.server.pauseProducing()
        for n in range(3):
            self.executor.sendMessage(message(n))
        self.executor.loseConnection()
        self.executor.sendMessage(message(99))
        self.pair.flush()
        self.assertEqual(self.harness_app.messages, [])
        self.pair.server.resumeProducing()
        self.pair.flush()
        self.assertEqual(self.harness_app.messages, [message(0), message(1), message(2)])
        self.assertIsInstance(self.executor_app.lost[0].value, ConnectionDone)
        self.assertIsInstance(self.harness_app.lost[0].value, StreamReset)

    def test_abort_drops_what_is_queued(self):
        self.pair.server.pauseProducing()
        self.executor.sendMessage(message(1))
        self.executor.abortConnection()
        self.pair.server.resumeProducing()
        self.pair.flush()
        self.assertEqual(self.harness_app.messages, [])
        self.assertIsInstance(self.executor_app.lost[0].value, ConnectionAborted)
        self.assertIsInstance(self.ended["executor"][0].value, ConnectionAborted)

    def test_a_writer_is_paused_while_the_socket_is_full_and_resumed_after(self):
        writer = Writer()
        self.executor.registerProducer(writer, True)
        self.pair.server.pauseProducing()
        chunk = message(0, 64 * 1024)
        for _ in range(STREAM_SEND_HIGH_WATER // len(chunk) + 1):
            self.executor.sendMessage(chunk)
        self.assertEqual(writer.events, ["pause"])
        self.pair.server.resumeProducing()
        self.pair.flush()
        self.assertEqual(writer.events, ["pause", "resume"])
        self.assertEqual(len(self.harness_app.messages), STREAM_SEND_HIGH_WATER // len(chunk) + 1)
