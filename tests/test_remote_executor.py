"""
The executor's relay loop (L{ExecutorRelay}) on a relay socket joined in
memory to a scripted rendezvous, on a L{task.Clock}: handshakes and the
registry's verdict, the bounds codex exec-server 0.169.0 keeps (128
streams, 32 validations, 4096-byte authorizations, 10 s validations, the
pause after 8 failed handshakes), what it does with frames of unknown
streams and invalid frames, and streams that end (docs/reference/relay-noise.md,
live-findings Part 1).
"""

from __future__ import annotations

import json

from twisted.internet import task
from twisted.internet.defer import Deferred, succeed
from twisted.trial import unittest

from execserver.metrics import Metrics
from execserver.noise.channel import NoiseStream, StreamReset
from execserver.noise.handshake import Initiator, prologue
from execserver.noise.keys import NoiseIdentity
from execserver.relay import frames
from execserver.relay.frames import FrameKind
from execserver.relay.limits import MAX_REORDER_DISTANCE, PING_INTERVAL_SECONDS, PONG_TIMEOUT_SECONDS
from execserver.relay.relay_pb2 import RelayMessageFrame
from execserver.relay.socket import PONG_TIMEOUT
from execserver.remote.executor import ExecutorRelay
from execserver.remote.limits import (
    HANDSHAKE_PAUSE_SECONDS,
    MAX_ACTIVE_STREAMS,
    MAX_HANDSHAKE_FAILURES,
    MAX_PENDING_VALIDATIONS,
    VALIDATION_TIMEOUT_SECONDS,
)
from execserver.remote.registry import Registration, RegistryError
from tests import support
from tests.relaypair import RelayPair
from tests.test_noise_channel import Recorder

EXECUTOR = NoiseIdentity.generate()
HARNESS = NoiseIdentity.generate()
REGISTRATION = Registration("ws://rendezvous.test/ws/environment/env-1?ticket=t", "env-1", "reg-1")
RESET = frames.PROTOCOL_ERROR_REASON


class Validations:
    """
    The registry as the relay sees it: records each C{validate} and answers
    at once with C{verdict}, or (C{verdict=None}) when the test says.
    """

    def __init__(self, verdict: bool | None = True) -> None:
        self.verdict = verdict
        self.calls: list[tuple] = []
        self.waiting: dict[str, Deferred] = {}

    def __call__(self, harness_key, authorization: str, stream_id: str) -> Deferred:
        self.calls.append((harness_key, authorization, stream_id))
        if self.verdict is None:
            self.waiting[stream_id] = Deferred()
            return self.waiting[stream_id]
        return succeed(self.verdict)


