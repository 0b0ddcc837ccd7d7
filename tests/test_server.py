"""
The JSON-RPC connection in memory: handshake gate, dispatch order, malformed
input, and what ends a connection.
"""

import uuid

from twisted.internet import task
from twisted.trial import unittest

from execserver import params as P
from execserver.server import HANDSHAKE_TIMEOUT_SECONDS, MAX_BACKLOG_MESSAGES, Method
from execserver.turns import TURN_SECONDS

from tests.support import attach, build_exec_server, handshake, send

START_SLEEP = {
    "processId": "sleeper", "argv": ["/bin/sleep", "100"], "cwd": "file:///",
    "env": {}, "tty": False,
}


class ConnectionTestCase(unittest.TestCase):
    concurrency = 1

    def setUp(self):
        self.clock = task.Clock()
        self.server = build_exec_server(self, self.clock, self.concurrency)
        self.connection, self.transport = attach(self.server)


class HandshakeTests(ConnectionTestCase):
    def test_initialize_returns_a_uuid_session_and_environment_info(self):
        send(self.connection, {"id": 1, "method": "initialize", "params": {"clientName": "t"}})
        (reply,) = self.transport.take()
        self.assertEqual(reply["id"], 1)
        self.assertEqual(str(uuid.UUID(reply["result"]["sessionId"])), reply["result"]["sessionId"])
        self.assertEqual(reply["result"]["environmentInfo"]["platformOs"], "linux")

    def test_methods_before_initialize_name_their_family(self):
        families = {
            "environment/info": "environment info",
            "environment/status": "environment status",
            "process/terminate": "exec",
        }
        for id, (method, family) in enumerate(families.items()):
            params = {"processId": "x"} if method.startswith("process/") else None
            send(self.connection, {"id": id, "method": method, "params": params})
            self.assertEqual(self.transport.take(), [{
                "error": {"code": -32600,
                          "message": f"client must call initialize before using {family} methods"},
                "id": id,
            }])

    def test_methods_before_initialized_are_refused(self):
        send(self.connection, {"id": 1, "method": "initialize", "params": {"clientName": "t"}})
        self.transport.take()
        send(self.connection, {"id": 2, "method": "environment/status"})
        self.assertEqual(self.transport.take(), [{
            "error": {"code": -32600,
                      "message": "client must send initialized before using environment status methods"},
            "id": 2,
        }])
        send(self.connection, {"method": "initialized"})
        send(self.connection, {"id": 3, "method": "environment/status"})
        self.assertEqual(self.transport.take(), [{"id": 3, "result": {"status": "ready"}}])

    def test_params_are_decoded_before_the_gate(self):
        send(self.connection, {"id": 1, "method": "process/terminate", "params": {}})
        self.assertEqual(self.transport.take(), [{
            "error": {"code": -32602, "message": "missing field `processId`"}, "id": 1,
        }])

    def test_initialize_only_once(self):
        handshake(self.connection, self.transport)
        send(self.connection, {"id": 5, "method": "initialize", "params": {"clientName": "t"}})
        self.assertEqual(self.transport.take(), [{
            "error": {"code": -32600, "message": "initialize may only be sent once per connection"},
            "id": 5,
        }])

    def test_failed_initialize_may_be_retried(self):
        send(self.connection, {"id": 1, "method": "initialize",
                               "params": {"clientName": "t", "resumeSessionId": "nope"}})
        self.assertEqual(self.transport.take(), [{
            "error": {"code": -32600, "message": "unknown session id nope"}, "id": 1,
        }])
        send(self.connection, {"id": 2, "method": "initialize", "params": {"clientName": "t"}})
        self.assertIn("sessionId", self.transport.take()[0]["result"])

    def test_initialized_before_initialize_drops_the_connection(self):
        send(self.connection, {"method": "initialized"})
        self.assertTrue(self.transport.aborted)
        self.assertEqual(self.transport.sent, [])


class HandshakeTimeoutTests(ConnectionTestCase):
    def test_a_connection_that_never_initializes_is_closed(self):
        self.clock.advance(HANDSHAKE_TIMEOUT_SECONDS - 1)
        self.assertFalse(self.transport.closed)
        self.clock.advance(1)
        self.assertTrue(self.transport.closed)

    def test_initialize_keeps_it_open(self):
        send(self.connection, {"id": 1, "method": "initialize", "params": {"clientName": "t"}})
        self.clock.advance(HANDSHAKE_TIMEOUT_SECONDS)
        self.assertFalse(self.transport.closed)

    def test_a_closed_connection_leaves_no_timer(self):
        self.connection.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_zero_waits_forever(self):
        self.server.handshake_timeout = 0
        connection, transport = attach(self.server)
        self.clock.advance(10 * HANDSHAKE_TIMEOUT_SECONDS)
        self.assertFalse(transport.closed)


