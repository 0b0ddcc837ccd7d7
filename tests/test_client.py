"""
The client library in memory: a scripted server plays each connection, and
the client's timers run on a task.Clock.

What is specified here: events delivered in sequence order exactly once
(early events, duplicates, gaps filled from process/read, the gap rule),
generated write ids, and recovery (what happens to each kind of request in
flight, the 25 s budget, backoff, resuming, catching up).
"""

from __future__ import annotations

import base64
import json

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import implementer

from execserver.client import (
    ClientClosed,
    ConnectFailed,
    ExecServerClient,
    HandleLost,
    OutcomeUnknown,
    OutputLost,
    ProcessLost,
    ProtocolViolation,
    RecoveryFailed,
    RemoteError,
    ServerGoingAway,
    StartNotApplied,
)
from execserver.client import core
from execserver.client.http import BodyFailed
from execserver.client.process import CLOSED, EXITED, OUTPUT, Sequencer
from execserver.interfaces import IMessageTransport, PeerGoingAway

SESSION = "5e55104e-0000-4000-8000-000000000001"
ENVIRONMENT = {"cwd": "file:///srv", "capabilities": {}}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@implementer(IMessageTransport, IPushProducer)
class ScriptedTransport:
    peer = "scripted"
    parseErrorPrefix = "scripted"

    def __init__(self) -> None:
        self.sent: list = []
        self.paused = False
        self.aborted = False
        self.closed = False

    def sendMessage(self, data: bytes) -> None:
        self.sent.append(json.loads(data))

    def loseConnection(self) -> None:
        self.closed = True

    def abortConnection(self) -> None:
        self.aborted = True

    def registerProducer(self, producer, streaming) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        pass


class Attempt:
    """
    The server's side of one connection the client tried to open.
    """

    def __init__(self, protocol) -> None:
        self.protocol = protocol
        self.opened = Deferred()
        self.transport = ScriptedTransport()
        self._read = 0

    def accept(self) -> None:
        self.protocol.makeConnection(self.transport)
        self.opened.callback(self.transport)

    def refuse(self) -> None:
        self.opened.errback(ConnectionRefusedError("111: Connection refused"))

    def take(self) -> list:
        """
        What the client sent since the last take.
        """
        messages = self.transport.sent[self._read:]
        self._read = len(self.transport.sent)
        return messages

    def send(self, message) -> None:
        self.protocol.messageReceived(json.dumps(message).encode())

    def reply(self, request: dict, result) -> None:
        self.send({"id": request["id"], "result": result})

    def fail(self, request: dict, code: int, message: str) -> None:
        self.send({"error": {"code": code, "message": message}, "id": request["id"]})

    def notify(self, method: str, params: dict) -> None:
        self.send({"method": method, "params": params})

    def output(self, process_id: str, seq: int, data: bytes, stream="stdout") -> None:
        self.notify("process/output", {"processId": process_id, "seq": seq, "stream": stream,
                                       "chunk": b64(data)})

    def exited(self, process_id: str, seq: int, code: int) -> None:
        self.notify("process/exited", {"processId": process_id, "seq": seq, "exitCode": code,
                                       "sandboxDenied": False})

    def closed(self, process_id: str, seq: int) -> None:
        self.notify("process/closed", {"processId": process_id, "seq": seq})

    def drop(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionDone("dropped")))

    def go_away(self) -> None:
        """
        The server closes the connection because it is shutting down.
        """
        self.protocol.connectionLost(Failure(PeerGoingAway(1001, "server shutting down")))

    def handshake(self, resume: str | None = None, acks: dict | None = None,
                  asks_for_acks: bool = True) -> None:
        """
        Accept, answer initialize, and check the client's side of it; with
        C{acks}, offer output acknowledgement with that window.
        """
        self.accept()
        (initialize,) = self.take()
        assert initialize["method"] == "initialize", initialize
        expected = {"clientName": "execserver-client", "resumeSessionId": resume}
        if asks_for_acks:
            expected["outputAcks"] = True
        assert initialize["params"] == expected, initialize
        result = {"sessionId": SESSION, "environmentInfo": ENVIRONMENT}
        if acks is not None:
            result["outputAcks"] = acks
        self.reply(initialize, result)
        initialized = self.transport.sent[self._read]
        assert initialized == {"method": "initialized", "params": {}}, initialized
        self._read += 1


class ScriptedServer:
    """
    A connector whose connections a test plays by hand.
    """

    description = "scripted server"

    def __init__(self, resumable: bool = True) -> None:
        self.resumable = resumable
        self.attempts: list[Attempt] = []

    def connect(self, protocol) -> Deferred:
        attempt = Attempt(protocol)
        self.attempts.append(attempt)
        return attempt.opened

    @property
    def last(self) -> Attempt:
        return self.attempts[-1]


def start_reply(request: dict) -> dict:
    return {"processId": request["params"]["processId"], "sandboxType": "none"}