class ExecutorTestCase(unittest.TestCase):
    verdict: bool | None = True
    silent_rendezvous = False

    def setUp(self):
        self.clock = task.Clock()
        self.validations = Validations(self.verdict)
        self.apps: list[Recorder] = []
        self.metrics = Metrics()
        self.relay = ExecutorRelay(self.clock, EXECUTOR, REGISTRATION, self.validations,
                                   self.new_app, self.metrics)
        self.pair = RelayPair(silent_server=self.silent_rendezvous, client_owner=self.relay,
                              clock=self.clock)
        self.rendezvous = self.pair.server
        self.initiators: dict[str, Initiator] = {}
        self.ciphers: dict = {}
        self.harness_streams: dict[str, tuple[NoiseStream, Recorder]] = {}

    def new_app(self) -> Recorder:
        app = Recorder()
        self.apps.append(app)
        return app

    # The scripted harness side

    def send(self, raw: bytes) -> None:
        self.rendezvous.writeFrame(raw)
        self.pair.flush()

    def handshake(self, stream_id: str, authorization: bytes = b"authorization",
                  executor_key=None, registration_id: str = "reg-1") -> None:
        initiator = Initiator(HARNESS, executor_key or EXECUTOR.public_key,
                              prologue("env-1", registration_id, stream_id))
        self.initiators[stream_id] = initiator
        self.send(frames.encode_handshake(stream_id, initiator.write_message1(authorization)))

    def received(self, stream_id: str | None = None) -> list:
        """
        Frames the executor sent on streams the harness side has not opened:
        (kind, reason) for resets, (kind, payload length) for the rest.
        """
        return [(frame.kind, frame.reason or len(frame.payload))
                for frame, _ in self.pair.server_owner.frames
                if stream_id in (None, frame.stream_id)]

    def resets(self) -> list[str]:
        """The streams the executor reset, opened or not."""
        reset = [frame.stream_id for frame, _ in self.pair.server_owner.frames
                 if frame.kind is FrameKind.RESET]
        return reset + [stream_id for stream_id, (_, app) in self.harness_streams.items()
                        if app.lost and app.lost[0].check(StreamReset)]

    def open(self, stream_id: str) -> Recorder:
        """Handshake as a harness, and attach its stream; the harness's app."""
        self.handshake(stream_id)
        owner = self.pair.server_owner
        (reply,) = [frame for frame, _ in owner.frames
                    if frame.stream_id == stream_id and frame.kind is FrameKind.HANDSHAKE]
        owner.frames = [(frame, raw) for frame, raw in owner.frames if frame is not reply]
        ciphers = self.ciphers[stream_id] = self.initiators[stream_id].read_message2(reply.payload)
        stream = NoiseStream(self.rendezvous, stream_id, ciphers, shares_socket=True,
                             sends_resets=False)
        app = Recorder()
        stream.start(app)
        self.harness_streams[stream_id] = (stream, app)
        return app

    def exchange(self, stream_id: str, n: int) -> None:
        """A message each way on an open stream, checked."""
        stream, app = self.harness_streams[stream_id]
        executor_app = self.executor_app(stream_id)
        stream.sendMessage(b'{"n":%d}' % n)
        self.pair.flush()
        self.assertEqual(executor_app.messages[-1], b'{"n":%d}' % n)
        executor_app.transport.sendMessage(b'{"echo":%d}' % n)
        self.pair.flush()
        self.assertEqual(app.messages[-1], b'{"echo":%d}' % n)

    def harness_reset(self, stream_id: str) -> None:
        """The harness leaves the stream with a reset."""
        stream, _ = self.harness_streams.pop(stream_id)
        stream.abortConnection()
        self.send(frames.encode_reset(stream_id))

    def executor_app(self, stream_id: str) -> Recorder:
        return [app for app in self.apps if app.transport.stream_id == stream_id][-1]

    def fail_handshakes(self, count: int) -> None:
        for n in range(count):
            self.handshake(f"bad-{n}", executor_key=HARNESS.public_key)


