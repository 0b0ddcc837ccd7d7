"""
Fault injection: the client against a server through a proxy that cuts
the connection at seeded random points (L{tests.faultproxy}).

While a process streams 50 MiB and writes to another process are in flight,
the proxy breaks the connection several times: in the middle of a WebSocket
frame, in either direction, during the resume handshake, and refuses a few
reconnect attempts after each cut. Every byte must arrive exactly once and
in order, and every write must land exactly once. Each seed is its own test
so a failure names the seed that reproduces it.

The streams run against our server, which holds a detached session's
output until it is read, so every outage here is shorter than its
retention window. Writes alone also run against the reference.

A relay with deep buffers that fails loses more than the server's 1 MiB
replay window in flight; our client acknowledges output, so the server
keeps what was not acknowledged and nothing is lost. Without
acknowledgements (the reference) the loss is reported as L{OutputLost}.
"""

from __future__ import annotations

import hashlib
import random
import sys
from urllib.parse import urlsplit

from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.trial import unittest

from execserver.client import ExecServerClient, OutputLost, RecoveryFailed, WebSocketConnector
from execserver.client.process import OutputCollector
from tests import support
from tests.faultproxy import DOWN, UP, Cut, FaultProxy, random_plan

ENV = {"PATH": "/usr/bin:/bin"}

MIB = 1024 * 1024
#: The streamed output: this many blocks of 64 KiB, 50 MiB in all.
STREAM_BLOCKS = 800
STREAM_BLOCK = 64 * 1024
STREAM_BYTES = STREAM_BLOCKS * STREAM_BLOCK
#: One write to the other process per this much streamed output.
WRITE_EVERY = 32 * 1024
WRITES = STREAM_BYTES // WRITE_EVERY

STREAM_SEEDS = range(1, 9)
WRITE_SEEDS = range(1, 31)
REFERENCE_WRITE_SEEDS = range(1, 9)

#: A child printing argv[2] (default STREAM_BLOCKS) blocks of seeded
#: pseudo-random data, as fast as it is read.
GENERATOR = (
    "import random, sys\n"
    "r = random.Random(int(sys.argv[1]))\n"
    "w = sys.stdout.buffer.write\n"
    f"for _ in range(int(sys.argv[2]) if len(sys.argv) > 2 else {STREAM_BLOCKS}):"
    f" w(r.randbytes({STREAM_BLOCK}))\n"
)

#: What a failing deep relay holds when it breaks: more than the server's
#: 1 MiB replay window (of WebSocket bytes; the server stops a child whose
#: unacknowledged output reaches the window, which is about 1.2 MiB here).
DEEP_HOLD = MIB + 64 * 1024
#: Enough that a server without acknowledgements must drop output.
DEEPER_HOLD = 3 * MIB
DEEP_STREAM_BLOCKS = 256

#: Stream output is long; give its end more time than one event.
STREAM_TIMEOUT = 120.0


def expected_digest(seed: int, blocks: int = STREAM_BLOCKS) -> str:
    generator = random.Random(seed)
    digest = hashlib.sha256()
    for _ in range(blocks):
        digest.update(generator.randbytes(STREAM_BLOCK))
    return digest.hexdigest()


class StreamChecker(OutputCollector):
    """
    Hashes the stream as it arrives, and calls C{progress(received)} as it
    goes (to pace writes to another process).
    """

    def __init__(self, progress) -> None:
        super().__init__()
        self.digest = hashlib.sha256()
        self.received = 0
        self.progress = progress

    def outputReceived(self, stream: str, data: bytes) -> None:
        self.digest.update(data)
        self.received += len(data)
        self.progress(self.received)


def pieces(count: int) -> list[bytes]:
    return [b"%06d|" % n for n in range(count)]


