"""
The rendezvous on several nodes sharing a real redis-server (started by
the test; skipped when redis-server is not installed):

  - L{RedisStore} keeps the rules of the in-memory store (single-use
    tickets and authorizations, bound to a key and the current
    registration, at most 256 outstanding bundles) and stores no secret
    in the clear;
  - homes: the node holding an executor's socket, refreshed, released,
    and never another node's to release;
  - nodes as C{twistd execserver-rendezvous --store} processes: our
    executor on node A and our client arriving at node B, forwarded; a
    node killed mid-stream, its executors placed again on the other node
    and every client resumed with no output lost or duplicated.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.trial import unittest

from execserver.client import ExecServerClient
from execserver.noise.keys import NoiseIdentity
from execserver.remote.harness import RelayConnector
from execserver.rendezvous.limits import MAX_GRANTS_PER_ENVIRONMENT
from execserver.rendezvous.redisstore import Node, RedisStore
from execserver.rendezvous.store import GrantsExhausted
from tests import support
from tests.clusterenv import TOKEN, Cluster, Front
from tests.redisserver import free_port, redis_for
from tests.test_client_interop import Waiter

EXECUTOR_KEY = NoiseIdentity.generate().public_key
HARNESS_KEY = NoiseIdentity.generate().public_key
OTHER_KEY = NoiseIdentity.generate().public_key
ENV = {"PATH": "/usr/bin:/bin"}


class RedisStoreTests(unittest.TestCase):
    def setUp(self):
        return ensureDeferred(self._set_up())

    async def _set_up(self) -> None:
        self.server = await redis_for(self)
        self.store = RedisStore.from_url(reactor, self.server.url, prefix="test:")
        self.addCleanup(self.store.close)
        self.registration = await self.store.register("env-1", EXECUTOR_KEY)

    async def used_grant(self, key=HARNESS_KEY):
        grant = await self.store.grant("env-1", key)
        self.assertIsNotNone(await self.store.harness_ticket("env-1", grant.ticket))
        return grant

    async def test_the_executor_ticket_works_until_it_registers_again(self):
        ticket = self.registration.ticket
        current = await self.store.executor_ticket("env-1", ticket)
        self.assertEqual(current.registration_id, self.registration.registration_id)
        self.assertEqual(current.executor_key, EXECUTOR_KEY)
        self.assertIsNone(await self.store.executor_ticket("env-1", "guess"))
        self.assertIsNone(await self.store.executor_ticket("env-2", ticket))
        await self.store.register("env-1", EXECUTOR_KEY)
        self.assertIsNone(await self.store.executor_ticket("env-1", ticket))

    async def test_a_harness_ticket_works_once_and_its_authorization_validates_once(self):
        grant = await self.store.grant("env-1", HARNESS_KEY)
        self.assertFalse(await self.store.validate(
            "env-1", self.registration.registration_id, HARNESS_KEY, grant.authorization))
        grant = await self.store.grant("env-1", HARNESS_KEY)
        used = await self.store.harness_ticket("env-1", grant.ticket)
        self.assertEqual(used.harness_key, HARNESS_KEY)
        self.assertIsNone(await self.store.harness_ticket("env-1", grant.ticket))
        self.assertTrue(await self.store.validate(
            "env-1", self.registration.registration_id, HARNESS_KEY, grant.authorization))
        self.assertFalse(await self.store.validate(
            "env-1", self.registration.registration_id, HARNESS_KEY, grant.authorization))

    async def test_an_authorization_is_bound_to_its_key_and_registration(self):
        grant = await self.used_grant()
        self.assertFalse(await self.store.validate(
            "env-1", self.registration.registration_id, OTHER_KEY, grant.authorization))
        grant = await self.used_grant()
        self.assertFalse(await self.store.validate(
            "env-1", "reg-other", HARNESS_KEY, grant.authorization))

    async def test_a_new_registration_voids_outstanding_bundles(self):
        unused = await self.store.grant("env-1", HARNESS_KEY)
        used = await self.used_grant()
        again = await self.store.register("env-1", EXECUTOR_KEY)
        self.assertIsNone(await self.store.harness_ticket("env-1", unused.ticket))
        self.assertFalse(await self.store.validate(
            "env-1", again.registration_id, HARNESS_KEY, used.authorization))

    async def test_outstanding_bundles_are_bounded_and_freed_by_validation(self):
        grants = [await self.store.grant("env-1", HARNESS_KEY)
                  for _ in range(MAX_GRANTS_PER_ENVIRONMENT)]
        with self.assertRaises(GrantsExhausted):
            await self.store.grant("env-1", HARNESS_KEY)
        self.assertIsNotNone(await self.store.harness_ticket("env-1", grants[0].ticket))
        self.assertTrue(await self.store.validate(
            "env-1", self.registration.registration_id, HARNESS_KEY, grants[0].authorization))
        self.assertIsNotNone(await self.store.grant("env-1", HARNESS_KEY))

    async def test_no_grant_without_a_registration(self):
        self.assertIsNone(await self.store.grant("env-2", HARNESS_KEY))

    async def test_no_secret_is_stored_in_the_clear(self):
        unused = await self.store.grant("env-1", HARNESS_KEY)
        used = await self.used_grant()
        forward = await self.store.forward_ticket("env-1")
        keys = await self.store.redis.keys("test:*")
        stored = b"".join([key for key in keys] + [
            await self.store.redis.execute_command("DUMP", key) for key in keys])
        self.assertGreaterEqual(len(keys), 4)
        for secret in (self.registration.ticket, unused.ticket, unused.authorization,
                       used.ticket, used.authorization, forward):
            self.assertNotIn(secret.encode(), stored)

    async def test_a_forward_ticket_works_once(self):
        ticket = await self.store.forward_ticket("env-1")
        self.assertFalse(await self.store.use_forward_ticket("env-2", ticket))
        self.assertTrue(await self.store.use_forward_ticket("env-1", ticket))
        self.assertFalse(await self.store.use_forward_ticket("env-1", ticket))

    async def test_a_home_is_its_live_node_and_only_its_node_releases_it(self):
        a, b = Node("a", "ws://a", "ws://a-peer"), Node("b", "ws://b", "ws://b")
        await self.store.heartbeat(a, [])
        await self.store.claim_home("env-1", "a")
        self.assertEqual(await self.store.home("env-1"), a)
        await self.store.release_home("env-1", "b")
        self.assertEqual(await self.store.home("env-1"), a)
        # The executor reached b: a's refresh finds it moved.
        await self.store.heartbeat(b, [])
        await self.store.claim_home("env-1", "b")
        self.assertEqual(await self.store.heartbeat(a, ["env-1"]), ["env-1"])
        self.assertEqual(await self.store.home("env-1"), b)
        await self.store.leave(b, ["env-1"])
        self.assertIsNone(await self.store.home("env-1"))


class ClusterTests(unittest.TestCase):
    """Nodes as processes, our executors and our client."""

    timeout = 180

    async def connect(self, registry_url: str, environment_id: str) -> ExecServerClient:
        connector = RelayConnector(reactor, registry_url, environment_id, TOKEN)
        client = ExecServerClient(connector, reactor)
        self.addCleanup(client.close)
        await support.with_timeout(client.connect())
        return client

    async def test_a_harness_arriving_at_another_node_is_forwarded(self):
        cluster = await Cluster(self, ["env-1"]).start()
        _, b_url = await cluster.node("b")
        # Node A tells harnesses to come to B's address: every harness of
        # A's executors arrives at B, which forwards it to A's peer URL.
        a_port = free_port()
        _, a_url = await cluster.node(
            "a", "--node-url", "ws" + b_url[len("http"):],
            "--peer-url", f"ws://127.0.0.1:{a_port}", listen=f"tcp:{a_port}:interface=127.0.0.1")
        cluster.executor("env-1", a_url)
        await cluster.wait_for(lambda: self._home_is(cluster, "env-1", "a"))
        client = await self.connect(b_url, "env-1")
        handle = await client.start_process(["seq", "1", "20000"], env=ENV)
        self.assertEqual(await support.with_timeout(handle.when_closed()), 0)
        self.assertEqual(handle.receiver.output(), b"".join(b"%d\n" % n for n in range(1, 20001)))
        data = b"x" * (300 * 1024)
        path = support.scratch_directory(self, "execserver-cluster-files-") + "/f"
        await support.with_timeout(client.fs.write_file(path, data))
        self.assertEqual(await support.with_timeout(client.fs.read_file(path)), data)

    async def _home_is(self, cluster: Cluster, environment_id: str, node_id: str) -> bool:
        return await cluster.home(environment_id) == node_id

    async def test_a_node_killed_mid_stream_loses_and_duplicates_nothing(self):
        environments = ["env-1", "env-2"]
        cluster = await Cluster(self, environments).start()
        node_a, a_url = await cluster.node("a")
        _, b_url = await cluster.node("b")
        front = Front([int(url.rsplit(":", 1)[1]) for url in (a_url, b_url)]).listen(self)
        for environment_id in environments:
            cluster.executor(environment_id, front)
        for environment_id in environments:
            await cluster.wait_for(lambda: self._home_is(cluster, environment_id, "a"))
        streams = []
        for environment_id in environments:
            for _ in range(2):
                client = await self.connect(front, environment_id)
                waiter = Waiter()
                handle = await client.start_process(
                    ["sh", "-c", "seq 1 30000; read line; echo $line; seq 30001 60000"],
                    env=ENV, pipe_stdin=True, receiver=waiter)
                streams.append((client, client.session_id, waiter, handle))
        for _, _, waiter, _ in streams:
            await waiter.contains(b"\n30000\n")
        await node_a.kill()
        await gatherResults([ensureDeferred(handle.write(b"after-kill\n"))
                             for _, _, _, handle in streams])
        codes = await support.with_timeout(gatherResults(
            [handle.when_closed() for _, _, _, handle in streams]), 60)
        self.assertEqual(codes, [0] * len(streams))
        expected = (b"".join(b"%d\n" % n for n in range(1, 30001)) + b"after-kill\n"
                    + b"".join(b"%d\n" % n for n in range(30001, 60001)))
        for client, session, waiter, _ in streams:
            self.assertEqual(len(waiter.output()), len(expected))
            self.assertEqual(waiter.output(), expected)
            self.assertEqual(client.session_id, session)
        for environment_id in environments:
            self.assertEqual(await cluster.home(environment_id), "b")