def read_reply(chunks=(), next_seq=1, exited=False, exit_code=None, closed=False) -> dict:
    return {
        "chunks": [{"seq": seq, "stream": "stdout", "chunk": b64(data)} for seq, data in chunks],
        "nextSeq": next_seq, "exited": exited, "exitCode": exit_code, "closed": closed,
        "failure": None, "sandboxDenied": False,
    }


class ClientTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.server = ScriptedServer()
        self.client = ExecServerClient(self.server, self.clock)
        connected = self.client.connect()
        self.server.last.handshake()
        self.assertIs(self.successResultOf(connected), self.client)
        self.link = self.server.last

    def start(self, process_id="p", **kwargs) -> tuple:
        """
        Start a process; return (pending handle Deferred, the start request).
        """
        starting = self.client.start_process(["prog"], process_id=process_id, **kwargs)
        (request,) = self.link.take()
        return starting, request

    def started(self, process_id="p"):
        starting, request = self.start(process_id)
        self.link.reply(request, start_reply(request))
        return self.successResultOf(starting)

    def drop_and_resume(self, acks: dict | None = None) -> Attempt:
        """
        Drop the connection; let the first reconnect attempt resume.
        """
        self.link.drop()
        attempt = self.server.last
        self.assertIsNot(attempt, self.link)
        attempt.handshake(resume=SESSION, acks=acks)
        self.link = attempt
        return attempt


class HandshakeTests(ClientTestCase):
    def test_a_session_is_opened_with_initialize_then_initialized(self):
        self.assertEqual(self.client.session_id, SESSION)
        self.assertEqual(self.client.environment, ENVIRONMENT)
        self.assertEqual(self.client.state, "ready")

    def test_a_refused_first_connection_fails_connect(self):
        client = ExecServerClient(self.server, self.clock)
        connecting = client.connect()
        self.server.last.refuse()
        error = self.failureResultOf(connecting, ConnectFailed).value
        self.assertEqual(str(error), "could not connect to scripted server: Connection refused")
        self.assertEqual(client.state, "failed")

    def test_a_first_connection_without_an_answer_times_out(self):
        client = ExecServerClient(self.server, self.clock)
        connecting = client.connect()
        self.server.last.accept()
        self.clock.advance(core.ATTEMPT_SECONDS)
        self.failureResultOf(connecting, ConnectFailed)
        self.assertTrue(self.server.last.transport.aborted)

    def test_requests_made_while_connecting_wait_for_the_session(self):
        client = ExecServerClient(self.server, self.clock)
        client.connect()
        status = client.environment_status()
        attempt = self.server.last
        attempt.handshake()
        (request,) = attempt.take()
        self.assertEqual(request["method"], "environment/status")
        attempt.reply(request, {"status": "ready"})
        self.assertEqual(self.successResultOf(status), "ready")

    def test_server_requests_are_refused(self):
        self.link.send({"id": 7, "method": "network/policyRequest", "params": {}})
        self.assertEqual(self.link.take(), [{"error": {
            "code": -32601, "message": "execserver client does not implement `network/policyRequest`"},
            "id": 7}])

    def test_errors_carry_the_server_code_and_message(self):
        getting = self.client.fs.get_metadata("/nope")
        (request,) = self.link.take()
        self.assertEqual(request["params"], {"path": "file:///nope", "followSymlinks": True})
        self.link.fail(request, -32004, "No such file or directory (os error 2)")
        error = self.failureResultOf(getting, RemoteError).value
        self.assertEqual((error.code, str(error), error.method),
                         (-32004, "No such file or directory (os error 2)", "fs/getMetadata"))


class ProcessStartTests(ClientTestCase):
    def test_start_sends_the_wire_params(self):
        self.client.start_process(["ls", "-l"], cwd="/tmp", env={"A": "1"}, tty=True,
                                  pipe_stdin=True, process_id="ls-1")
        (request,) = self.link.take()
        self.assertEqual(request["method"], "process/start")
        self.assertEqual(request["params"], {
            "processId": "ls-1", "argv": ["ls", "-l"], "cwd": "file:///tmp", "env": {"A": "1"},
            "tty": True, "pipeStdin": True, "arg0": None,
        })

    def test_the_default_cwd_is_the_server_working_directory(self):
        self.start()
        self.client.start_process(["x"], process_id="q")
        (request,) = self.link.take()
        self.assertEqual(request["params"]["cwd"], "file:///srv")

    def test_generated_process_ids_are_unique(self):
        self.client.start_process(["a"])
        self.client.start_process(["b"])
        first, second = self.link.take()
        self.assertNotEqual(first["params"]["processId"], second["params"]["processId"])

    def test_a_process_id_in_use_is_refused_locally(self):
        self.start("p")
        self.failureResultOf(self.client.start_process(["x"], process_id="p"), ValueError)

    def test_a_failed_start_fails_the_handle(self):
        starting, request = self.start()
        self.link.fail(request, -32603, "No such file or directory (os error 2)")
        self.assertEqual(str(self.failureResultOf(starting, RemoteError).value),
                         "No such file or directory (os error 2)")
        self.assertIsNone(self.client.handle("p"))

    def test_events_before_the_start_response_are_delivered_in_order(self):
        starting, request = self.start()
        handle = self.client.handle("p")
        self.link.output("p", 1, b"early ")
        self.link.exited("p", 2, 0)
        self.link.output("p", 3, b"late")
        self.link.closed("p", 4)
        self.link.reply(request, start_reply(request))
        self.assertIs(self.successResultOf(starting), handle)
        self.assertEqual(handle.receiver.output(), b"early late")
        self.assertEqual(self.successResultOf(handle.when_closed()), 0)
        self.assertEqual(handle.sandbox_type, "none")


