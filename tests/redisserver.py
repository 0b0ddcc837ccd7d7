"""
A real C{redis-server} for tests: started by the test on a free loopback
port in a scratch directory, without persistence, and stopped (SIGTERM,
waited for) when the test ends. Tests that need it are skipped with the
reason when the binary is missing (C{scripts/install-test-services}
installs it).
"""

from __future__ import annotations

import shutil
import socket
import tempfile

import txredisapi
from twisted.internet import defer, error, protocol, reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SkipTest

from tests import support

READY = b"Ready to accept connections"


def redis_server_binary() -> str:
    """@raise SkipTest: no C{redis-server} on this machine."""
    binary = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/sbin:/usr/bin")
    if binary is None:
        raise SkipTest("redis-server is not installed (scripts/install-test-services installs it)")
    return binary


def free_port() -> int:
    """A loopback port that was free a moment ago (redis-server has no port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _RedisProcess(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.ready: Deferred = Deferred()
        self.ended: Deferred = Deferred()
        self.output = b""

    def childDataReceived(self, fd: int, data: bytes) -> None:
        self.output = (self.output + data)[-16 * 1024:]
        if READY in self.output and not self.ready.called:
            self.ready.callback(None)

    def processEnded(self, reason) -> None:
        if not self.ready.called:
            self.ready.errback(RuntimeError(
                "redis-server exited:\n" + self.output.decode(errors="replace")))
        self.ended.callback(None)


class RedisServer:
    """
    Start with L{start}, stop with L{stop} (or use L{redis_for}).

    @ivar url: C{redis://127.0.0.1:PORT/0}.
    """

    def __init__(self) -> None:
        self.binary = redis_server_binary()
        self.process: _RedisProcess | None = None

    async def start(self) -> "RedisServer":
        self.directory = tempfile.mkdtemp(prefix="execserver-redis-", dir="/var/tmp")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", self.directory, "--save", "", "--appendonly", "no",
                # Tests wait on changes of keys (L{KeyWatcher}), not on timers.
                "--notify-keyspace-events", "KA"]
        self.process = _RedisProcess()
        self.transport = reactor.spawnProcess(self.process, argv[0], argv, env={},
                                              path=self.directory)
        try:
            await support.with_timeout(self.process.ready)
        except BaseException:
            await self.stop()
            raise
        return self

    async def stop(self) -> None:
        if self.process is not None and not self.process.ended.called:
            try:
                self.transport.signalProcess("TERM")
            except error.ProcessExitedAlready:
                pass
            await support.with_timeout(self.process.ended)
        shutil.rmtree(self.directory, ignore_errors=True)


async def redis_for(testcase) -> RedisServer:
    """A running redis-server, stopped when C{testcase} ends."""
    server = await RedisServer().start()
    testcase.addCleanup(lambda: defer.ensureDeferred(server.stop()))
    return server


class KeyWatcher(txredisapi.SubscriberProtocol):
    """
    Wakes L{changed} waiters at every change of a key in database 0 (the
    server's keyspace notifications).
    """

    def __init__(self) -> None:
        super().__init__(charset=None)
        self._waiters: list[Deferred] = []

    def changed(self) -> Deferred:
        """Fires at the next change of any key."""
        waiter = Deferred()
        self._waiters.append(waiter)
        return waiter

    def messageReceived(self, pattern, channel, message) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)


async def watch_keys(testcase, server: RedisServer) -> KeyWatcher:
    """A L{KeyWatcher} of C{server}, disconnected when C{testcase} ends."""
    watcher = await protocol.ClientCreator(reactor, KeyWatcher).connectTCP("127.0.0.1", server.port)
    testcase.addCleanup(watcher.transport.loseConnection)
    await watcher.whenConnected()
    await watcher.psubscribe("__keyspace@0__:*")
    return watcher