class HandshakeTests(ExecutorTestCase):
    def test_a_valid_handshake_opens_a_stream_served_by_a_new_protocol(self):
        self.open("s1")
        self.assertEqual(list(self.relay.streams), ["s1"])
        self.assertEqual(len(self.apps), 1)
        self.exchange("s1", 1)

    def test_the_registry_is_asked_about_the_harness_key_and_authorization(self):
        self.handshake("s1", "authorization ünïcode".encode())
        self.assertEqual(self.validations.calls,
                         [(HARNESS.public_key, "authorization ünïcode", "s1")])

    def test_message2_is_a_handshake_frame_of_3424_bytes(self):
        self.handshake("s1")
        ((kind, payload),) = self.received("s1")
        self.assertEqual((kind, payload), (FrameKind.HANDSHAKE, 3424))

    def test_streams_are_served_side_by_side(self):
        for n in range(3):
            self.open(f"s{n}")
        for n in (2, 0, 1):
            self.exchange(f"s{n}", n)
        self.assertEqual(len(self.apps), 3)

    def test_a_message1_for_another_key_or_prologue_is_reset_without_asking(self):
        self.handshake("s1", executor_key=HARNESS.public_key)
        self.handshake("s2", registration_id="reg-0")
        self.send(frames.encode_handshake("s3", b"\x00" * 3600))
        self.assertEqual(self.received(), [(FrameKind.RESET, RESET)] * 3)
        self.assertEqual((self.validations.calls, self.apps), ([], []))

    def test_an_authorization_over_4096_bytes_is_reset_without_asking(self):
        self.handshake("s1", b"a" * 4097)
        self.assertEqual(self.received("s1"), [(FrameKind.RESET, RESET)])
        self.assertEqual(self.validations.calls, [])
        self.handshake("s2", b"a" * 4096)
        self.assertEqual(self.received("s2")[0][0], FrameKind.HANDSHAKE)

    def test_an_authorization_that_is_not_utf8_is_reset_without_asking(self):
        self.handshake("s1", b"\xff\xfe")
        self.assertEqual((self.received("s1"), self.validations.calls),
                         ([(FrameKind.RESET, RESET)], []))

    def test_an_empty_authorization_is_passed_on(self):
        self.handshake("s1", b"")
        self.assertEqual(self.validations.calls[0][1], "")
        self.assertEqual(self.received("s1")[0][0], FrameKind.HANDSHAKE)

    def test_a_second_handshake_on_an_open_stream_resets_it(self):
        self.open("s1")
        self.handshake("s1")
        self.assertEqual(self.resets(), ["s1"])
        self.assertEqual(self.relay.streams, {})
        self.assertEqual(self.relay.budget.failures, 0)

    def test_a_stream_id_serves_again_after_its_stream_ended(self):
        self.open("s1")
        self.harness_reset("s1")
        self.assertEqual(self.relay.streams, {})
        self.open("s1")
        self.exchange("s1", 2)


class VerdictTests(ExecutorTestCase):
    verdict = None

    def test_a_refused_authorization_is_reset(self):
        self.handshake("s1")
        self.validations.waiting["s1"].callback(False)
        self.pair.flush()
        self.assertEqual((self.received("s1"), self.apps), ([(FrameKind.RESET, RESET)], []))

    def test_a_registry_error_is_reset(self):
        self.handshake("s1")
        self.validations.waiting["s1"].errback(RegistryError("validate failed (500)", 500))
        self.pair.flush()
        self.assertEqual(self.received("s1"), [(FrameKind.RESET, RESET)])

    def test_a_validation_gets_10_seconds_and_never_holds_up_another(self):
        self.handshake("slow")
        self.clock.advance(VALIDATION_TIMEOUT_SECONDS - 1)
        self.handshake("quick")
        self.validations.waiting["quick"].callback(True)
        self.pair.flush()
        self.assertEqual([kind for kind, _ in self.received("quick")], [FrameKind.HANDSHAKE])
        self.assertEqual(self.received("slow"), [])
        self.clock.advance(1)
        self.pair.flush()
        self.assertEqual(self.received("slow"), [(FrameKind.RESET, RESET)])
        self.assertTrue(self.validations.waiting["slow"].called)
        self.assertEqual(self.relay.pending, 0)

    def test_data_while_validating_resets_and_the_verdict_is_ignored(self):
        self.handshake("s1")
        self.send(frames.encode_data("s1", 0, b"x" * 32))
        self.assertEqual(self.received("s1"), [(FrameKind.RESET, RESET)])
        self.assertTrue(self.validations.waiting["s1"].called)
        self.assertEqual((self.relay.pending, self.relay.budget.failures), (0, 1))

    def test_a_second_handshake_while_validating_resets_and_counts(self):
        self.handshake("s1")
        self.handshake("s1")
        self.assertEqual(self.received("s1"), [(FrameKind.RESET, RESET)])
        self.assertEqual((self.relay.pending, self.relay.budget.failures), (0, 1))

    def test_a_harness_reset_while_validating_forgets_the_handshake_quietly(self):
        self.handshake("s1")
        self.send(frames.encode_reset("s1"))
        self.assertEqual((self.received("s1"), self.relay.pending), ([], 0))
        self.assertEqual(self.relay.budget.failures, 0)

    def test_the_33rd_pending_validation_is_reset(self):
        for n in range(MAX_PENDING_VALIDATIONS):
            self.handshake(f"s{n}")
        self.handshake("one-more")
        self.assertEqual(self.resets(), ["one-more"])
        self.assertEqual(len(self.validations.calls), MAX_PENDING_VALIDATIONS)
        self.validations.waiting["s0"].callback(True)
        self.handshake("now-there-is-room")
        self.assertEqual(len(self.validations.calls), MAX_PENDING_VALIDATIONS + 1)

    def test_the_socket_ending_abandons_the_validations(self):
        for n in range(3):
            self.handshake(f"s{n}")
        self.rendezvous.close()
        self.pair.flush()
        self.assertEqual([d.called for d in self.validations.waiting.values()], [True] * 3)
        self.assertEqual(self.relay.pending, 0)


