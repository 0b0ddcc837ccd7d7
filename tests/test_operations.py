"""
Operating a server: the Prometheus scrape of a busy server, /readyz and
the graceful drain on SIGTERM, systemd notification.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import tempfile

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred, succeed
from twisted.trial import unittest
from twisted.web.client import Agent, readBody

from execserver.readiness import Readiness, SystemdNotifier
from tests import support
from tests.test_interop_envelope import UPGRADE, raw_http


async def http_get(url: str) -> tuple[int, bytes]:
    response = await support.with_timeout(Agent(reactor).request(b"GET", url.encode()))
    return response.code, await support.with_timeout(readBody(response))


def admin_url(server: support.RunningServer) -> str:
    """
    The admin listener's URL, announced on its own line before the
    WebSocket's.
    """
    for line in server.proto.stdout.decode().splitlines():
        if line.startswith("http://"):
            return line
    raise AssertionError(f"no admin URL in {server.proto.stdout!r}")


def samples(text: str) -> dict[tuple, float]:
    """
    Every sample of a scrape: (name, sorted labels) -> value.
    """
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


async def open_session(url: str) -> support.MessageQueue:
    queue = await support.connect(url)
    queue.send({"id": "init", "method": "initialize", "params": {"clientName": "t"}})
    await queue.response("init")
    queue.send({"method": "initialized"})
    return queue


def closed(queue: support.MessageQueue, process_id: str) -> Deferred:
    return queue.notification(lambda m: m["method"] == "process/closed"
                              and m["params"]["processId"] == process_id)


class MetricsTests(unittest.TestCase):
    timeout = 60

    async def test_scrape_of_a_busy_server(self):
        server = await support.serve(self, "ours", ["--admin-listen", "http://127.0.0.1:0"])
        metrics_url = admin_url(server) + "/metrics"
        other = await open_session(server.url)
        await other.close()
        queue = await open_session(server.url)
        for n, program in enumerate(["/bin/true", "/bin/true", "/bin/true", "/bin/false"]):
            queue.send({"id": n, "method": "process/start",
                        "params": support.start_params(f"p{n}", [program])})
            await queue.response(n)
            await closed(queue, f"p{n}")
        queue.send({"id": "sleep", "method": "process/start",
                    "params": support.start_params("sleep", ["/bin/sleep", "100"])})
        await queue.response("sleep")
        queue.send({"id": "missing", "method": "fs/readFile",
                    "params": {"path": "file:///nonexistent/file"}})
        self.assertIn("error", await queue.response("missing"))
        queue.send({"id": "bogus", "method": "bogus/method", "params": {}})
        self.assertIn("error", await queue.response("bogus"))

        status, body = await http_get(metrics_url)
        self.assertEqual(status, 200)
        found = samples(body.decode())
        expected = {
            ("exec_server_connections_total", (("result", "accepted"), ("transport", "websocket"))): 2,
            ("exec_server_connections_active", (("transport", "websocket"),)): 1,
            ("exec_server_connections_active", (("transport", "stdio"),)): 0,
            ("exec_server_requests_total", (("method", "initialize"), ("result", "success"))): 2,
            ("exec_server_requests_total", (("method", "process/start"), ("result", "success"))): 5,
            ("exec_server_request_duration_seconds_count",
             (("method", "process/start"), ("result", "success"))): 5,
            ("exec_server_requests_total", (("method", "fs/readFile"), ("result", "error"))): 1,
            ("exec_server_requests_total", (("method", "unknown"), ("result", "error"))): 1,
            ("exec_server_processes_active", ()): 1,
            ("exec_server_processes_finished_total", (("result", "success"),)): 3,
            ("exec_server_processes_finished_total", (("result", "failure"),)): 1,
            ("exec_server_process_duration_seconds_count", (("result", "success"),)): 3,
        }
        self.maxDiff = None
        self.assertEqual({key: found.get(key) for key in expected}, expected)
        self.assertEqual(await http_get(admin_url(server) + "/readyz"), (200, b""))
        await queue.close()


class DrainTests(unittest.TestCase):
    timeout = 60

    async def test_running_processes_get_the_grace_period(self):
        """
        On SIGTERM: /readyz (both listeners) and new upgrades answer 503,
        clients get 1001, and a running process may finish on its own.
        """
        directory = support.scratch_directory(self, "execserver-drain-")
        fifo, done = os.path.join(directory, "go"), os.path.join(directory, "done")
        os.mkfifo(fifo)
        server = await support.start_server(
            "ours", ["--admin-listen", "http://127.0.0.1:0", "--shutdown-grace-period", "60"])
        self.addCleanup(server.stop)
        queue = await open_session(server.url)
        queue.send({"id": 1, "method": "process/start", "params": support.start_params(
            "p", ["/bin/sh", "-c", f"echo $$; read x < {fifo}; echo finished > {done}"])})
        output = await queue.notification(lambda m: m["method"] == "process/output")
        pid = int(base64.b64decode(output["params"]["chunk"]))

        server.process.signalProcess("TERM")
        reason = await queue.lost
        self.assertEqual(reason.args, (1001, "server shutting down"))
        self.assertEqual(await http_get(admin_url(server) + "/readyz"), (503, b""))
        self.assertEqual(await http_get(server.url.replace("ws://", "http://") + "/readyz"),
                         (503, b""))
        refused = await raw_http(server.url, b"GET / HTTP/1.1\r\nHost: x\r\n" + UPGRADE + b"\r\n")
        self.assertEqual((refused["status"], refused["body"]), ("503", "server shutting down"))
        os.kill(pid, 0)

        with open(fifo, "w") as f:
            f.write("go\n")
        await support.with_timeout(server.proto.ended)
        with open(done) as f:
            self.assertEqual(f.read(), "finished\n")

    async def test_what_outlives_the_grace_period_is_killed(self):
        server = await support.start_server("ours", ["--shutdown-grace-period", "0.2"])
        self.addCleanup(server.stop)
        queue = await open_session(server.url)
        queue.send({"id": 1, "method": "process/start", "params": support.start_params(
            "p", ["/bin/sh", "-c", "echo $$; exec sleep 100"])})
        output = await queue.notification(lambda m: m["method"] == "process/output")
        pid = int(base64.b64decode(output["params"]["chunk"]))
        server.process.signalProcess("TERM")
        await support.with_timeout(server.proto.ended)
        await support.process_gone(pid)


class _Datagrams(protocol.DatagramProtocol):
    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.waiting: list[tuple[bytes, Deferred]] = []

    def datagramReceived(self, data: bytes, address) -> None:
        self.received.append(data)
        for expected, waiter in list(self.waiting):
            if data == expected:
                self.waiting.remove((expected, waiter))
                waiter.callback(data)

    def wait_for(self, expected: bytes) -> Deferred:
        if expected in self.received:
            return succeed(expected)
        waiter = Deferred()
        self.waiting.append((expected, waiter))
        return support.with_timeout(waiter)


class SystemdNotifyTests(unittest.TestCase):
    timeout = 60

    async def test_ready_then_stopping(self):
        directory = tempfile.mkdtemp(prefix="execserver-notify-")
        self.addCleanup(os.rmdir, directory)
        path = os.path.join(directory, "notify")
        datagrams = _Datagrams()
        port = reactor.listenUNIXDatagram(path, datagrams)
        self.addCleanup(os.unlink, path)
        self.addCleanup(port.stopListening)
        server = await support.start_server("ours", env={"NOTIFY_SOCKET": path})
        self.addCleanup(server.stop)
        await datagrams.wait_for(b"READY=1")
        server.process.signalProcess("TERM")
        await datagrams.wait_for(b"STOPPING=1")
        await support.with_timeout(server.proto.ended)
        self.assertEqual(datagrams.received, [b"READY=1", b"STOPPING=1"])


class ReadinessTests(unittest.SynchronousTestCase):
    def test_conditions_and_draining(self):
        readiness = Readiness()
        seen = []
        readiness.subscribe(lambda r: seen.append((r.ready, r.draining)))
        readiness.require("registered")
        readiness.require("connected")
        readiness.met("registered")
        readiness.met("connected")
        readiness.lost("connected")
        readiness.met("connected")
        readiness.drain()
        readiness.met("connected")
        self.assertEqual(seen, [(True, False), (False, False), (True, False), (False, False),
                                (True, False), (False, True)])

    def test_notifier_says_ready_once_and_stopping_once(self):
        directory = tempfile.mkdtemp(prefix="execserver-notify-")
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "notify")
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(receiver.close)
        receiver.bind(path)
        receiver.setblocking(False)
        readiness = Readiness()
        readiness.require("connected")
        readiness.subscribe(SystemdNotifier(path))
        for change in (lambda: readiness.met("connected"), lambda: readiness.lost("connected"),
                       lambda: readiness.met("connected"), readiness.drain):
            change()
        sent = []
        while True:
            try:
                sent.append(receiver.recv(100))
            except BlockingIOError:
                break
        self.assertEqual(sent, [b"READY=1", b"STOPPING=1"])

    def test_abstract_socket_address(self):
        self.assertEqual(SystemdNotifier("@name").address, "\0name")

    def test_notify_socket_is_taken_out_of_the_environment(self):
        environ = {"NOTIFY_SOCKET": "/run/x", "OTHER": "y"}
        notifier = SystemdNotifier.from_environment(environ)
        self.assertEqual((notifier.address, environ), ("/run/x", {"OTHER": "y"}))
        self.assertIsNone(SystemdNotifier.from_environment({}))
