"""
The rendezvous on a real port: the registry API (bearer tokens, the
bodies codex sends, the answers it expects), socket admission by ticket
(HTTP 401 otherwise), and frames routed between a real executor socket
and real harness sockets.
"""

from __future__ import annotations

import json
from io import BytesIO

from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers
from twisted.web.test.requesthelper import DummyRequest
from zope.interface import implementer

from execserver.noise.keys import NoiseIdentity
from execserver.relay import frames
from execserver.relay import socket as relay_socket
from execserver.relay.socket import IRelaySocketOwner, RelayConnectError
from execserver.rendezvous.registry import SECURITY_PROFILE
from execserver.rendezvous.site import Rendezvous, access_log_line, site
from execserver.rendezvous.store import BearerTokens
from tests import support

TOKEN = "rendezvous-test-token"
EXECUTOR_KEY = NoiseIdentity.generate().public_key
HARNESS_KEY = NoiseIdentity.generate().public_key


@implementer(IRelaySocketOwner)
class WaitingOwner:
    def __init__(self) -> None:
        self.socket = None
        self.frames: list[bytes] = []
        self._waiters: list[Deferred] = []
        self.gone: Deferred = Deferred()

    def socketOpened(self, socket) -> None:
        self.socket = socket

    def frameReceived(self, frame, raw: bytes) -> None:
        self.frames.append(raw)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def invalidMessage(self, description: str) -> None:
        pass

    def sendingPaused(self) -> None:
        pass

    def sendingResumed(self) -> None:
        pass

    def socketLost(self, reason) -> None:
        self.gone.callback(reason.value)

    async def received(self, count: int) -> list[bytes]:
        while len(self.frames) < count:
            waiter = Deferred()
            self._waiters.append(waiter)
            await support.with_timeout(waiter)
        return self.frames


