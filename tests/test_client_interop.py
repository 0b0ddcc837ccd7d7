"""
The client library against real servers: ours and the reference, each in a
child process, with real child processes, files and HTTP.

Every scenario runs against both servers (L{ClientScenarios}). Where the
servers deliberately differ (ours holds a detached session's output, the
reference drops what overflows its replay window) the test says so.
"""

from __future__ import annotations

import base64
import hashlib
import os
import json

from twisted.internet import reactor, threads
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
from twisted.trial import unittest
from zope.interface import implementer

from execserver import paths
from execserver.client import (
    ExecServerClient,
    IConnector,
    OutputLost,
    RemoteError,
    ServerGoingAway,
    StartNotApplied,
    StdioConnector,
    WebSocketConnector,
)
from execserver.client.process import OutputCollector
from tests import support
from tests.httpserver import Origin, pattern

ENV = {"PATH": "/usr/bin:/bin"}

#: More than the servers' 1 MiB replay window.
BEYOND_WINDOW = 3 * 1024 * 1024


@implementer(IConnector)
class GatedConnector:
    """
    A WebSocket connector whose connection attempts wait while the test
    holds its gate closed: the test decides how long an outage lasts.
    """

    resumable = True

    def __init__(self, url: str) -> None:
        self.inner = WebSocketConnector(reactor, url)
        self.description = url
        self._closed = False
        self._waiting: list[Deferred] = []

    def close_gate(self) -> None:
        self._closed = True

    def open_gate(self) -> None:
        self._closed = False
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.callback(None)

    def connect(self, protocol) -> Deferred:
        if not self._closed:
            return self.inner.connect(protocol)
        waiter = Deferred()
        self._waiting.append(waiter)
        return waiter.addCallback(lambda _: self.inner.connect(protocol))


class Waiter(OutputCollector):
    """
    Collects output and fires when it contains some text.
    """

    def __init__(self) -> None:
        super().__init__()
        self._wanted: list[tuple[bytes, Deferred]] = []

    def contains(self, text: bytes) -> Deferred:
        waiter = Deferred()
        self._wanted.append((text, waiter))
        self._check()
        return support.with_timeout(waiter)

    def outputReceived(self, stream: str, data: bytes) -> None:
        super().outputReceived(stream, data)
        self._check()

    def _check(self) -> None:
        output = self.output()
        for entry in list(self._wanted):
            if entry[0] in output:
                self._wanted.remove(entry)
                entry[1].callback(output)


def release(fifo: str) -> Deferred:
    """
    Let a child blocked reading C{fifo} go on (it reads end of file). The
    open waits in a thread until the child has the FIFO open.
    """
    return support.with_timeout(threads.deferToThread(lambda: os.close(os.open(fifo, os.O_WRONLY))))


def seq_output(count: int) -> bytes:
    return b"".join(b"%d\n" % n for n in range(1, count + 1))