class OrderingTests(ClientTestCase):
    def test_output_exit_and_close_arrive_in_sequence_order(self):
        handle = self.started()
        events = []
        handle.receiver.outputReceived = lambda stream, data: events.append((stream, data))
        handle.receiver.processExited = lambda code: events.append(("exit", code))
        handle.receiver.processClosed = lambda: events.append(("close",))
        self.link.exited("p", 1, 3)
        self.link.output("p", 2, b"after exit", stream="stderr")
        self.link.closed("p", 3)
        self.assertEqual(events, [("exit", 3), ("stderr", b"after exit"), ("close",)])
        self.assertEqual(self.successResultOf(handle.when_exited()), 3)

    def test_duplicates_are_delivered_once(self):
        handle = self.started()
        self.link.output("p", 1, b"a")
        self.link.output("p", 1, b"a")
        self.link.output("p", 2, b"b")
        self.link.output("p", 1, b"a")
        self.assertEqual(handle.receiver.output(), b"ab")

    def test_a_gap_is_filled_from_process_read(self):
        handle = self.started()
        self.link.output("p", 1, b"a")
        self.link.output("p", 4, b"d")
        self.assertEqual(handle.receiver.output(), b"a")
        (read,) = self.link.take()
        self.assertEqual(read["method"], "process/read")
        self.assertEqual(read["params"], {"processId": "p", "afterSeq": 1})
        self.link.output("p", 5, b"e")
        self.assertEqual(self.link.take(), [], "one read at a time")
        self.link.reply(read, read_reply([(2, b"b"), (3, b"c"), (4, b"d"), (5, b"e")], next_seq=6))
        self.assertEqual(handle.receiver.output(), b"abcde")
        self.link.output("p", 6, b"f")
        self.assertEqual(handle.receiver.output(), b"abcdef")

    def test_events_after_close_are_ignored(self):
        handle = self.started()
        self.link.closed("p", 1)
        self.link.output("p", 2, b"x")
        self.assertEqual(handle.receiver.output(), b"")
        self.assertIsNone(self.client.handle("p"))

    def test_a_paused_handle_pauses_the_transport_and_queues_events(self):
        handle = self.started()
        handle.pauseProducing()
        self.assertTrue(self.link.transport.paused)
        self.link.output("p", 1, b"a")
        self.assertEqual(handle.receiver.output(), b"")
        handle.resumeProducing()
        self.assertFalse(self.link.transport.paused)
        self.assertEqual(handle.receiver.output(), b"a")

    def test_a_receiver_may_pause_while_receiving(self):
        handle = self.started()
        received = []

        def output(stream, data):
            received.append(data)
            handle.pauseProducing()

        handle.receiver.outputReceived = output
        self.link.output("p", 2, b"b")
        (read,) = self.link.take()
        self.link.reply(read, read_reply([(1, b"a"), (2, b"b")], next_seq=3))
        self.assertEqual(received, [b"a"])
        handle.resumeProducing()
        self.assertEqual(received, [b"a", b"b"])


