"""
The registry client's C{connect}, C{register} and C{validate}, against a
raw HTTP server that records the exact request bytes and answers what the
test says: the requests codex sends, the answer checks, codex's error
texts, no redirects, the 10 s deadline, proxies from the environment, and
secrets kept out of reprs and errors.
"""

from __future__ import annotations

import json

from twisted.internet import protocol, reactor, task
from twisted.internet.defer import Deferred
from twisted.trial import unittest

from execserver.noise.keys import NoiseIdentity
from execserver.remote.registry import (
    ERROR_PREVIEW_CHARS,
    REQUEST_TIMEOUT_SECONDS,
    SECURITY_PROFILE,
    RegistryAuthenticationFailed,
    RegistryClient,
    RegistryError,
)
from tests import support

TOKEN = "registry-test-token"
HARNESS_KEY = NoiseIdentity.generate().public_key
EXECUTOR_KEY = NoiseIdentity.generate().public_key

BUNDLE = {
    "environment_id": "env-1",
    "url": "wss://rendezvous.test/ws/environment/env-1?role=harness&sig=secret-signature",
    "security_profile": SECURITY_PROFILE,
    "executor_registration_id": "reg-1",
    "executor_public_key": EXECUTOR_KEY.to_json_object(),
    "harness_key_authorization": "secret-authorization",
}


def http_response(status: int, body: bytes | dict, headers: str = "") -> bytes:
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    return (f"HTTP/1.1 {status} Whatever\r\ncontent-length: {len(body)}\r\n{headers}"
            f"connection: close\r\n\r\n").encode() + body


class _Recorder(protocol.Protocol):
    def connectionMade(self) -> None:
        self.factory.connections += 1
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if support.complete_http_message(self.buffer) is None:
            return
        self.factory.requests.append(self.buffer)
        self.factory.request_seen.callback(None)
        self.factory.request_seen = Deferred()
        if self.factory.answer is not None:
            self.transport.write(self.factory.answer)
            self.transport.loseConnection()

    def connectionLost(self, reason) -> None:
        self.factory.closed.callback(None)
        self.factory.closed = Deferred()


class RawHttpServer(protocol.Factory):
    protocol = _Recorder

    def __init__(self, answer: bytes | None) -> None:
        self.answer = answer
        self.requests: list[bytes] = []
        self.request_seen = Deferred()
        self.connections = 0
        self.closed = Deferred()


