"""
The C{execserver-client} command line, run as a real child process
(C{python -m execserver.client.cli}) against a real server: exit codes,
output streams, stdin, a real terminal, Ctrl-C, the file commands in human
and C{--json} form, and error lines.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import signal
import struct
import sys
import termios

from twisted.internet import defer, protocol, reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.trial import unittest

import execserver
from execserver import paths
from tests import support

#: The window size our test terminal has.
ROWS, COLUMNS = 33, 101

#: How long a run of the command line, or one awaited piece of its output,
#: may take before the test is broken: generous, because a loaded machine
#: is slow and nothing here waits on a clock.
WAIT_SECONDS = 120.0


def wait(d: Deferred) -> Deferred:
    return support.with_timeout(d, WAIT_SECONDS)


class _Cli(protocol.ProcessProtocol):
    """
    One run of the command line: collects its output and fires C{ended}
    with the exit status; C{wait_for} fires once the output contains a text.

    Output is gathered in bytearrays (appending is amortized linear) and
    searched only where new bytes could complete a match.
    """

    def __init__(self, stdin: bytes | None, close_stdout_after: bytes | None = None) -> None:
        self.stdin = stdin
        self.close_stdout_after = close_stdout_after
        self.received = {1: bytearray(), 2: bytearray()}
        self.ended = Deferred()
        #: Called when the process has exited (before its terminal closes).
        self.on_exit = None
        self._wanted: list[tuple[int, bytes, Deferred]] = []

    @property
    def out(self) -> bytes:
        return bytes(self.received[1])

    @property
    def err(self) -> bytes:
        return bytes(self.received[2])

    def connectionMade(self) -> None:
        if self.stdin is not None:
            self.transport.write(self.stdin)
            self.transport.closeStdin()

    def _contains(self, fd: int, text: bytes, new: int) -> bool:
        buffer = self.received[fd]
        return buffer.find(text, max(0, len(buffer) - new - len(text) + 1)) >= 0

    def childDataReceived(self, fd: int, data: bytes) -> None:
        fd = 1 if fd == 1 else 2
        self.received[fd] += data
        if (fd == 1 and self.close_stdout_after is not None
                and self._contains(1, self.close_stdout_after, len(data))):
            self.close_stdout_after = None
            self.transport.closeChildFD(1)
        for entry in list(self._wanted):
            if entry[0] == fd and self._contains(fd, entry[1], len(data)):
                self._wanted.remove(entry)
                entry[2].callback(None)

    def wait_for(self, text: bytes, fd: int = 1) -> Deferred:
        """
        Fires once stdout (or stderr, C{fd=2}) contains C{text}.
        """
        if text in self.received[fd]:
            return defer.succeed(None)
        waiter = Deferred()
        self._wanted.append((fd, text, waiter))
        return wait(waiter)

    def processExited(self, reason) -> None:
        if self.on_exit is not None:
            self.on_exit()

    def processEnded(self, reason) -> None:
        self.ended.callback(reason.value.exitCode)


class CliTestCase(unittest.TestCase):
    kind = "ours"
    timeout = 3 * WAIT_SECONDS

    def setUp(self):
        return ensureDeferred(self._set_up())

    def server_args(self) -> list[str]:
        return []

    async def _set_up(self) -> None:
        self.workdir = support.scratch_directory(self, "execserver-cli-")
        self.server = await support.serve(self, self.kind, self.server_args())

    def environment(self, url: bool = True) -> dict[str, str]:
        env = support.server_environment({"TERM": "xterm"})
        if url:
            env["EXECSERVER_URL"] = self.server.url
        return env

    def spawn(self, args, stdin: bytes | int | None = b"", env=None, pty=None, **kwargs) -> _Cli:
        """
        @param stdin: bytes written to a pipe, a descriptor to give, or
            C{None} for C{/dev/null}.
        """
        cli = _Cli(stdin if pty is None and not isinstance(stdin, int) else None, **kwargs)
        argv = [sys.executable, "-m", "execserver.client.cli", *args]
        environment = env if env is not None else self.environment()
        if pty is not None:
            reactor.spawnProcess(cli, argv[0], argv, env=environment, usePTY=pty)
        elif stdin is None or isinstance(stdin, int):
            if stdin is None:
                stdin = os.open(os.devnull, os.O_RDONLY)
                self.addCleanup(os.close, stdin)
            reactor.spawnProcess(cli, argv[0], argv, env=environment,
                                 childFDs={0: stdin, 1: "r", 2: "r"})
        else:
            reactor.spawnProcess(cli, argv[0], argv, env=environment)
        return cli

    async def run_cli(self, *args, stdin: bytes | int | None = None,
                      env=None) -> tuple[int, bytes, bytes]:
        cli = self.spawn(list(args), stdin, env)
        code = await wait(cli.ended)
        return code, cli.out, cli.err

    def path(self, name: str) -> str:
        return os.path.join(self.workdir, name)

    def terminal(self) -> tuple[int, int, str]:
        """
        A new pseudo-terminal of ROWS x COLUMNS, for C{spawn(pty=...)}.
        """
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
        return master, slave, os.ttyname(slave)


#: What exec says when the server cannot end the command's stdin.
STDIN_STAYS_OPEN = (
    b"execserver-client: exec: the end of stdin is not passed on: the server cannot close "
    b"the command's stdin (it has no process/closeStdin), so it stays open\n"
)


class ExecTests(CliTestCase):
    async def test_exit_code_and_separate_streams(self):
        self.assertEqual(await self.run_cli("exec", "--", "sh", "-c", "echo out; echo err >&2; exit 3"),
                         (3, b"out\n", b"err\n"))

    async def test_an_empty_stdin_reads_as_end_of_file(self):
        self.assertEqual(await self.run_cli("exec", "--", "cat", stdin=None), (0, b"", b""))

    async def test_a_file_read_to_its_end_on_stdin_reads_as_end_of_file(self):
        for content in (b"", b"already read"):
            with open(self.path("input"), "wb") as f:
                f.write(content)
            stdin = os.open(self.path("input"), os.O_RDONLY)
            self.addCleanup(os.close, stdin)
            os.lseek(stdin, 0, os.SEEK_END)
            self.assertEqual(await self.run_cli("exec", "--", "cat", stdin=stdin), (0, b"", b""))

    async def test_no_stdin_option(self):
        self.assertEqual(await self.run_cli("exec", "-n", "--", "wc", "-c", stdin=b"ignored"),
                         (0, b"0\n", b""))

    async def test_large_output_arrives_whole(self):
        code, out, err = await self.run_cli("exec", "--", "head", "-c", "20000000", "/dev/zero")
        self.assertEqual((code, len(out), out.count(0), err), (0, 20000000, 20000000, b""))

    async def test_cwd_and_env(self):
        self.assertEqual(
            await self.run_cli("exec", "--cwd", self.workdir, "--env", "GREETING=hi there",
                               "--", "sh", "-c", 'pwd; echo "$GREETING"'),
            (0, f"{os.path.realpath(self.workdir)}\nhi there\n".encode(), b""))

    async def test_ctrl_c_interrupts_the_child(self):
        # `exec`: dash can miss a SIGINT that arrives while it starts a command.
        cli = self.spawn(["exec", "--", "sh", "-c", "echo ready; exec sleep 100"], stdin=None)
        await cli.wait_for(b"ready\n")
        cli.transport.signalProcess("INT")
        self.assertEqual(await wait(cli.ended), 130)

    async def test_a_closed_stdout_stops_the_child(self):
        cli = self.spawn(["exec", "--", "seq", "1", "100000000"], stdin=None,
                         close_stdout_after=b"\n")
        self.assertEqual(await wait(cli.ended), 141)

    async def test_a_missing_program_is_one_line(self):
        self.assertEqual(await self.run_cli("exec", "--", "/nonexistent/program"), (
            255, b"", b"execserver-client: exec: could not start /nonexistent/program: "
                      b"No such file or directory (os error 2)\n"))

    async def test_a_missing_working_directory_is_named(self):
        missing = self.path("missing")
        for options in ([], ["--tty"]):
            self.assertEqual(await self.run_cli("exec", *options, "--cwd", missing, "--", "true"), (
                255, b"", f"execserver-client: exec: working directory {missing} "
                          "does not exist\n".encode()))

    async def test_a_working_directory_that_is_a_file(self):
        open(self.path("file"), "w").close()
        self.assertEqual(await self.run_cli("exec", "--cwd", self.path("file"), "--", "true"), (
            255, b"", f"execserver-client: exec: working directory {self.path('file')} "
                      "is not a directory\n".encode()))

    async def test_json_events(self):
        code, out, err = await self.run_cli(
            "exec", "--json", "--", "sh", "-c", r"printf 'out\377'; echo err >&2; exit 3")
        events = [json.loads(line) for line in out.splitlines()]
        streams = {}
        for event in events[:-1]:
            self.assertEqual(set(event), {"stream", "dataBase64"})
            streams[event["stream"]] = streams.get(event["stream"], b"") + base64.b64decode(
                event["dataBase64"])
        self.assertEqual((code, streams, events[-1], err),
                         (3, {"stdout": b"out\xff", "stderr": b"err\n"}, {"exitCode": 3}, b""))

    async def test_json_error(self):
        code, out, err = await self.run_cli("exec", "--json", "--", "/nonexistent/program")
        message = "could not start /nonexistent/program: No such file or directory (os error 2)"
        self.assertEqual((code, out.count(b"\n"), json.loads(out), err), (
            255, 1, {"error": {"message": message, "code": -32603}},
            f"execserver-client: exec: {message}\n".encode()))


class TerminalTests(CliTestCase):
    async def test_the_child_has_a_terminal_of_our_size(self):
        cli = self.spawn(["exec", "--tty", "--", "sh", "-c", "stty size; tty -s && echo tty"],
                         pty=self.terminal())
        self.assertEqual(await wait(cli.ended), 0)
        self.assertEqual(cli.out, f"{ROWS} {COLUMNS}\r\ntty\r\n".encode())

    async def test_keys_go_to_the_child_and_the_terminal_is_restored(self):
        pty = self.terminal()
        # A second descriptor of the terminal, to see its modes once the
        # command line has exited; closed then, or the terminal never ends.
        spare = os.dup(pty[1])
        before = termios.tcgetattr(spare)
        after = []

        def exited():
            after.append(termios.tcgetattr(spare))
            after.append(fcntl.fcntl(spare, fcntl.F_GETFL) & os.O_NONBLOCK)
            os.close(spare)

        cli = self.spawn(["exec", "--tty", "--", "sh", "-c", "echo ready; read x; echo got:$x"],
                         pty=pty)
        cli.on_exit = exited
        await cli.wait_for(b"ready")
        cli.transport.write(b"hello\r")
        self.assertEqual(await wait(cli.ended), 0)
        self.assertIn(b"got:hello", cli.out, (cli.out, cli.err))
        self.assertEqual(after, [before, 0])

    async def test_ctrl_c_reaches_the_remote_terminal(self):
        cli = self.spawn(["exec", "--tty", "--", "sh", "-c", "echo ready; exec sleep 100"],
                         pty=self.terminal())
        await cli.wait_for(b"ready")
        cli.transport.write(b"\x03")
        code = await wait(cli.ended)
        self.assertNotEqual(code, 0)
        self.assertIn(b"^C", cli.out)


class FileCommandTests(CliTestCase):
    async def test_cat(self):
        data = os.urandom(3 * 1024 * 1024)
        with open(self.path("f"), "wb") as f:
            f.write(data)
        self.assertEqual(await self.run_cli("cat", self.path("f")), (0, data, b""))

    async def test_cat_json(self):
        with open(self.path("f"), "wb") as f:
            f.write(b"hi")
        code, out, err = await self.run_cli("--json", "cat", self.path("f"))
        self.assertEqual((code, json.loads(out), err), (0, {
            "path": paths.from_host_path(self.path("f")), "size": 2, "dataBase64": "aGk="}, b""))

    async def test_cat_of_a_missing_file(self):
        missing = self.path("missing")
        self.assertEqual(await self.run_cli("cat", missing), (
            1, b"", f"execserver-client: cat {missing}: No such file or directory (os error 2)\n".encode()))

    async def test_errors_in_json_form(self):
        code, out, err = await self.run_cli("cat", self.path("missing"), "--json")
        self.assertEqual((code, json.loads(out)), (1, {"error": {
            "code": -32004, "message": "No such file or directory (os error 2)"}}))
        self.assertEqual(err.count(b"\n"), 1)

    async def test_put(self):
        code, out, err = await self.run_cli("put", self.path("new"), stdin=b"payload")
        self.assertEqual((code, out, err), (0, f"wrote 7 bytes to {self.path('new')}\n".encode(), b""))
        with open(self.path("new"), "rb") as f:
            self.assertEqual(f.read(), b"payload")

    async def test_put_of_a_large_input(self):
        # Streamed in blocks where the server offers it (the reference).
        data = os.urandom(3 * 1024 * 1024 + 1)
        code, out, err = await self.run_cli("put", self.path("big"), stdin=data)
        self.assertEqual((code, err), (0, b""))
        with open(self.path("big"), "rb") as f:
            self.assertEqual(f.read(), data)

    async def test_put_json(self):
        code, out, err = await self.run_cli("--json", "put", self.path("new"), stdin=b"x" * 1000)
        self.assertEqual((code, json.loads(out)),
                         (0, {"path": paths.from_host_path(self.path("new")), "size": 1000}))

    async def test_ls(self):
        os.mkdir(self.path("sub"))
        for name in ("b", "a"):
            open(self.path(name), "w").close()
        self.assertEqual(await self.run_cli("ls", self.workdir), (0, b"a\nb\nsub/\n", b""))
        code, out, err = await self.run_cli("ls", "--json", self.workdir)
        self.assertEqual(json.loads(out)["entries"], [
            {"fileName": "a", "isDirectory": False, "isFile": True},
            {"fileName": "b", "isDirectory": False, "isFile": True},
            {"fileName": "sub", "isDirectory": True, "isFile": False},
        ])

    async def test_stat(self):
        with open(self.path("f"), "wb") as f:
            f.write(b"12345")
        os.utime(self.path("f"), (0, 1700000000.25))
        code, out, err = await self.run_cli("stat", self.path("f"))
        self.assertEqual((code, err), (0, b""))
        self.assertEqual(out.decode().splitlines()[:4], [
            f"path:     {self.path('f')}",
            "type:     regular file",
            "size:     5 bytes",
            "modified: 2023-11-14 22:13:20.250 UTC",
        ])
        code, out, err = await self.run_cli("--json", "stat", self.path("f"))
        self.assertEqual({key: value for key, value in json.loads(out).items() if key != "createdAtMs"}, {
            "path": paths.from_host_path(self.path("f")), "isDirectory": False, "isFile": True,
            "isSymlink": False, "size": 5, "modifiedAtMs": 1700000000250,
        })

    async def test_relative_paths_are_taken_from_the_server_working_directory(self):
        with open(os.path.join(self.server.home, "here.txt"), "wb") as f:
            f.write(b"relative")
        self.assertEqual(await self.run_cli("cat", "here.txt"), (0, b"relative", b""))

    async def test_info(self):
        code, out, err = await self.run_cli("info")
        lines = out.decode().splitlines()
        self.assertEqual((code, lines[0]), (0, f"server:       {self.server.url}"))
        self.assertEqual(lines[5], f"cwd:          {os.path.realpath(self.server.home)}")
        code, out, err = await self.run_cli("info", "--json")
        info = json.loads(out)
        self.assertEqual((info["url"], info["cwd"]),
                         (self.server.url, paths.from_host_path(os.path.realpath(self.server.home))))


class UrlTests(CliTestCase):
    async def test_the_url_comes_from_the_option_before_the_environment(self):
        env = self.environment(url=False)
        env["EXECSERVER_URL"] = "ws://127.0.0.1:1"
        code, out, err = await self.run_cli("--url", self.server.url, "exec", "--", "true", env=env)
        self.assertEqual((code, err), (0, b""))

    async def test_without_a_url(self):
        self.assertEqual(await self.run_cli("info", env=self.environment(url=False)), (
            2, b"", b"execserver-client: error: no server: give --url or --registry, or set "
                    b"$EXECSERVER_URL or $CODEX_EXEC_SERVER_NOISE_REGISTRY_URL\n"))

    async def test_an_error_nobody_reads_still_ends_the_command(self):
        # Our stderr is a pipe whose reader has gone: the error line cannot
        # be written, and the command line must still exit.
        read_end, write_end = os.pipe()
        os.close(read_end)
        null = os.open(os.devnull, os.O_RDONLY)
        cli = _Cli(None)
        argv = [sys.executable, "-m", "execserver.client.cli", "--url", "ws://127.0.0.1:1", "info"]
        try:
            reactor.spawnProcess(cli, argv[0], argv, env=self.environment(),
                                 childFDs={0: null, 1: "r", 2: write_end})
        finally:
            os.close(write_end)
            os.close(null)
        self.assertEqual(await wait(cli.ended), 1)

    async def test_an_unreachable_server_is_one_line(self):
        self.assertEqual(await self.run_cli("--url", "ws://127.0.0.1:1", "info"), (
            1, b"", b"execserver-client: info: could not connect to ws://127.0.0.1:1: "
                    b"Connection refused\n"))
        code, out, err = await self.run_cli("--url", "ws://127.0.0.1:1", "exec", "--", "true")
        self.assertEqual(code, 255)


class TokenTests(CliTestCase):
    """
    A server started with --ws-auth: the client sends the token of
    --token-file or $EXECSERVER_TOKEN as the bearer token.
    """

    def server_args(self) -> list[str]:
        with open(self.path("token"), "w") as f:
            f.write("s3cret\n")
        return ["--ws-auth", "capability-token", "--ws-token-file", self.path("token")]

    async def test_token_file(self):
        self.assertEqual(await self.run_cli("--token-file", self.path("token"), "exec", "--",
                                            "echo", "hi"), (0, b"hi\n", b""))

    async def test_token_variable(self):
        env = self.environment()
        env["EXECSERVER_TOKEN"] = "s3cret"
        code, out, err = await self.run_cli("exec", "--", "true", env=env)
        self.assertEqual((code, err), (0, b""))

    async def test_a_refused_token_is_one_line(self):
        env = self.environment()
        env["EXECSERVER_TOKEN"] = "wrong"
        self.assertEqual(await self.run_cli("info", env=env), (
            1, b"", f"execserver-client: info: could not connect to {self.server.url}: "
                    "WebSocket connection upgrade failed [401]: Unauthorized\n".encode()))


class ReferenceTokenTests(TokenTests):
    kind = "reference"


class StdinEndTests(CliTestCase):
    """
    The end of piped stdin reaches the command (process/closeStdin).
    """

    async def test_stdin_is_forwarded_to_its_end(self):
        self.assertEqual(await self.run_cli("exec", "--", "wc", "-l", stdin=b"a\nb\n"),
                         (0, b"2\n", b""))

    async def test_a_script_on_stdin(self):
        self.assertEqual(await self.run_cli("exec", "--", "sh", "-s", stdin=b"echo one\necho two\n"),
                         (0, b"one\ntwo\n", b""))

    async def test_large_input_arrives_whole_before_the_end(self):
        data = os.urandom(3 * 1024 * 1024 + 1)
        self.assertEqual(await self.run_cli("exec", "--", "wc", "-c", stdin=data),
                         (0, b"%d\n" % len(data), b""))

    async def test_an_empty_stdin(self):
        self.assertEqual(await self.run_cli("exec", "--", "wc", "-c", stdin=b""), (0, b"0\n", b""))


class ReferenceStdinEndTests(CliTestCase):
    kind = "reference"

    async def test_the_server_cannot_close_stdin_and_exec_says_so(self):
        cli = self.spawn(["exec", "--", "sh", "-c", "read x; echo got:$x; cat"], stdin=b"a\nb\n")
        await cli.wait_for(b"got:a\nb\n")
        await cli.wait_for(STDIN_STAYS_OPEN, fd=2)
        # cat waits for the end of its input for ever: stop it.
        cli.transport.signalProcess("TERM")
        self.assertEqual(await wait(cli.ended), 128 + signal.SIGKILL)
        self.assertEqual(cli.err, STDIN_STAYS_OPEN)


class VersionTests(unittest.TestCase):
    async def test_version(self):
        cli = _Cli(None)
        argv = [sys.executable, "-m", "execserver.client.cli", "--version"]
        reactor.spawnProcess(cli, argv[0], argv, env=support.server_environment())
        self.assertEqual(await wait(cli.ended), 0)
        self.assertEqual((cli.out, cli.err), (f"execserver-client {execserver.__version__}\n".encode(), b""))


class ServerStopTests(CliTestCase):
    async def test_stopping_the_server_ends_exec_at_once(self):
        cli = self.spawn(["exec", "--", "sh", "-c", "echo ready; exec sleep 100"], stdin=None)
        await cli.wait_for(b"ready\n")
        await self.server.stop()
        # The message says the client did not try to resume (that would
        # end after 25 s with "could not resume session ...").
        self.assertEqual(await wait(cli.ended), 255)
        self.assertEqual(cli.err, f"execserver-client: exec: the server {self.server.url} "
                                  "is shutting down\n".encode())


class ReferenceExecTests(ExecTests):
    """
    exec against the reference server.
    """

    kind = "reference"


class ReferenceFileCommandTests(FileCommandTests):
    kind = "reference"