class StreamLimitTests(ExecutorTestCase):
    def test_the_129th_stream_is_reset_and_the_128_keep_working(self):
        for n in range(MAX_ACTIVE_STREAMS):
            self.open(f"s{n}")
        self.handshake("one-more")
        self.assertEqual(self.received("one-more"), [(FrameKind.RESET, RESET)])
        self.assertEqual(len(self.relay.streams), MAX_ACTIVE_STREAMS)
        self.exchange("s127", 7)
        self.harness_reset("s0")
        self.open("now-there-is-room")
        self.exchange("now-there-is-room", 8)


class FailurePauseTests(ExecutorTestCase):
    def test_eight_failures_pause_handshakes_for_10_seconds(self):
        self.fail_handshakes(MAX_HANDSHAKE_FAILURES - 1)
        self.open("before")
        self.fail_handshakes(1)
        self.assertTrue(self.relay.budget.paused)
        self.handshake("during")
        self.assertEqual(self.received("during"), [(FrameKind.RESET, RESET)])
        self.assertEqual(len(self.validations.calls), 1)
        self.clock.advance(HANDSHAKE_PAUSE_SECONDS)
        self.open("after")
        self.exchange("after", 1)

    def test_open_streams_keep_working_during_the_pause(self):
        self.open("s1")
        self.fail_handshakes(MAX_HANDSHAKE_FAILURES)
        self.assertTrue(self.relay.budget.paused)
        self.exchange("s1", 1)
        self.exchange("s1", 2)

    def test_handshakes_refused_during_the_pause_do_not_extend_it(self):
        self.fail_handshakes(MAX_HANDSHAKE_FAILURES)
        self.clock.advance(HANDSHAKE_PAUSE_SECONDS - 0.5)
        self.fail_handshakes(MAX_HANDSHAKE_FAILURES)
        self.clock.advance(0.5)
        self.assertFalse(self.relay.budget.paused)
        self.open("after")

    def test_the_count_starts_afresh_after_the_pause(self):
        self.fail_handshakes(MAX_HANDSHAKE_FAILURES)
        self.clock.advance(HANDSHAKE_PAUSE_SECONDS)
        self.fail_handshakes(MAX_HANDSHAKE_FAILURES - 1)
        self.assertFalse(self.relay.budget.paused)

    def test_data_on_unknown_streams_is_reset_but_does_not_count(self):
        for n in range(2 * MAX_HANDSHAKE_FAILURES):
            self.send(frames.encode_data(f"u{n}", 0, b"x" * 32))
        self.assertEqual(self.resets(), [f"u{n}" for n in range(2 * MAX_HANDSHAKE_FAILURES)])
        self.assertFalse(self.relay.budget.paused)