class RendezvousSiteTests(unittest.TestCase):
    def setUp(self):
        self.rendezvous = Rendezvous(reactor, BearerTokens({"env-1": TOKEN}))
        self.port = reactor.listenTCP(0, site(self.rendezvous), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"
        self.agent = Agent(reactor)

    async def post(self, environment_id: str, action: str, body, token: str | None = TOKEN):
        headers = Headers({b"content-type": [b"application/json"]})
        if token is not None:
            headers.addRawHeader(b"authorization", b"Bearer " + token.encode())
        response = await support.with_timeout(self.agent.request(
            b"POST", f"{self.base}/cloud/environment/{environment_id}/{action}".encode(),
            headers, FileBodyProducer(BytesIO(json.dumps(body).encode()))))
        data = await support.with_timeout(readBody(response))
        return response.code, json.loads(data)

    async def open_socket(self, url: str) -> WaitingOwner:
        owner = WaitingOwner()
        socket = await support.with_timeout(relay_socket.connect(reactor, url, owner))

        async def close():
            socket.close()
            await support.with_timeout(owner.gone)

        self.addCleanup(lambda: ensureDeferred(close()) if not owner.gone.called else None)
        return owner

    async def register(self):
        status, answer = await self.post("env-1", "register", {
            "security_profile": SECURITY_PROFILE,
            "executor_public_key": EXECUTOR_KEY.to_json_object(),
        })
        self.assertEqual(status, 200)
        return answer

    async def executor_online(self):
        answer = await self.register()
        owner = await self.open_socket(answer["url"])
        await support.with_timeout(self.rendezvous.router.when_executor("env-1"))
        return answer, owner

    async def connect(self):
        return await self.post("env-1", "connect", {"harness_public_key": HARNESS_KEY.to_json_object()})

    # The registry API

    async def test_calls_without_the_environments_token_are_refused(self):
        for token, environment in ((None, "env-1"), ("wrong", "env-1"), (TOKEN, "env-2")):
            status, answer = await self.post(environment, "register", {}, token)
            self.assertEqual((status, answer["error"]["code"]), (401, "unauthorized"))

    async def test_register_checks_the_profile_and_the_key(self):
        key = EXECUTOR_KEY.to_json_object()
        for body in ({"security_profile": "plain", "executor_public_key": key},
                     {"security_profile": SECURITY_PROFILE, "executor_public_key": {**key, "extra": 1}},
                     [1, 2]):
            status, answer = await self.post("env-1", "register", body)
            self.assertEqual((status, answer["error"]["code"]), (400, "invalid_request"))

    async def test_register_answers_what_codex_expects(self):
        answer = await self.register()
        self.assertEqual(sorted(answer), ["environment_id", "executor_registration_id",
                                          "security_profile", "url"])
        self.assertEqual((answer["environment_id"], answer["security_profile"]),
                         ("env-1", SECURITY_PROFILE))
        self.assertTrue(answer["url"].startswith(
            f"ws://127.0.0.1:{self.port.getHost().port}/ws/environment/env-1?role=environment&ticket="))

    async def test_connect_needs_a_connected_executor(self):
        await self.register()
        status, answer = await self.connect()
        self.assertEqual((status, answer["error"]["code"]), (503, "environment_unavailable"))

    async def test_connect_answers_a_bundle_for_the_current_registration(self):
        registration, _ = await self.executor_online()
        status, bundle = await self.connect()
        self.assertEqual(status, 200)
        self.assertEqual(list(bundle), ["environment_id", "url", "security_profile",
                                        "executor_registration_id", "executor_public_key",
                                        "harness_key_authorization"])
        self.assertEqual(bundle["executor_public_key"], EXECUTOR_KEY.to_json_object())
        self.assertEqual(bundle["executor_registration_id"], registration["executor_registration_id"])
        self.assertIn("?role=harness&ticket=", bundle["url"])

    async def test_validate_accepts_an_authorization_once_its_socket_is_open(self):
        registration, _ = await self.executor_online()
        _, bundle = await self.connect()
        request = {"executor_registration_id": registration["executor_registration_id"],
                   "harness_public_key": HARNESS_KEY.to_json_object(),
                   "harness_key_authorization": bundle["harness_key_authorization"]}
        await self.open_socket(bundle["url"])
        self.assertEqual(await self.post("env-1", "validate", request), (200, {"valid": True}))
        self.assertEqual(await self.post("env-1", "validate", request), (200, {"valid": False}))

    # Socket admission

    async def test_sockets_need_a_valid_ticket(self):
        answer = await self.register()
        url = answer["url"]
        for bad in (url.replace("ticket=", "ticket=x"), url.replace("role=environment", "role=harness")):
            with self.assertRaises(RelayConnectError) as caught:
                await relay_socket.connect(reactor, bad, WaitingOwner())
            self.assertEqual(caught.exception.status, 401)
        with self.assertRaises(RelayConnectError) as caught:
            await relay_socket.connect(reactor, url.replace("role=environment", "role=spy"), WaitingOwner())
        self.assertEqual(caught.exception.status, 400)

    async def test_registering_again_refuses_the_old_executor_url(self):
        old = await self.register()
        await self.register()
        with self.assertRaises(RelayConnectError) as caught:
            await relay_socket.connect(reactor, old["url"], WaitingOwner())
        self.assertEqual(caught.exception.status, 401)

    async def test_a_harness_url_opens_one_socket(self):
        await self.executor_online()
        _, bundle = await self.connect()
        await self.open_socket(bundle["url"])
        with self.assertRaises(RelayConnectError) as caught:
            await relay_socket.connect(reactor, bundle["url"], WaitingOwner())
        self.assertEqual(caught.exception.status, 401)

    # Routing

    async def test_frames_travel_between_the_executor_and_a_harness(self):
        _, executor = await self.executor_online()
        _, bundle = await self.connect()
        harness = await self.open_socket(bundle["url"])
        up = frames.encode_handshake("s1", b"message 1")
        harness.socket.writeFrame(up)
        self.assertEqual(await executor.received(1), [up])
        down = frames.encode_handshake("s1", b"message 2")
        executor.socket.writeFrame(down)
        self.assertEqual(await harness.received(1), [down])

    async def test_a_harness_that_goes_is_reset_at_the_executor(self):
        _, executor = await self.executor_online()
        _, bundle = await self.connect()
        harness = await self.open_socket(bundle["url"])
        harness.socket.writeFrame(frames.encode_resume("s1"))
        await executor.received(1)
        harness.socket.close()
        received = await executor.received(2)
        self.assertEqual(received[1], frames.encode_reset("s1"))

    async def test_readiness_and_unknown_paths(self):
        response = await self.agent.request(b"GET", f"{self.base}/readyz".encode())
        await readBody(response)
        missing = await self.agent.request(b"GET", f"{self.base}/nothing".encode())
        await readBody(missing)
        self.assertEqual((response.code, missing.code), (200, 404))


    async def test_no_log_event_shows_a_ticket_a_token_or_an_authorization(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        registration, _ = await self.executor_online()
        _, bundle = await self.connect()
        await self.open_socket(bundle["url"])
        with self.assertRaises(RelayConnectError):
            await relay_socket.connect(reactor, bundle["url"], WaitingOwner())
        await self.post("env-1", "validate", {
            "executor_registration_id": registration["executor_registration_id"],
            "harness_public_key": HARNESS_KEY.to_json_object(),
            "harness_key_authorization": bundle["harness_key_authorization"]})
        text = "\n".join(formatEvent(event) or "" for event in events)
        self.assertIn('"POST /cloud/environment/env-1/validate HTTP/1.1" 200', text)
        for secret in (TOKEN, registration["url"].split("ticket=")[1],
                       bundle["url"].split("ticket=")[1], bundle["harness_key_authorization"]):
            self.assertNotIn(secret, text)

    def test_the_access_log_drops_the_query(self):
        request = DummyRequest([b"ws", b"environment", b"env-1"])
        request.uri = b"/ws/environment/env-1?role=harness&ticket=secret-ticket"
        request.code, request.sentLength = 101, 0
        line = access_log_line("[01/Jan/2026:00:00:00 +0000]", request)
        self.assertIn('"GET /ws/environment/env-1 HTTP/1.0"', line)
        self.assertNotIn("secret", line)
