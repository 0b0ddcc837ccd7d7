"""
The harness connector's handshake, against an executor socket the test
scripts frame by frame behind our rendezvous: what it sends first, how it
treats a reset, early data, a bad answer or none, and a completed
handshake whose stream carries messages both ways (the executor end built
from the same layers, with the responder's ciphers).
"""

from __future__ import annotations

import uuid

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.trial import unittest

from execserver.noise.channel import NoiseStream, StreamReset
from execserver.noise.handshake import Responder, prologue
from execserver.noise.keys import NoiseIdentity
from execserver.noise.limits import MESSAGE1_OVERHEAD
from execserver.relay import frames
from execserver.relay import socket as relay_socket
from execserver.relay.frames import FrameKind
from execserver.remote.harness import HANDSHAKE_TIMEOUT_SECONDS, HandshakeError, RelayConnector
from execserver.rendezvous.site import Rendezvous, site
from execserver.rendezvous.store import BearerTokens
from tests import support
from tests.test_noise_channel import Recorder
from tests.test_rendezvous_site import WaitingOwner

TOKEN = "harness-test-token"


class WaitingRecorder(Recorder):
    """Fires C{arrived} at the first message and C{gone} when the stream ends."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived = Deferred()
        self.gone = Deferred()

    def messageReceived(self, data: bytes) -> None:
        super().messageReceived(data)
        if not self.arrived.called:
            self.arrived.callback(None)

    def connectionLost(self, reason) -> None:
        super().connectionLost(reason)
        self.gone.callback(reason.value)
EXECUTOR = NoiseIdentity.generate()


class HarnessHandshakeTests(unittest.TestCase):
    def setUp(self):
        return ensureDeferred(self._set_up())

    async def _set_up(self) -> None:
        self.rendezvous = Rendezvous(reactor, BearerTokens({"env-1": TOKEN}))
        port = reactor.listenTCP(0, site(self.rendezvous), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        base = f"127.0.0.1:{port.getHost().port}"
        self.registration = await self.rendezvous.store.register("env-1", EXECUTOR.public_key)
        self.executor = WaitingOwner()
        socket = await support.with_timeout(relay_socket.connect(
            reactor, f"ws://{base}/ws/environment/env-1?role=environment&ticket={self.registration.ticket}",
            self.executor))
        self.addCleanup(lambda: ensureDeferred(self._close(socket)))
        self.clock = task.Clock()
        self.connector = RelayConnector(reactor, f"http://{base}", "env-1", TOKEN, clock=self.clock)
        self.app = WaitingRecorder()

    async def _close(self, socket) -> None:
        socket.close()
        await support.with_timeout(self.executor.gone)

    async def harness_hello(self):
        """Start connecting; return the connection attempt and the harness's stream id."""
        connecting = self.connector.connect(self.app)
        resume, handshake = [frames.parse_frame(raw) for raw in await self.executor.received(2)]
        return connecting, handshake

    async def failure(self, connecting) -> str:
        with self.assertRaises(HandshakeError) as caught:
            await support.with_timeout(connecting)
        return str(caught.exception)

    async def test_it_sends_resume_then_message_1_on_a_fresh_uuid4_stream(self):
        connecting = self.connector.connect(self.app)
        resume, handshake = [frames.parse_frame(raw) for raw in await self.executor.received(2)]
        self.assertEqual((resume.kind, handshake.kind), (FrameKind.RESUME, FrameKind.HANDSHAKE))
        self.assertEqual(resume.stream_id, handshake.stream_id)
        self.assertEqual(uuid.UUID(handshake.stream_id).version, 4)
        self.assertGreater(len(handshake.payload), MESSAGE1_OVERHEAD)  # plus the authorization
        self.executor.socket.writeFrame(frames.encode_reset(handshake.stream_id))
        await self.failure(connecting)

    async def test_a_reset_fails_the_handshake(self):
        connecting, handshake = await self.harness_hello()
        self.executor.socket.writeFrame(frames.encode_reset(handshake.stream_id))
        self.assertEqual(await self.failure(connecting), "Noise relay stream reset")

    async def test_data_before_the_answer_fails_the_handshake(self):
        connecting, handshake = await self.harness_hello()
        self.executor.socket.writeFrame(frames.encode_data(handshake.stream_id, 0, b"early"))
        self.assertEqual(await self.failure(connecting), "received data before handshake completion")

    async def test_a_forged_answer_fails_the_handshake(self):
        connecting, handshake = await self.harness_hello()
        self.executor.socket.writeFrame(frames.encode_handshake(handshake.stream_id, b"\x00" * 3424))
        self.assertIn("Noise", await self.failure(connecting))

    async def test_no_answer_gives_up_after_10_seconds_and_leaves_the_stream(self):
        connecting, handshake = await self.harness_hello()
        self.clock.advance(HANDSHAKE_TIMEOUT_SECONDS)
        self.assertIn("no Noise handshake answer", await self.failure(connecting))
        received = await self.executor.received(3)
        self.assertEqual(received[2], frames.encode_reset(handshake.stream_id))

    async def test_a_completed_handshake_carries_messages_both_ways(self):
        connecting, handshake = await self.harness_hello()
        sid = handshake.stream_id
        responder = Responder(EXECUTOR, prologue("env-1", self.registration.registration_id, sid))
        request = responder.read_message1(handshake.payload)
        self.assertEqual(request.harness_key, self.connector.identity.public_key)
        self.assertTrue(await self.rendezvous.store.validate(
            "env-1", self.registration.registration_id, request.harness_key, request.authorization))
        message2, ciphers = responder.write_message2()
        self.executor.socket.writeFrame(frames.encode_handshake(sid, message2))
        stream = await support.with_timeout(connecting)
        executor_app = WaitingRecorder()
        NoiseStream(self.executor.socket, sid, ciphers, shares_socket=True,
                    sends_resets=True).start(executor_app)
        self.assertIs(self.app.transport, stream)
        stream.sendMessage(b'{"id":1,"method":"initialize"}')
        executor_app.transport.sendMessage(b'{"id":1,"result":{}}')
        await support.with_timeout(self.app.arrived)
        await support.with_timeout(executor_app.arrived)
        self.assertEqual(self.app.messages, [b'{"id":1,"result":{}}'])
        self.assertEqual(executor_app.messages, [b'{"id":1,"method":"initialize"}'])
        stream.loseConnection()
        self.assertIsInstance(await support.with_timeout(executor_app.gone), StreamReset)

