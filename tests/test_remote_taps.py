"""
The twistd plugins of remote mode, C{execserver-remote} and
C{execserver-rendezvous}: their options, where the bearer and the tokens
come from, and both run as C{twistd -n} child processes serving our
client end to end; an executor that cannot register exits 1 saying why,
and one started with C{--exit-on-stdin-close} stops when its stdin does.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred
from twisted.python import usage
from twisted.trial import unittest

from execserver.client import ExecServerClient
from execserver.remote import tap as remote_tap
from execserver.rendezvous import tap as rendezvous_tap
from execserver.remote.harness import RelayConnector
from execserver.service import StartupError
from tests import support
from tests.test_operations import http_get, samples

ENV = {"PATH": "/usr/bin:/bin"}


class RemoteOptionsTests(unittest.SynchronousTestCase):
    def parse(self, *args: str, environ: dict[str, str] | None = None) -> remote_tap.Options:
        options = remote_tap.Options(environ={} if environ is None else environ)
        options.parseOptions(list(args))
        return options

    def test_the_flags_codex_users_know(self):
        options = self.parse("--remote", "https://registry.test", "--environment-id", " env-1 ",
                             "--name", "laptop", "--registration-bearer-stdin",
                             "--exit-on-stdin-close", "--concurrent-requests", "4")
        self.assertEqual((options["remote"], options["environment-id"], options["name"],
                          options["registration-bearer-stdin"], options["exit-on-stdin-close"],
                          options["concurrent-requests"], options["connect"]),
                         ("https://registry.test", "env-1", "laptop", True, True, 4, None))

    def test_the_registry_and_environment_come_from_the_variables_codex_reads(self):
        options = self.parse(environ={"CODEX_EXEC_SERVER_NOISE_REGISTRY_URL": "http://r.test",
                                      "CODEX_EXEC_SERVER_NOISE_ENVIRONMENT_ID": "env-9"})
        self.assertEqual((options["remote"], options["environment-id"]), ("http://r.test", "env-9"))

    def test_exit_on_stdin_close_takes_true_or_false_from_its_variable(self):
        base = ("--remote", "http://r.test", "--environment-id", "e")
        variable = "CODEX_EXEC_SERVER_EXIT_ON_STDIN_CLOSE"
        self.assertTrue(self.parse(*base, environ={variable: "true"})["exit-on-stdin-close"])
        self.assertFalse(self.parse(*base, environ={variable: "false"})["exit-on-stdin-close"])
        for value in ("1", "yes", ""):
            self.assertRaises(usage.UsageError, self.parse, *base, environ={variable: value})

    def test_bad_combinations_are_refused(self):
        base = ["--remote", "http://r.test", "--environment-id", "e"]
        for args in ([], ["--remote", "http://r.test"], ["--environment-id", "e"],
                     ["--remote", "ws://r.test", "--environment-id", "e"],
                     [*base, "--registration-bearer-stdin", "--bearer-file", "f"],
                     [*base, "--connect", "http://127.0.0.1:1"],
                     [*base, "--connect", "ws://127.0.0.1"],
                     [*base, "--concurrent-requests", "0"]):
            self.assertRaises(usage.UsageError, self.parse, *args)


class BearerTests(unittest.SynchronousTestCase):
    def options(self, *args: str, environ=None) -> remote_tap.Options:
        options = remote_tap.Options(environ=environ if environ is not None else {})
        options.parseOptions(["--remote", "http://r.test", "--environment-id", "e", *args])
        return options

    def test_stdin_gives_its_first_line_and_leaves_the_rest(self):
        read, write = os.pipe()
        self.addCleanup(os.close, read)
        os.write(write, b" sekrit \nmore")
        os.close(write)
        self.assertEqual(remote_tap.read_bearer(self.options("--registration-bearer-stdin"), read),
                         "sekrit")
        self.assertEqual(os.read(read, 10), b"more")

    def test_a_file_gives_its_content(self):
        directory = support.scratch_directory(self, "execserver-bearer-")
        path = os.path.join(directory, "token")
        with open(path, "w") as f:
            f.write("sekrit\n")
        self.assertEqual(remote_tap.read_bearer(self.options("--bearer-file", path)), "sekrit")
        with self.assertRaises(StartupError) as caught:
            remote_tap.read_bearer(self.options("--bearer-file", path + ".missing"))
        self.assertIn("cannot read the bearer file", str(caught.exception))

    def test_the_variable_is_read_and_removed_from_the_environment(self):
        environ = {"CODEX_EXEC_SERVER_NOISE_AUTH_TOKEN": "sekrit", "OTHER": "x"}
        self.assertEqual(remote_tap.read_bearer(self.options(environ=environ)), "sekrit")
        self.assertEqual(environ, {"OTHER": "x"})

    def test_no_bearer_or_an_empty_one_is_an_error(self):
        self.assertRaises(StartupError, remote_tap.read_bearer, self.options())
        read, write = os.pipe()
        self.addCleanup(os.close, read)
        os.close(write)
        self.assertRaises(StartupError, remote_tap.read_bearer,
                          self.options("--registration-bearer-stdin"), read)


class TokenFileTests(unittest.SynchronousTestCase):
    def write(self, text: str) -> str:
        directory = support.scratch_directory(self, "execserver-tokens-")
        path = os.path.join(directory, "tokens")
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_one_environment_per_line(self):
        tokens = rendezvous_tap.read_tokens(self.write("# who may use what\n\nenv-1 tok-a\n"
                                                        " env-2  tok-b \n"))
        self.assertEqual([tokens.allows(*pair) for pair in (
            ("env-1", "tok-a"), ("env-2", "tok-b"), ("env-1", "tok-b"), ("env-3", "tok-a"))],
            [True, True, False, False])
        self.assertNotIn("tok-", repr(tokens))

    def test_bad_files_are_refused(self):
        for text, message in (("env-1\n", "line 1: expected ENVIRONMENT_ID TOKEN"),
                              ("e a\ne b\n", "line 2: environment e appears twice"),
                              ("# nothing\n", "names no environment")):
            with self.assertRaises(StartupError) as caught:
                rendezvous_tap.read_tokens(self.write(text))
            self.assertIn(message, str(caught.exception))

    def test_options(self):
        options = rendezvous_tap.Options()
        options.parseOptions(["--tokens", "f"])
        self.assertEqual((options["listen"], options["websocket-url"]),
                         ("tcp:8080:interface=127.0.0.1", None))
        for args in ([], ["--tokens", "f", "--websocket-url", "http://x"]):
            self.assertRaises(usage.UsageError, rendezvous_tap.Options().parseOptions, args)

    def test_cluster_options(self):
        options = rendezvous_tap.Options()
        options.parseOptions(["--tokens", "f", "--store", "redis://r:6380/2", "--node-id", "a",
                              "--node-url", "wss://a.example", "--peer-url", "ws://10.0.0.5:8080"])
        self.assertEqual((options["store"], options["node-id"], options["node-url"],
                          options["peer-url"]),
                         ("redis://r:6380/2", "a", "wss://a.example", "ws://10.0.0.5:8080"))
        for args in (["--node-id", "a"], ["--node-url", "ws://a"],
                     ["--store", "http://r"], ["--store", "redis://r/x"],
                     ["--store", "redis://r", "--node-url", "http://a"],
                     ["--store", "redis://r", "--peer-url", "a:8080"]):
            self.assertRaises(usage.UsageError, rendezvous_tap.Options().parseOptions,
                              ["--tokens", "f", *args])


class _Twistd(protocol.ProcessProtocol):
    """A twistd child: its first C{http://} line, its output, its end."""

    def __init__(self, stdin: bytes | None = None) -> None:
        self.stdin = stdin
        self.url: Deferred = Deferred()
        self.ended: Deferred = Deferred()
        self.out = b""
        self.err = b""
        self._awaited: list[tuple[Callable[[], bool], Deferred]] = []

    def connectionMade(self) -> None:
        if self.stdin is not None:
            self.transport.write(self.stdin)

    def logged(self, text: bytes) -> Deferred:
        """Fires once C{text} was written on stdout (where twistd -n logs)."""
        return self._when(lambda: text in self.out)

    def announced(self, count: int) -> Deferred:
        """Fires with the URLs once C{count} are announced."""
        return self._when(lambda: len(self.urls()) >= count).addCallback(lambda _: self.urls())

    def _when(self, seen: Callable[[], bool]) -> Deferred:
        waiter = Deferred()
        self._awaited.append((seen, waiter))
        self.outReceived(b"")
        return support.with_timeout(waiter)

    def outReceived(self, data: bytes) -> None:
        self.out += data
        for line in self.out.splitlines():
            if line.startswith(b"http://") and not self.url.called:
                self.url.callback(line.decode().strip())
        for entry in [entry for entry in self._awaited if entry[0]()]:
            self._awaited.remove(entry)
            entry[1].callback(None)

    def urls(self) -> list[str]:
        """The URLs announced on stdout so far, in order."""
        return [line.decode().strip() for line in self.out.splitlines()
                if line.startswith(b"http://")]

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason) -> None:
        self.ended.callback(reason.value.exitCode)