class AckTests(ClientTestCase):
    """
    Output acknowledgement, offered by the server with its window: the
    client acknowledges every quarter of it (here 100 bytes or 2 events).
    """

    window = {"maxUnackedBytes": 400, "maxUnackedChunks": 8}

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.server = ScriptedServer()
        self.client = ExecServerClient(self.server, self.clock)
        self.client.connect()
        self.server.last.handshake(acks=self.window)
        self.link = self.server.last

    def acks(self) -> list:
        return [m["params"] for m in self.link.take() if m.get("method") == "process/ack"]

    def test_output_is_acknowledged_each_time_a_quarter_of_the_window_arrived(self):
        self.started()
        self.link.output("p", 1, b"x" * 60)
        self.assertEqual(self.acks(), [])
        self.link.output("p", 2, b"x" * 60)
        self.assertEqual(self.acks(), [{"processId": "p", "seq": 2}])
        self.link.output("p", 3, b"x" * 99)
        self.assertEqual(self.acks(), [])
        self.link.output("p", 4, b"x")
        self.assertEqual(self.acks(), [{"processId": "p", "seq": 4}])

    def test_events_count_as_well_as_bytes(self):
        self.started()
        self.link.output("p", 1, b"x")
        self.link.exited("p", 2, 0)
        self.assertEqual(self.acks(), [{"processId": "p", "seq": 2}])

    def test_only_what_arrived_in_order_is_acknowledged(self):
        handle = self.started()
        self.link.output("p", 2, b"x" * 200)
        (read,) = self.link.take()
        self.assertEqual(read["method"], "process/read")
        self.link.output("p", 1, b"x")
        self.assertEqual(self.acks(), [{"processId": "p", "seq": 2}])
        self.assertEqual(handle.receiver.output(), b"x" * 201)

    def test_a_paused_receiver_does_not_hold_back_acknowledgements(self):
        # What arrived is the client's, whether delivered yet or not.
        handle = self.started()
        handle.pauseProducing()
        self.link.output("p", 1, b"x" * 100)
        self.assertEqual(self.acks(), [{"processId": "p", "seq": 1}])
        self.assertEqual(handle.receiver.output(), b"")

    def test_the_catch_up_read_counts_as_an_acknowledgement(self):
        self.started()
        self.link.output("p", 1, b"x" * 60)
        link = self.drop_and_resume(acks=self.window)
        (read,) = link.take()
        self.assertEqual(read["params"], {"processId": "p", "afterSeq": 1})
        link.reply(read, read_reply([(2, b"x" * 60)], next_seq=3))
        self.assertEqual(self.acks(), [], "counted from the read, not from the last ack")
        link.output("p", 3, b"x" * 40)
        self.assertEqual(self.acks(), [{"processId": "p", "seq": 3}])

    def test_a_server_that_does_not_offer_it_gets_no_acknowledgements(self):
        self.link.drop()
        self.server.last.handshake(resume=SESSION)
        self.link = self.server.last
        self.started()
        for seq in range(1, 20):
            self.link.output("p", seq, b"x" * 100)
        self.assertEqual(self.acks(), [])

    def test_a_client_told_not_to_does_not_ask_or_acknowledge(self):
        server = ScriptedServer()
        client = ExecServerClient(server, self.clock, acknowledge_output=False)
        client.connect()
        server.last.handshake(acks=self.window, asks_for_acks=False)
        self.link, self.client = server.last, client
        self.started()
        for seq in range(1, 20):
            self.link.output("p", seq, b"x" * 100)
        self.assertEqual(self.acks(), [])


class SequencerTests(unittest.TestCase):
    """
    The gap rule (see execserver.client.process): numbers not seen, minus
    the exit/close events that happened but were not seen, must be zero.
    """

    def read(self, sequencer, **reply):
        return sequencer.apply_read("p", read_reply(**reply))

    def test_unseen_exit_and_close_take_the_unseen_numbers_in_order(self):
        sequencer = Sequencer()
        ready = self.read(sequencer, chunks=[(2, b"late")], next_seq=4, exited=True, exit_code=5,
                          closed=True)
        self.assertEqual(ready, [(EXITED, 5, False), (OUTPUT, "stdout", b"late"), (CLOSED,)])
        self.assertEqual(sequencer.delivered, 3)

    def test_an_exit_already_seen_is_not_invented_again(self):
        sequencer = Sequencer()
        sequencer.accept(1, (OUTPUT, "stdout", b"a"))
        sequencer.accept(3, (EXITED, 0, False))
        ready = self.read(sequencer, chunks=[(2, b"b")], next_seq=5, exited=True, exit_code=0,
                          closed=True)
        self.assertEqual(ready, [(OUTPUT, "stdout", b"b"), (EXITED, 0, False), (CLOSED,)])

    def test_missing_output_fails_with_the_first_missing_number(self):
        sequencer = Sequencer()
        sequencer.accept(1, (OUTPUT, "stdout", b"a"))
        with self.assertRaises(OutputLost) as caught:
            self.read(sequencer, chunks=[(4, b"d")], next_seq=6, exited=True, exit_code=0)
        self.assertEqual((caught.exception.first_missing, caught.exception.missing), (2, 2))
        self.assertEqual(str(caught.exception),
                         "output of process p fell out of the server's replay window: 2 event(s) "
                         "from sequence number 2 on were never received and can no longer be read")

    def test_a_read_with_nothing_new_changes_nothing(self):
        sequencer = Sequencer()
        sequencer.accept(1, (OUTPUT, "stdout", b"a"))
        self.assertEqual(self.read(sequencer, next_seq=2), [])
        self.assertEqual(sequencer.delivered, 1)

    def test_an_exit_without_a_number_is_a_protocol_violation(self):
        sequencer = Sequencer()
        with self.assertRaises(ProtocolViolation):
            self.read(sequencer, chunks=[(1, b"a")], next_seq=2, exited=True, exit_code=0)

    def test_buffered_events_count_as_seen(self):
        sequencer = Sequencer()
        sequencer.accept(3, (CLOSED,))
        ready = self.read(sequencer, chunks=[(1, b"a")], next_seq=4, exited=True, exit_code=1,
                          closed=True)
        self.assertEqual(ready, [(OUTPUT, "stdout", b"a"), (EXITED, 1, False), (CLOSED,)])

    def test_events_newer_than_the_read_stay_buffered(self):
        sequencer = Sequencer()
        sequencer.accept(5, (OUTPUT, "stdout", b"e"))
        ready = self.read(sequencer, chunks=[(1, b"a"), (2, b"b")], next_seq=3)
        self.assertEqual([event[2] for event in ready], [b"a", b"b"])
        self.assertTrue(sequencer.gap)


