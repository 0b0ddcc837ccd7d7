"""
Output acknowledgement, our extension: a client that asks for it in
initialize acknowledges what it received, and the server then evicts only
acknowledged output, stopping the child instead while its window is full
of output the client may not have.
"""

import base64

from twisted.internet import task
from twisted.trial import unittest

from execserver.process import (
    CATCH_UP_SECONDS,
    MAX_RETAINED_BYTES,
    MAX_UNACKNOWLEDGED_BYTES,
    MAX_UNACKNOWLEDGED_CHUNKS,
    OutputLog,
)
from tests.support import attach, build_exec_server, send, start_params

OFFER = {"maxUnackedBytes": MAX_UNACKNOWLEDGED_BYTES,
         "maxUnackedChunks": MAX_UNACKNOWLEDGED_CHUNKS}


def initialize(connection, transport, acks: bool = True, resume: str | None = None) -> dict:
    params = {"clientName": "t"}
    if resume is not None:
        params["resumeSessionId"] = resume
    if acks:
        params["outputAcks"] = True
    send(connection, {"id": 0, "method": "initialize", "params": params})
    (reply,) = transport.take()
    send(connection, {"method": "initialized"})
    return reply["result"]


def seqs(result: dict) -> list[int]:
    return [chunk["seq"] for chunk in result["chunks"]]


def output_of(result: dict) -> bytes:
    return b"".join(base64.b64decode(chunk["chunk"]) for chunk in result["chunks"])


class HandshakeTests(unittest.TestCase):
    def setUp(self):
        self.server = build_exec_server(self, task.Clock())
        self.connection, self.transport = attach(self.server)

    def test_a_client_that_asks_is_offered_the_window(self):
        result = initialize(self.connection, self.transport)
        self.assertEqual(result["outputAcks"], OFFER)
        self.assertEqual(set(result), {"sessionId", "environmentInfo", "outputAcks"})

    def test_a_client_that_does_not_ask_gets_the_reference_reply(self):
        result = initialize(self.connection, self.transport, acks=False)
        self.assertEqual(set(result), {"sessionId", "environmentInfo"})

    def test_anything_but_true_is_not_asking(self):
        send(self.connection, {"id": 0, "method": "initialize",
                               "params": {"clientName": "t", "outputAcks": "yes"}})
        (reply,) = self.transport.take()
        self.assertNotIn("outputAcks", reply["result"])

    def test_an_ack_from_a_client_that_did_not_ask_is_unexpected(self):
        # As any unknown notification is, in the reference too.
        initialize(self.connection, self.transport, acks=False)
        send(self.connection, {"method": "process/ack", "params": {"processId": "p", "seq": 1}})
        self.assertTrue(self.transport.aborted)

    def test_a_malformed_ack_ends_the_connection(self):
        initialize(self.connection, self.transport)
        send(self.connection, {"method": "process/ack", "params": {"processId": "p"}})
        self.assertTrue(self.transport.aborted)

    def test_an_ack_for_an_unknown_process_is_ignored(self):
        initialize(self.connection, self.transport)
        send(self.connection, {"method": "process/ack", "params": {"processId": "p", "seq": 1}})
        self.assertFalse(self.transport.aborted)
        self.assertEqual(self.transport.take(), [])

    def test_it_is_not_a_request(self):
        initialize(self.connection, self.transport)
        send(self.connection, {"id": 1, "method": "process/ack",
                               "params": {"processId": "p", "seq": 1}})
        self.assertEqual(self.transport.take(), [{
            "error": {"code": -32601,
                      "message": "exec-server stub does not implement `process/ack` yet"},
            "id": 1,
        }])


class StreamTestCase(unittest.TestCase):
    """
    A process writing four windows of output to a client that asked for
    acknowledgement.
    """

    size = 4 * MAX_UNACKNOWLEDGED_BYTES

    def setUp(self):
        self.clock = task.Clock()
        self.server = build_exec_server(self, self.clock)
        self.connection, self.transport = attach(self.server)
        self.session_id = initialize(self.connection, self.transport)["sessionId"]
        self._ids = 0

    def call(self, method, params):
        self._ids += 1
        send(self.connection, {"id": self._ids, "method": method, "params": params})
        return self.transport.reply(self._ids)

    async def stalled_stream(self):
        await self.call("process/start", start_params("p", ["head", "-c", str(self.size),
                                                           "/dev/zero"]))
        process = self.server.registry.sessions[self.session_id].processes["p"]
        while process._reading:
            await process.changed()
        return process

    def ack(self, seq: int) -> None:
        send(self.connection, {"method": "process/ack", "params": {"processId": "p", "seq": seq}})

    async def read_all(self, after: int = 0) -> dict:
        return (await self.call("process/read", {"processId": "p", "afterSeq": after}))["result"]


