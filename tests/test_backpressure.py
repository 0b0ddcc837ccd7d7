"""
A slow client slows the child down: output is never queued without bound
and never dropped from under a connected client.
"""

import base64

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial import unittest

from execserver.transports import websocket
from tests import support

SIZE = 64 * 1024 * 1024


class BackPressureTests(unittest.TestCase):
    timeout = 120

    async def setUp(self):
        self.server = support.build_exec_server(self)
        port = reactor.listenTCP(0, websocket.site(self.server.buildConnection), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.queue = await support.connect(f"ws://127.0.0.1:{port.getHost().port}")
        self.addCleanup(self.queue.close)
        self.queue.send({"id": 1, "method": "initialize", "params": {"clientName": "t"}})
        session_id = (await self.queue.response(1))["result"]["sessionId"]
        self.queue.send({"method": "initialized"})
        self.session = self.server.registry.sessions[session_id]

    def test_the_connection_is_the_sockets_producer(self):
        message_transport = self.session.connection.transport
        self.assertIs(message_transport.protocol.transport.producer, self.session.connection)

    async def test_a_client_that_stops_reading_pauses_the_child(self):
        paused = Deferred()
        pause = self.session.pauseProducing

        def observed_pause():
            pause()
            if not paused.called:
                paused.callback(None)

        self.session.pauseProducing = observed_pause
        client_socket = self.queue.transport.protocol.transport
        client_socket.pauseProducing()
        self.queue.send({"id": 2, "method": "process/start", "params": support.start_params(
            "p", ["head", "-c", str(SIZE), "/dev/zero"])})
        await support.with_timeout(paused)
        process = self.session.processes["p"]
        self.assertFalse(process._reading)
        self.assertFalse(process.log.closed)
        client_socket.resumeProducing()
        await self.queue.notification(lambda m: m["method"] == "process/closed")
        received = sum(len(base64.b64decode(m["params"]["chunk"])) for m in self.queue.messages
                       if m.get("method") == "process/output")
        self.assertEqual(received, SIZE)
