"""
The executor's link to its rendezvous (L{ExecutorLink}), against our
rendezvous on a loopback port, with the link's timers on a L{task.Clock}:
it registers once, dials, serves, dials the same URL again after a drop
with codex's backoff, registers again (same key) when the URL is refused
with a 4xx status (not 5xx), and gives up only when the first registration
fails.
"""

from __future__ import annotations

from autobahn.websocket.types import ConnectionDeny
from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, DeferredQueue, fail
from twisted.trial import unittest

from execserver.client import ExecServerClient
from execserver.noise.keys import NoiseIdentity
from execserver.readiness import Readiness
from execserver.remote.harness import RelayConnector
from execserver.remote.link import ExecutorLink, RendezvousEndpoint, backoff
from execserver.remote.registry import RegistryAuthenticationFailed, RegistryClient
from execserver.rendezvous.site import Rendezvous, site
from execserver.rendezvous.store import BearerTokens, MemoryStore
from tests import support

ENVIRONMENT_ID = "env-link"
TOKEN = "link-token"


class BackoffTests(unittest.SynchronousTestCase):
    def test_it_doubles_from_1_to_30_seconds(self):
        self.assertEqual([backoff(n, lambda: 1.0) for n in range(1, 9)],
                         [1, 2, 4, 8, 16, 30, 30, 30])

    def test_each_wait_is_jittered_down_to_half(self):
        self.assertEqual([backoff(n, lambda: 0.0) for n in (1, 2, 6, 1000)], [0.5, 1, 15, 15])


class _Store(MemoryStore):
    """
    Counts registrations; refuses executor tickets (with C{refuse_status})
    or registrations on request.
    """

    def __init__(self, clock) -> None:
        super().__init__(clock)
        self.registrations = 0
        self.refuse_tickets = 0
        self.refuse_status = 401
        self.fail_registrations = 0
        self._waiting: list[tuple[int, Deferred]] = []

    def register(self, environment_id, executor_key):
        if self.fail_registrations:
            self.fail_registrations -= 1
            return fail(RuntimeError("the store is down"))
        self.registrations += 1
        for entry in list(self._waiting):
            if entry[0] <= self.registrations:
                self._waiting.remove(entry)
                reactor.callLater(0, entry[1].callback, None)
        return super().register(environment_id, executor_key)

    def executor_ticket(self, environment_id, ticket):
        if self.refuse_tickets:
            self.refuse_tickets -= 1
            if self.refuse_status != 401:
                return fail(ConnectionDeny(self.refuse_status, "Refused"))
            ticket = "refused"
        return super().executor_ticket(environment_id, ticket)

    def registered(self, count: int) -> Deferred:
        """Fires once there have been C{count} registrations."""
        waiter = Deferred()
        self._waiting.append((count, waiter))
        if self.registrations >= count:
            self._waiting.remove((count, waiter))
            waiter.callback(None)
        return support.with_timeout(waiter)