class RepeatedEarlyDataTests(ExecutorTestCase):
    verdict = None

    def test_data_during_validation_eight_times_pauses_handshakes(self):
        for n in range(MAX_HANDSHAKE_FAILURES):
            self.handshake(f"s{n}")
            self.send(frames.encode_data(f"s{n}", 0, b"x" * 32))
        self.assertTrue(self.relay.budget.paused)


class FrameTests(ExecutorTestCase):
    def test_invalid_frames_and_text_are_dropped_and_the_stream_survives(self):
        self.open("s1")
        bad = []
        for change in (lambda f: setattr(f.data, "segment_count", 2),
                       lambda f: setattr(f.data, "segment_index", 1),
                       lambda f: setattr(f, "version", 2)):
            frame = RelayMessageFrame.FromString(frames.encode_data("s1", 0, b"x" * 32))
            change(frame)
            bad.append(frame.SerializeToString())
        for raw in bad:
            self.send(raw)
        self.rendezvous.sendMessage(b"text", isBinary=False)
        self.send(b"\xff\xff not protobuf")
        self.assertEqual(self.received(), [])
        self.exchange("s1", 1)

    def test_resume_ack_and_heartbeat_on_unknown_streams_are_ignored(self):
        for kind in ("resume", "ack_frame", "heartbeat"):
            frame = RelayMessageFrame(version=1, stream_id="u")
            getattr(frame, kind).SetInParent()
            self.send(frame.SerializeToString())
        self.assertEqual(self.received(), [])

    def test_a_record_too_far_ahead_resets_only_its_stream(self):
        self.open("s1")
        self.open("s2")
        self.send(frames.encode_data("s1", MAX_REORDER_DISTANCE + 1, b"x" * 32))
        self.assertEqual(self.resets(), ["s1"])
        self.exchange("s2", 1)

    def test_a_tampered_record_resets_only_its_stream(self):
        self.open("s1")
        self.open("s2")
        stream, _ = self.harness_streams["s1"]
        record = bytearray(self.ciphers["s1"].send.encrypt(b"\x00\x00\x00\x02{}"))
        record[-1] ^= 1
        self.send(frames.encode_data("s1", 0, bytes(record)))
        self.assertEqual(self.resets(), ["s1"])
        self.exchange("s2", 1)

    def test_a_stream_whose_protocol_ends_is_reset(self):
        self.open("s1")
        self.executor_app("s1").transport.loseConnection()
        self.pair.flush()
        self.assertEqual((self.resets(), self.relay.streams), (["s1"], {}))


class CountingTestCase(ExecutorTestCase):
    def value(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, dict(labels, role="executor")) or 0


class MetricsTests(CountingTestCase):
    def test_frames_streams_resets_and_failures_are_counted(self):
        carried = {True: 0, False: 0}

        def count(received: bool, kind: FrameKind, size: int) -> None:
            carried[received] += size

        # The rendezvous side's own count of what crossed the socket.
        self.rendezvous.counter = count
        self.open("s1")
        self.exchange("s1", 1)
        self.fail_handshakes(2)
        self.send(frames.encode_data("unknown", 0, b"x"))
        self.assertEqual(
            [self.value("exec_server_relay_streams_total"),
             self.value("exec_server_relay_bytes_total", direction="to_executor"),
             self.value("exec_server_relay_bytes_total", direction="to_harness"),
             self.value("exec_server_relay_resets_total", direction="to_harness"),
             self.value("exec_server_relay_handshake_failures_total", reason="invalid_handshake")],
            [3, carried[False], carried[True], 3, 2])

    def test_a_handshake_beyond_the_stream_limit_counts_as_busy(self):
        for n in range(MAX_ACTIVE_STREAMS):
            self.open(f"s{n}")
        self.handshake("one-more")
        self.assertEqual(self.value("exec_server_relay_handshake_failures_total", reason="busy"), 1)