class WriteTests(ClientTestCase):
    def test_writes_carry_generated_unique_write_ids(self):
        handle = self.started()
        first = handle.write(b"one")
        handle.write(b"two")
        a, b = self.link.take()
        self.assertEqual((a["method"], a["params"]["processId"], a["params"]["chunk"]),
                         ("process/write", "p", b64(b"one")))
        self.assertNotEqual(a["params"]["writeId"], b["params"]["writeId"])
        self.link.reply(a, {"status": "accepted"})
        self.assertEqual(self.successResultOf(first), "accepted")

    def test_write_ids_differ_between_clients(self):
        other = ExecServerClient(self.server, self.clock)
        other.connect()
        self.server.last.handshake()
        self.client.write_process("p", b"x")
        other.write_process("p", b"x")
        (ours,) = self.link.take()
        (theirs,) = self.server.last.take()
        self.assertNotEqual(ours["params"]["writeId"], theirs["params"]["writeId"])


class CloseStdinTests(ClientTestCase):
    def test_close_stdin_asks_the_server_to_end_the_input(self):
        handle = self.started()
        closing = handle.close_stdin()
        (request,) = self.link.take()
        self.assertEqual((request["method"], request["params"]), ("process/closeStdin", {"processId": "p"}))
        self.link.reply(request, {})
        self.assertIsNone(self.successResultOf(closing))

    def test_a_server_without_it_answers_method_not_found(self):
        handle = self.started()
        closing = handle.close_stdin()
        (request,) = self.link.take()
        self.link.fail(request, -32601, "exec-server stub does not implement `process/closeStdin` yet")
        error = self.failureResultOf(closing, RemoteError).value
        self.assertEqual(error.code, -32601)

    def test_in_flight_it_is_sent_again_after_the_writes_before_it(self):
        handle = self.started()
        handle.write(b"last")
        closing = handle.close_stdin()
        self.link.take()
        link = self.drop_and_resume()
        catch_up, write, close = link.take()
        self.assertEqual([m["method"] for m in (catch_up, write, close)],
                         ["process/read", "process/write", "process/closeStdin"])
        link.reply(close, {})
        self.assertIsNone(self.successResultOf(closing))