class LinkTests(unittest.TestCase):
    def setUp(self):
        self.store = _Store(reactor)
        self.rendezvous = Rendezvous(reactor, BearerTokens({ENVIRONMENT_ID: TOKEN}), store=self.store)
        port = reactor.listenTCP(0, site(self.rendezvous), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.registry_url = f"http://127.0.0.1:{port.getHost().port}"
        self.clock = task.Clock()
        self.fatal: Deferred = Deferred()
        #: One entry each time the link computes a wait before redialling.
        self.retries = DeferredQueue()
        self.exec_server = support.build_exec_server(self)
        self.readiness = Readiness()
        #: Whether the executor was ready, after each change.
        self.readiness_seen: list[bool] = []
        self.readiness.subscribe(lambda readiness: self.readiness_seen.append(readiness.ready))

    def jitter(self) -> float:
        # Told after the wait is scheduled (it is computed just before).
        reactor.callLater(0, self.retries.put, None)
        return 0.0

    def link(self, token: str = TOKEN) -> ExecutorLink:
        registry = RegistryClient(reactor, self.registry_url, token, environ={})
        endpoint = RendezvousEndpoint(reactor, registry, ENVIRONMENT_ID, NoiseIdentity.generate(),
                                      clock=self.clock, readiness=self.readiness)
        link = ExecutorLink(endpoint, self.exec_server.buildConnection, self.fatal.callback,
                            random=self.jitter)
        link.startService()
        self.addCleanup(lambda: link.running and link.stopService())
        return link

    async def connected(self, link: ExecutorLink):
        await self.store.registered(1)
        await support.with_timeout(self.rendezvous.router.when_executor(ENVIRONMENT_ID))
        return await self.reconnected(link)

    async def reconnected(self, link: ExecutorLink):
        relay = await support.with_timeout(link.client.whenConnected())
        # whenConnected may fire in the middle of ClientService's change of
        # state, which must not be entered again (by stopService) from there.
        await _next_turn()
        return relay

    async def drop(self, relay) -> None:
        relay.socket.abort()
        await support.with_timeout(relay.disconnected)

    async def run_echo(self) -> bytes:
        connector = RelayConnector(reactor, self.registry_url, ENVIRONMENT_ID, TOKEN, environ={})
        client = ExecServerClient(connector, reactor)
        self.addCleanup(client.close)
        await support.with_timeout(client.connect())
        handle = await client.start_process(["/bin/echo", "served"], env={"PATH": "/usr/bin:/bin"})
        await support.with_timeout(handle.when_closed())
        return handle.receiver.output()

    def retry_delays(self) -> list[float]:
        return [call.getTime() - self.clock.seconds() for call in self.clock.getDelayedCalls()
                if "_Client._reconnect" in repr(call.func)]

    async def test_it_registers_and_serves_through_the_rendezvous(self):
        link = self.link()
        await self.connected(link)
        self.assertEqual(await self.run_echo(), b"served\n")
        self.assertEqual(self.store.registrations, 1)

    async def test_a_dropped_socket_is_dialled_again_after_the_backoff_without_registering(self):
        link = self.link()
        relay = await self.connected(link)
        await self.drop(relay)
        await support.with_timeout(self.retries.get())
        self.assertEqual(self.retry_delays(), [0.5])
        self.clock.advance(0.5)
        again = await self.reconnected(link)
        self.assertIsNot(again, relay)
        self.assertEqual(self.store.registrations, 1)
        self.assertEqual(await self.run_echo(), b"served\n")

    async def test_ready_while_registered_and_connected(self):
        link = self.link()
        relay = await self.connected(link)
        self.assertEqual(self.readiness_seen, [True, False, True])
        await self.drop(relay)
        self.assertFalse(self.readiness.ready)
        await support.with_timeout(self.retries.get())
        self.clock.advance(0.5)
        await self.reconnected(link)
        self.assertEqual(self.readiness_seen, [True, False, True, False, True])

    async def test_a_401_registers_again_at_once_and_dials_the_new_url_after_the_wait(self):
        link = self.link()
        relay = await self.connected(link)
        self.store.refuse_tickets = 1
        await self.drop(relay)
        await support.with_timeout(self.retries.get())
        self.clock.advance(0.5)
        await support.with_timeout(self.retries.get())
        self.assertEqual((self.store.registrations, self.retry_delays()), (2, [1.0]))
        self.assertFalse(self.rendezvous.router.has_executor(ENVIRONMENT_ID))
        self.clock.advance(1.0)
        await self.reconnected(link)
        self.assertEqual(self.store.registrations, 2)
        self.assertEqual(await self.run_echo(), b"served\n")

    async def test_other_4xx_refusals_register_again_but_5xx_ones_keep_the_url(self):
        link = self.link()
        relay = await self.connected(link)
        for status, registrations in ((403, 2), (429, 3), (503, 3), (500, 3)):
            self.store.refuse_tickets = 1
            self.store.refuse_status = status
            await self.drop(relay)
            await support.with_timeout(self.retries.get())
            self.clock.advance(0.5)
            await support.with_timeout(self.retries.get())
            self.assertEqual(self.store.registrations, registrations, status)
            self.clock.advance(1.0)
            relay = await self.reconnected(link)

    async def test_a_later_registration_that_fails_is_tried_again(self):
        link = self.link()
        relay = await self.connected(link)
        self.store.refuse_tickets = 1
        self.store.fail_registrations = 1
        await self.drop(relay)
        await support.with_timeout(self.retries.get())
        self.clock.advance(0.5)
        await support.with_timeout(self.retries.get())
        self.assertEqual((self.store.registrations, self.retry_delays()), (1, [1.0]))
        self.clock.advance(1.0)
        await self.reconnected(link)
        self.assertEqual(self.store.registrations, 2)
        self.assertFalse(self.fatal.called)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    async def test_a_first_registration_that_fails_is_fatal(self):
        link = self.link("not-the-token")
        error = await support.with_timeout(self.fatal)
        self.assertIsInstance(error, RegistryAuthenticationFailed)
        self.assertIsNone(link.client)

    async def test_stopping_closes_the_socket(self):
        link = self.link()
        relay = await self.connected(link)
        await support.with_timeout(link.stopService())
        await support.with_timeout(relay.disconnected)
        self.assertEqual(self.clock.getDelayedCalls(), [])


def _next_turn() -> Deferred:
    """Fires from the reactor, out of whatever call stack is running now."""
    turned = Deferred()
    reactor.callLater(0, turned.callback, None)
    return turned
