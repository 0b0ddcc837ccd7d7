"""
Our harness through our rendezvous to an executor: the reference's
(C{codex exec-server --remote}) and ours (C{twistd execserver-remote}),
each test class run against both. The client library runs processes
(pipes and a terminal), reads and writes files, makes HTTP requests, runs
50 streams at once on the one executor socket, and resumes its session
after its own socket or the executor's is cut, over Noise streams whose
frames never carry plaintext. A wrong token, a refused authorization, a
refused upgrade and a tampering relay each have the outcome codex gives
them. The forwarders (codex's C{exec-server forward --connect} in front of
our local server, ours in front of the reference's) serve alike.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os

from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.trial import unittest

from execserver.client import ConnectFailed, ExecServerClient
from execserver.relay.frames import FrameKind
from execserver.remote.harness import RelayConnector
from execserver.rendezvous.router import TO_EXECUTOR, TO_HARNESS
from execserver.rendezvous.store import MemoryStore
from tests import support
from tests.httpserver import Origin, pattern
from tests.remoteenv import ENVIRONMENT_ID, TOKEN, RemoteEnvironment
from tests.test_client_interop import Waiter

ENV = {"PATH": "/usr/bin:/bin"}
CLIENT_NAME = "relay-plaintext-probe"


class RemoteTestCase(unittest.TestCase):
    store = None
    tls = False
    executor = "reference"

    def setUp(self):
        return ensureDeferred(self._set_up())

    async def _set_up(self) -> None:
        self.remote = await RemoteEnvironment(self, self.store, self.tls, self.executor).start()
        self.workdir = support.scratch_directory(self, "execserver-remote-")

    def connector(self, token: str = TOKEN) -> RelayConnector:
        return RelayConnector(reactor, self.remote.registry_url, ENVIRONMENT_ID, token)

    async def connect(self, connector: RelayConnector | None = None) -> ExecServerClient:
        client = ExecServerClient(connector or self.connector(), reactor, client_name=CLIENT_NAME)
        self.addCleanup(client.close)
        await support.with_timeout(client.connect())
        return client

    def path(self, name: str) -> str:
        return os.path.join(self.workdir, name)


class RemoteSessionTests(RemoteTestCase):
    async def test_processes_run_with_pipes(self):
        client = await self.connect()
        handle = await client.start_process(["sh", "-c", "echo out; echo err >&2; exit 3"], env=ENV)
        code = await support.with_timeout(handle.when_closed())
        self.assertEqual((code, handle.receiver.output("stdout"), handle.receiver.output("stderr")),
                         (3, b"out\n", b"err\n"))

    async def test_processes_run_under_a_terminal(self):
        client = await self.connect()
        handle = await client.start_process(["sh", "-c", "echo out; echo err >&2"], env=ENV, tty=True)
        code = await support.with_timeout(handle.when_closed())
        self.assertEqual((code, handle.receiver.output()), (0, b"out\r\nerr\r\n"))

    async def test_stdin_reaches_the_process(self):
        client = await self.connect()
        handle = await client.start_process(["head", "-c", "10"], env=ENV, pipe_stdin=True)
        await handle.write(b"01234")
        await handle.write(b"56789")
        self.assertEqual(await support.with_timeout(handle.when_closed()), 0)
        self.assertEqual(handle.receiver.output(), b"0123456789")

    async def test_a_200_kib_file_is_read_and_a_1_mib_file_written(self):
        client = await self.connect()
        data = os.urandom(200 * 1024)
        with open(self.path("in.bin"), "wb") as f:
            f.write(data)
        self.assertEqual(await support.with_timeout(client.fs.read_file(self.path("in.bin"))), data)
        big = os.urandom(1024 * 1024)
        await support.with_timeout(client.fs.write_file(self.path("out.bin"), big))
        with open(self.path("out.bin"), "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).digest(), hashlib.sha256(big).digest())

    async def test_no_relay_data_frame_carries_plaintext(self):
        client = await self.connect()
        handle = await client.start_process(["/bin/echo", "secret-output"], env=ENV)
        await support.with_timeout(handle.when_closed())
        with open(self.path("plain.txt"), "wb") as f:
            f.write(b"plain-file-content " * 10000)
        await support.with_timeout(client.fs.read_file(self.path("plain.txt")))
        data = [raw for _, frame, raw in self.remote.router.captured if frame.kind is FrameKind.DATA]
        self.assertGreaterEqual(len(data), 8)
        for raw in data:
            for text in (b"initialize", b"process/start", CLIENT_NAME.encode(),
                         b"secret-output", b"plain-file-content", b"sessionId"):
                self.assertNotIn(text, raw)

    async def test_the_session_resumes_after_the_socket_is_cut(self):
        client = await self.connect()
        session = client.session_id
        waiter = Waiter()
        handle = await client.start_process(
            ["sh", "-c", "echo before; read line; echo after $line; seq 1 50000"],
            env=ENV, pipe_stdin=True, receiver=waiter)
        await waiter.contains(b"before\n")
        self.remote.cut_harness_sockets()
        await handle.write(b"cut\n")
        self.assertEqual(await support.with_timeout(handle.when_closed()), 0)
        expected = b"before\nafter cut\n" + b"".join(b"%d\n" % n for n in range(1, 50001))
        self.assertEqual(waiter.output(), expected)
        self.assertEqual(client.session_id, session)
        handshakes = self.remote.router.streams(TO_EXECUTOR, FrameKind.HANDSHAKE)
        self.assertEqual(len(set(handshakes)), 2)

    async def test_a_cut_while_output_streams_loses_nothing(self):
        client = await self.connect()
        waiter = Waiter()
        handle = await client.start_process(["seq", "1", "100000"], env=ENV, receiver=waiter)
        await waiter.contains(b"\n1000\n")
        self.remote.cut_harness_sockets()
        self.assertEqual(await support.with_timeout(handle.when_closed()), 0)
        self.assertEqual(waiter.output(), b"".join(b"%d\n" % n for n in range(1, 100001)))


    async def test_http_requests_are_made_by_the_executor(self):
        origin = await Origin().start()
        self.addCleanup(lambda: ensureDeferred(origin.stop()))
        client = await self.connect()
        response = await support.with_timeout(client.http.request(
            "POST", origin.url("/echo"), headers=[("x-probe", "1")], body=b"hi"))
        seen = json.loads(response.body)
        self.assertEqual((response.status, seen["method"], base64.b64decode(seen["body"])),
                         (200, "POST", b"hi"))
        size = 1024 * 1024
        response = await support.with_timeout(client.http.request(
            "GET", origin.url(f"/bytes?n={size}"), stream=True))
        self.assertEqual(await support.with_timeout(response.stream.content()), pattern(size))

    async def test_the_session_resumes_after_the_executor_socket_is_cut(self):
        client = await self.connect()
        session = client.session_id
        waiter = Waiter()
        handle = await client.start_process(
            ["sh", "-c", "echo before; read line; echo after $line; seq 1 20000"],
            env=ENV, pipe_stdin=True, receiver=waiter)
        await waiter.contains(b"before\n")
        registered = self.remote.router.executor_peer
        self.remote.cut_executor_socket()
        await handle.write(b"cut\n")
        self.assertEqual(await support.with_timeout(handle.when_closed()), 0)
        expected = b"before\nafter cut\n" + b"".join(b"%d\n" % n for n in range(1, 20001))
        self.assertEqual(waiter.output(), expected)
        self.assertEqual(client.session_id, session)
        self.assertIsNot(self.remote.router.executor_peer, registered)

    async def test_50_streams_on_the_executor_socket_do_not_cross(self):
        # Connected ten at a time: an executor resets handshakes beyond 32
        # awaiting the registry's validate.
        clients = []
        for _ in range(5):
            clients += await gatherResults([ensureDeferred(self.connect()) for _ in range(10)])
        handles = await gatherResults([ensureDeferred(client.start_process(
            ["sh", "-c", f"for i in 1 2 3; do echo client-{n}-$i; done"], env=ENV))
            for n, client in enumerate(clients)])
        await support.with_timeout(gatherResults([handle.when_closed() for handle in handles]))
        for n, handle in enumerate(handles):
            self.assertEqual(handle.receiver.output(),
                             b"".join(b"client-%d-%d\n" % (n, i) for i in (1, 2, 3)))
        self.assertEqual(len({client.session_id for client in clients}), 50)
        self.assertEqual(len(set(self.remote.router.streams(TO_EXECUTOR, FrameKind.HANDSHAKE))), 50)


class MisbehaviourTests(RemoteTestCase):
    async def test_a_wrong_token_is_refused_clearly(self):
        client = ExecServerClient(self.connector("not-the-token"), reactor)
        with self.assertRaises(ConnectFailed) as caught:
            await support.with_timeout(client.connect())
        self.assertIn("authentication failed (401): missing or invalid bearer token",
                      str(caught.exception))
        self.assertNotIn("not-the-token", str(caught.exception))

    async def test_a_record_tampered_towards_the_executor_ends_only_its_stream(self):
        first, second = await self.connect(), await self.connect()
        first_stream, second_stream = self.remote.router.streams(TO_EXECUTOR, FrameKind.HANDSHAKE)
        self.remote.router.arm(TO_EXECUTOR, first_stream)
        info = await support.with_timeout(first.environment_info())
        self.assertEqual(self.remote.router.tampered, [first_stream])
        self.assertIn(first_stream, self.remote.router.streams(TO_HARNESS, FrameKind.RESET))
        self.assertNotIn(second_stream, self.remote.router.streams(TO_HARNESS, FrameKind.RESET))
        self.assertEqual(info["platformOs"], "linux")
        handle = await second.start_process(["/bin/echo", "still here"], env=ENV)
        await support.with_timeout(handle.when_closed())
        self.assertEqual(handle.receiver.output(), b"still here\n")
        self.assertEqual(len(self.remote.router.streams(TO_EXECUTOR, FrameKind.HANDSHAKE)), 3)

    async def test_a_record_tampered_towards_the_harness_ends_its_stream(self):
        client = await self.connect()
        (stream,) = self.remote.router.streams(TO_EXECUTOR, FrameKind.HANDSHAKE)
        self.remote.router.arm(TO_HARNESS)
        info = await support.with_timeout(client.environment_info())
        self.assertEqual(info["platformOs"], "linux")
        self.assertEqual(self.remote.router.tampered, [stream])
        self.assertIn(stream, self.remote.router.streams(TO_EXECUTOR, FrameKind.RESET))
        self.assertEqual(len(self.remote.router.streams(TO_EXECUTOR, FrameKind.HANDSHAKE)), 2)


class _Refusing(MemoryStore):
    """Refuses the first harness ticket, or every authorization."""

    def __init__(self, clock, refuse_tickets: int = 0, refuse_authorizations: bool = False):
        super().__init__(clock)
        self.refuse_tickets = refuse_tickets
        self.refuse_authorizations = refuse_authorizations
        self.grants = 0

    def grant(self, environment_id, harness_key):
        self.grants += 1
        return super().grant(environment_id, harness_key)

    def harness_ticket(self, environment_id, ticket):
        if self.refuse_tickets:
            self.refuse_tickets -= 1
            return super().harness_ticket(environment_id, "used up")
        return super().harness_ticket(environment_id, ticket)

    def validate(self, environment_id, registration_id, harness_key, authorization):
        if self.refuse_authorizations:
            authorization = "refused"
        return super().validate(environment_id, registration_id, harness_key, authorization)


class RefusedUpgradeTests(RemoteTestCase):
    def setUp(self):
        self.store = _Refusing(reactor, refuse_tickets=1)
        return super().setUp()

    async def test_a_401_on_the_upgrade_is_retried_once_with_a_fresh_bundle(self):
        await self.connect()
        self.assertEqual(self.store.grants, 2)

    async def test_a_second_401_is_an_error(self):
        self.store.refuse_tickets = 2
        client = ExecServerClient(self.connector(), reactor)
        with self.assertRaises(ConnectFailed) as caught:
            await support.with_timeout(client.connect())
        self.assertIn("refused the WebSocket upgrade (HTTP 401)", str(caught.exception))
        self.assertNotIn("ticket=", str(caught.exception))


class RefusedAuthorizationTests(RemoteTestCase):
    def setUp(self):
        self.store = _Refusing(reactor, refuse_authorizations=True)
        return super().setUp()

    async def test_the_executor_resets_a_harness_the_registry_does_not_vouch_for(self):
        client = ExecServerClient(self.connector(), reactor)
        with self.assertRaises(ConnectFailed) as caught:
            await support.with_timeout(client.connect())
        self.assertIn("Noise relay stream reset", str(caught.exception))


class SecureRendezvousTests(RemoteTestCase):
    tls = True

    async def test_the_harness_reaches_the_rendezvous_over_https_and_wss(self):
        connector = RelayConnector(reactor, self.remote.tls_registry_url, ENVIRONMENT_ID, TOKEN,
                                   trust_root=self.remote.trust_root)
        client = await self.connect(connector)
        handle = await client.start_process(["/bin/echo", "over tls"], env=ENV)
        await support.with_timeout(handle.when_closed())
        self.assertEqual(handle.receiver.output(), b"over tls\n")

    async def test_an_untrusted_certificate_is_refused(self):
        connector = RelayConnector(reactor, self.remote.tls_registry_url, ENVIRONMENT_ID, TOKEN)
        client = ExecServerClient(connector, reactor)
        with self.assertRaises(ConnectFailed) as caught:
            await support.with_timeout(client.connect())
        self.assertIn("could not reach the environment registry", str(caught.exception))


class OurRemoteSessionTests(RemoteSessionTests):
    executor = "ours"


class OurMisbehaviourTests(MisbehaviourTests):
    executor = "ours"


class OurRefusedAuthorizationTests(RefusedAuthorizationTests):
    executor = "ours"


class ForwarderTests(RemoteTestCase):
    """codex's forwarder in front of our local server."""

    executor = "reference-forward"

    async def test_processes_run_with_pipes_and_under_a_terminal(self):
        client = await self.connect()
        handle = await client.start_process(["sh", "-c", "echo out; echo err >&2; exit 3"], env=ENV)
        self.assertEqual(await support.with_timeout(handle.when_closed()), 3)
        self.assertEqual((handle.receiver.output("stdout"), handle.receiver.output("stderr")),
                         (b"out\n", b"err\n"))
        handle = await client.start_process(["sh", "-c", "echo tty"], env=ENV, tty=True)
        self.assertEqual(await support.with_timeout(handle.when_closed()), 0)
        self.assertEqual(handle.receiver.output(), b"tty\r\n")

    async def test_a_200_kib_file_is_read_and_written(self):
        client = await self.connect()
        data = os.urandom(200 * 1024)
        await support.with_timeout(client.fs.write_file(self.path("f.bin"), data))
        self.assertEqual(await support.with_timeout(client.fs.read_file(self.path("f.bin"))), data)

    async def test_the_session_resumes_after_the_socket_is_cut(self):
        client = await self.connect()
        session = client.session_id
        waiter = Waiter()
        handle = await client.start_process(["sh", "-c", "echo before; read line; echo after $line"],
                                            env=ENV, pipe_stdin=True, receiver=waiter)
        await waiter.contains(b"before\n")
        self.remote.cut_harness_sockets()
        await handle.write(b"cut\n")
        self.assertEqual(await support.with_timeout(handle.when_closed()), 0)
        self.assertEqual((waiter.output(), client.session_id), (b"before\nafter cut\n", session))


class OurForwarderTests(ForwarderTests):
    """Our forwarder in front of the reference's local server."""

    executor = "ours-forward"