class RecoveryTests(ClientTestCase):
    def test_a_drop_reconnects_at_once_and_resumes_the_session(self):
        self.link.drop()
        self.assertEqual(self.client.state, "recovering")
        self.assertEqual(len(self.server.attempts), 2)
        self.server.last.handshake(resume=SESSION)
        self.assertEqual(self.client.state, "ready")

    def test_failed_attempts_back_off(self):
        self.link.drop()
        delays = []
        for _ in range(7):
            self.server.last.refuse()
            retry = min(call.getTime() for call in self.clock.getDelayedCalls())
            delays.append(round(retry - self.clock.seconds(), 3))
            before = len(self.server.attempts)
            self.clock.advance(retry - self.clock.seconds())
            self.assertEqual(len(self.server.attempts), before + 1)
        self.assertEqual(delays, [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0])

    def test_an_already_attached_session_is_retried(self):
        self.link.drop()
        attempt = self.server.last
        attempt.accept()
        (initialize,) = attempt.take()
        attempt.fail(initialize, -32010, f"session {SESSION} is already attached to another connection")
        self.assertTrue(attempt.transport.aborted)
        self.clock.advance(core.FIRST_RETRY_DELAY)
        self.server.last.handshake(resume=SESSION)
        self.assertEqual(self.client.state, "ready")

    def test_a_stalled_attempt_is_abandoned_and_retried(self):
        self.link.drop()
        stalled = self.server.last
        stalled.accept()
        self.clock.advance(core.ATTEMPT_SECONDS)
        self.assertTrue(stalled.transport.aborted)
        self.clock.advance(core.FIRST_RETRY_DELAY)
        self.assertIsNot(self.server.last, stalled)

    def test_live_processes_catch_up_from_their_last_delivered_number(self):
        first = self.started("p")
        second = self.started("q")
        self.link.output("p", 1, b"a")
        self.link.output("p", 2, b"b")
        link = self.drop_and_resume()
        reads = link.take()
        self.assertEqual([(m["method"], m["params"]) for m in reads], [
            ("process/read", {"processId": "p", "afterSeq": 2}),
            ("process/read", {"processId": "q", "afterSeq": 0}),
        ])
        link.reply(reads[0], read_reply([(3, b"c")], next_seq=6, exited=True, exit_code=0, closed=True))
        link.reply(reads[1], read_reply(next_seq=1))
        self.assertEqual(first.receiver.output(), b"abc")
        self.assertEqual(self.successResultOf(first.when_closed()), 0)
        link.output("q", 1, b"still here")
        self.assertEqual(second.receiver.output(), b"still here")

    def test_notifications_after_the_resume_wait_for_the_catch_up(self):
        handle = self.started()
        self.link.output("p", 1, b"a")
        link = self.drop_and_resume()
        (read,) = link.take()
        link.output("p", 4, b"d")
        self.assertEqual(handle.receiver.output(), b"a")
        link.reply(read, read_reply([(2, b"b"), (3, b"c"), (4, b"d")], next_seq=5))
        self.assertEqual(handle.receiver.output(), b"abcd")

    def test_writes_in_flight_are_sent_again_with_the_same_write_id(self):
        handle = self.started()
        writing = handle.write(b"data")
        (write,) = self.link.take()
        link = self.drop_and_resume()
        catch_up, again = link.take()
        self.assertEqual(catch_up["method"], "process/read")
        self.assertEqual(again["method"], "process/write")
        self.assertEqual(again["params"], write["params"])
        link.reply(again, {"status": "accepted"})
        self.assertEqual(self.successResultOf(writing), "accepted")

    def test_requests_are_sent_again_in_the_order_they_were_made(self):
        self.client.write_process("p", b"1")
        self.client.fs.read_file("/f")
        self.link.take()
        self.link.drop()
        self.client.write_process("p", b"2")
        self.server.last.handshake(resume=SESSION)
        sent = self.server.last.take()
        self.assertEqual([(m["method"], m["params"].get("chunk")) for m in sent], [
            ("process/write", b64(b"1")), ("fs/readFile", None), ("process/write", b64(b"2")),
        ])

    def test_read_only_requests_are_sent_again(self):
        reading = self.client.fs.read_file("/f")
        self.link.take()
        link = self.drop_and_resume()
        (again,) = link.take()
        self.assertEqual(again["method"], "fs/readFile")
        link.reply(again, {"dataBase64": b64(b"content")})
        self.assertEqual(self.successResultOf(reading), b"content")

    def test_other_mutating_requests_in_flight_fail_with_an_unknown_outcome(self):
        calls = {
            "process/terminate": self.client.terminate_process("p"),
            "process/signal": self.client.signal_process("p"),
            "fs/writeFile": self.client.fs.write_file("/f", b"x"),
            "fs/remove": self.client.fs.remove("/f"),
            "http/request": self.client.http.request("GET", "http://example.test/"),
        }
        self.link.take()
        link = self.drop_and_resume()
        self.assertEqual(link.take(), [])
        for method, call in calls.items():
            error = self.failureResultOf(call, OutcomeUnknown).value
            self.assertEqual(error.method, method)
            self.assertEqual(str(error), f"the connection was lost while {method} was in flight; "
                             "the server may or may not have carried it out, and it is not sent again")

    def test_mutating_requests_made_while_recovering_are_sent_after_the_resume(self):
        self.link.drop()
        terminating = self.client.terminate_process("p")
        self.server.last.handshake(resume=SESSION)
        (request,) = self.server.last.take()
        self.assertEqual(request["method"], "process/terminate")
        self.server.last.reply(request, {"running": True})
        self.assertTrue(self.successResultOf(terminating))

    def test_a_start_in_flight_is_asked_about_not_sent_again(self):
        starting, request = self.start()
        self.link.output("p", 1, b"a")
        link = self.drop_and_resume()
        (probe,) = link.take()
        self.assertEqual((probe["method"], probe["params"]), ("process/read", {"processId": "p", "afterSeq": 1}))
        link.reply(probe, read_reply([(1, b"a"), (2, b"b")], next_seq=3))
        handle = self.successResultOf(starting)
        self.assertEqual(handle.receiver.output(), b"ab")
        self.assertIsNone(handle.sandbox_type)
        link.output("p", 3, b"c")
        self.assertEqual(handle.receiver.output(), b"abc")

    def test_a_start_the_server_never_saw_fails_as_not_started(self):
        starting, request = self.start()
        link = self.drop_and_resume()
        (probe,) = link.take()
        link.fail(probe, -32600, "unknown process id p")
        error = self.failureResultOf(starting, StartNotApplied).value
        self.assertEqual(str(error), "the connection was lost before the server started process p; "
                         "it was not started")
        self.assertIsNone(self.client.handle("p"))

    def test_a_start_asked_about_twice_after_two_drops(self):
        starting, request = self.start()
        self.drop_and_resume()
        link = self.drop_and_resume()
        (probe,) = link.take()
        self.assertEqual(probe["method"], "process/read")
        link.reply(probe, read_reply(next_seq=1))
        self.successResultOf(starting)

    def test_a_process_whose_output_fell_out_of_the_window_fails_alone(self):
        lost = self.started("lost")
        kept = self.started("kept")
        self.link.output("lost", 1, b"a")
        link = self.drop_and_resume()
        lost_read, kept_read = link.take()
        link.reply(lost_read, read_reply([(900, b"z")], next_seq=903, exited=True, exit_code=0, closed=True))
        link.reply(kept_read, read_reply([(1, b"fine")], next_seq=2))
        error = self.failureResultOf(lost.when_closed(), OutputLost).value
        self.assertEqual((error.process_id, error.first_missing, error.missing), ("lost", 2, 898))
        self.assertIsInstance(lost.receiver.failure.value, OutputLost)
        self.assertEqual(lost.receiver.output(), b"a")
        link.closed("kept", 2)
        self.assertEqual(self.successResultOf(kept.when_closed()), None)
        self.assertEqual(kept.receiver.output(), b"fine")

    def test_a_process_the_server_forgot_fails_alone(self):
        handle = self.started()
        link = self.drop_and_resume()
        (read,) = link.take()
        link.fail(read, -32600, "unknown process id p")
        self.assertEqual(str(self.failureResultOf(handle.when_closed(), ProcessLost).value),
                         "the server no longer knows process p: unknown process id p")
        self.assertEqual(self.client.state, "ready")

    def test_a_catch_up_cut_short_by_another_drop_is_read_again(self):
        handle = self.started()
        self.link.output("p", 1, b"a")
        self.drop_and_resume()
        link = self.drop_and_resume()
        (read,) = link.take()
        self.assertEqual(read["params"], {"processId": "p", "afterSeq": 1})
        link.reply(read, read_reply([(2, b"b")], next_seq=3))
        self.assertEqual(handle.receiver.output(), b"ab")

    def test_recovery_gives_up_after_the_budget_with_one_error(self):
        handle = self.started()
        writing = handle.write(b"x")
        self.link.drop()
        waiting = self.client.fs.read_file("/f")
        self.clock.pump([0.01] * int(core.RECOVERY_SECONDS * 100 - 1))
        for attempt in self.server.attempts[1:]:
            if not attempt.opened.called:
                attempt.refuse()
        self.assertEqual(self.client.state, "recovering")
        self.clock.advance(0.02)
        self.assertEqual(self.client.state, "failed")
        errors = [self.failureResultOf(d, RecoveryFailed).value
                  for d in (writing, waiting, handle.when_closed())]
        self.assertEqual(len({str(e) for e in errors}), 1)
        self.assertEqual(str(errors[0]),
                         "lost the connection to scripted server (Connection was closed cleanly: "
                         f"dropped.) and could not resume session {SESSION} within 25 s: "
                         "Connection refused")
        self.assertEqual(str(self.failureResultOf(self.client.environment_status(), RecoveryFailed).value),
                         str(errors[0]))

    def test_the_budget_counts_from_the_drop_and_spans_attempts(self):
        self.link.drop()
        for _ in range(3):
            self.server.last.refuse()
            self.clock.advance(1.0)
        self.clock.advance(core.RECOVERY_SECONDS - 3.0)
        self.assertEqual(self.client.state, "failed")

    def test_an_expired_session_fails_recovery_at_once(self):
        handle = self.started()
        self.link.drop()
        attempt = self.server.last
        attempt.accept()
        (initialize,) = attempt.take()
        attempt.fail(initialize, -32600, f"unknown session id {SESSION}")
        self.assertEqual(self.client.state, "failed")
        self.assertIn(f"unknown session id {SESSION}",
                      str(self.failureResultOf(handle.when_closed(), RecoveryFailed).value))

    def test_a_server_that_goes_away_is_not_asked_to_resume(self):
        handle = self.started()
        status = self.client.environment_status()
        self.link.go_away()
        self.assertEqual((self.client.state, len(self.server.attempts)), ("failed", 1))
        error = self.failureResultOf(handle.when_closed(), ServerGoingAway).value
        self.assertEqual(str(error), "the server scripted server is shutting down")
        self.assertIs(self.failureResultOf(status, ServerGoingAway).value, error)

    def test_recovery_stops_when_the_server_goes_away(self):
        handle = self.started()
        self.link.drop()
        attempt = self.server.last
        attempt.accept()
        attempt.go_away()
        self.clock.advance(core.RECOVERY_SECONDS)
        self.assertEqual(len(self.server.attempts), 2)
        self.failureResultOf(handle.when_closed(), ServerGoingAway)

    def test_a_stdio_server_cannot_be_resumed(self):
        server = ScriptedServer(resumable=False)
        client = ExecServerClient(server, self.clock)
        client.connect()
        server.last.handshake()
        status = client.environment_status()
        server.last.drop()
        self.assertEqual(len(server.attempts), 1)
        self.assertEqual(str(self.failureResultOf(status, RecoveryFailed).value),
                         "lost the connection to scripted server (Connection was closed cleanly: "
                         "dropped.); its session cannot be resumed")

    def test_a_paused_client_resumes_paused(self):
        handle = self.started()
        handle.pauseProducing()
        link = self.drop_and_resume()
        self.assertTrue(link.transport.paused)
        handle.resumeProducing()
        self.assertFalse(link.transport.paused)

    def test_close_fails_everything_pending(self):
        handle = self.started()
        status = self.client.environment_status()
        self.client.close()
        self.assertTrue(self.link.transport.closed)
        self.failureResultOf(status, ClientClosed)
        self.failureResultOf(handle.when_closed(), ClientClosed)
        self.assertEqual(self.client.state, "closed")

    def test_close_while_recovering_stops_trying(self):
        self.link.drop()
        self.server.last.refuse()
        self.client.close()
        attempts = len(self.server.attempts)
        self.clock.advance(core.RECOVERY_SECONDS)
        self.assertEqual(len(self.server.attempts), attempts)
        self.assertEqual(self.client.state, "closed")


