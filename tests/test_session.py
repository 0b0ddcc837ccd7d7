"""
Sessions outlive their connections: detach, resume, expiry, and output held
for a client that is away.
"""

import base64

from twisted.internet import task
from twisted.trial import unittest

from execserver.process import CATCH_UP_SECONDS, MAX_RETAINED_BYTES
from execserver.session import DETACHED_TTL_SECONDS
from tests.support import attach, build_exec_server, handshake, process_gone, send, start_params


class SessionTestCase(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.server = build_exec_server(self, self.clock)
        self.connection, self.transport = attach(self.server)
        self.session_id = handshake(self.connection, self.transport)

    def resume(self):
        connection, transport = attach(self.server)
        send(connection, {"id": "resume", "method": "initialize",
                          "params": {"clientName": "t", "resumeSessionId": self.session_id}})
        return connection, transport

    def session(self):
        return self.server.registry.sessions[self.session_id]


class ResumeTests(SessionTestCase):
    async def test_a_detached_session_keeps_its_processes(self):
        send(self.connection, {"id": 1, "method": "process/start",
                               "params": start_params("p", ["/bin/sh", "-c", "read x; echo got:$x"], pipeStdin=True)})
        self.connection.connectionLost(None)
        self.clock.advance(DETACHED_TTL_SECONDS - 1)
        connection, transport = self.resume()
        (reply,) = transport.take()
        self.assertEqual(reply["result"]["sessionId"], self.session_id)
        send(connection, {"method": "initialized"})
        send(connection, {"id": 2, "method": "process/write",
                          "params": {"processId": "p", "chunk": base64.b64encode(b"x\n").decode(), "writeId": "w"}})
        await transport.closed_event("p")
        self.assertEqual(transport.output("p"), b"got:x\n")

    def test_an_attached_session_cannot_be_resumed(self):
        connection, transport = self.resume()
        self.assertEqual(transport.take(), [{
            "error": {"code": -32010,
                      "message": f"session {self.session_id} is already attached to another connection"},
            "id": "resume",
        }])

    async def test_expiry_kills_every_process_group(self):
        send(self.connection, {"id": 1, "method": "process/start",
                               "params": start_params("p", ["/bin/sh", "-c", "sleep 100 & echo $!; wait"])})
        await self.transport.wait_for(lambda m: self.transport.output("p").endswith(b"\n"))
        grandchild = int(self.transport.output("p"))
        child = self.session().processes["p"].child
        self.connection.connectionLost(None)
        self.clock.advance(DETACHED_TTL_SECONDS)
        self.assertNotIn(self.session_id, self.server.registry.sessions)
        await child.finished
        await process_gone(grandchild)
        connection, transport = self.resume()
        self.assertEqual(transport.take(), [{
            "error": {"code": -32600, "message": f"unknown session id {self.session_id}"},
            "id": "resume",
        }])

    def test_a_resume_after_the_deadline_loses_even_before_the_timer(self):
        self.connection.connectionLost(None)
        self.clock.rightNow += DETACHED_TTL_SECONDS
        connection, transport = self.resume()
        self.assertEqual(transport.take()[0]["error"]["message"], f"unknown session id {self.session_id}")

    def test_resuming_again_restarts_the_timer(self):
        self.connection.connectionLost(None)
        self.clock.advance(DETACHED_TTL_SECONDS - 1)
        connection, transport = self.resume()
        connection.connectionLost(None)
        self.clock.advance(DETACHED_TTL_SECONDS - 1)
        self.assertIn(self.session_id, self.server.registry.sessions)
        self.clock.advance(1)
        self.assertNotIn(self.session_id, self.server.registry.sessions)


class HeldOutputTests(SessionTestCase):
    """
    While detached, a process's output is held instead of being dropped.
    """

    size = 4 * MAX_RETAINED_BYTES

    async def detached_stream(self):
        send(self.connection, {"id": 1, "method": "process/start",
                               "params": start_params("p", ["head", "-c", str(self.size), "/dev/zero"])})
        self.connection.connectionLost(None)
        process = self.session().processes["p"]
        while not process.log.full:
            await process.changed()
        return process

    def assertCompleteFromStart(self, result) -> bytes:
        seqs = [chunk["seq"] for chunk in result["chunks"]]
        self.assertEqual(seqs, list(range(1, len(seqs) + 1)))
        return b"".join(base64.b64decode(chunk["chunk"]) for chunk in result["chunks"])

    async def test_a_full_window_stops_the_child_instead_of_dropping(self):
        process = await self.detached_stream()
        self.assertFalse(process._reading)
        self.assertFalse(process.log.closed)
        connection, transport = self.resume()
        send(connection, {"method": "initialized"})
        send(connection, {"id": 2, "method": "process/read", "params": {"processId": "p"}})
        caught_up = (await transport.reply(2))["result"]
        self.assertTrue(process._reading)
        await transport.closed_event("p")
        data = self.assertCompleteFromStart(caught_up)
        self.assertEqual(len(data) + len(transport.output("p")), self.size)

    async def test_held_output_is_released_after_the_catch_up_grace(self):
        process = await self.detached_stream()
        connection, transport = self.resume()
        send(connection, {"method": "initialized"})
        self.assertFalse(process._reading)
        self.clock.advance(CATCH_UP_SECONDS)
        self.assertTrue(process._reading)
        await transport.closed_event("p")
