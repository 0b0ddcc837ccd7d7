"""
Where the server listens, and why it refuses to start: --listen in the
reference's form and as Twisted endpoints (UNIX sockets, systemd socket
activation), the startup errors of --listen and --ws-auth compared with the
reference's, and the refusal of a non-loopback listener without auth.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import sys
import tempfile

from twisted.internet import endpoints, protocol, reactor
from twisted.internet.defer import Deferred
from twisted.trial import unittest

from execserver import listening, service
from execserver.transports import websocket
from tests import support

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


class _Run(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.ended = Deferred()
        self.out = b""
        self.err = b""

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason) -> None:
        self.ended.callback(reason.value.exitCode)


async def run_to_end(argv: list[str], cwd: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """
    Run C{argv} until it ends: its exit status and the first line of its
    stderr.
    """
    run = _Run()
    reactor.spawnProcess(run, argv[0], argv, env=support.server_environment(env), path=cwd)
    status = await support.with_timeout(run.ended)
    return status, run.err.decode(errors="replace").split("\n")[0]


def ours(*args: str) -> list[str]:
    return [*TWISTD, "-n", "--pidfile=", "execserver", *args]


def reference(*args: str) -> list[str]:
    return [support.reference_binary(), "exec-server", *args]


class ParseListenTests(unittest.SynchronousTestCase):
    def test_websocket_urls(self):
        self.assertEqual(
            [listening.parse_listen(url).description
             for url in ("ws://127.0.0.1:0", "ws://[::1]:8765", "ws://0.0.0.0:080")],
            ["tcp:0:interface=127.0.0.1", "tcp6:8765:interface=\\:\\:1", "tcp:80:interface=0.0.0.0"])

    def test_endpoints_pass_through(self):
        for description in ("unix:/run/x.sock", "systemd:domain=INET:index=0", "tcp:0"):
            self.assertEqual(listening.parse_listen(description).description, description)

    def test_admin_listen(self):
        self.assertEqual(
            [listening.parse_admin_listen(x).description
             for x in ("http://127.0.0.1:9100", "http://[::1]:0", "unix:/run/m.sock")],
            ["tcp:9100:interface=127.0.0.1", "tcp6:0:interface=\\:\\:1", "unix:/run/m.sock"])
        for bad in ("ws://127.0.0.1:9100", "http://localhost:9100", "9100"):
            self.assertRaises(listening.ListenError, listening.parse_admin_listen, bad)

    def test_local_addresses(self):
        from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

        self.assertEqual(
            [listening.is_local(address) for address in (
                IPv4Address("TCP", "127.0.0.2", 1), IPv6Address("TCP", "::1", 1),
                IPv6Address("TCP", "::ffff:127.0.0.1", 1), UNIXAddress(b"/x"),
                IPv4Address("TCP", "0.0.0.0", 1), IPv6Address("TCP", "::", 1),
                IPv4Address("TCP", "192.0.2.1", 1))],
            [True, True, True, True, False, False, False])


class BacklogTests(unittest.TestCase):
    """
    A burst of clients connecting while the server is busy is held by the
    kernel until the server accepts them, not dropped.
    """

    #: More than the reference's backlog (128), far more than Twisted's (50).
    BURST = 300

    def test_descriptions(self):
        self.assertEqual(
            [listening.with_backlog(d) for d in (
                "tcp:0:interface=127.0.0.1", "tcp6:0", "unix:/run/x.sock",
                "tcp:0:backlog=5", "systemd:domain=INET:index=0")],
            [f"tcp:0:interface=127.0.0.1:backlog={listening.LISTEN_BACKLOG}",
             f"tcp6:0:backlog={listening.LISTEN_BACKLOG}",
             f"unix:/run/x.sock:backlog={listening.LISTEN_BACKLOG}",
             "tcp:0:backlog=5", "systemd:domain=INET:index=0"])

    def test_burst_while_not_accepting(self):
        port = service.listen_now(reactor, "tcp:0:interface=127.0.0.1",
                                  protocol.Factory.forProtocol(protocol.Protocol), "test")
        self.addCleanup(port.stopListening)
        # Not accepting: every connection waits in the kernel's queue.
        port.stopReading()
        address = ("127.0.0.1", port.getHost().port)
        clients = []
        try:
            for _ in range(self.BURST):
                client = socket.socket()
                clients.append(client)
                # A dropped SYN is retried after 1 s, 3 s...: a full queue
                # shows as a connect that times out.
                client.settimeout(support.EVENT_TIMEOUT)
                client.connect(address)
        finally:
            for client in clients:
                client.close()
        self.assertEqual(len(clients), self.BURST)


#: Arguments both servers refuse at startup with the same line.
SAME_ERROR = [
    ["--listen", "ws://localhost:0"],
    ["--listen", "ws://127.0.0.1"],
    ["--listen", "ws://127.0.0.1:0/"],
    ["--listen", "ws://127.0.0.1:0?x"],
    ["--listen", "ws://127.0.0.1:99999"],
    ["--listen", "ws://127.0.0.1:+80"],
    ["--listen", "ws://[::1]"],
    ["--listen", "ws://::1:0"],
    ["--listen", "ws://127.1:0"],
    ["--listen", "ws://user@127.0.0.1:0"],
    ["--listen", "ws://[fe80::1%lo]:0"],
    ["--ws-auth", "capability-token"],
    ["--ws-auth", "capability-token", "--ws-token-file", "{token}", "--ws-token-sha256", "ab"],
    ["--ws-auth", "capability-token", "--ws-token-sha256", "ab"],
    ["--ws-auth", "capability-token", "--ws-token-sha256", "g" * 64],
    ["--ws-auth", "capability-token", "--ws-token-sha256", "ab", "--listen", "ws://localhost:0"],
    ["--ws-auth", "capability-token", "--ws-token-file", "{token}", "--ws-issuer", "x"],
    ["--ws-auth", "capability-token", "--ws-token-file", "{token}",
     "--ws-max-clock-skew-seconds", "5"],
    ["--ws-auth", "capability-token", "--ws-token-file", "{missing}"],
    ["--ws-auth", "capability-token", "--ws-token-file", "{directory}"],
    ["--ws-auth", "capability-token", "--ws-token-file", "{blank}"],
    ["--ws-auth", "capability-token", "--ws-token-file", "{binary}"],
    ["--ws-auth", "capability-token", "--ws-token-file", "{missing}", "--listen", "ws://localhost:0"],
    ["--ws-auth", "capability-token", "--ws-token-file", "{missing}", "--listen", "stdio"],
    ["--ws-auth", "capability-token", "--listen", "stdio"],
    ["--ws-auth", "signed-bearer-token"],
    ["--ws-auth", "signed-bearer-token", "--ws-shared-secret-file", "{short}"],
    ["--ws-auth", "signed-bearer-token", "--ws-shared-secret-file", "{missing}"],
    ["--ws-auth", "signed-bearer-token", "--ws-shared-secret-file", "{blank}"],
    ["--ws-auth", "signed-bearer-token", "--ws-shared-secret-file", "{secret}",
     "--ws-token-file", "{token}"],
    ["--ws-auth", "signed-bearer-token", "--ws-shared-secret-file", "{secret}",
     "--ws-max-clock-skew-seconds", "9223372036854775808"],
    ["--ws-auth", "signed-bearer-token", "--ws-shared-secret-file", "{secret}", "--listen", "stdio"],
    ["--ws-token-file", "{token}"],
    ["--ws-issuer", "x"],
]

#: Arguments both refuse, where our line starts with the reference's and
#: goes on to name the Twisted endpoints we also take.
EXTENDED_ERROR = [
    ["--listen", "tcp://127.0.0.1:0"],
    ["--listen", "wss://127.0.0.1:0"],
    ["--listen", "WS://127.0.0.1:0"],
    ["--listen", "stdio:"],
]


class StartupErrorTests(unittest.TestCase):
    timeout = 180

    def setUp(self):
        self.directory = support.scratch_directory(self, "execserver-startup-")
        self.files = {"missing": os.path.join(self.directory, "missing"),
                      "directory": self.directory}
        for name, content in (("token", b"token\n"), ("blank", b" \r\n"), ("binary", b"tok\xff\n"),
                              ("short", b"a" * 31 + b"\n"), ("secret", b"s" * 32)):
            self.files[name] = os.path.join(self.directory, name)
            with open(self.files[name], "wb") as f:
                f.write(content)
        # Not under /tmp, where the reference warns on stderr.
        home = tempfile.mkdtemp(prefix="execserver-startup-home-", dir=support.HOME_PARENT)
        self.addCleanup(shutil.rmtree, home, True)
        self.env = {"CODEX_HOME": home}

    def arguments(self, args: list[str]) -> list[str]:
        args = [arg.format(**self.files) for arg in args]
        return args if "--listen" in args else [*args, "--listen", "ws://127.0.0.1:0"]

    async def both(self, args: list[str]) -> tuple[tuple[int, str], tuple[int, str]]:
        args = self.arguments(args)
        return (await run_to_end(reference(*args), self.directory, self.env),
                await run_to_end(ours(*args), self.directory, self.env))

    async def test_same_errors(self):
        differing = []
        for args in SAME_ERROR:
            theirs, mine = await self.both(args)
            if theirs != mine or theirs[0] != 1:
                differing.append((args, theirs, mine))
        self.assertEqual(differing, [])

    async def test_extended_errors(self):
        for args in EXTENDED_ERROR:
            (their_status, their_line), (my_status, my_line) = await self.both(args)
            self.assertEqual((my_status, their_status), (1, 1), args)
            self.assertTrue(my_line.startswith(their_line), (their_line, my_line))


class NonLoopbackTests(unittest.TestCase):
    timeout = 60

    async def test_refused_without_auth_as_the_app_server_says_it(self):
        """
        The reference's exec-server listens on any address without auth; its
        app-server refuses to, and so do we, with its words.
        """
        home = tempfile.mkdtemp(prefix="execserver-nonloopback-", dir=support.HOME_PARENT)
        self.addCleanup(shutil.rmtree, home, True)
        _, app_server = await run_to_end(
            [support.reference_binary(), "app-server", "--listen", "ws://0.0.0.0:0"], home,
            {"CODEX_HOME": home})
        for listen in (["--listen", "ws://0.0.0.0:0"], ["--interface", "0.0.0.0", "--port", "0"]):
            self.assertEqual(await run_to_end(ours(*listen), home), (1, app_server))
        self.assertEqual(await run_to_end(ours("--listen", "ws://[::]:0"), home),
                         (1, app_server.replace("0.0.0.0:0", "[::]:0")))

    async def test_listens_with_auth(self):
        directory = support.scratch_directory(self, "execserver-nonloopback-")
        token = os.path.join(directory, "token")
        with open(token, "w") as f:
            f.write("t")
        server = await support.start_server(
            "ours", ["--ws-auth", "capability-token", "--ws-token-file", token],
            listen="ws://0.0.0.0:0")
        self.addCleanup(server.stop)
        self.assertTrue(server.url.startswith("ws://0.0.0.0:"), server.url)
        queue = await support.connect(server.url.replace("0.0.0.0", "127.0.0.1"),
                                      headers={"Authorization": "Bearer t"})
        await initialize(queue)
        await queue.close()


async def initialize(queue: support.MessageQueue) -> dict:
    queue.send({"id": 1, "method": "initialize", "params": {"clientName": "t"}})
    return (await queue.response(1))["result"]


class ListenFormTests(unittest.TestCase):
    timeout = 60

    async def test_ipv6_as_the_reference_spells_it(self):
        for kind in ("reference", "ours"):
            server = await support.start_server(kind, listen="ws://[::1]:0")
            self.addCleanup(server.stop)
            self.assertTrue(server.url.startswith("ws://[::1]:"), (kind, server.url))
            queue = await support.connect(server.url)
            self.assertIn("sessionId", await initialize(queue))
            await queue.close()

    async def test_unix_socket(self):
        directory = support.scratch_directory(self, "execserver-unix-")
        path = os.path.join(directory, "exec.sock")
        server = await support.start_server("ours", listen=f"unix:{path}")
        self.addCleanup(server.stop)
        self.assertEqual(server.url, f"unix:{path}")
        queue = support.MessageQueue()
        await support.with_timeout(websocket.connect(
            reactor, "ws://localhost/", queue,
            endpoint=endpoints.UNIXClientEndpoint(reactor, path)))
        self.assertIn("sessionId", await initialize(queue))
        await queue.close()

    async def test_systemd_socket_activation(self):
        """
        As systemd passes a socket: fd 3, C{LISTEN_FDS=1}, C{LISTEN_FDNAMES}
        (the socket unit's name unless it sets C{FileDescriptorName}) and
        C{LISTEN_PID}, the server's own pid (set by a wrapper that then execs
        the server).
        """
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        host, port = listener.getsockname()
        argv = [sys.executable, "-c", _SET_LISTEN_PID_AND_EXEC,
                *ours("--listen", "systemd:domain=INET:index=0")]
        process = _Served()
        reactor.spawnProcess(process, argv[0], argv, env=support.server_environment(
            {"LISTEN_FDS": "1", "LISTEN_FDNAMES": "execserver.socket",
             "CODEX_HOME": support.scratch_directory(self, "execserver-sd-")}),
            childFDs={0: "w", 1: "r", 2: "r", 3: listener.fileno()})
        self.addCleanup(process.stop)
        url = await support.with_timeout(process.url)
        self.assertEqual(url, f"ws://{host}:{port}")
        listener.close()
        queue = await support.connect(url)
        self.assertIn("sessionId", await initialize(queue))
        queue.send({"method": "initialized"})
        queue.send({"id": 2, "method": "process/start", "params": support.start_params(
            "env", ["/bin/sh", "-c", 'echo "${LISTEN_FDS-none} ${LISTEN_FDNAMES-none}"'],
            envPolicy={"inherit": "all", "ignoreDefaultExcludes": True, "exclude": [],
                       "set": {}, "includeOnly": []})})
        output = await queue.notification(lambda m: m["method"] == "process/output")
        self.assertEqual(base64.b64decode(output["params"]["chunk"]), b"none none\n")
        await queue.close()

    async def test_missing_systemd_socket_is_one_line(self):
        home = support.scratch_directory(self, "execserver-sd-")
        self.assertEqual(
            await run_to_end(ours("--listen", "systemd:domain=INET:index=0"), home),
            (1, "Error: cannot listen on systemd:domain=INET:index=0: "
                "no such inherited socket (LISTEN_FDS)"))


#: Sets LISTEN_PID to its own pid, as systemd does in the child it forks,
#: then execs the rest of argv (keeping the pid).
_SET_LISTEN_PID_AND_EXEC = (
    "import os, sys\n"
    "os.environ['LISTEN_PID'] = str(os.getpid())\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n"
)


class _Served(protocol.ProcessProtocol):
    """
    A server we started ourselves: its announced URL, and a stop.
    """

    def __init__(self) -> None:
        self.url = Deferred()
        self.ended = Deferred()
        self.out = b""

    def outReceived(self, data: bytes) -> None:
        self.out += data
        for line in self.out.split(b"\n")[:-1]:
            if line.startswith(b"ws://") and not self.url.called:
                self.url.callback(line.decode())

    def processEnded(self, reason) -> None:
        self.ended.callback(None)
        if not self.url.called:
            self.url.errback(RuntimeError(f"the server ended: {reason.value}"))

    async def stop(self) -> None:
        if not self.ended.called:
            self.transport.signalProcess("TERM")
        await support.with_timeout(self.ended)