class ClientScenarios:
    kind: str

    def setUp(self):
        return ensureDeferred(self._set_up())

    async def _set_up(self) -> None:
        self.server = await support.serve(self, self.kind)
        self.workdir = support.scratch_directory(self, "execserver-client-")
        self.connector = GatedConnector(self.server.url)
        self.client = await self.connect(self.connector)

    async def connect(self, connector) -> ExecServerClient:
        client = ExecServerClient(connector, reactor)
        self.addCleanup(client.close)
        await support.with_timeout(client.connect())
        return client

    def path(self, name: str) -> str:
        return os.path.join(self.workdir, name)

    async def run_process(self, argv, **kwargs) -> tuple[int, OutputCollector]:
        handle = await self.client.start_process(argv, env=ENV, cwd=self.workdir, **kwargs)
        code = await support.with_timeout(handle.when_closed())
        return code, handle.receiver

    async def disconnected(self, outage) -> None:
        """
        Drop the connection, run C{outage} while the client cannot
        reconnect, then let it.
        """
        self.connector.close_gate()
        self.client.drop_connection()
        try:
            await outage()
        finally:
            self.connector.open_gate()

    # Processes

    async def test_stdout_stderr_and_exit_code(self):
        code, output = await self.run_process(["sh", "-c", "echo out; echo err >&2; exit 3"])
        self.assertEqual((code, output.output("stdout"), output.output("stderr")),
                         (3, b"out\n", b"err\n"))

    async def test_stdin_is_written_once_per_write(self):
        handle = await self.client.start_process(["head", "-c", "10"], env=ENV, pipe_stdin=True)
        statuses = [await handle.write(b"01234"), await handle.write(b"56789")]
        self.assertEqual(await support.with_timeout(handle.when_closed()), 0)
        self.assertEqual((statuses, handle.receiver.output()), (["accepted"] * 2, b"0123456789"))

    async def test_a_terminal_merges_its_output(self):
        code, output = await self.run_process(["sh", "-c", "echo out; echo err >&2"], tty=True)
        self.assertEqual((code, [stream for stream, _ in output.chunks][:1], output.output()),
                         (0, ["pty"], b"out\r\nerr\r\n"))

    async def test_many_short_processes_deliver_everything(self):
        results = await gatherResults([
            ensureDeferred(self.run_process(["sh", "-c", f"echo {n}"])) for n in range(20)
        ])
        self.assertEqual([output.output() for _, output in results],
                         [b"%d\n" % n for n in range(20)])

    async def test_large_output_arrives_in_order(self):
        code, output = await self.run_process(["seq", "1", "500000"])
        self.assertEqual(hashlib.sha256(output.output()).hexdigest(),
                         hashlib.sha256(seq_output(500000)).hexdigest())

    async def test_interrupt_and_terminate(self):
        # `exec`: dash can miss a SIGINT that arrives while it starts a command.
        waiter = Waiter()
        interrupted = await self.client.start_process(
            ["sh", "-c", "echo ready; exec sleep 100"], env=ENV, receiver=waiter)
        await waiter.contains(b"ready")
        await interrupted.signal()
        self.assertEqual(await support.with_timeout(interrupted.when_closed()), 130)
        sleeper = await self.client.start_process(["sleep", "100"], env=ENV)
        self.assertTrue(await sleeper.terminate())
        self.assertEqual(await support.with_timeout(sleeper.when_closed()), 137)

    async def test_closing_stdin(self):
        """
        process/closeStdin is our extension: the reference does not know it.
        """
        handle = await self.client.start_process(["sh", "-c", "cat; echo end"], env=ENV,
                                                 pipe_stdin=True)
        await handle.write(b"hello\n")
        if self.kind == "reference":
            with self.assertRaises(RemoteError) as caught:
                await handle.close_stdin()
            self.assertEqual((caught.exception.code, caught.exception.message), (
                -32601, "exec-server stub does not implement `process/closeStdin` yet"))
            await handle.terminate()
            self.assertEqual(await support.with_timeout(handle.when_closed()), 137)
        else:
            self.assertIsNone(await handle.close_stdin())
            self.assertEqual(await support.with_timeout(handle.when_closed()), 0)
            self.assertEqual(handle.receiver.output(), b"hello\nend\n")

    async def test_a_failed_start_names_the_error(self):
        with self.assertRaises(RemoteError) as caught:
            await self.client.start_process(["/nonexistent/program"], env=ENV)
        self.assertEqual((caught.exception.code, caught.exception.message),
                         (-32603, "No such file or directory (os error 2)"))

    # Recovery

    async def test_writes_in_flight_land_once_across_a_drop(self):
        pieces = [b"%05d;" % n for n in range(200)]
        total = sum(map(len, pieces))
        handle = await self.client.start_process(["head", "-c", str(total)], env=ENV,
                                                 pipe_stdin=True)
        writes = []
        for number, piece in enumerate(pieces):
            writes.append(handle.write(piece))
            if number == 100:
                self.client.drop_connection()
        self.assertEqual(set(await gatherResults(writes)), {"accepted"})
        self.assertEqual(await support.with_timeout(handle.when_closed()), 0)
        self.assertEqual(handle.receiver.output(), b"".join(pieces))

    async def test_output_made_while_away_is_caught_up(self):
        fifo = self.path("go")
        os.mkfifo(fifo)
        waiter = Waiter()
        handle = await self.client.start_process(
            ["sh", "-c", f"echo $$; cat {fifo} >/dev/null; echo after; exit 4"],
            env=ENV, receiver=waiter)
        pid = int(await waiter.contains(b"\n"))

        async def outage():
            await release(fifo)
            await support.process_gone(pid)

        await self.disconnected(outage)
        self.assertEqual(await support.with_timeout(handle.when_closed()), 4)
        self.assertEqual(handle.receiver.output(), b"%d\nafter\n" % pid)
        self.assertEqual(await self.client.environment_status(), "ready")

    async def test_output_beyond_the_replay_window_while_away(self):
        """
        The reference drops what overflows its window while nobody reads:
        that process fails alone with OutputLost. Ours holds the output
        (pausing the child) until the client is back: nothing is lost.
        """
        fifo = self.path("go")
        os.mkfifo(fifo)
        waiter = Waiter()
        flood = await self.client.start_process(
            ["sh", "-c", f"echo $$; cat {fifo} >/dev/null; seq 1 500000"],
            env=ENV, receiver=waiter)
        pid = int(await waiter.contains(b"\n"))
        bystander = await self.client.start_process(["head", "-c", "3"], env=ENV, pipe_stdin=True)

        async def outage():
            await release(fifo)
            if self.kind == "reference":
                await support.process_gone(pid)

        await self.disconnected(outage)
        if self.kind == "reference":
            with self.assertRaises(OutputLost) as caught:
                await support.with_timeout(flood.when_closed())
            self.assertEqual(caught.exception.process_id, flood.process_id)
            self.assertIn("fell out of the server's replay window", str(caught.exception))
        else:
            self.assertEqual(await support.with_timeout(flood.when_closed()), 0)
            self.assertEqual(flood.receiver.output(), b"%d\n" % pid + seq_output(500000))
        await bystander.write(b"ok\n")
        self.assertEqual(await support.with_timeout(bystander.when_closed()), 0)
        self.assertEqual(bystander.receiver.output(), b"ok\n")

    async def test_a_start_lost_with_the_connection_is_reported_as_not_started(self):
        # Aborting discards the request before it leaves: the resumed
        # session has no such process.
        starting = self.client.start_process(["sh", "-c", "echo hi"], env=ENV, process_id="lost")
        self.client.drop_connection()
        with self.assertRaises(StartNotApplied):
            await support.with_timeout(starting)
        handle = await self.client.start_process(["sh", "-c", "echo hi"], env=ENV, process_id="lost")
        self.assertEqual(await support.with_timeout(handle.when_closed()), 0)

    # Files

    async def test_files_round_trip(self):
        fs = self.client.fs
        target = self.path("a.txt")
        await fs.write_file(target, b"hello")
        self.assertEqual(await fs.read_file(target), b"hello")
        metadata = await fs.get_metadata(target)
        self.assertEqual((metadata.is_file, metadata.is_directory, metadata.size), (True, False, 5))
        await fs.create_directory(self.path("sub/deeper"))
        await fs.copy(target, self.path("sub/b.txt"))
        entries = sorted((e.file_name, e.is_directory) for e in await fs.read_directory(self.workdir))
        self.assertEqual(entries, [("a.txt", False), ("sub", True)])
        self.assertEqual(await fs.canonicalize(self.path("sub/../a.txt")),
                         paths.from_host_path(os.path.realpath(target)))
        walked = await fs.walk(self.workdir, max_depth=4, max_directories=10, max_entries=10)
        self.assertEqual(sorted(entry["path"].rsplit("/", 1)[-1] for entry in walked["entries"]),
                         ["a.txt", "b.txt", "deeper", "sub"])
        await fs.remove(self.path("sub"))
        self.assertFalse(os.path.exists(self.path("sub")))
        with self.assertRaises(RemoteError) as caught:
            await fs.read_file(self.path("missing"))
        self.assertEqual(caught.exception.code, -32004)

    async def test_a_file_is_streamed_in_blocks(self):
        data = os.urandom(3 * 1024 * 1024 + 5)
        with open(self.path("big"), "wb") as f:
            f.write(data)
        blocks = []
        total = await self.client.fs.stream(self.path("big"), blocks.append)
        self.assertEqual((total, [len(b) for b in blocks], b"".join(blocks)),
                         (len(data), [1048576, 1048576, 1048576, 5], data))

    async def test_a_file_is_written_in_blocks(self):
        data = os.urandom(2 * 1024 * 1024 + 7)
        pieces = [data[:1500000], data[1500000:], b""]

        async def read():
            return pieces.pop(0)

        written = await self.client.fs.write_stream(self.path("out"), lambda: ensureDeferred(read()))
        with open(self.path("out"), "rb") as f:
            self.assertEqual((written, f.read()), (len(data), data))

    # HTTP

    async def origin(self) -> Origin:
        origin = await Origin().start()
        self.addCleanup(lambda: ensureDeferred(origin.stop()))
        return origin

    async def test_http_buffered(self):
        origin = await self.origin()
        response = await self.client.http.request("POST", origin.url("/echo"),
                                                  headers=[("x-probe", "1")], body=b"hi")
        self.assertEqual((response.status, response.header("content-type")),
                         (200, "application/json"))
        seen = json.loads(response.body)
        self.assertEqual((seen["method"], base64.b64decode(seen["body"])), ("POST", b"hi"))
        self.assertIn(["x-probe", "1"], seen["headers"])

    async def test_http_streamed_body(self):
        origin = await self.origin()
        size = 3 * 1024 * 1024
        response = await self.client.http.request("GET", origin.url(f"/bytes?n={size}"),
                                                  stream=True)
        self.assertEqual(response.status, 200)
        body = await support.with_timeout(response.stream.content())
        self.assertEqual(body, pattern(size))

    # Connectors

    async def test_over_stdio(self):
        if self.kind == "reference":
            argv = [support.reference_binary(), "exec-server", "--listen", "stdio"]
            env = support.server_environment({"CODEX_HOME": self.workdir})
        else:
            argv = None
            env = support.server_environment()
        connector = StdioConnector(reactor, argv, env=env, path=self.workdir)
        client = await self.connect(connector)
        handle = await client.start_process(["sh", "-c", "echo over stdio"], env=ENV)
        self.assertEqual(await support.with_timeout(handle.when_closed()), 0)
        self.assertEqual(handle.receiver.output(), b"over stdio\n")
        client.close()
        await support.with_timeout(connector.ended)


class OursTests(ClientScenarios, unittest.TestCase):
    kind = "ours"

    async def test_a_server_that_stops_fails_everything_at_once(self):
        # The reference drops its connections without a word, so a client
        # of it tries to resume for RECOVERY_SECONDS instead.
        handle = await self.client.start_process(["sleep", "100"], env=ENV)
        await self.server.stop()
        with self.assertRaises(ServerGoingAway) as caught:
            await support.with_timeout(handle.when_closed())
        self.assertEqual(str(caught.exception), f"the server {self.server.url} is shutting down")
        self.assertEqual(self.client.state, "failed")


class ReferenceTests(ClientScenarios, unittest.TestCase):
    kind = "reference"
