"""
The twistd plugin: options, and a daemonized server with its pidfile and
logfile.
"""

import base64
import ipaddress
import os
import re
import signal
import socket
import sys
import tempfile

from twisted.internet import defer, protocol, reactor
from twisted.internet.defer import Deferred
from twisted.python import usage
from twisted.trial import unittest

import execserver
from execserver import listening
from execserver.service import Options
from tests import support


class OptionsTests(unittest.SynchronousTestCase):
    def parse(self, *args):
        options = Options()
        options.parseOptions(list(args))
        return options

    def test_defaults(self):
        options = self.parse()
        self.assertEqual((options.listen_target(), options["concurrent-requests"],
                          options["handshake-timeout"], options["shutdown-grace-period"],
                          options["admin-listen"]),
                         (listening.ListenTarget("tcp:8765:interface=127.0.0.1", "127.0.0.1:8765",
                                                 ipaddress.ip_address("127.0.0.1")),
                          1, 60.0, 0.0, None))

    def test_stdio_spellings(self):
        self.assertTrue(self.parse("--listen", "stdio://").listen_target().stdio)
        self.assertTrue(self.parse("--listen", "stdio").listen_target().stdio)

    def test_bad_values(self):
        for args in (["--interface", "localhost"], ["--port", "70000"],
                     ["--concurrent-requests", "0"], ["--port", "x"], ["--handshake-timeout", "-1"],
                     ["--linux-sandbox-pid-namespace", "shared"], ["--ws-auth", "basic"],
                     ["--ws-max-clock-skew-seconds", "-1"], ["--shutdown-grace-period", "-1"],
                     ["--listen", "ws://127.0.0.1:0", "--port", "1"]):
            self.assertRaises(usage.UsageError, self.parse, *args)

    def test_ipv6(self):
        self.assertEqual(self.parse("--interface", "::1").listen_target().description,
                         "tcp6:8765:interface=\\:\\:1")


class _Finished(protocol.ProcessProtocol):
    def __init__(self):
        self.ended = Deferred()
        self.out = []
        self.err = []

    def outReceived(self, data):
        self.out.append(data)

    def errReceived(self, data):
        self.err.append(data)

    def processEnded(self, reason):
        self.ended.callback(reason.value.exitCode)


async def twistd(*args: str, cwd: str) -> _Finished:
    """
    Run twistd with C{args} to its end.
    """
    argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", *args]
    finished = _Finished()
    reactor.spawnProcess(finished, argv[0], argv, env=support.server_environment(), path=cwd)
    finished.status = await support.with_timeout(finished.ended)
    return finished


class CommandLineTests(unittest.TestCase):
    timeout = 60

    async def test_version(self):
        run = await twistd("execserver", "--version", cwd=tempfile.gettempdir())
        self.assertEqual((run.status, b"".join(run.out)),
                         (0, f"execserver {execserver.__version__}\n".encode()))

    async def test_a_port_in_use_is_one_line_in_either_mode(self):
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        directory = support.scratch_directory(self, "execserver-service-")
        expected = f"Error: cannot listen on 127.0.0.1:{port}: Address already in use\n"
        for mode in (["-n", "--pidfile="],
                     ["--pidfile", os.path.join(directory, "p.pid"),
                      "--logfile", os.path.join(directory, "p.log")]):
            run = await twistd(*mode, "execserver", "--port", str(port), cwd=directory)
            self.assertEqual((run.status, b"".join(run.err).decode(), b"".join(run.out)),
                             (1, expected, b""), mode)
        self.assertEqual(os.listdir(directory), [])


class DaemonTests(unittest.TestCase):
    timeout = 60

    async def test_daemonized_server_serves_and_stops(self):
        directory = tempfile.mkdtemp()
        pidfile = os.path.join(directory, "execserver.pid")
        logfile = os.path.join(directory, "execserver.log")
        argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                "--pidfile", pidfile, "--logfile", logfile, "execserver", "--port", "0"]
        launcher = _Finished()
        reactor.spawnProcess(launcher, argv[0], argv, env=support.server_environment(), path=directory)
        # twistd's launcher exits only once the daemon has started its
        # services, so the port is open and logged by now.
        self.assertEqual(await support.with_timeout(launcher.ended), 0)
        with open(pidfile) as f:
            pid = int(f.read())
        self.addCleanup(lambda: os.path.exists(pidfile) and os.kill(pid, signal.SIGKILL))
        with open(logfile) as f:
            url = re.search(r"listening on (ws://\S+)", f.read()).group(1)
        queue = await support.connect(url)
        queue.send({"id": 1, "method": "initialize", "params": {"clientName": "t"}})
        self.assertIn("sessionId", (await queue.response(1))["result"])
        await queue.close()
        os.kill(pid, signal.SIGTERM)
        await support.process_gone(pid)
        self.assertFalse(os.path.exists(pidfile))