class AttachedTests(StreamTestCase):
    async def test_unacknowledged_output_stops_the_child_instead_of_being_dropped(self):
        process = await self.stalled_stream()
        self.assertFalse(process.log.closed)
        self.assertEqual(process.log.chunks_after(0, None)[0][0], 1)
        retained = sum(len(chunk[2]) for chunk in process.log.chunks_after(0, None))
        self.assertGreaterEqual(retained, MAX_UNACKNOWLEDGED_BYTES)
        self.assertEqual(retained, len(self.transport.output("p")))

    async def test_an_ack_lets_the_child_go_on(self):
        process = await self.stalled_stream()
        self.ack(process.log.newest_seq)
        self.assertTrue(process._reading)
        retained = sum(len(chunk[2]) for chunk in process.log.chunks_after(0, None))
        self.assertLessEqual(retained, MAX_RETAINED_BYTES)

    async def test_only_acknowledged_output_leaves_the_window(self):
        process = await self.stalled_stream()
        half = process.log.newest_seq // 2
        self.ack(half)
        while process._reading:
            await process.changed()
        chunks = process.log.chunks_after(0, None)
        self.assertLessEqual(chunks[0][0], half + 1)
        unacknowledged = sum(len(chunk[2]) for chunk in chunks if chunk[0] > half)
        self.assertGreaterEqual(unacknowledged, MAX_UNACKNOWLEDGED_BYTES)
        self.assertLess(sum(len(chunk[2]) for chunk in chunks) - unacknowledged,
                        MAX_RETAINED_BYTES)

    async def test_a_read_acknowledges_what_comes_before_it(self):
        process = await self.stalled_stream()
        result = await self.read_all(after=process.log.newest_seq)
        self.assertEqual(result["chunks"], [])
        self.assertTrue(process._reading)

    async def test_every_byte_arrives_when_the_client_keeps_acknowledging(self):
        await self.call("process/start", start_params("p", ["head", "-c", str(self.size),
                                                           "/dev/zero"]))

        def acknowledged(message):
            # Acknowledge each notification as it is sent, as a client would.
            if message.get("method") == "process/output":
                self.ack(message["params"]["seq"])
            return message.get("method") == "process/closed"

        await self.transport.wait_for(acknowledged)
        self.assertEqual(len(self.transport.output("p")), self.size)

    async def test_acks_never_go_backwards(self):
        process = await self.stalled_stream()
        newest = process.log.newest_seq
        self.ack(newest)
        self.ack(1)
        self.assertEqual(process.log.acknowledged, newest)


class DetachedTests(StreamTestCase):
    def resume(self, acks: bool = True):
        self.connection.connectionLost(None)
        self.connection, self.transport = attach(self.server)
        initialize(self.connection, self.transport, acks=acks, resume=self.session_id)

    async def test_output_in_flight_at_a_drop_is_all_there_after_the_resume(self):
        process = await self.stalled_stream()
        sent = self.transport.output("p")
        self.resume()
        self.clock.advance(CATCH_UP_SECONDS)
        self.assertFalse(process._reading, "no release after the catch-up grace")
        result = await self.read_all()
        self.assertEqual(seqs(result)[0], 1)
        self.assertEqual(output_of(result), sent)

    async def test_the_client_picks_up_where_it_acknowledged(self):
        process = await self.stalled_stream()
        self.ack(3)
        self.resume()
        result = await self.read_all(after=3)
        self.assertEqual(seqs(result)[0], 4)
        self.assertEqual(process.log.acknowledged, 3)

    async def test_a_resume_without_acks_returns_to_the_replay_window(self):
        process = await self.stalled_stream()
        self.resume(acks=False)
        self.clock.advance(CATCH_UP_SECONDS)
        self.assertTrue(process._reading)
        await self.transport.closed_event("p")
        result = await self.read_all()
        self.assertLessEqual(len(output_of(result)), MAX_RETAINED_BYTES)
        self.assertGreater(seqs(result)[0], 1)


class OutputLogTests(unittest.SynchronousTestCase):
    def log(self) -> OutputLog:
        log = OutputLog()
        log.acknowledging = True
        return log

    def test_unacknowledged_output_is_never_evicted(self):
        log = self.log()
        for _ in range(MAX_UNACKNOWLEDGED_BYTES // 65536):
            log.record_output("stdout", b"x" * 65536)
        self.assertEqual(log.chunks_after(0, None)[0][0], 1)
        self.assertTrue(log.stalled)

    def test_acknowledged_output_is_evicted_down_to_the_window(self):
        log = self.log()
        for _ in range(40):
            log.record_output("stdout", b"x" * 65536)
        log.acknowledge(30)
        retained = log.chunks_after(0, None)
        self.assertEqual(sum(len(c[2]) for c in retained), MAX_RETAINED_BYTES)
        self.assertEqual(retained[-1][0], 40)
        self.assertFalse(log.stalled)

    def test_the_window_in_chunks_counts_only_unacknowledged_ones(self):
        log = self.log()
        for _ in range(MAX_UNACKNOWLEDGED_CHUNKS):
            log.record_output("stdout", b"x")
        self.assertTrue(log.stalled)
        log.acknowledge(1)
        self.assertFalse(log.stalled)

    def test_an_ack_beyond_the_newest_event_counts_as_the_newest(self):
        log = self.log()
        log.record_output("stdout", b"x")
        log.acknowledge(99)
        self.assertEqual(log.acknowledged, 1)

    def test_compaction_keeps_the_counts(self):
        log = self.log()
        for n in range(1, 5001):
            log.record_output("stdout", b"x" * 1024)
            log.acknowledge(n - 5)
        self.assertEqual(log.chunks_after(0, None)[-1][0], 5000)
        self.assertFalse(log.stalled)
        for _ in range(MAX_UNACKNOWLEDGED_BYTES // 1024):
            log.record_output("stdout", b"x" * 1024)
        self.assertTrue(log.stalled)
        self.assertGreater(len(log.chunks_after(0, None)), MAX_UNACKNOWLEDGED_BYTES // 1024)

    def test_without_acknowledgement_the_window_evicts_as_before(self):
        log = OutputLog()
        for _ in range(40):
            log.record_output("stdout", b"x" * 65536)
        self.assertFalse(log.stalled)
        self.assertGreater(log.chunks_after(0, None)[0][0], 1)