class PluginTests(unittest.TestCase):
    timeout = 120

    def twistd(self, *args: str, stdin: bytes | None = None) -> _Twistd:
        child = _Twistd(stdin)
        argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                "-n", "--pidfile=", *args]
        process = reactor.spawnProcess(child, argv[0], argv, env=support.server_environment(),
                                       path=self.directory)

        def stop():
            if not child.ended.called:
                process.signalProcess("TERM")
            return support.with_timeout(child.ended)

        self.addCleanup(stop)
        child.process = process
        return child

    async def rendezvous(self) -> str:
        self.directory = support.scratch_directory(self, "execserver-plugins-")
        tokens = os.path.join(self.directory, "tokens")
        with open(tokens, "w") as f:
            f.write("env-1 sekrit\n")
        child = self.twistd("execserver-rendezvous", "--tokens", tokens,
                            "--listen", "tcp:0:interface=127.0.0.1")
        return await support.with_timeout(child.url)

    async def harness(self, registry_url: str) -> ExecServerClient:
        connector = RelayConnector(reactor, registry_url, "env-1", "sekrit", environ={})
        client = ExecServerClient(connector, reactor)
        self.addCleanup(client.close)
        await support.with_timeout(client.connect())
        return client

    async def echo_on(self, client: ExecServerClient) -> bytes:
        handle = await client.start_process(["/bin/echo", "hello"], env=ENV)
        await support.with_timeout(handle.when_closed())
        return handle.receiver.output()

    async def echo(self, registry_url: str) -> bytes:
        client = await self.harness(registry_url)
        output = await self.echo_on(client)
        client.close()
        return output

    async def test_the_executor_serves_through_the_rendezvous_until_stdin_closes(self):
        url = await self.rendezvous()
        executor = self.twistd("execserver-remote", "--remote", url, "--environment-id", "env-1",
                               "--registration-bearer-stdin", "--exit-on-stdin-close",
                               stdin=b"sekrit\n")
        await executor.logged(b"rendezvous socket open")
        self.assertEqual(await self.echo(url), b"hello\n")
        executor.process.closeStdin()
        self.assertEqual(await support.with_timeout(executor.ended), 0)

    async def test_admin_listeners_count_the_relay_and_say_when_the_executor_is_ready(self):
        self.directory = support.scratch_directory(self, "execserver-plugins-")
        tokens = os.path.join(self.directory, "tokens")
        with open(tokens, "w") as f:
            f.write("env-1 sekrit\n")
        rendezvous = self.twistd("execserver-rendezvous", "--tokens", tokens,
                                 "--listen", "tcp:0:interface=127.0.0.1",
                                 "--admin-listen", "http://127.0.0.1:0")
        rendezvous_admin, url = await rendezvous.announced(2)
        executor = self.twistd("execserver-remote", "--remote", url, "--environment-id", "env-1",
                               "--registration-bearer-stdin", "--admin-listen", "http://127.0.0.1:0",
                               stdin=b"sekrit\n")
        await executor.logged(b"rendezvous socket open")
        (executor_admin,) = await executor.announced(1)
        self.assertEqual(await http_get(executor_admin + "/readyz"), (200, b""))
        # The harness stays connected while the counts are read: every frame
        # it has sent so far has been answered, so none is still on its way
        # between the rendezvous and the executor.
        client = await self.harness(url)
        self.assertEqual(await self.echo_on(client), b"hello\n")
        executor_counts = samples((await http_get(executor_admin + "/metrics"))[1].decode())
        rendezvous_counts = samples((await http_get(rendezvous_admin + "/metrics"))[1].decode())

        def value(counts, name, **labels):
            return counts[(name, tuple(sorted(labels.items())))]

        self.assertEqual(
            [value(executor_counts, "exec_server_connections_total",
                   result="accepted", transport="relay"),
             value(executor_counts, "exec_server_processes_finished_total", result="success"),
             value(executor_counts, "exec_server_relay_streams_total", role="executor"),
             value(rendezvous_counts, "exec_server_relay_streams_total", role="rendezvous")],
            [1, 1, 1, 1])
        for direction in ("to_executor", "to_harness"):
            carried = [value(counts, "exec_server_relay_bytes_total", direction=direction, role=role)
                       for counts, role in ((executor_counts, "executor"),
                                            (rendezvous_counts, "rendezvous"))]
            # The rendezvous routes every stream frame the executor sends or
            # gets (and nothing else, with one executor and one harness).
            self.assertEqual(carried[0], carried[1], direction)
            self.assertGreater(carried[0], 0, direction)
        client.close()
        rendezvous.process.signalProcess("TERM")
        await support.with_timeout(rendezvous.ended)
        await executor.logged(b"rendezvous socket closed")
        self.assertEqual(await http_get(executor_admin + "/readyz"), (503, b""))

    async def test_an_executor_that_cannot_register_exits_1_saying_why(self):
        url = await self.rendezvous()
        executor = self.twistd("execserver-remote", "--remote", url, "--environment-id", "env-1",
                               "--registration-bearer-stdin", stdin=b"wrong\n")
        self.assertEqual(await support.with_timeout(executor.ended), 1)
        self.assertEqual(executor.err.decode(), "execserver-remote: authentication failed (401): "
                                                "missing or invalid bearer token\n")

    async def test_a_bad_token_file_is_one_line_on_stderr(self):
        self.directory = support.scratch_directory(self, "execserver-plugins-")
        child = self.twistd("execserver-rendezvous", "--tokens", "missing")
        self.assertEqual(await support.with_timeout(child.ended), 1)
        self.assertEqual(child.err.decode(), "execserver-rendezvous: cannot read the token file "
                                             "missing: No such file or directory\n")