class MessageTests(ConnectionTestCase):
    def test_malformed_json_is_answered_with_id_minus_one(self):
        self.connection.messageReceived(b"not-json")
        self.assertEqual(self.transport.take(), [{
            "error": {
                "code": -32600,
                "message": "failed to parse JSON-RPC message from test: "
                           "expected ident at line 1 column 2",
            },
            "id": -1,
        }])
        self.assertFalse(self.transport.aborted)
        handshake(self.connection, self.transport)

    def test_a_transport_without_a_parse_error_prefix_is_ended_instead(self):
        # A relay stream: the reference resets it, whatever the message.
        for data in (b"not-json", b"[1,2]", b'{"id":1,"method":"initialize"' + b" " * 1000):
            connection, transport = attach(self.server)
            transport.parseErrorPrefix = None
            connection.messageReceived(data)
            self.assertEqual((transport.sent, transport.aborted), ([], True))

    def test_a_transport_without_a_parse_error_prefix_serves_what_the_fast_parser_refuses(self):
        # An escaped surrogate pair is valid JSON that only the full parser
        # takes: the relay stream must not be ended for it (found by
        # tests/stress/fuzz.py: any emoji escaped by the client reset it).
        transport = self.transport
        transport.parseErrorPrefix = None
        self.connection.messageReceived(
            b'{"id":1,"method":"initialize","params":{"clientName":"\\ud83d\\ude00"}}')
        self.assertEqual(([m["id"] for m in transport.messages()], transport.aborted),
                         ([1], False))

    def test_unknown_method(self):
        handshake(self.connection, self.transport)
        send(self.connection, {"id": "a", "method": "no/such"})
        self.assertEqual(self.transport.take(), [{
            "error": {"code": -32601, "message": "exec-server stub does not implement `no/such` yet"},
            "id": "a",
        }])

    def test_string_and_integer_ids_are_echoed(self):
        handshake(self.connection, self.transport)
        for id in ("x", 9223372036854775807, -9223372036854775808, 0):
            send(self.connection, {"id": id, "method": "environment/status"})
            self.assertEqual(self.transport.take(), [{"id": id, "result": {"status": "ready"}}])

    def test_wire_key_order(self):
        handshake(self.connection, self.transport)
        send(self.connection, {"id": 1, "method": "environment/status"})
        send(self.connection, {"id": 2, "method": "no/such"})
        self.assertEqual(self.transport.sent, [
            b'{"id":1,"result":{"status":"ready"}}',
            b'{"error":{"code":-32601,"message":"exec-server stub does not implement `no/such` yet"},"id":2}',
        ])

    def test_unknown_notification_drops_the_connection(self):
        handshake(self.connection, self.transport)
        send(self.connection, {"method": "bogus"})
        self.assertTrue(self.transport.aborted)
        self.assertEqual(self.transport.sent, [])

    def test_unsolicited_response_drops_the_connection(self):
        handshake(self.connection, self.transport)
        send(self.connection, {"id": 7, "result": {}})
        self.assertTrue(self.transport.aborted)


class LargeMalformedMessageTests(ConnectionTestCase):
    """
    Naming the first problem of a large malformed message takes a while;
    other connections are served meanwhile, and its own waits for it.
    """

    #: Valid up to the limit of values, so diagnosing it walks them all.
    MESSAGE = b"[" + b"1," * 262144 + b"x]"

    async def test_other_connections_are_served_while_it_is_diagnosed(self):
        other, other_transport = attach(self.server)
        self.connection.messageReceived(self.MESSAGE)
        send(other, {"id": 1, "method": "environment/status"})
        self.assertEqual(other_transport.take(), [{"id": 1, "error": {
            "code": -32600,
            "message": "client must call initialize before using environment status methods",
        }}])
        self.assertEqual(self.transport.sent, [])
        reply = await self.transport.reply(-1)
        self.assertEqual(reply["error"]["message"],
                         "failed to parse JSON-RPC message from test: JSON-RPC message exceeds "
                         "the limit of 262144 JSON values at line 1 column 524287")

    async def test_its_connection_answers_in_order(self):
        self.connection.messageReceived(self.MESSAGE)
        send(self.connection, {"id": 2, "method": "environment/status"})
        self.assertEqual(self.transport.sent, [])
        await self.transport.reply(2)
        self.assertEqual([m["id"] for m in self.transport.messages()], [-1, 2])