class MetricsWhileValidatingTests(CountingTestCase):
    verdict = None

    def test_failures_while_validating_are_counted_by_reason(self):
        self.handshake("twice")
        self.handshake("twice")
        self.handshake("early-data")
        self.send(frames.encode_data("early-data", 0, b"x"))
        self.handshake("refused")
        self.validations.waiting["refused"].callback(False)
        self.assertEqual(
            [self.value("exec_server_relay_handshake_failures_total", reason=reason)
             for reason in ("second_handshake", "data_while_validating", "authorization_failed")],
            [1, 1, 1])


class LivenessTests(ExecutorTestCase):
    silent_rendezvous = True

    def test_a_silent_rendezvous_is_dropped_60_s_after_an_unanswered_ping(self):
        self.open("s1")
        app = self.executor_app("s1")
        self.clock.advance(PING_INTERVAL_SECONDS)
        self.pair.flush()
        self.clock.advance(PONG_TIMEOUT_SECONDS)
        self.pair.flush()
        (reason,) = app.lost
        self.assertEqual(reason.value.reason, PONG_TIMEOUT)
        self.assertEqual(self.relay.streams, {})


class ServerCoreTests(unittest.TestCase):
    """The real server core on a stream: malformed messages reset it."""

    def setUp(self):
        self.clock = task.Clock()
        exec_server = support.build_exec_server(self, self.clock)
        self.relay = ExecutorRelay(self.clock, EXECUTOR, REGISTRATION, lambda *a: succeed(True),
                                   exec_server.buildConnection)
        self.pair = RelayPair(client_owner=self.relay, clock=self.clock)

    def open(self, stream_id: str) -> tuple[NoiseStream, Recorder]:
        initiator = Initiator(HARNESS, EXECUTOR.public_key, prologue("env-1", "reg-1", stream_id))
        self.pair.server.writeFrame(frames.encode_handshake(stream_id, initiator.write_message1(b"a")))
        self.pair.flush()
        frame, _ = self.pair.server_owner.frames[-1]
        stream = NoiseStream(self.pair.server, stream_id, initiator.read_message2(frame.payload),
                             shares_socket=True, sends_resets=False)
        app = Recorder()
        stream.start(app)
        return stream, app

    def test_initialize_is_answered_over_the_stream(self):
        stream, app = self.open("s1")
        stream.sendMessage(b'{"id":1,"method":"initialize","params":{"clientName":"t"}}')
        self.pair.flush()
        reply = json.loads(app.messages[0])
        self.assertEqual((reply["id"], sorted(reply["result"])), (1, ["environmentInfo", "sessionId"]))

    def test_a_message_that_is_not_json_rpc_resets_the_stream_unanswered(self):
        for n, data in enumerate((b'{"id":1,"method":"initialize"', b"[1,2]")):
            stream, app = self.open(f"s{n}")
            stream.sendMessage(data)
            self.pair.flush()
            self.assertEqual(app.messages, [])
            self.assertTrue(app.lost[0].check(StreamReset))

    def test_an_unknown_notification_resets_the_stream(self):
        stream, app = self.open("s1")
        stream.sendMessage(b'{"method":"bogus"}')
        self.pair.flush()
        self.assertEqual(app.messages, [])
        self.assertTrue(app.lost[0].check(StreamReset))

    def test_a_session_resumes_on_another_stream(self):
        first, first_app = self.open("s1")
        first.sendMessage(b'{"id":1,"method":"initialize","params":{"clientName":"t"}}')
        self.pair.flush()
        session = json.loads(first_app.messages[0])["result"]["sessionId"]
        first.abortConnection()
        self.pair.server.writeFrame(frames.encode_reset("s1"))
        self.pair.flush()
        second, second_app = self.open("s2")
        second.sendMessage(json.dumps({"id": 1, "method": "initialize", "params": {
            "clientName": "t", "resumeSessionId": session}}).encode())
        self.pair.flush()
        self.assertEqual(json.loads(second_app.messages[0])["result"]["sessionId"], session)