class FileTests(ClientTestCase):
    def test_a_file_is_streamed_in_blocks(self):
        received = []
        streaming = self.client.fs.stream("/f", received.append, block_size=4)
        (request,) = self.link.take()
        self.assertEqual(request["method"], "fs/open")
        handle_id = request["params"]["handleId"]
        self.assertEqual(len(handle_id), 32)
        self.link.reply(request, {"handleId": handle_id})
        for offset, data, eof in ((0, b"abcd", False), (4, b"ef", True)):
            (block,) = self.link.take()
            self.assertEqual(block["params"], {"handleId": handle_id, "offset": offset, "len": 4})
            self.link.reply(block, {"chunk": b64(data), "eof": eof})
        (close,) = self.link.take()
        self.assertEqual(close["params"], {"handleId": handle_id})
        self.link.reply(close, {})
        self.assertEqual(self.successResultOf(streaming), 6)
        self.assertEqual(received, [b"abcd", b"ef"])

    def test_a_stream_cut_by_a_drop_fails_with_handle_lost(self):
        streaming = self.client.fs.stream("/f", lambda data: None)
        (request,) = self.link.take()
        self.link.reply(request, {"handleId": request["params"]["handleId"]})
        self.link.take()
        link = self.drop_and_resume()
        self.assertIn("the server closes file handles with their connection",
                      str(self.failureResultOf(streaming, HandleLost).value))
        self.assertEqual(link.take(), [], "nothing to close on the new connection")

    def test_a_handle_from_before_a_drop_is_not_used(self):
        opening = self.client.fs.open("/f")
        (request,) = self.link.take()
        self.link.reply(request, {"handleId": request["params"]["handleId"]})
        handle = self.successResultOf(opening)
        link = self.drop_and_resume()
        self.failureResultOf(handle.read_block(0), HandleLost)
        self.assertEqual(self.successResultOf(handle.close()), {})
        self.assertEqual(link.take(), [])

    def test_a_close_in_flight_succeeds(self):
        closing = self.client.call("fs/close", {"handleId": "h"})
        self.link.take()
        self.drop_and_resume()
        self.assertEqual(self.successResultOf(closing), {})