class BacklogTests(ConnectionTestCase):
    """
    What a peer sends faster than it is served, or while it does not read
    the answers, is bounded: we stop reading from it.
    """

    def long_poll(self, id: int) -> None:
        send(self.connection, {"id": 2, "method": "process/start", "params": START_SLEEP})
        send(self.connection, {"id": id, "method": "process/read", "params": {
            "processId": "sleeper", "afterSeq": 0, "waitMs": 60_000}})

    def test_requests_queued_behind_a_long_poll_stop_the_reading(self):
        handshake(self.connection, self.transport)
        self.long_poll(3)
        # The long poll is in flight; this many more may wait.
        for n in range(MAX_BACKLOG_MESSAGES - 1):
            send(self.connection, {"id": 100 + n, "method": "environment/status"})
        self.assertTrue(self.transport.reading)
        send(self.connection, {"id": 99, "method": "environment/status"})
        self.assertFalse(self.transport.reading)
        self.clock.advance(60)
        self.assertTrue(self.transport.reading)
        self.assertEqual(len(self.transport.take()), 2 + MAX_BACKLOG_MESSAGES)

    def test_queued_bytes_stop_the_reading(self):
        handshake(self.connection, self.transport)
        self.long_poll(3)
        padding = "x" * (1024 * 1024)
        for n in range(3):
            send(self.connection, {"id": 100 + n, "method": "environment/status", "params": padding})
        self.assertTrue(self.transport.reading)
        send(self.connection, {"id": 99, "method": "environment/status", "params": padding})
        self.assertFalse(self.transport.reading)
        self.clock.advance(60)
        self.assertTrue(self.transport.reading)

    def test_a_reply_goes_at_once_when_nothing_else_waits(self):
        """
        The transport holds small messages for the end of the reactor's
        turn; a reply (an error too) is flushed when no other message of
        its peer is waiting, and not before the last of those that are.
        """
        handshake(self.connection, self.transport)
        for message in ({"id": 5, "method": "environment/status"}, {"id": 6, "method": "no/such"}):
            send(self.connection, message)
            self.assertEqual(self.transport.flushes[-1], len(self.transport.sent), message)
        self.connection.messageReceived(b"[1,")
        self.assertEqual(self.transport.flushes[-1], len(self.transport.sent))
        self.long_poll(3)
        flushed = len(self.transport.flushes)
        for n in range(3):
            send(self.connection, {"id": 100 + n, "method": "environment/status"})
        self.clock.advance(60)
        # The long poll's answer and the three queued behind it: one flush,
        # after the last.
        self.assertEqual(self.transport.flushes[flushed:], [len(self.transport.sent)])

    def test_a_peer_that_does_not_read_its_answers_is_not_read(self):
        handshake(self.connection, self.transport)
        self.connection.pauseProducing()
        self.assertFalse(self.transport.reading)
        self.connection.resumeProducing()
        self.assertTrue(self.transport.reading)


class SerialOrderTests(ConnectionTestCase):
    def test_a_long_poll_holds_back_later_requests(self):
        handshake(self.connection, self.transport)
        send(self.connection, {"id": 1, "method": "process/start", "params": START_SLEEP})
        self.assertEqual(self.transport.take()[0]["id"], 1)
        send(self.connection, {"id": 2, "method": "process/read",
                               "params": {"processId": "sleeper", "waitMs": 5000}})
        send(self.connection, {"id": 3, "method": "environment/status"})
        send(self.connection, {"id": 4, "method": "no/such"})
        self.assertEqual(self.transport.take(), [])
        self.clock.advance(5)
        self.assertEqual([m["id"] for m in self.transport.take()], [2, 3, 4])

    def test_a_lost_connection_abandons_the_long_poll_and_detaches(self):
        session_id = handshake(self.connection, self.transport)
        send(self.connection, {"id": 1, "method": "process/start", "params": START_SLEEP})
        send(self.connection, {"id": 2, "method": "process/read",
                               "params": {"processId": "sleeper", "waitMs": 5000}})
        self.transport.take()
        self.connection.connectionLost(None)
        other, other_transport = attach(self.server)
        send(other, {"id": 1, "method": "initialize",
                     "params": {"clientName": "t", "resumeSessionId": session_id}})
        self.assertEqual(other_transport.take()[0]["result"]["sessionId"], session_id)
        self.clock.advance(5)
        self.assertEqual(self.transport.sent, [])


class IterationClock(task.Clock):
    """
    A clock whose L{iterate} runs what is due as one reactor iteration
    does: what those calls schedule for now waits for the next one.
    """

    def iterate(self) -> None:
        due = [call for call in self.calls if call.getTime() <= self.seconds()]
        for call in due:
            self.calls.remove(call)
            call.called = 1
            call.func(*call.args, **call.kw)