class ServingTestCase(unittest.TestCase):
    def serve(self, answer: bytes | None) -> tuple[RawHttpServer, str]:
        server = RawHttpServer(answer)
        port = reactor.listenTCP(0, server, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return server, f"http://127.0.0.1:{port.getHost().port}"


class RegistryClientTests(ServingTestCase):
    async def connect(self, answer: bytes, base_suffix: str = "", **kwargs):
        server, base = self.serve(answer)
        client = RegistryClient(reactor, base + base_suffix, TOKEN, environ={}, **kwargs)
        bundle = await support.with_timeout(client.connect(" env-1 ", HARNESS_KEY))
        return server, bundle

    async def error(self, answer: bytes) -> RegistryError:
        with self.assertRaises(RegistryError) as caught:
            await self.connect(answer)
        self.assertNotIn(TOKEN, str(caught.exception))
        return caught.exception

    async def test_connect_posts_the_harness_key_as_codex_does(self):
        server, _ = await self.connect(http_response(200, BUNDLE), "/ ")
        (request,) = server.requests
        head, _, body = request.partition(b"\r\n\r\n")
        self.assertEqual(head.split(b"\r\n"), [
            b"POST /cloud/environment/env-1/connect HTTP/1.1",
            b"content-type: application/json",
            b"authorization: Bearer " + TOKEN.encode(),
            b"connection: close",
            b"accept: */*",
            b"host: " + server_host(request),
            b"content-length: %d" % len(body),
        ])
        self.assertEqual(body, json.dumps({"harness_public_key": HARNESS_KEY.to_json_object()},
                                          separators=(",", ":")).encode())

    async def test_a_base_url_with_a_path_keeps_it(self):
        server, _ = await self.connect(http_response(200, BUNDLE), "/api/")
        self.assertTrue(server.requests[0].startswith(b"POST /api/cloud/environment/env-1/connect "))

    async def test_an_account_id_is_sent_when_given(self):
        server, _ = await self.connect(http_response(200, BUNDLE), account_id="acct-7")
        self.assertIn(b"\r\nchatgpt-account-id: acct-7\r\n", server.requests[0])

    async def test_the_bundle_comes_from_the_answer(self):
        _, bundle = await self.connect(http_response(200, BUNDLE))
        self.assertEqual(
            (bundle.websocket_url, bundle.environment_id, bundle.executor_registration_id,
             bundle.executor_public_key, bundle.harness_key_authorization),
            (BUNDLE["url"], "env-1", "reg-1", EXECUTOR_KEY, "secret-authorization"))

    async def test_the_bundle_repr_hides_the_signature_and_the_authorization(self):
        _, bundle = await self.connect(http_response(200, BUNDLE))
        text = repr(bundle)
        self.assertIn("wss://rendezvous.test/ws/environment/env-1", text)
        self.assertNotIn("secret", text)

    async def test_a_bundle_that_fails_the_checks_is_refused(self):
        cases = [
            ({"environment_id": "env-2"}, "answered for another environment"),
            ({"security_profile": "plaintext"}, "unsupported security profile"),
            ({"url": " "}, "connect answer has no url"),
            ({"executor_registration_id": ""}, "has no executor_registration_id"),
            ({"harness_key_authorization": None}, "has no harness_key_authorization"),
            ({"executor_public_key": {**EXECUTOR_KEY.to_json_object(), "suite": "other"}},
             "invalid executor key: unsupported public key suite"),
        ]
        for change, text in cases:
            error = await self.error(http_response(200, {**BUNDLE, **change}))
            self.assertIn(text, str(error))

    async def test_a_refused_token_reads_authentication_failed(self):
        for status in (401, 403):
            error = await self.error(http_response(
                status, {"error": {"code": "unauthorized", "message": "bad token"}}))
            self.assertIsInstance(error, RegistryAuthenticationFailed)
            self.assertEqual((str(error), error.status, error.code),
                             (f"authentication failed ({status}): bad token", status, "unauthorized"))

    async def test_other_errors_carry_the_status_code_and_message(self):
        error = await self.error(http_response(
            503, {"error": {"code": "environment_unavailable", "message": "no executor"}}))
        self.assertEqual(str(error),
                         "environment registry connect failed (503, environment_unavailable): no executor")

    async def test_an_error_body_without_an_error_object_is_previewed(self):
        error = await self.error(http_response(502, b"  " + b"x" * 5000 + b"  "))
        self.assertEqual(str(error),
                         "environment registry connect failed (502): " + "x" * ERROR_PREVIEW_CHARS)

    async def test_redirects_are_not_followed(self):
        server, base = self.serve(http_response(302, b"", "location: /elsewhere\r\n"))
        client = RegistryClient(reactor, base, TOKEN, environ={})
        with self.assertRaises(RegistryError) as caught:
            await support.with_timeout(client.connect("env-1", HARNESS_KEY))
        self.assertEqual((caught.exception.status, server.connections), (302, 1))

    async def test_an_answer_that_is_not_json_is_refused(self):
        error = await self.error(http_response(200, b"<html>"))
        self.assertEqual(str(error), "the environment registry's connect answer is not JSON")

    async def test_a_registry_that_stalls_is_given_up_after_10_seconds(self):
        server, base = self.serve(None)
        clock = task.Clock()
        client = RegistryClient(reactor, base, TOKEN, environ={}, clock=clock)
        calling = client.connect("env-1", HARNESS_KEY)
        await support.with_timeout(server.request_seen)
        clock.advance(REQUEST_TIMEOUT_SECONDS)
        with self.assertRaises(RegistryError) as caught:
            await calling
        self.assertIn("did not answer connect within 10 s", str(caught.exception))
        await support.with_timeout(server.closed)

    async def test_an_unreachable_registry(self):
        port = reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1")
        address = port.getHost()
        await port.stopListening()
        client = RegistryClient(reactor, f"http://127.0.0.1:{address.port}", TOKEN, environ={})
        with self.assertRaises(RegistryError) as caught:
            await support.with_timeout(client.connect("env-1", HARNESS_KEY))
        self.assertIn("could not reach the environment registry", str(caught.exception))

    async def test_the_proxy_from_the_environment_is_used(self):
        proxy, proxy_url = self.serve(http_response(200, BUNDLE))
        client = RegistryClient(reactor, "http://registry.invalid/", TOKEN,
                                environ={"HTTP_PROXY": proxy_url})
        await support.with_timeout(client.connect("env-1", HARNESS_KEY))
        self.assertTrue(proxy.requests[0].startswith(
            b"POST http://registry.invalid/cloud/environment/env-1/connect HTTP/1.1\r\n"))

    async def test_no_proxy_exempts_the_registry(self):
        server, base = self.serve(http_response(200, BUNDLE))
        proxy, proxy_url = self.serve(None)
        client = RegistryClient(reactor, base, TOKEN,
                                environ={"HTTP_PROXY": proxy_url, "NO_PROXY": "127.0.0.1"})
        await support.with_timeout(client.connect("env-1", HARNESS_KEY))
        self.assertEqual((len(server.requests), proxy.requests), (1, []))

    def test_bad_configuration_is_refused_at_once(self):
        for base, token in (("ftp://registry.test", TOKEN), ("not a url", TOKEN),
                            ("http://registry.test", " ")):
            with self.assertRaises(ValueError):
                RegistryClient(reactor, base, token, environ={})
        self.assertNotIn(TOKEN, repr(RegistryClient(reactor, "http://r.test", TOKEN, environ={})))


REGISTRATION = {
    "environment_id": "env-1",
    "url": "ws://rendezvous.test/ws/environment/env-1?role=environment&sig=secret-signature",
    "security_profile": SECURITY_PROFILE,
    "executor_registration_id": "reg-1",
}


class ExecutorCallsTests(ServingTestCase):
    """The executor's calls: register, then validate for each handshake."""

    async def call(self, answer: bytes, method: str, *args):
        server, base = self.serve(answer)
        client = RegistryClient(reactor, base, TOKEN, environ={})
        result = await support.with_timeout(getattr(client, method)(*args))
        return server, result

    async def register(self, answer: bytes):
        return await self.call(answer, "register", " env-1 ", EXECUTOR_KEY)

    async def validate(self, answer: bytes):
        return await self.call(answer, "validate", "env-1", "reg-1", HARNESS_KEY,
                               "secret-authorization", "stream-7")

    async def test_register_posts_the_executor_key_as_codex_does(self):
        server, _ = await self.register(http_response(200, REGISTRATION))
        head, _, body = server.requests[0].partition(b"\r\n\r\n")
        self.assertEqual(head.split(b"\r\n")[:3], [
            b"POST /cloud/environment/env-1/register HTTP/1.1",
            b"content-type: application/json",
            b"authorization: Bearer " + TOKEN.encode(),
        ])
        self.assertEqual(body, json.dumps({
            "security_profile": SECURITY_PROFILE,
            "executor_public_key": EXECUTOR_KEY.to_json_object(),
        }, separators=(",", ":")).encode())

    async def test_the_registration_comes_from_the_answer(self):
        _, registration = await self.register(http_response(200, REGISTRATION))
        self.assertEqual(
            (registration.websocket_url, registration.environment_id,
             registration.executor_registration_id),
            (REGISTRATION["url"], "env-1", "reg-1"))
        self.assertNotIn("secret", repr(registration))

    async def test_a_registration_that_fails_the_checks_is_refused(self):
        cases = [
            ({"environment_id": "env-2"}, "answered for another environment"),
            ({"security_profile": "plaintext"}, "unsupported security profile"),
            ({"url": ""}, "register answer has no url"),
            ({"executor_registration_id": 7}, "register answer has no executor_registration_id"),
        ]
        for change, text in cases:
            with self.assertRaises(RegistryError) as caught:
                await self.register(http_response(200, {**REGISTRATION, **change}))
            self.assertIn(text, str(caught.exception))

    async def test_a_refused_registration_says_why(self):
        with self.assertRaises(RegistryAuthenticationFailed) as caught:
            await self.register(http_response(
                401, {"error": {"code": "unauthorized", "message": "bad token"}}))
        self.assertEqual(str(caught.exception), "authentication failed (401): bad token")

    async def test_validate_posts_the_harness_key_and_authorization_as_codex_does(self):
        server, valid = await self.validate(http_response(200, {"valid": True}))
        head, _, body = server.requests[0].partition(b"\r\n\r\n")
        self.assertEqual(head.split(b"\r\n")[:4], [
            b"POST /cloud/environment/env-1/validate HTTP/1.1",
            b"content-type: application/json",
            b"authorization: Bearer " + TOKEN.encode(),
            b"x-codex-noise-stream-id: stream-7",
        ])
        self.assertEqual(body, json.dumps({
            "executor_registration_id": "reg-1",
            "harness_public_key": HARNESS_KEY.to_json_object(),
            "harness_key_authorization": "secret-authorization",
        }, separators=(",", ":")).encode())
        self.assertIs(valid, True)

    async def test_only_an_explicit_valid_true_validates(self):
        for answer in ({"valid": False}, {"valid": "true"}, {"valid": 1}, {}, ["valid"]):
            _, valid = await self.validate(http_response(200, json.dumps(answer).encode()))
            self.assertIs(valid, False, answer)

    async def test_a_failed_validation_does_not_quote_the_answer(self):
        with self.assertRaises(RegistryError) as caught:
            await self.validate(http_response(
                500, {"error": {"code": "boom", "message": "secret-authorization"}}))
        self.assertEqual((str(caught.exception), caught.exception.status),
                         ("environment registry validate failed (500)", 500))

    async def test_a_validation_that_stalls_is_given_up_after_10_seconds(self):
        server, base = self.serve(None)
        clock = task.Clock()
        client = RegistryClient(reactor, base, TOKEN, environ={}, clock=clock)
        calling = client.validate("env-1", "reg-1", HARNESS_KEY, "authorization", "s")
        await support.with_timeout(server.request_seen)
        clock.advance(REQUEST_TIMEOUT_SECONDS)
        with self.assertRaises(RegistryError) as caught:
            await calling
        self.assertIn("did not answer validate within 10 s", str(caught.exception))


def server_host(request: bytes) -> bytes:
    for line in request.split(b"\r\n"):
        if line.startswith(b"host: "):
            return line[len(b"host: "):]
    return b""