class HttpTests(ClientTestCase):
    def request(self, **kwargs):
        responding = self.client.http.request("POST", "http://example.test/x",
                                              headers=[("a", "1")], body=b"hi", **kwargs)
        (request,) = self.link.take()
        return responding, request

    def test_a_buffered_request(self):
        responding, request = self.request(timeout_ms=500)
        self.assertEqual(request["params"], {
            "method": "POST", "url": "http://example.test/x", "headers": [{"name": "a", "value": "1"}],
            "timeoutMs": 500, "redirectPolicy": "follow", "requestId": request["params"]["requestId"],
            "streamResponse": False, "bodyBase64": b64(b"hi"),
        })
        self.link.reply(request, {"status": 404, "headers": [{"name": "x", "value": "y"}],
                                  "bodyBase64": b64(b"nope")})
        response = self.successResultOf(responding)
        self.assertEqual((response.status, response.headers, response.body, response.header("X")),
                         (404, [("x", "y")], b"nope", "y"))

    def test_a_streamed_body_arrives_in_order(self):
        responding, request = self.request(stream=True)
        request_id = request["params"]["requestId"]
        self.link.reply(request, {"status": 200, "headers": [], "bodyBase64": ""})
        response = self.successResultOf(responding)

        def delta(seq, data, done=False, error=None):
            self.link.notify("http/request/bodyDelta", {"requestId": request_id, "seq": seq,
                                                       "deltaBase64": b64(data), "done": done,
                                                       "error": error})

        delta(1, b"early ")
        content = response.stream.content()
        delta(2, b"late")
        delta(3, b"", done=True)
        self.assertEqual(self.successResultOf(content), b"early late")

    def test_a_body_error_fails_the_stream(self):
        responding, request = self.request(stream=True)
        self.link.reply(request, {"status": 200, "headers": [], "bodyBase64": ""})
        content = self.successResultOf(responding).stream.content()
        self.link.notify("http/request/bodyDelta", {
            "requestId": request["params"]["requestId"], "seq": 1, "deltaBase64": "",
            "done": True, "error": "error decoding response body"})
        self.assertEqual(str(self.failureResultOf(content, BodyFailed).value),
                         "error decoding response body")

    def test_a_streamed_body_cut_by_a_drop_fails(self):
        responding, request = self.request(stream=True)
        self.link.reply(request, {"status": 200, "headers": [], "bodyBase64": ""})
        content = self.successResultOf(responding).stream.content()
        self.drop_and_resume()
        self.failureResultOf(content, HandleLost)