class FairnessTests(ConnectionTestCase):
    """
    Connections take turns on the reactor thread: one with many messages
    queued does not keep another's waiting behind them all.
    """

    def setUp(self):
        self.clock = IterationClock()
        self.server = build_exec_server(self, self.clock, self.concurrency)
        self.connection, self.transport = attach(self.server)
        #: (connection, request id) of each costly request, as served.
        self.served = []

        def costly(connection, params):
            self.served.append((connection.id, params))
            # The reactor thread is busy meanwhile: time passes and no
            # timer runs.
            self.clock.rightNow += TURN_SECONDS / 2
            return {}

        self.server.methods = dict(self.server.methods, costly=Method("exec", P.AnyValue(), costly))
        handshake(self.connection, self.transport)
        self.other, self.other_transport = attach(self.server)
        handshake(self.other, self.other_transport)
        # The turn of the handshakes ends.
        self.clock.iterate()

    def test_another_connection_waits_for_one_message_each_turn(self):
        busy, other = self.connection.id, self.other.id
        for n in range(10):
            send(self.connection, {"id": n, "method": "costly", "params": n})
        # The turn is over after two; the rest wait.
        self.assertEqual(self.served, [(busy, 0), (busy, 1)])
        send(self.other, {"id": 1, "method": "costly", "params": 100})
        self.assertEqual(self.other_transport.take(), [])
        self.clock.iterate()
        self.assertEqual(self.served[2:], [(busy, 2), (other, 100)])
        self.assertEqual(self.other_transport.take(), [{"id": 1, "result": {}}])
        self.clock.iterate()
        self.assertEqual(self.served[4:], [(busy, 3), (busy, 4)])
        self.clock.advance(0)
        self.assertEqual([id for _, id in self.served], [0, 1, 2, 100, *range(3, 10)])
        self.assertEqual([m["id"] for m in self.transport.take()], list(range(10)))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_queued_messages_served_in_later_turns_let_the_reading_resume(self):
        # Two are served in the first turn.
        for n in range(MAX_BACKLOG_MESSAGES + 3):
            send(self.connection, {"id": n, "method": "costly", "params": n})
        self.assertFalse(self.transport.reading)
        self.clock.advance(0)
        self.assertTrue(self.transport.reading)
        self.assertEqual(len(self.transport.take()), MAX_BACKLOG_MESSAGES + 3)

    def test_closed_connections_leave_no_turn_behind(self):
        for n in range(5):
            send(self.connection, {"id": n, "method": "costly", "params": n})
        send(self.other, {"id": 1, "method": "costly", "params": 100})
        self.connection.connectionLost(None)
        self.assertNotEqual(self.due_now(), [])
        self.other.connectionLost(None)
        self.assertEqual(self.due_now(), [])
        self.assertEqual(len(self.served), 2)

    def due_now(self) -> list:
        # The detached sessions' expiry is not; a turn is.
        return [call for call in self.clock.getDelayedCalls()
                if call.getTime() <= self.clock.seconds()]


class ConcurrentLaneTests(ConnectionTestCase):
    concurrency = 4

    def test_control_requests_are_answered_during_a_long_poll(self):
        handshake(self.connection, self.transport)
        send(self.connection, {"id": 1, "method": "process/start", "params": START_SLEEP})
        self.transport.take()
        send(self.connection, {"id": 2, "method": "process/read",
                               "params": {"processId": "sleeper", "waitMs": 5000}})
        send(self.connection, {"id": 3, "method": "environment/status"})
        send(self.connection, {"id": 4, "method": "process/terminate",
                               "params": {"processId": "sleeper"}})
        self.assertEqual(self.transport.take(), [
            {"id": 3, "result": {"status": "ready"}},
            {"id": 4, "result": {"running": True}},
        ])

    def test_requests_before_initialized_still_run_in_order(self):
        send(self.connection, {"id": 1, "method": "environment/info"})
        send(self.connection, {"id": 2, "method": "initialize", "params": {"clientName": "t"}})
        send(self.connection, {"id": 3, "method": "environment/info"})
        self.assertEqual([m["id"] for m in self.transport.take()], [1, 2, 3])


class BugTests(ConnectionTestCase):
    def test_a_failing_handler_costs_only_its_request(self):
        def broken(connection, params):
            raise ZeroDivisionError()

        self.server.methods = dict(self.server.methods, broken=Method("exec", P.AnyValue(), broken))
        handshake(self.connection, self.transport)
        send(self.connection, {"id": 1, "method": "broken"})
        send(self.connection, {"id": 2, "method": "environment/status"})
        self.assertEqual(self.transport.take(), [
            {"error": {"code": -32603, "message": "internal error"}, "id": 1},
            {"id": 2, "result": {"status": "ready"}},
        ])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