class FaultTestCase(unittest.TestCase):
    kind = "ours"

    def setUp(self):
        return ensureDeferred(self._set_up())

    async def _set_up(self) -> None:
        self.server = await support.serve(self, self.kind)

    def proxy(self, plan) -> FaultProxy:
        address = urlsplit(self.server.url)
        proxy = FaultProxy(reactor, (address.hostname, address.port), plan).start()
        self.addCleanup(proxy.stop)
        return proxy

    async def client(self, proxy: FaultProxy, acknowledge_output: bool = True) -> ExecServerClient:
        client = ExecServerClient(WebSocketConnector(reactor, proxy.url), reactor,
                                  acknowledge_output=acknowledge_output)
        self.addCleanup(client.close)
        await support.with_timeout(client.connect())
        return client

    async def stream_with_writes(self, seed: int) -> None:
        rng = random.Random(seed)
        # Four cuts of the stream, one inside a frame, then one of the
        # writes, each followed by up to two refused reconnects.
        plan = random_plan(rng, cuts=4, down_range=(256 * 1024, 8 * MIB), mid_frame=1)
        plan.append(Cut(UP, rng.randint(2000, 8000), refuse_after=rng.randint(0, 2)))
        proxy = self.proxy(plan)
        client = await self.client(proxy)

        to_write = pieces(WRITES)
        echo = await client.start_process(["head", "-c", str(sum(map(len, to_write)))], env=ENV,
                                          pipe_stdin=True)
        writes = []

        def progress(received: int) -> None:
            while len(writes) < WRITES and received >= len(writes) * WRITE_EVERY:
                writes.append(echo.write(to_write[len(writes)]))

        checker = StreamChecker(progress)
        stream = await client.start_process([sys.executable, "-c", GENERATOR, str(seed)],
                                            env=ENV, receiver=checker)
        self.assertEqual(await support.with_timeout(stream.when_closed(), STREAM_TIMEOUT), 0)
        self.assertEqual((checker.received, checker.digest.hexdigest()),
                         (STREAM_BYTES, expected_digest(seed)))
        statuses = await support.with_timeout(gatherResults(writes))
        self.assertEqual(statuses, ["accepted"] * WRITES)
        self.assertEqual(await support.with_timeout(echo.when_closed()), 0)
        self.assertEqual(echo.receiver.output(), b"".join(to_write))

        self.assertEqual([record.cut for record in proxy.cuts], plan)
        self.assertEqual(proxy.refused, sum(cut.refuse_after for cut in plan))
        (inside,) = [record for record in proxy.cuts if record.cut.mid_frame]
        self.assertLess(inside.frame[0], inside.at)
        self.assertLess(inside.at, inside.frame[1])
        self.assertEqual(client.state, "ready")

    async def writes_only(self, seed: int) -> None:
        rng = random.Random(seed)
        # Offsets beyond the first handshake (about 1 KiB down, 350 bytes
        # up), so that connecting itself succeeds.
        plan = [
            Cut(DOWN, rng.randint(2000, 12000), refuse_after=rng.randint(0, 2))
            if rng.random() < 0.5 else
            Cut(UP, rng.randint(600, 8000), refuse_after=rng.randint(0, 2))
            for _ in range(4)
        ]
        proxy = self.proxy(plan)
        client = await self.client(proxy)
        to_write = pieces(600)
        echo = await client.start_process(["head", "-c", str(sum(map(len, to_write)))], env=ENV,
                                          pipe_stdin=True)
        window = 16
        statuses: list[str] = []
        writes = []
        for index, piece in enumerate(to_write):
            if index >= window:
                await support.with_timeout(writes[index - window])
            writes.append(echo.write(piece).addCallback(statuses.append))
        await support.with_timeout(gatherResults(writes))
        self.assertEqual(statuses, ["accepted"] * len(to_write))
        self.assertEqual(await support.with_timeout(echo.when_closed()), 0)
        self.assertEqual(echo.receiver.output(), b"".join(to_write))
        self.assertGreater(len(proxy.cuts), 0)


def _seeded(method_name: str, seed: int):
    def test(self):
        return ensureDeferred(getattr(self, method_name)(seed))

    test.__name__ = f"test_{method_name}_seed_{seed}"
    return test


class StreamFaultTests(FaultTestCase):
    """
    50 MiB streamed, writes in flight, connection cut at random points.
    """

    for _seed in STREAM_SEEDS:
        locals()[f"test_stream_with_writes_seed_{_seed}"] = _seeded("stream_with_writes", _seed)


