"""
The C{execserver-client} command line.

    execserver-client [--url ws://HOST:PORT] [--json] exec [--tty] [--cwd DIR] [--env K=V]... -- CMD [ARGS...]
    execserver-client [--url ...] [--json] cat PATH
    execserver-client [--url ...] [--json] put PATH        (stdin -> file)
    execserver-client [--url ...] [--json] ls PATH
    execserver-client [--url ...] [--json] stat PATH
    execserver-client [--url ...] [--json] info
    execserver-client --registry URL --environment-id ID [--token-file F] COMMAND ...
    execserver-client --url ws://HOST:PORT --token-file F COMMAND ...   (a server with --ws-auth)

C{--url} defaults to C{$EXECSERVER_URL}, then C{$CODEX_EXEC_SERVER_URL}.
C{--registry} reaches a remote executor through its environment registry
and rendezvous (an encrypted relay stream); its defaults are the variables
codex reads, C{$CODEX_EXEC_SERVER_NOISE_REGISTRY_URL},
C{$CODEX_EXEC_SERVER_NOISE_ENVIRONMENT_ID} and
C{$CODEX_EXEC_SERVER_NOISE_AUTH_TOKEN} (the token, unless C{--token-file}
names a file holding it). As in codex, those variables take precedence
over the URL variables; an explicit C{--url} wins. Paths are on the server's host;
relative ones are taken from the server's working directory, C{file:} URIs
are used as they are.

A server started with C{--ws-auth} gets the bearer token of C{--token-file}
or C{$EXECSERVER_TOKEN} in the upgrade's C{Authorization} header.

C{exec} exits with the child's exit code; with C{--json} it writes its
output as JSON lines instead (L{_JsonExecReceiver}). Errors are one line on
stderr (and, with C{--json}, an C{{"error": ...}} object on stdout), with
exit status L{EXIT_FAILURE} for file and info commands and
L{EXIT_CLIENT_ERROR} when C{exec} could not run or follow the command.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import stat as stat_module
import sys
from typing import Any

import pybase64
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.python.failure import Failure
from zope.interface import implementer

import execserver
from execserver import paths, rpc
from execserver.client.connectors import IConnector, WebSocketConnector
from execserver.client.core import ExecServerClient
from execserver.client.errors import ClientError, RemoteError
from execserver.client.process import RUNNING, IProcessReceiver
from execserver.client.terminal import InputReader, OutputWriter, RawTerminal
from execserver.noise.errors import NoiseError
from execserver.remote.harness import RelayConnector

PROG = "execserver-client"
URL_VARIABLE = "EXECSERVER_URL"
#: The variables codex itself reads: one environment serves both.
CODEX_URL_VARIABLE = "CODEX_EXEC_SERVER_URL"
REGISTRY_VARIABLE = "CODEX_EXEC_SERVER_NOISE_REGISTRY_URL"
ENVIRONMENT_VARIABLE = "CODEX_EXEC_SERVER_NOISE_ENVIRONMENT_ID"
TOKEN_VARIABLE = "CODEX_EXEC_SERVER_NOISE_AUTH_TOKEN"
#: The bearer token of a server started with --ws-auth (codex has no
#: variable for it: it reads auth_bearer_token from environments.toml).
WEBSOCKET_TOKEN_VARIABLE = "EXECSERVER_TOKEN"

#: Exit status of a file or info command that failed.
EXIT_FAILURE = 1
#: Exit status for wrong usage (as argparse uses it).
EXIT_USAGE = 2
#: Exit status when exec could not start or follow the command (as ssh).
EXIT_CLIENT_ERROR = 255
#: Exit status when our stdout went away (a shell reports a SIGPIPE death so).
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE

#: Exit status when Ctrl-C stopped a command other than exec.
EXIT_INTERRUPTED = 128 + signal.SIGINT

#: process/write requests in flight per process before we stop reading stdin.
MAX_WRITES_IN_FLIGHT = 8

#: How much of stdin `put` reads ahead of a streamed write.
PUT_READ_AHEAD_BYTES = 1024 * 1024

#: The end-of-file key of a terminal, sent when piped stdin of a --tty
#: command ends.
CTRL_D = b"\x04"

#: Said once when the end of our stdin cannot reach a command.
STDIN_STAYS_OPEN = (
    f"{PROG}: exec: the end of stdin is not passed on: the server cannot close the "
    "command's stdin (it has no process/closeStdin), so it stays open\n"
)


class CommandError(Exception):
    """
    A failure to report as one line, with an exit status.
    """

    def __init__(self, message: str, status: int, code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="machine-readable output")
    parser = argparse.ArgumentParser(
        prog=PROG, parents=[common],
        description="Run commands and reach files on an exec-server.",
    )
    parser.add_argument("--url",
                        help=f"server URL, ws://HOST:PORT (default: ${URL_VARIABLE}, "
                             f"then ${CODEX_URL_VARIABLE})")
    parser.add_argument("--registry", metavar="URL",
                        help=f"environment registry of a remote executor (default: ${REGISTRY_VARIABLE})")
    parser.add_argument("--environment-id", metavar="ID",
                        help=f"the remote environment (default: ${ENVIRONMENT_VARIABLE})")
    parser.add_argument("--token-file", metavar="FILE",
                        help="file holding the bearer token of a server started with --ws-auth "
                             f"(default: ${WEBSOCKET_TOKEN_VARIABLE}), or with --registry, the "
                             f"registry token (default: ${TOKEN_VARIABLE})")
    parser.add_argument("--version", action="version",
                        version=f"{PROG} {execserver.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser(
        "exec", parents=[common], help="run a command",
        description="Run a command; exit with its exit code. With --json, its output "
                    'is written as JSON lines, {"stream": "stdout", "dataBase64": ...}, '
                    'and the last line is {"exitCode": N}.',
    )
    run.add_argument("--tty", action="store_true",
                     help="run under a terminal; our terminal goes raw")
    run.add_argument("--cwd", help="working directory (default: the server's)")
    run.add_argument("--env", action="append", default=[], metavar="K=V",
                     help="set an environment variable (repeatable)")
    run.add_argument("--inherit", choices=("core", "all", "none"), default="core",
                     help="what the child inherits of the server's environment "
                          "(default: core, a login-like set)")
    run.add_argument("-n", "--no-stdin", action="store_true",
                     help="give the child an empty stdin instead of ours")
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")

    for name, help in (("cat", "print a file"), ("put", "write stdin to a file"),
                       ("ls", "list a directory"), ("stat", "describe a file")):
        command = commands.add_parser(name, parents=[common], help=help, description=help)
        command.add_argument("path", metavar="PATH")
    commands.add_parser("info", parents=[common], help="describe the server",
                        description="Describe the server and its host.")
    return parser


def main(argv: list[str] | None = None) -> None:
    """
    The console script.
    """
    arguments = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    arguments.json = getattr(arguments, "json", False)
    _choose_server(arguments)
    if arguments.command == "exec":
        command = arguments.argv[1:] if arguments.argv[:1] == ["--"] else arguments.argv
        if not command:
            _usage_error("exec needs a command: exec [OPTIONS] -- CMD [ARGS...]")
        arguments.argv = command
        for item in arguments.env:
            if "=" not in item:
                _usage_error(f"--env expects K=V, got {item!r}")

    from twisted.internet import reactor

    status: list[int] = []

    def run() -> None:
        ensureDeferred(_run(reactor, arguments)).addBoth(finish)

    def finish(result: Any) -> None:
        # The status first: whatever happens while reporting, we exit.
        status.append(EXIT_CLIENT_ERROR if isinstance(result, Failure) else result)
        if reactor.running and len(status) == 1:
            reactor.stop()
        if isinstance(result, Failure):
            _say(sys.stderr, f"{PROG}: internal error: {result.getErrorMessage()}\n"
                             f"{result.getTraceback()}")

    def interrupted(signum, frame) -> None:
        # Until a command says otherwise (exec forwards it), Ctrl-C stops us.
        reactor.callFromThread(finish, EXIT_INTERRUPTED)

    signal.signal(signal.SIGINT, interrupted)
    reactor.callWhenRunning(run)
    reactor.run(installSignalHandlers=False)
    sys.exit(status[0] if status else EXIT_CLIENT_ERROR)


def _usage_error(message: str) -> None:
    sys.stderr.write(f"{PROG}: error: {message}\n")
    sys.exit(EXIT_USAGE)


def _variable(name: str) -> str | None:
    """A variable as codex reads it: trimmed, and unset when empty."""
    return os.environ.get(name, "").strip() or None


def _choose_server(arguments: argparse.Namespace) -> None:
    """
    A local URL or a remote environment, from the options, then the
    variables; sets C{url}, or C{registry}, C{environment_id} and C{token}.
    """
    if arguments.url and arguments.registry:
        _usage_error("give either --url or --registry, not both")
    if not arguments.url and (arguments.registry or _variable(REGISTRY_VARIABLE)):
        arguments.registry = arguments.registry or _variable(REGISTRY_VARIABLE)
        arguments.environment_id = arguments.environment_id or _variable(ENVIRONMENT_VARIABLE)
        if not arguments.environment_id:
            _usage_error(f"--registry needs --environment-id or ${ENVIRONMENT_VARIABLE}")
        arguments.token = _token(arguments, TOKEN_VARIABLE)
        if not arguments.token:
            _usage_error(f"--registry needs a token: --token-file or ${TOKEN_VARIABLE}")
        return
    arguments.registry = None
    arguments.url = arguments.url or _variable(URL_VARIABLE) or _variable(CODEX_URL_VARIABLE)
    if not arguments.url:
        _usage_error(f"no server: give --url or --registry, or set ${URL_VARIABLE} "
                     f"or ${REGISTRY_VARIABLE}")
    arguments.token = _token(arguments, WEBSOCKET_TOKEN_VARIABLE)


def _token(arguments: argparse.Namespace, variable: str) -> str | None:
    """
    The token of C{--token-file} (trimmed, as servers trim theirs), else of
    C{variable}.
    """
    if not arguments.token_file:
        return _variable(variable)
    try:
        with open(arguments.token_file, encoding="utf-8") as f:
            return f.read().strip() or None
    except (OSError, UnicodeDecodeError) as e:
        _usage_error(f"cannot read the token file {arguments.token_file}: {e}")


def _connector(reactor, arguments: argparse.Namespace) -> IConnector:
    if arguments.registry is None:
        return WebSocketConnector(reactor, arguments.url, arguments.token)
    return RelayConnector(reactor, arguments.registry, arguments.environment_id, arguments.token)


async def _run(reactor, arguments: argparse.Namespace) -> int:
    try:
        connector = _connector(reactor, arguments)
    except (ValueError, NoiseError) as e:
        _report(arguments, _label(arguments), str(e), None)
        return EXIT_CLIENT_ERROR if arguments.command == "exec" else EXIT_FAILURE
    client = ExecServerClient(connector, reactor)
    label = _label(arguments)
    try:
        try:
            await client.connect()
        except ClientError as e:
            raise CommandError(str(e), EXIT_CLIENT_ERROR if arguments.command == "exec"
                               else EXIT_FAILURE) from None
        if arguments.command == "exec":
            return await _exec(reactor, client, arguments)
        handler = _FILE_COMMANDS[arguments.command]
        return await handler(reactor, client, arguments)
    except CommandError as e:
        _report(arguments, label, str(e), e.code)
        return e.status
    except ClientError as e:
        _report(arguments, label, str(e), getattr(e, "code", None))
        return EXIT_CLIENT_ERROR if arguments.command == "exec" else EXIT_FAILURE
    finally:
        client.close()


def _label(arguments: argparse.Namespace) -> str:
    if arguments.command in ("cat", "put", "ls", "stat"):
        return f"{arguments.command} {arguments.path}"
    return arguments.command


def _say(stream, text: str) -> None:
    """
    Write a message for whoever reads C{stream}; if nobody does any more
    (a closed pipe), there is nobody to tell, and we go on to exit.
    """
    try:
        stream.write(text)
        stream.flush()
    except OSError:
        # What is still buffered goes nowhere, so that flushing it at exit
        # does not fail (and turn our exit status into 120).
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, stream.fileno())
        os.close(null)


def _report(arguments, label: str, message: str, code: int | None) -> None:
    _say(sys.stderr, f"{PROG}: {label}: {message}\n")
    if arguments.json:
        error: dict[str, Any] = {"message": message}
        if code is not None:
            error["code"] = code
        # exec's output is JSON lines: its error is one more line.
        text = (_json_line({"error": error}).decode() if arguments.command == "exec"
                else json.dumps({"error": error}, indent=2) + "\n")
        _say(sys.stdout, text)


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")
    sys.stdout.flush()


def _json_line(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode() + b"\n"


def _resolve(client: ExecServerClient, path: str) -> str:
    """
    A path argument as a URI: relative paths are relative to the server's
    working directory.
    """
    if path.startswith("file:"):
        return path
    if not path.startswith("/"):
        base = paths.to_host_path(client.default_cwd())
        return paths.from_host_path(os.path.join(base, os.fsencode(path)))
    return paths.from_host_path(path)


# exec


@implementer(IProcessReceiver)
class _ExecReceiver:
    """
    Sends the child's output to ours, stdout and stderr apart (a terminal's
    output goes to stdout), pausing the handle while either is backed up.
    """

    def __init__(self, stdout: OutputWriter, stderr: OutputWriter) -> None:
        self.writers = {"stdout": stdout, "stderr": stderr, "pty": stdout}
        self.handle = None
        self._full: set[OutputWriter] = set()
        for writer in (stdout, stderr):
            writer.registerProducer(_WriterPauses(self, writer), True)

    def attached(self, handle) -> None:
        self.handle = handle

    def outputReceived(self, stream: str, data: bytes) -> None:
        self.writers.get(stream, self.writers["stdout"]).write(data)

    def processExited(self, exit_code: int) -> None:
        pass

    def processClosed(self) -> None:
        pass

    def processFailed(self, reason: Failure) -> None:
        pass

    def pause(self, writer: OutputWriter) -> None:
        if not self._full and self.handle is not None:
            self.handle.pauseProducing()
        self._full.add(writer)

    def resume(self, writer: OutputWriter) -> None:
        self._full.discard(writer)
        if not self._full and self.handle is not None:
            self.handle.resumeProducing()


class _JsonExecReceiver(_ExecReceiver):
    """
    exec --json: every chunk of output, whatever its stream, is one JSON
    line on our stdout, C{{"stream": "stdout", "dataBase64": "..."}}
    (C{stdout}, C{stderr}, or C{pty} under a terminal); base64 because
    output is bytes, and chunks may split characters.
    """

    def outputReceived(self, stream: str, data: bytes) -> None:
        self.writers["stdout"].write(b"".join((
            b'{"stream":"', stream.encode("ascii"), b'","dataBase64":"',
            pybase64.b64encode(data), b'"}\n',
        )))

    def finished(self, exit_code: int) -> None:
        self.writers["stdout"].write(_json_line({"exitCode": exit_code}))


class _WriterPauses:
    def __init__(self, receiver: _ExecReceiver, writer: OutputWriter) -> None:
        self.receiver = receiver
        self.writer = writer

    def pauseProducing(self) -> None:
        self.receiver.pause(self.writer)

    def resumeProducing(self) -> None:
        self.receiver.resume(self.writer)

    def stopProducing(self) -> None:
        pass


class _StdinForwarder:
    """
    Forwards our stdin to the child with at most L{MAX_WRITES_IN_FLIGHT}
    writes pending. At the end of ours, a terminal child gets Ctrl-D; a
    pipe child's stdin is closed (C{process/closeStdin}, after the writes
    sent before it), or, if the server cannot do that (the reference),
    stays open, which we say once on stderr.
    """

    def __init__(self, reactor, handle, tty: bool) -> None:
        self.handle = handle
        self.tty = tty
        self.in_flight = 0
        self.last_byte = b"\n"
        self.reader = InputReader(reactor, 0, self._data, self._end)

    def start(self) -> None:
        self.reader.start()

    def _data(self, data: bytes) -> None:
        self.last_byte = data[-1:]
        self._write(data)

    def _end(self) -> None:
        if self.tty:
            # Ctrl-D ends a partial line first, then signals end of file.
            self._write(CTRL_D if self.last_byte in (b"\n", b"\r") else CTRL_D + CTRL_D)
        else:
            self.handle.close_stdin().addErrback(self._not_closed)

    def _not_closed(self, reason: Failure) -> None:
        error = reason.value
        if (isinstance(error, RemoteError) and error.code == rpc.METHOD_NOT_FOUND
                and self.handle.state is RUNNING):
            _say(sys.stderr, STDIN_STAYS_OPEN)
        # Anything else is the handle's failure too, which exec reports.

    def _write(self, data: bytes) -> None:
        self.in_flight += 1
        if self.in_flight >= MAX_WRITES_IN_FLIGHT:
            self.reader.pauseProducing()
        self.handle.write(data).addBoth(self._written)

    def _written(self, result: Any) -> None:
        self.in_flight -= 1
        if isinstance(result, Failure) or result != "accepted":
            # The child's stdin is gone (or the client failed, which the
            # handle reports): stop reading ours.
            self.reader.stop()
            return
        if self.in_flight < MAX_WRITES_IN_FLIGHT:
            self.reader.resumeProducing()

    def restore(self) -> None:
        self.reader.restore()


def _stdin_is_empty() -> bool:
    """
    Whether our stdin has nothing to give: closed, C{/dev/null}, or a
    regular file read to its end. The child then gets an empty stdin of
    its own, which ends even on a server that cannot close a piped one.
    """
    try:
        ours = os.fstat(0)
    except OSError:
        return True
    if stat_module.S_ISREG(ours.st_mode):
        try:
            return os.lseek(0, 0, os.SEEK_CUR) >= ours.st_size
        except OSError:
            return False
    try:
        null = os.stat(os.devnull)
    except OSError:
        return False
    return stat_module.S_ISCHR(ours.st_mode) and ours.st_rdev == null.st_rdev


def _window_wrapper(argv: list[str]) -> list[str]:
    """
    Run the command through C{sh} to give its terminal our window size: the
    protocol starts every terminal at 24x80 and cannot resize it.
    """
    try:
        size = os.get_terminal_size(0)
    except OSError:
        return argv
    return ["/bin/sh", "-c", 'stty rows "$1" cols "$2" 2>/dev/null; shift 2; exec "$@"',
            "sh", str(size.lines), str(size.columns), *argv]


async def _exec(reactor, client: ExecServerClient, arguments: argparse.Namespace) -> int:
    env = dict(item.split("=", 1) for item in arguments.env)
    argv = list(arguments.argv)
    tty = arguments.tty
    if tty:
        if "TERM" in os.environ:
            env.setdefault("TERM", os.environ["TERM"])
        if os.isatty(0):
            argv = _window_wrapper(argv)
    forward_stdin = not arguments.no_stdin and (tty or not _stdin_is_empty())
    cwd = await _working_directory(client, arguments.cwd) if arguments.cwd else None
    broken: list[OSError] = []

    def stdout_broken(error: OSError) -> None:
        # Nobody reads the output any more (`| head`): stop the child, as
        # SIGPIPE would stop a local one.
        broken.append(error)
        _forward(receiver, "terminate")

    stdout = OutputWriter(reactor, 1, stdout_broken)
    stderr = OutputWriter(reactor, 2)
    receiver = (_JsonExecReceiver if arguments.json else _ExecReceiver)(stdout, stderr)
    terminal = None
    forwarder = None
    previous_handlers = {}

    def forward(request_name: str):
        def handler(signum, frame):
            reactor.callFromThread(_forward, receiver, request_name)
        return handler

    try:
        # Raw before the child starts: what is typed from now on is the
        # remote terminal's, Ctrl-C included.
        if tty and os.isatty(0):
            terminal = RawTerminal(0)
        for signum, request_name in ((signal.SIGINT, "signal"), (signal.SIGTERM, "terminate"),
                                     (signal.SIGHUP, "terminate")):
            previous_handlers[signum] = signal.signal(signum, forward(request_name))
        try:
            handle = await client.start_process(
                argv, cwd=cwd, env=env, tty=tty, pipe_stdin=forward_stdin,
                env_policy={"inherit": arguments.inherit, "ignoreDefaultExcludes": False,
                            "exclude": [], "set": {}, "includeOnly": []},
                receiver=receiver,
            )
        except RemoteError as e:
            raise CommandError(f"could not start {argv[0]}: {e.message}", EXIT_CLIENT_ERROR,
                               e.code) from None
        if forward_stdin:
            forwarder = _StdinForwarder(reactor, handle, tty)
            forwarder.start()
        exit_code = await handle.when_closed()
        if arguments.json:
            receiver.finished(exit_code)
        await stdout.drained()
        await stderr.drained()
        if broken:
            return EXIT_BROKEN_PIPE
        return exit_code if 0 <= exit_code <= 255 else EXIT_CLIENT_ERROR
    finally:
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
        if forwarder is not None:
            forwarder.restore()
        if terminal is not None:
            terminal.restore()
        # Last set, first restored: on a terminal all three share one mode.
        stderr.restore()
        stdout.restore()


async def _working_directory(client: ExecServerClient, path: str) -> str:
    """
    The URI of exec's C{--cwd}, once the server says it is a directory.

    Both servers report a missing working directory as the command's spawn
    error (C{No such file or directory}, as for a missing program), and the
    reference runs a terminal command in the home directory instead; so we
    ask first.
    """
    uri = _resolve(client, path)
    try:
        metadata = await client.fs.get_metadata(uri)
    except RemoteError as e:
        if e.code == rpc.NOT_FOUND:
            raise CommandError(f"working directory {path} does not exist", EXIT_CLIENT_ERROR,
                               e.code) from None
        raise CommandError(f"working directory {path}: {e.message}", EXIT_CLIENT_ERROR,
                           e.code) from None
    if not metadata.is_directory:
        raise CommandError(f"working directory {path} is not a directory", EXIT_CLIENT_ERROR)
    return uri


def _forward(receiver: "_ExecReceiver", request_name: str) -> None:
    """
    Pass a signal of ours on to the child (once it has started).
    """
    handle = receiver.handle
    if handle is not None:
        getattr(handle, request_name)().addErrback(lambda _: None)


# Files and info


def _remote(label_error: RemoteError) -> CommandError:
    return CommandError(label_error.message, EXIT_FAILURE, label_error.code)


async def _cat(reactor, client: ExecServerClient, arguments) -> int:
    uri = _resolve(client, arguments.path)
    if arguments.json:
        pieces: list[bytes] = []
        try:
            await client.fs.stream(uri, pieces.append)
        except RemoteError as e:
            raise _remote(e) from None
        data = b"".join(pieces)
        _print_json({"path": uri, "size": len(data),
                     "dataBase64": pybase64.b64encode_as_string(data)})
        return 0
    stdout = OutputWriter(reactor, 1)
    try:
        try:
            await client.fs.stream(uri, lambda data: (stdout.write(data), stdout.room())[1])
        except RemoteError as e:
            raise _remote(e) from None
        await stdout.drained()
        if stdout.error is not None:
            return EXIT_BROKEN_PIPE
        return 0
    finally:
        stdout.restore()


class _StdinBlocks:
    """
    Our stdin as blocks pulled one at a time (for streamed writes), reading
    ahead at most L{PUT_READ_AHEAD_BYTES}.
    """

    def __init__(self, reactor) -> None:
        self._blocks: list[bytes] = []
        self._queued = 0
        self._ended = False
        self._waiter: Deferred | None = None
        self.reader = InputReader(reactor, 0, self._data, self._end)

    def _data(self, data: bytes) -> None:
        self._blocks.append(data)
        self._queued += len(data)
        if self._queued >= PUT_READ_AHEAD_BYTES:
            self.reader.pauseProducing()
        self._wake()

    def _end(self) -> None:
        self._ended = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None:
            waiter, self._waiter = self._waiter, None
            waiter.callback(None)

    async def read(self) -> bytes:
        """
        The next bytes (everything queued), or C{b""} at the end.
        """
        while not self._blocks and not self._ended:
            self._waiter = Deferred()
            await self._waiter
        data = b"".join(self._blocks)
        self._blocks = []
        self._queued = 0
        self.reader.resumeProducing()
        return data


async def _put(reactor, client: ExecServerClient, arguments) -> int:
    uri = _resolve(client, arguments.path)
    stdin = _StdinBlocks(reactor)
    stdin.reader.start()
    capabilities = (client.environment or {}).get("capabilities") or {}
    try:
        if capabilities.get("fileWriteStreaming"):
            size = await client.fs.write_stream(uri, lambda: ensureDeferred(stdin.read()))
        else:
            chunks = []
            while data := await stdin.read():
                chunks.append(data)
            data = b"".join(chunks)
            await client.fs.write_file(uri, data)
            size = len(data)
    except RemoteError as e:
        raise _remote(e) from None
    finally:
        stdin.reader.restore()
    if arguments.json:
        _print_json({"path": uri, "size": size})
    else:
        sys.stdout.write(f"wrote {size} bytes to {arguments.path}\n")
    return 0


async def _ls(reactor, client: ExecServerClient, arguments) -> int:
    uri = _resolve(client, arguments.path)
    try:
        entries = await client.fs.read_directory(uri)
    except RemoteError as e:
        raise _remote(e) from None
    entries = sorted(entries, key=lambda entry: entry.file_name)
    if arguments.json:
        _print_json({"path": uri, "entries": [
            {"fileName": e.file_name, "isDirectory": e.is_directory, "isFile": e.is_file}
            for e in entries
        ]})
    else:
        for entry in entries:
            sys.stdout.write(entry.file_name + ("/" if entry.is_directory else "") + "\n")
    return 0


def _kind(metadata) -> str:
    if metadata.is_directory:
        kind = "directory"
    elif metadata.is_file:
        kind = "regular file"
    else:
        kind = "special file"
    return f"symbolic link to a {kind}" if metadata.is_symlink else kind


def _time(milliseconds: int) -> str:
    if not milliseconds:
        return "unknown"
    moment = datetime.datetime.fromtimestamp(milliseconds / 1000, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{milliseconds % 1000:03d} UTC"


async def _stat(reactor, client: ExecServerClient, arguments) -> int:
    uri = _resolve(client, arguments.path)
    try:
        metadata = await client.fs.get_metadata(uri)
    except RemoteError as e:
        raise _remote(e) from None
    if arguments.json:
        _print_json({
            "path": uri, "isDirectory": metadata.is_directory, "isFile": metadata.is_file,
            "isSymlink": metadata.is_symlink, "size": metadata.size,
            "createdAtMs": metadata.created_at_ms, "modifiedAtMs": metadata.modified_at_ms,
        })
    else:
        _print_fields([
            ("path", arguments.path),
            ("type", _kind(metadata)),
            ("size", f"{metadata.size} bytes"),
            ("modified", _time(metadata.modified_at_ms)),
            ("created", _time(metadata.created_at_ms)),
        ])
    return 0


def _print_fields(fields: list[tuple[str, str]]) -> None:
    width = max(len(name) for name, _ in fields) + 1
    for name, value in fields:
        sys.stdout.write(f"{name + ':':<{width}} {value}\n")


def _uri_path(uri: Any) -> str:
    if not isinstance(uri, str):
        return "unknown"
    try:
        return paths.to_host_path(uri).decode("utf-8", "replace")
    except ValueError:
        return uri


async def _info(reactor, client: ExecServerClient, arguments) -> int:
    try:
        info = await client.environment_info()
    except RemoteError as e:
        raise _remote(e) from None
    if arguments.json:
        _print_json({"url": arguments.url, "sessionId": client.session_id, **info})
        return 0
    shell = info.get("shell") or {}
    capabilities = sorted(name for name, on in (info.get("capabilities") or {}).items() if on)
    _print_fields([
        ("server", client.connector.description),
        ("session", client.session_id or "unknown"),
        ("version", str(info.get("executorVersion", "unknown"))),
        ("platform", str(info.get("platformOs", "unknown"))),
        ("shell", f"{shell.get('name', '?')} ({shell.get('path', '?')})"),
        ("cwd", _uri_path(info.get("cwd"))),
        ("home", _uri_path(info.get("userHomeDir"))),
        ("temp dir", _uri_path(info.get("tempDir"))),
        ("capabilities", ", ".join(capabilities) or "none"),
    ])
    return 0


_FILE_COMMANDS = {"cat": _cat, "put": _put, "ls": _ls, "stat": _stat, "info": _info}


if __name__ == "__main__":
    main()
