"""
A rendezvous cluster for tests: a real redis-server (L{tests.redisserver}),
rendezvous nodes sharing it (C{twistd execserver-rendezvous --store ...}
processes, which a test may kill, or in-process nodes on loopback ports),
a L{Front} (a TCP load balancer that cannot pin: each connection goes to
the first node that accepts it) and our executors (C{twistd
execserver-remote}) registered through any of them.
"""

from __future__ import annotations

import os
import sys

from twisted.internet import error, protocol, reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.protocols import portforward

from execserver.rendezvous.redisstore import Node, RedisStore
from execserver.rendezvous.site import Rendezvous, site
from execserver.rendezvous.store import BearerTokens
from tests import support
from tests.redisserver import redis_for, watch_keys

TOKEN = "cluster-test-token"

_TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
           "-n", "--pidfile="]


class _Announced(protocol.ProcessProtocol):
    """A child that prints its URL (a line starting with C{prefix})."""

    def __init__(self, prefix: bytes, stdin: bytes | None = None) -> None:
        self.prefix = prefix
        self.stdin = stdin
        self.url: Deferred = Deferred()
        self.ended: Deferred = Deferred()
        self.output = b""

    def connectionMade(self) -> None:
        if self.stdin is not None:
            self.transport.write(self.stdin)
        self.transport.closeStdin()

    def childDataReceived(self, fd: int, data: bytes) -> None:
        self.output = (self.output + data)[-64 * 1024:]
        if not self.url.called:
            for line in self.output.split(b"\n")[:-1]:
                if line.startswith(self.prefix):
                    self.url.callback(line.decode().strip())
                    break

    def processEnded(self, reason) -> None:
        if not self.url.called and self.prefix:
            self.url.errback(RuntimeError("exited before announcing its URL:\n"
                                          + self.output.decode(errors="replace")))
        self.ended.callback(None)


class Child:
    """A child process, stopped (SIGTERM) when the test ends unless killed before."""

    def __init__(self, testcase, argv: list[str], prefix: bytes = b"",
                 stdin: bytes | None = None, env: dict[str, str] | None = None) -> None:
        self.proto = _Announced(prefix, stdin)
        home = support.scratch_directory(testcase, "execserver-cluster-")
        self.transport = reactor.spawnProcess(
            self.proto, argv[0], argv,
            env=support.server_environment({"CODEX_HOME": home, **(env or {})}), path=home)
        testcase.addCleanup(lambda: ensureDeferred(self.stop()))

    def signal(self, name: str) -> None:
        try:
            self.transport.signalProcess(name)
        except error.ProcessExitedAlready:
            pass

    async def kill(self) -> None:
        """SIGKILL: no goodbye to the store or the peers."""
        self.signal("KILL")
        await support.with_timeout(self.proto.ended)

    async def stop(self) -> None:
        if not self.proto.ended.called:
            self.signal("TERM")
        await support.with_timeout(self.proto.ended)


class Front(protocol.Factory):
    """
    A TCP load balancer that cannot pin: each connection goes to the first
    of C{ports} that accepts it.
    """

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports

    def protocol(self):
        return _FrontConnection()

    def listen(self, testcase) -> str:
        port = reactor.listenTCP(0, self, interface="127.0.0.1")
        testcase.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}"


class _FrontConnection(portforward.ProxyServer):
    def connectionMade(self) -> None:
        self.transport.pauseProducing()
        ensureDeferred(self._dial())

    async def _dial(self) -> None:
        for port in self.factory.ports:
            client = portforward.ProxyClientFactory()
            client.setServer(self)
            try:
                await TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5).connect(client)
                return
            except error.ConnectError:
                continue
        self.transport.loseConnection()


class Cluster:
    """
    A redis-server and the token file of C{environment_ids}; nodes and
    executors are added by the test.
    """

    def __init__(self, testcase, environment_ids: list[str]) -> None:
        self.testcase = testcase
        self.environment_ids = environment_ids

    async def start(self) -> "Cluster":
        self.redis = await redis_for(self.testcase)
        directory = support.scratch_directory(self.testcase, "execserver-cluster-tokens-")
        self.tokens = os.path.join(directory, "tokens")
        with open(self.tokens, "w") as f:
            f.writelines(f"{environment_id} {TOKEN}\n" for environment_id in self.environment_ids)
        self.store = RedisStore.from_url(reactor, self.redis.url)
        self.testcase.addCleanup(self.store.close)
        self.watcher = await watch_keys(self.testcase, self.redis)
        return self

    async def node(self, node_id: str, *args: str,
                   listen: str = "tcp:0:interface=127.0.0.1") -> tuple[Child, str]:
        """A node process; fires with it and its registry URL (C{http://...})."""
        node = Child(self.testcase, [
            *_TWISTD, "execserver-rendezvous", "--tokens", self.tokens,
            "--listen", listen, "--store", self.redis.url,
            "--node-id", node_id, *args], prefix=b"http://")
        url = await support.with_timeout(node.proto.url)
        await self.wait_for(lambda: self._alive(node_id))
        return node, url

    async def _alive(self, node_id: str) -> bool:
        return await self.store.redis.exists(f"{self.store.prefix}node:{node_id}") == 1

    def executor(self, environment_id: str, registry_url: str) -> Child:
        """Our executor of C{environment_id}, registered through C{registry_url}."""
        return Child(self.testcase, [
            *_TWISTD, "execserver-remote", "--remote", registry_url,
            "--environment-id", environment_id, "--registration-bearer-stdin"],
            stdin=TOKEN.encode() + b"\n")

    async def home(self, environment_id: str) -> str | None:
        """The id of the node holding the executor's socket."""
        node = await self.store.home(environment_id)
        return None if node is None else node.node_id

    async def wait_for(self, condition, seconds: float = support.EVENT_TIMEOUT) -> None:
        """Until C{condition()} (a coroutine function) is true, checked at each key change."""
        async def watch() -> None:
            while True:
                changed = self.watcher.changed()
                if await condition():
                    return
                await changed
        await support.with_timeout(ensureDeferred(watch()), seconds)


class InProcessNode:
    """
    A node in this process on a loopback port, whose harnesses are sent to
    C{node_url} (its own address by default). Start with L{start}.

    @ivar registry_url: C{http://...}
    """

    def __init__(self, redis_url: str, tokens: dict[str, str], node_id: str,
                 node_url: str | None = None) -> None:
        self.store = RedisStore.from_url(reactor, redis_url)
        self.rendezvous = Rendezvous(reactor, BearerTokens(tokens), store=self.store)
        self.node_id = node_id
        self.node_url = node_url

    def start(self) -> "InProcessNode":
        self.port = reactor.listenTCP(0, site(self.rendezvous), interface="127.0.0.1")
        own = f"ws://127.0.0.1:{self.port.getHost().port}"
        self.registry_url = f"http://127.0.0.1:{self.port.getHost().port}"
        self.node = self.rendezvous.join(Node(self.node_id, self.node_url or own, own))
        self.node.startService()
        return self

    async def when_home(self, environment_id: str) -> None:
        """Once the environment's executor is connected here, and the store knows it."""
        await self.rendezvous.router.when_executor(environment_id)
        # One connection: this reply comes after the home was claimed.
        await self.store.home(environment_id)

    async def stop(self) -> None:
        await self.port.stopListening()
        await self.node.stopService()
        await self.store.close()