class WriteFaultTests(FaultTestCase):
    """
    Writes with up to 16 in flight, connection cut in either direction.
    """

    for _seed in WRITE_SEEDS:
        locals()[f"test_writes_only_seed_{_seed}"] = _seeded("writes_only", _seed)


class ReferenceWriteFaultTests(FaultTestCase):
    """
    The same against the reference, which deduplicates write ids too.
    """

    kind = "reference"

    for _seed in REFERENCE_WRITE_SEEDS:
        locals()[f"test_writes_only_seed_{_seed}"] = _seeded("writes_only", _seed)


class DeepRelayFaultTests(FaultTestCase):
    """
    A relay that fails holding more than the replay window.
    """

    async def deep_stream(self, seed: int, hold: int, acknowledge_output: bool):
        plan = [Cut(DOWN, offset, hold=hold, mid_frame=index == 1)
                for index, offset in enumerate((2 * MIB, 6 * MIB, 9 * MIB))]
        proxy = self.proxy(plan)
        client = await self.client(proxy, acknowledge_output)
        checker = StreamChecker(lambda received: None)
        stream = await client.start_process(
            [sys.executable, "-c", GENERATOR, str(seed), str(DEEP_STREAM_BLOCKS)],
            env=ENV, receiver=checker)
        return proxy, checker, stream

    async def test_our_client_loses_nothing_that_a_failed_relay_held(self):
        proxy, checker, stream = await self.deep_stream(11, DEEP_HOLD, True)
        self.assertEqual(await support.with_timeout(stream.when_closed(), STREAM_TIMEOUT), 0)
        self.assertEqual((checker.received, checker.digest.hexdigest()),
                         (DEEP_STREAM_BLOCKS * STREAM_BLOCK, expected_digest(11, DEEP_STREAM_BLOCKS)))
        self.assertEqual(len(proxy.cuts), 3)
        self.assertTrue(all(record.held > MIB for record in proxy.cuts), proxy.cuts)

    async def test_without_acknowledgements_the_loss_is_reported(self):
        proxy, checker, stream = await self.deep_stream(12, DEEPER_HOLD, False)
        with self.assertRaises(OutputLost):
            await support.with_timeout(stream.when_closed(), STREAM_TIMEOUT)
        self.assertGreater(proxy.cuts[0].held, 2 * MIB)


class HandshakeFaultTests(FaultTestCase):
    async def test_cuts_during_the_resume_handshake_are_survived(self):
        # Connection 2 breaks inside the HTTP upgrade, 3 inside the
        # initialize request, 4 inside its reply; 5 resumes.
        # (Less than the replay window of output in all, so this does not
        # depend on the server's back-pressure.)
        proxy = self.proxy([Cut(DOWN, 64 * 1024), Cut(DOWN, 40), Cut(UP, 300), Cut(DOWN, 250)])
        client = await self.client(proxy)
        stream = await client.start_process(["seq", "1", "100000"], env=ENV)
        await support.with_timeout(stream.when_closed())
        self.assertEqual(stream.receiver.output(),
                         b"".join(b"%d\n" % n for n in range(1, 100001)))
        self.assertEqual(len(proxy.cuts), 4)
        self.assertEqual(client.state, "ready")

    async def test_a_session_that_is_gone_fails_everything_with_one_error(self):
        proxy = self.proxy([])
        client = await self.client(proxy)
        sleeper = await client.start_process(["sleep", "100"], env=ENV, pipe_stdin=True)
        other = await support.start_server("ours")
        self.addCleanup(lambda: ensureDeferred(other.stop()))
        address = urlsplit(other.url)
        proxy.upstream = (address.hostname, address.port)
        proxy.cut_all()
        writing = sleeper.write(b"x")
        status = client.environment_status()
        errors = []
        for pending in (sleeper.when_closed(), writing, status):
            with self.assertRaises(RecoveryFailed) as caught:
                await support.with_timeout(pending)
            errors.append(str(caught.exception))
        self.assertEqual(len(set(errors)), 1)
        self.assertIn("unknown session id", errors[0])
        self.assertEqual(client.state, "failed")