class ShutdownTests(unittest.TestCase):
    timeout = 60

    async def test_sigterm_kills_every_process_group(self):
        server = await support.start_server("ours")
        queue = await support.connect(server.url)
        queue.send({"id": 1, "method": "initialize", "params": {"clientName": "t"}})
        await queue.response(1)
        queue.send({"method": "initialized"})
        queue.send({"id": 2, "method": "process/start", "params": support.start_params(
            "p", ["/bin/sh", "-c", "sleep 100 & echo $$ $!; wait"])})
        output = await queue.notification(lambda m: m["method"] == "process/output")
        leader, background = map(int, base64.b64decode(output["params"]["chunk"]).split())
        await server.stop()
        await support.process_gone(leader)
        await support.process_gone(background)
        await queue.lost

    async def test_sigterm_closes_websockets_before_killing_processes(self):
        # A Close frame with 1001 tells clients that the server is going
        # away (no point in resuming); the processes die after it, so no
        # client sees their deaths as exits.
        server = await support.start_server("ours")
        queue = await support.connect(server.url)
        queue.send({"id": 1, "method": "initialize", "params": {"clientName": "t"}})
        await queue.response(1)
        queue.send({"method": "initialized"})
        queue.send({"id": 2, "method": "process/start", "params": support.start_params(
            "p", ["/bin/sleep", "100"])})
        await queue.response(2)
        await server.stop()
        reason = await queue.lost
        self.assertEqual(reason.args, (1001, "server shutting down"))
        self.assertEqual(queue.messages, [])


class IgnoredInterruptTests(unittest.TestCase):
    timeout = 60

    async def test_a_server_started_with_sigint_ignored_stops_on_it(self):
        """
        As the reference does: a server started by nohup or a shell's &
        still stops on SIGINT.
        """
        for kind in ("reference", "ours"):
            server = await support.start_server(kind, ignored_signals=(signal.SIGINT,))
            # The reference may announce its URL before it handles SIGINT
            # (a signal sent in between is still ignored): one exchange
            # with it first.
            queue = await support.connect(server.url)
            queue.send({"id": 1, "method": "initialize", "params": {"clientName": "t"}})
            await queue.response(1)
            self.assertTrue(_catches(server.pid, signal.SIGINT), kind)
            server.process.signalProcess("INT")
            self.assertEqual(_status(await support.with_timeout(server.proto.ended)), 0, kind)


class ExitStatusTests(unittest.TestCase):
    timeout = 60

    async def test_a_stop_by_signal_exits_0_as_the_reference_does(self):
        for kind in ("reference", "ours"):
            for name in ("TERM", "INT"):
                server = await support.start_server(kind)
                queue = await support.connect(server.url)
                queue.send({"id": 1, "method": "initialize", "params": {"clientName": "t"}})
                await queue.response(1)
                server.process.signalProcess(name)
                self.assertEqual(_status(await support.with_timeout(server.proto.ended)), 0,
                                 (kind, name))


def _status(ended) -> int | None:
    """The exit status of a process that ended with C{ended} (None: a signal)."""
    return ended.exitCode


def _catches(pid: int, signum: int) -> bool:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) & (1 << (signum - 1)))
    return False


class KilledServerTests(unittest.TestCase):
    timeout = 60

    async def test_children_die_with_a_killed_server(self):
        """
        A server killed with SIGKILL cannot kill its process groups; its
        guardian does, background jobs included, in pipe and terminal mode.
        """
        server = await support.start_server("ours")
        self.addCleanup(lambda: defer.ensureDeferred(server.stop()))
        queue = await support.connect(server.url)
        queue.send({"id": 1, "method": "initialize", "params": {"clientName": "t"}})
        await queue.response(1)
        queue.send({"method": "initialized"})
        pids = []
        for n, tty in enumerate((False, True)):
            queue.send({"id": 2 + n, "method": "process/start", "params": support.start_params(
                f"p{n}", ["/bin/sh", "-c", "sleep 100 & echo $$ $!; wait"], tty=tty)})
            output = await queue.notification(lambda m: m["method"] == "process/output"
                                              and m["params"]["processId"] == f"p{n}")
            pids += map(int, base64.b64decode(output["params"]["chunk"]).split())
        server.process.signalProcess("KILL")
        await queue.lost
        for pid in pids:
            await support.process_gone(pid)
